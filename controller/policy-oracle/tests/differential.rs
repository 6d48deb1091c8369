//! Differential test: the NetworkPolicy implementation against the
//! independent oracle, over random clusters (`generate::cluster()`).
//!
//! For each cluster the compiler runs once per node (node 0 and node 1,
//! each with its own pods as local endpoints, ids 1.. in pod order, and its
//! own identity allocator), and each node decides packets with the
//! dataplane's own decision (`decide_flow`) over the maps it would fill:
//! its placed policy and the ipcache it writes. A flow between two peers
//! (pods, or addresses that are no pod's) is allowed by the implementation
//! iff the sender's node lets it out (egress, if the sender is a pod) and
//! the receiver's node lets it in (ingress, if the receiver is a pod),
//! which is how two nodes enforce a flow between them; that must equal
//! `oracle::flow_allowed` for every pair of peers, a pod and itself
//! included, on every probe of `generate::probes`. External to external is
//! skipped: no pod takes part in it.
//!
//! The number of clusters is [`DEFAULT_CASES`] in the normal test run;
//! `SLUICE_DIFFERENTIAL_CASES=N` runs N instead, e.g.
//!
//! ```sh
//! SLUICE_DIFFERENTIAL_CASES=100000 cargo test --release -p sluice-policy-oracle --test differential
//! ```
//!
//! A failing cluster is shrunk to a minimal one and its seed appended to
//! `proptest-regressions/differential.txt` (proptest's file persistence,
//! at a fixed path since an integration test has no `lib.rs` beside it to
//! find the default location from); the seeds in that file are run first,
//! every time. The end of the test prints how many clusters and flows were
//! compared, and how fast.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Instant;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use proptest::test_runner::{FileFailurePersistence, TestCaseError, TestError, TestRunner};
use sluice_agent::datastore::ClusterState;
use sluice_agent::policy::{
    compile, DesiredPolicy, IdentityAllocator, InMemory, LocalEndpoints, LocalPods,
};
use sluice_agent::topology::Topology;
use sluice_common::ipcache::RemoteInfo;
use sluice_common::policy::{decide_flow, Decision};
use sluice_policy_oracle::generate::{self, GeneratedCluster};
use sluice_policy_oracle::oracle::{self, Cluster, Peer, Protocol};

/// Clusters in the normal (debug) test run.
const DEFAULT_CASES: u32 = 3_000;

/// Each node's gateway address, the `host` identity that policy always
/// allows: outside every generated address, so never a probed peer.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 1);

const NODES: [u8; 2] = [0, 1];

/// One node of the cluster as its agent sees it.
struct Node {
    local: LocalEndpoints,
    desired: DesiredPolicy,
    ipcache: BTreeMap<Ipv4Net, RemoteInfo>,
}

impl Node {
    fn maps(&self) -> InMemory<'_> {
        InMemory {
            policy: &self.desired.placed,
            ipcache: &self.ipcache,
        }
    }
}

fn cluster_state(cluster: &Cluster) -> ClusterState {
    let mut state = ClusterState::default();
    for namespace in &cluster.namespaces {
        let name = namespace.metadata.name.clone().expect("namespace name");
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
        metadata.namespace.clone().expect("namespaced object"),
        metadata.name.clone().expect("named object"),
    )
}

