//! `policy explain` against the independent oracle, over random clusters
//! (`generate::cluster()`): for every pair of ends and every probe, each
//! direction's explained verdict is the oracle's, a verdict a policy
//! decided names it (the isolating policies for a denial, the rules for an
//! allowance), and the dataplane's decision over the maps compiled from
//! the same state agrees (no false alarm from the datapath check).
//!
//! One node holds every pod, so both directions of every flow are checked
//! against maps. `SLUICE_EXPLAIN_CASES=N` runs N clusters instead of
//! [`DEFAULT_CASES`].

use std::net::Ipv4Addr;

use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use sluice_agent::datastore::ClusterState;
use sluice_agent::policy::explain::{check_datapath, explain, NodeView};
use sluice_agent::policy::{compile, IdentityAllocator, InMemory, LocalEndpoints, LocalPods};
use sluice_agent::topology::Topology;
use sluice_common::explain::{EndRef, ExplainQuery, PortSpec, Protocol as ApiProtocol, Verdict};
use sluice_policy_oracle::generate::{self, GeneratedCluster};
use sluice_policy_oracle::oracle::{self, Peer, Protocol};

const DEFAULT_CASES: u32 = 100;

/// The node's gateway: outside every generated address.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 1);

fn state(generated: &GeneratedCluster) -> ClusterState {
    let cluster = &generated.cluster;
    let mut state = ClusterState::default();
    for ns in &cluster.namespaces {
        state
            .namespaces
            .insert(ns.metadata.name.clone().expect("name"), ns.clone());
    }
    for pod in &cluster.pods {
        let key = (
            oracle::pod_namespace(pod).to_owned(),
            pod.metadata.name.clone().expect("name"),
        );
        state.pods.insert(key, pod.clone());
    }
    for policy in &cluster.policies {
        let key = (
            policy.metadata.namespace.clone().expect("namespace"),
            policy.metadata.name.clone().expect("name"),
        );
        state.policies.insert(key, policy.clone());
    }
    state
}

fn end_ref(peer: Peer) -> EndRef {
    match peer {
        Peer::Pod(pod) => EndRef::Pod {
            namespace: oracle::pod_namespace(pod).to_owned(),
            name: pod.metadata.name.clone().expect("name"),
        },
        Peer::External(ip) => EndRef::Ip { ip },
    }
}

fn api_protocol(protocol: Protocol) -> ApiProtocol {
    match protocol {
        Protocol::Tcp => ApiProtocol::Tcp,
        Protocol::Udp => ApiProtocol::Udp,
        Protocol::Sctp => ApiProtocol::Sctp,
    }
}

fn check_cluster(generated: &GeneratedCluster) -> Result<u64, TestCaseError> {
    let cluster = &generated.cluster;
    let state = state(generated);
    let local: LocalEndpoints = cluster
        .pods
        .iter()
        .zip(1..)
        .map(|(pod, id)| (oracle::pod_ip(pod), id))
        .collect();
    let desired = compile(
        &state,
        &local,
        &LocalPods::new(),
        &mut IdentityAllocator::new(),
        false,
    );
    let ipcache = Topology::default().ipcache_with_pods(&desired.pod_identities, GATEWAY);
    let maps = InMemory {
        policy: &desired.placed,
        ipcache: &ipcache,
    };
    let local_pods = LocalPods::new();
    let view = NodeView {
        node: "node-0",
        state: &state,
        local: &local,
        local_pods: &local_pods,
        identities: &desired.pod_identities,
        hosts: &[GATEWAY],
        audit_default: false,
    };
    let peers = generated.peers();
    let mut flows = 0;
    for &src in &peers {
        for &dst in &peers {
            for &(protocol, port) in &generate::probes(generated) {
                let query = ExplainQuery {
                    from: end_ref(src),
                    to: end_ref(dst),
                    port: PortSpec {
                        port,
                        protocol: api_protocol(protocol),
                    },
                };
                let mut e = explain(&view, &query)
                    .map_err(|err| TestCaseError::fail(format!("{query:?}: {err}")))?;
                check_datapath(&mut e, &local, &maps);
                let at = format!("{} -> {} {}", query.from, query.to, query.port);
                let oracle_egress = match src {
                    Peer::Pod(pod) => {
                        Some(oracle::egress_allowed(cluster, pod, dst, protocol, port))
                    }
                    Peer::External(_) => None,
                };
                let oracle_ingress = match dst {
                    Peer::Pod(pod) => {
                        Some(oracle::ingress_allowed(cluster, pod, src, protocol, port))
                    }
                    Peer::External(_) => None,
                };
                for (d, want) in [(&e.egress, oracle_egress), (&e.ingress, oracle_ingress)] {
                    let got = match d.verdict {
                        Verdict::NotApplicable => None,
                        v => Some(v.passes()),
                    };
                    proptest::prop_assert_eq!(
                        got,
                        want,
                        "{}: {} explained {:?}, oracle {:?}\n{:#?}\npolicies: {:#?}",
                        at,
                        d.direction,
                        d.verdict,
                        want,
                        e,
                        cluster.policies
                    );
                    proptest::prop_assert!(
                        match d.verdict {
                            Verdict::Denied => !d.isolated_by.is_empty(),
                            Verdict::Allowed => !d.allowed_by.is_empty(),
                            _ => true,
                        },
                        "{}: {} {:?} names nothing: {:#?}",
                        at,
                        d.direction,
                        d.verdict,
                        e
                    );
                    if let Some(check) = &d.datapath {
                        proptest::prop_assert!(
                            check.agrees,
                            "{}: {} maps say {:?}: {:#?}",
                            at,
                            d.direction,
                            check.verdict,
                            e
                        );
                    }
                }
                flows += 1;
            }
        }
    }
    Ok(flows)
}

#[test]
fn explanations_agree_with_the_oracle_and_the_maps() {
    let cases = std::env::var("SLUICE_EXPLAIN_CASES")
        .ok()
        .map(|n| n.trim().parse().expect("SLUICE_EXPLAIN_CASES is a number"))
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(generate::proptest_config(cases));
    let flows = std::cell::Cell::new(0u64);
    let result = runner.run(&generate::cluster(), |generated| {
        flows.set(flows.get() + check_cluster(&generated)?);
        Ok(())
    });
    eprintln!("explain: {} flows compared", flows.get());
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) => panic!("minimal failing case: {reason}"),
        Err(TestError::Abort(reason)) => panic!("aborted: {reason}"),
    }
}
