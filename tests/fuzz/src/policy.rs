//! The judge of the policy targets: the compiler's output, read by the
//! dataplane's own per-packet decision (`decide_flow`), against the
//! NetworkPolicy semantics of the oracle crate, flow by flow.
//!
//! The same frame as the differential test (controller/policy-oracle/
//! tests/differential.rs, which is an integration test and so cannot be
//! imported): each node compiles the cluster with its own pods as local
//! endpoints and its own identity allocator; a flow is allowed by the
//! implementation iff the sender's node lets it out and the receiver's
//! node lets it in.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sluice_agent::datastore::ClusterState;
use sluice_agent::policy::{
    compile, DesiredPolicy, IdentityAllocator, InMemory, LocalEndpoints, LocalPods,
};
use sluice_agent::topology::Topology;
use sluice_common::ipcache::RemoteInfo;
use sluice_common::policy::{decide_flow, Decision};
use sluice_policy_oracle::generate::{self, GeneratedCluster};
use sluice_policy_oracle::oracle::{self, Peer, Protocol};

/// Each node's gateway address (the `host` identity, which policy always
/// allows); never a probed peer.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 1);

pub const NODES: [u8; 2] = [0, 1];

/// How strictly the implementation must follow the oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// Every flow as the oracle says (valid input: the compiler must
    /// neither widen nor narrow).
    Exact,
    /// Never an allow the oracle does not give; denying more is failing
    /// closed, which is fine on input the compiler reported problems with.
    NoWiderThanOracle,
}

/// One node's view: its endpoints and the maps it would fill.
pub struct Node {
    pub local: LocalEndpoints,
    pub desired: DesiredPolicy,
    pub ipcache: BTreeMap<Ipv4Net, RemoteInfo>,
}

impl Node {
    fn maps(&self) -> InMemory<'_> {
        InMemory {
            policy: &self.desired.placed,
            ipcache: &self.ipcache,
        }
    }
}

/// Compiles `state` for `node`: the pods of `generated` on it are its
/// local endpoints (ids 1.. in pod order).
pub fn compile_node(generated: &GeneratedCluster, state: &ClusterState, node: u8) -> Node {
    let local: LocalEndpoints = generated
        .cluster
        .pods
        .iter()
        .zip(&generated.nodes)
        .filter(|(_, on)| **on == node)
        .zip(1..)
        .map(|((pod, _), id)| (oracle::pod_ip(pod), id))
        .collect();
    let desired = compile(
        state,
        &local,
        &LocalPods::new(),
        &mut IdentityAllocator::new(),
        false,
    );
    let ipcache = Topology::default().ipcache_with_pods(&desired.pod_identities, GATEWAY);
    Node {
        local,
        desired,
        ipcache,
    }
}

/// The state the compiler reads, from the oracle's objects.
pub fn cluster_state(generated: &GeneratedCluster) -> ClusterState {
    let cluster = &generated.cluster;
    let mut state = ClusterState::default();
    for namespace in &cluster.namespaces {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        state.namespaces.insert(name, namespace.clone());
    }
    for pod in &cluster.pods {
        state.pods.insert(key(&pod.metadata), pod.clone());
    }
    for policy in &cluster.policies {
        state.policies.insert(key(&policy.metadata), policy.clone());
    }
    state
}

fn key(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    )
}

/// What one judged cluster amounted to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Judged {
    pub flows: u64,
}

/// Compiles `state` on both nodes and compares every flow between the
/// peers of `generated` (pods and external addresses, external to
/// external skipped) on every probe. Panics with the flow and the cluster
/// on a disagreement that `strictness` does not allow.
pub fn judge(generated: &GeneratedCluster, state: &ClusterState, strictness: Strictness) -> Judged {
    let cluster = &generated.cluster;
    let nodes = NODES.map(|n| compile_node(generated, state, n));
    let ends: Vec<(Peer, Ipv4Addr, Option<(&Node, u32)>)> = generated
        .peers()
        .into_iter()
        .map(|peer| {
            let address = peer.address();
            let at = match peer {
                Peer::Pod(_) => {
                    let index = cluster
                        .pods
                        .iter()
                        .position(|p| oracle::pod_ip(p) == address)
                        .expect("a peer pod is a cluster pod");
                    let node = &nodes[usize::from(generated.nodes[index])];
                    Some((node, node.local[&address]))
                }
                Peer::External(_) => None,
            };
            (peer, address, at)
        })
        .collect();
    let probes = generate::probes(generated);
    let mut judged = Judged::default();
    for &(src, src_ip, src_at) in &ends {
        for &(dst, dst_ip, dst_at) in &ends {
            if src_at.is_none() && dst_at.is_none() {
                continue;
            }
            for &(protocol, port) in &probes {
                judged.flows += 1;
                let egress = src_at.and_then(|(node, endpoint)| {
                    decide(node, Some(endpoint), None, src_ip, dst_ip, protocol, port).egress
                });
                let ingress = dst_at.and_then(|(node, endpoint)| {
                    decide(node, None, Some(endpoint), src_ip, dst_ip, protocol, port).ingress
                });
                let implementation = allows(egress) && allows(ingress);
                let expected = oracle::flow_allowed(cluster, src, dst, protocol, port);
                let wrong = match strictness {
                    Strictness::Exact => implementation != expected,
                    Strictness::NoWiderThanOracle => implementation && !expected,
                };
                if wrong {
                    panic!(
                        "flow {src_ip} -> {dst_ip} {}/{port}: oracle {}, implementation {} \
                         (egress {egress:?}, ingress {ingress:?})\n\
                         compile problems: node-0 {:?}, node-1 {:?}\n{}",
                        protocol.k8s_name(),
                        verdict(expected),
                        verdict(implementation),
                        nodes[0].desired.problems,
                        nodes[1].desired.problems,
                        describe(generated),
                    );
                }
            }
        }
    }
    judged
}

fn decide(
    node: &Node,
    src_endpoint: Option<u32>,
    dst_endpoint: Option<u32>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: Protocol,
    port: u16,
) -> sluice_common::policy::FlowDecision {
    decide_flow(
        &node.maps(),
        src_endpoint,
        dst_endpoint,
        src.octets(),
        dst.octets(),
        protocol.number(),
        port,
    )
}

fn allows(decision: Option<Decision>) -> bool {
    decision != Some(Decision::Denied)
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

/// The cluster as JSON objects, enough to rebuild it by hand.
fn describe(generated: &GeneratedCluster) -> String {
    let cluster = &generated.cluster;
    let json = serde_json::json!({
        "namespaces": cluster.namespaces,
        "pods": cluster.pods,
        "nodes": generated.nodes,
        "policies": cluster.policies,
        "externals": generated.externals,
    });
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

/// A valid cluster from the oracle crate's own generator, drawn with a
/// ChaCha RNG seeded by `data` (its bytes folded into the 32-byte seed).
/// Proptest's pass-through RNG (the bytes as the choices) does not work
/// with this generator: once the bytes run out it returns zeros, and the
/// generator then never returns (found by this target: rejection sampling
/// in `subsequence`/uniform ranges on a constant stream). `None` if the
/// generator rejects the draw.
pub fn generated_from(data: &[u8]) -> Option<GeneratedCluster> {
    use proptest::strategy::{Strategy as _, ValueTree as _};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut seed = [0u8; 32];
    for (i, b) in data.iter().enumerate() {
        seed[i % 32] ^= b.rotate_left((i / 32) as u32 % 8);
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let tree = generate::cluster().new_tree(&mut runner).ok()?;
    Some(tree.current())
}