/// Compiles `state` for node `node`: its pods are the local endpoints.
fn node(generated: &GeneratedCluster, state: &ClusterState, node: u8) -> Node {
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

/// Where a peer enforces policy: a pod's node and endpoint id.
#[derive(Clone, Copy)]
struct End<'a> {
    peer: Peer<'a>,
    address: Ipv4Addr,
    /// `None` for an external address.
    at: Option<(&'a Node, u8, u32)>,
}

/// One direction as the implementation decided it: `None` where no node
/// decides (an external end).
fn egress(src: &End, dst: &End, protocol: Protocol, port: u16) -> Option<Decision> {
    let (node, _, endpoint) = src.at?;
    decide_flow(
        &node.maps(),
        Some(endpoint),
        None,
        src.address.octets(),
        dst.address.octets(),
        protocol.number(),
        port,
    )
    .egress
}

fn ingress(src: &End, dst: &End, protocol: Protocol, port: u16) -> Option<Decision> {
    let (node, _, endpoint) = dst.at?;
    decide_flow(
        &node.maps(),
        None,
        Some(endpoint),
        src.address.octets(),
        dst.address.octets(),
        protocol.number(),
        port,
    )
    .ingress
}

fn allows(decision: Option<Decision>) -> bool {
    decision != Some(Decision::Denied)
}

/// Compares every flow of one cluster; returns how many.
fn check_cluster(generated: &GeneratedCluster) -> Result<u64, TestCaseError> {
    let cluster = &generated.cluster;
    let state = cluster_state(cluster);
    let nodes = NODES.map(|n| node(generated, &state, n));
    for (n, node) in nodes.iter().enumerate() {
        // Generated policies are valid, so nothing may be dropped.
        proptest::prop_assert!(
            node.desired.problems.is_empty() && node.desired.identity_errors.is_empty(),
            "node-{n}: compile problems {:?}, identity errors {:?}\n{}",
            node.desired.problems,
            node.desired.identity_errors,
            describe(generated)
        );
    }

    let ends: Vec<End> = generated
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
                    let on = generated.nodes[index];
                    let node = &nodes[usize::from(on)];
                    Some((node, on, node.local[&address]))
                }
                Peer::External(_) => None,
            };
            End { peer, address, at }
        })
        .collect();
    let probes = generate::probes(generated);

    let mut flows = 0;
    for src in &ends {
        for dst in &ends {
            if src.at.is_none() && dst.at.is_none() {
                continue;
            }
            for &(protocol, port) in &probes {
                flows += 1;
                let egress = egress(src, dst, protocol, port);
                let ingress = ingress(src, dst, protocol, port);
                let implementation = allows(egress) && allows(ingress);
                let expected = oracle::flow_allowed(cluster, src.peer, dst.peer, protocol, port);
                if implementation != expected {
                    let message = mismatch(
                        generated, src, dst, protocol, port, egress, ingress, expected,
                    );
                    proptest::prop_assert!(false, "{}", message);
                }
            }
        }
    }
    Ok(flows)
}

// ---------------------------------------------------------------------------
// Reporting a mismatch
// ---------------------------------------------------------------------------

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

fn end_name(end: &End) -> String {
    match (end.peer, end.at) {
        (Peer::Pod(pod), Some((_, node, endpoint))) => format!(
            "{}/{} ({}, node-{node}, endpoint {endpoint})",
            oracle::pod_namespace(pod),
            pod.metadata.name.as_deref().unwrap_or("?"),
            end.address
        ),
        _ => format!("{} (external)", end.address),
    }
}

fn pod_of<'a>(end: &End<'a>) -> Option<&'a Pod> {
    match end.peer {
        Peer::Pod(pod) => Some(pod),
        Peer::External(_) => None,
    }
}

fn side(decision: Option<Decision>) -> &'static str {
    match decision {
        None => "not decided (external end, or egress already refused)",
        Some(Decision::Open) => "open (not isolated)",
        Some(Decision::Allowed) => "allowed by a rule",
        Some(Decision::Denied) => "DENIED",
        Some(Decision::WouldDeny) => "would deny (audit mode)",
    }
}

#[allow(clippy::too_many_arguments)]
fn mismatch(
    generated: &GeneratedCluster,
    src: &End,
    dst: &End,
    protocol: Protocol,
    port: u16,
    egress: Option<Decision>,
    ingress: Option<Decision>,
    expected: bool,
) -> String {
    let cluster = &generated.cluster;
    let oracle_side = |pod: Option<&Pod>, allowed: &dyn Fn(&Pod) -> bool| match pod {
        None => "n/a (external end)".to_owned(),
        Some(pod) => verdict(allowed(pod)).to_owned(),
    };
    let oracle_egress = oracle_side(pod_of(src), &|pod| {
        oracle::egress_allowed(cluster, pod, dst.peer, protocol, port)
    });
    let oracle_ingress = oracle_side(pod_of(dst), &|pod| {
        oracle::ingress_allowed(cluster, pod, src.peer, protocol, port)
    });
    let refused = match (allows(egress), allows(ingress)) {
        (false, _) => "the implementation refused it at the sender (egress)",
        (true, false) => "the implementation refused it at the receiver (ingress)",
        (true, true) => "the implementation allowed it in both directions",
    };
    let diagonal = if src.address == dst.address {
        " [a pod reaching itself]"
    } else {
        ""
    };
    format!(
        "flow {} -> {} {}/{port}{diagonal}: oracle {}, implementation {}; {refused}\n  \
         implementation: egress {}, ingress {}\n  \
         oracle: egress {oracle_egress}, ingress {oracle_ingress}\n{}",
        end_name(src),
        end_name(dst),
        protocol.k8s_name(),
        verdict(expected),
        verdict(!expected),
        side(egress),
        side(ingress),
        describe(generated)
    )
}

/// The cluster, readably: namespaces and pods in short, policies as YAML.
fn describe(generated: &GeneratedCluster) -> String {
    let cluster = &generated.cluster;
    let mut out = String::from("namespaces:\n");
    for ns in &cluster.namespaces {
        let _ = writeln!(
            out,
            "  {} {:?}",
            ns.metadata.name.as_deref().unwrap_or("?"),
            ns.metadata.labels.clone().unwrap_or_default()
        );
    }
    out.push_str("pods:\n");
    for (pod, node) in cluster.pods.iter().zip(&generated.nodes) {
        let ports: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|spec| &spec.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| {
                format!(
                    "{}={}/{}",
                    p.name.as_deref().unwrap_or("-"),
                    p.protocol.as_deref().unwrap_or("TCP(default)"),
                    p.container_port
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  {}/{} {} node-{node} labels {:?} ports [{}]",
            oracle::pod_namespace(pod),
            pod.metadata.name.as_deref().unwrap_or("?"),
            oracle::pod_ip(pod),
            pod.metadata.labels.clone().unwrap_or_default(),
            ports.join(", ")
        );
    }
    let _ = writeln!(out, "externals: {:?}", generated.externals);
    out.push_str("policies:\n");
    for policy in &cluster.policies {
        let yaml = serde_yaml::to_string(policy).unwrap_or_else(|e| format!("({e})\n"));
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    out
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

fn cases() -> u32 {
    match std::env::var("SLUICE_DIFFERENTIAL_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("SLUICE_DIFFERENTIAL_CASES={text:?}: {e}")),
        Err(_) => DEFAULT_CASES,
    }
}

#[test]
fn implementation_agrees_with_the_oracle() {
    let mut config = generate::proptest_config(cases());
    config.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proptest-regressions/differential.txt"
    ))));
    let mut runner = TestRunner::new(config);

    let clusters = Cell::new(0u64);
    let flows = Cell::new(0u64);
    let started = Instant::now();
    let result = runner.run(&generate::cluster(), |generated| {
        let compared = check_cluster(&generated)?;
        clusters.set(clusters.get() + 1);
        flows.set(flows.get() + compared);
        Ok(())
    });
    let seconds = started.elapsed().as_secs_f64();

    // Clusters compared in full: after a failure, shrinking steps that
    // passed count too, failing ones do not.
    let (clusters, flows) = (clusters.get(), flows.get());
    eprintln!(
        "differential: {clusters} clusters, {flows} flows compared in {seconds:.1} s: \
         {:.0} clusters/s, {:.0} flows/s",
        clusters as f64 / seconds,
        flows as f64 / seconds
    );
    match result {
        Ok(()) => {}
        // The reason already shows the minimal cluster readably; its Debug
        // form (proptest's usual report) would bury it.
        Err(TestError::Fail(reason, _)) => panic!("minimal failing case: {reason}"),
        Err(TestError::Abort(reason)) => panic!("aborted: {reason}"),
    }
}
