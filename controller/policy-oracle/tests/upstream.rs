//! The conformance truth tables, cell by cell, against the oracle and
//! against the implementation.
//!
//! Every case of `tests/conformance/upstream/cases` (the 48 upstream e2e
//! cases) and `tests/conformance/sluice` (sluice's own: endPort, named
//! ports, SCTP, label updates, ipBlock with port ranges), read with the
//! lab's case parser, every step, every probe, all 81 cells including the
//! diagonal (upstream does not assert it, but its tables hold what plain
//! semantics give there, and so must we):
//!
//! - the oracle must agree with the table: this is what keeps the oracle
//!   of the differential test honest;
//! - the implementation must agree with the table: the compiler with all
//!   nine model pods local (endpoint ids 1..=9 in table order), then the
//!   dataplane's own per-packet decision (`decide_flow`) over the maps it
//!   would fill.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_agent::datastore::ClusterState;
use sluice_agent::policy::{
    compile, IdentityAllocator, InMemory, LocalEndpoints, LocalPods, NAMESPACE_NAME_LABEL,
};
use sluice_agent::topology::Topology;
use sluice_common::policy::decide_flow;
use sluice_lab::conformance::case::{self, Case, Labels, Probe};
use sluice_lab::conformance::placeholders::substitute_value;
use sluice_lab::model;
use sluice_lab::topology::PodName;
use sluice_policy_oracle::oracle::{self, Cluster, Peer, Protocol};

/// The node's own gateway address (the `host` identity, always allowed):
/// outside every model address.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Container ports every model pod serves, on TCP, UDP and SCTP each.
const SERVED_PORTS: [i32; 2] = [80, 81];

fn conformance_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/conformance")
        .join(sub)
}

/// `(file, case)` for every case file of `dir`, in name order, parsed by
/// the lab's parser; at least `minimum` of them, so that a moved or empty
/// directory fails instead of passing vacuously.
fn load(dir: &Path, minimum: usize) -> Vec<(String, Case)> {
    let entries = sluice_lab::conformance::load(dir, None)
        .unwrap_or_else(|e| panic!("case directory {}: {e}", dir.display()));
    assert!(
        entries.len() >= minimum,
        "{}: {} case files, expected at least {minimum}",
        dir.display(),
        entries.len()
    );
    entries
        .into_iter()
        .map(|entry| {
            let case = entry
                .case
                .unwrap_or_else(|e| panic!("{}/{}: {e}", dir.display(), entry.file));
            (entry.file, case)
        })
        .collect()
}

/// Every case: the 48 upstream ones, then sluice's own.
fn all_cases() -> Vec<(String, Case)> {
    let mut cases = load(&conformance_dir("upstream/cases"), 48);
    cases.extend(load(&conformance_dir("sluice"), 7));
    cases
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// All nine inside one /4 (cases 35 and 36 assume it), one /24 per namespace.
fn model_ip(pod: &str) -> Ipv4Addr {
    let (ns, name) = pod.split_once('/').expect("pod written as ns/name");
    let position = |names: &[&str], wanted: &str| {
        names
            .iter()
            .position(|n| *n == wanted)
            .unwrap_or_else(|| panic!("{wanted:?} is not one of {names:?}")) as u8
    };
    Ipv4Addr::new(
        10,
        244,
        position(&model::NAMESPACES, ns) + 1,
        10 + position(&model::PODS, name),
    )
}

/// The model's namespaces as the API server stores them: `ns=<name>` and
/// the `kubernetes.io/metadata.name` label it sets itself.
fn model_namespace(name: &str) -> Namespace {
    let mut labels = model::namespace_labels(name);
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A model pod: `pod=<name>`, one container per served (port, protocol)
/// whose port is named `serve-<port>-<proto>`.
fn model_pod(pod: &str) -> Pod {
    let (ns, name) = pod.split_once('/').expect("pod written as ns/name");
    let containers = SERVED_PORTS
        .iter()
        .flat_map(|port| Protocol::ALL.map(|protocol| (*port, protocol)))
        .map(|(port, protocol)| {
            let proto = protocol.k8s_name().to_lowercase();
            Container {
                name: format!("c{port}-{proto}"),
                image: Some("agnhost".to_owned()),
                ports: Some(vec![ContainerPort {
                    name: Some(format!("serve-{port}-{proto}")),
                    container_port: port,
                    protocol: Some(protocol.k8s_name().to_owned()),
                    ..Default::default()
                }]),
                ..Default::default()
            }
        })
        .collect();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(Labels::from([("pod".to_owned(), name.to_owned())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers,
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            pod_ip: Some(model_ip(pod).to_string()),
            ..Default::default()
        }),
    }
}

fn model_state() -> ClusterState {
    let mut state = ClusterState::default();
    for ns in model::NAMESPACES {
        state.namespaces.insert(ns.to_owned(), model_namespace(ns));
    }
    for pod in model::pod_names() {
        let (ns, name) = pod.split_once('/').expect("ns/name");
        state
            .pods
            .insert((ns.to_owned(), name.to_owned()), model_pod(&pod));
    }
    state
}

/// Every model pod is local; endpoint ids 1..=9 in table order.
fn model_local() -> LocalEndpoints {
    model::pod_names()
        .iter()
        .zip(1..)
        .map(|(pod, id)| (model_ip(pod), id))
        .collect()
}

/// What placeholders stand for.
fn model_ips() -> BTreeMap<String, IpAddr> {
    model::pod_names()
        .into_iter()
        .map(|pod| {
            let ip = IpAddr::V4(model_ip(&pod));
            (pod, ip)
        })
        .collect()
}

/// The same objects as the oracle takes them.
fn oracle_cluster(state: &ClusterState) -> Cluster {
    Cluster {
        namespaces: state.namespaces.values().cloned().collect(),
        pods: state.pods.values().cloned().collect(),
        policies: state.policies.values().cloned().collect(),
    }
}

// ---------------------------------------------------------------------------
// Running cases
// ---------------------------------------------------------------------------

/// Labels are merged, never removed (FORMAT.md, "Steps").
fn merge_labels(
    state: &mut ClusterState,
    namespaces: &[(String, Labels)],
    pods: &[(PodName, Labels)],
) {
    for (ns, labels) in namespaces {
        let namespace = state
            .namespaces
            .get_mut(ns)
            .unwrap_or_else(|| panic!("no namespace {ns}"));
        namespace
            .metadata
            .labels
            .get_or_insert_default()
            .extend(labels.clone());
    }
    for (pod, labels) in pods {
        let key = (pod.namespace.clone(), pod.name.clone());
        let object = state
            .pods
            .get_mut(&key)
            .unwrap_or_else(|| panic!("no pod {pod}"));
        object
            .metadata
            .labels
            .get_or_insert_default()
            .extend(labels.clone());
    }
}

/// One step's changes in the format's order: delete, apply, labels.
fn change(state: &mut ClusterState, step: &case::Step, ips: &BTreeMap<String, IpAddr>, at: &str) {
    for (ns, name) in &step.delete {
        let removed = state.policies.remove(&(ns.clone(), name.clone()));
        assert!(
            removed.is_some(),
            "{at}: delete of missing policy {ns}/{name}"
        );
    }
    for object in &step.apply {
        let mut object = object.clone();
        substitute_value(&mut object, ips).unwrap_or_else(|e| panic!("{at}: {e}"));
        let policy: NetworkPolicy = serde_yaml::from_value(object)
            .unwrap_or_else(|e| panic!("{at}: not a NetworkPolicy: {e}"));
        let key = (
            policy.metadata.namespace.clone().expect("policy namespace"),
            policy.metadata.name.clone().expect("policy name"),
        );
        state.policies.insert(key, policy);
    }
    merge_labels(state, &step.namespace_labels, &step.pod_labels);
}

fn oracle_protocol(protocol: case::Protocol) -> Protocol {
    match protocol {
        case::Protocol::Tcp => Protocol::Tcp,
        case::Protocol::Udp => Protocol::Udp,
        case::Protocol::Sctp => Protocol::Sctp,
    }
}

fn mark(allowed: bool) -> &'static str {
    if allowed {
        "."
    } else {
        "X"
    }
}

/// Who decides a cell.
#[derive(Clone, Copy)]
enum Judge {
    Oracle,
    Implementation,
}

/// Cells compared, and a line for each wrong one.
#[derive(Default)]
struct Outcome {
    cells: usize,
    probes: usize,
    wrong: Vec<String>,
}

/// Runs every step of `case`, comparing `judge` with each probe's table.
fn run_case(file: &str, case: &Case, judge: Judge, outcome: &mut Outcome) {
    let ips = model_ips();
    let local = model_local();
    let pods = model::pod_names();
    let mut ids = IdentityAllocator::new();
    let mut state = model_state();
    merge_labels(&mut state, &case.namespace_labels, &case.pod_labels);
    for (index, step) in case.steps.iter().enumerate() {
        let at = format!("{file} step {}", index + 1);
        change(&mut state, step, &ips, &at);

        // Only what the judge needs.
        let cluster = oracle_cluster(&state);
        let desired = compile(&state, &local, &LocalPods::new(), &mut ids, false);
        assert!(
            desired.problems.is_empty() && desired.identity_errors.is_empty(),
            "{at}: compile problems {:?}, identity errors {:?}",
            desired.problems,
            desired.identity_errors
        );
        let ipcache = Topology::default().ipcache_with_pods(&desired.pod_identities, GATEWAY);
        let maps = InMemory {
            policy: &desired.placed,
            ipcache: &ipcache,
        };
        let model_peer = |pod: &str| -> Peer<'_> {
            let (ns, name) = pod.split_once('/').expect("ns/name");
            let object = cluster
                .pods
                .iter()
                .find(|p| {
                    oracle::pod_namespace(p) == ns && p.metadata.name.as_deref() == Some(name)
                })
                .expect("model pod");
            Peer::Pod(object)
        };

        for probe in &step.probes {
            outcome.probes += 1;
            let protocol = oracle_protocol(probe.protocol);
            for from in &pods {
                for to in &pods {
                    let expected = expected_cell(probe, from, to, &at);
                    let got = match judge {
                        Judge::Oracle => oracle::flow_allowed(
                            &cluster,
                            model_peer(from),
                            model_peer(to),
                            protocol,
                            probe.port,
                        ),
                        Judge::Implementation => {
                            let (src, dst) = (model_ip(from), model_ip(to));
                            decide_flow(
                                &maps,
                                local.get(&src).copied(),
                                local.get(&dst).copied(),
                                src.octets(),
                                dst.octets(),
                                protocol.number(),
                                probe.port,
                            )
                            .denied_by()
                            .is_none()
                        }
                    };
                    outcome.cells += 1;
                    if got != expected {
                        let diagonal = if from == to { " (diagonal)" } else { "" };
                        outcome.wrong.push(format!(
                            "{at} {}: {from} -> {to}{diagonal}: expected {}, got {}",
                            probe.label(),
                            mark(expected),
                            mark(got)
                        ));
                    }
                }
            }
        }
    }
}

fn expected_cell(probe: &Probe, from: &str, to: &str, at: &str) -> bool {
    probe
        .expect
        .get(from, to)
        .unwrap_or_else(|| panic!("{at} {}: no cell {from} -> {to}", probe.label()))
}

fn check_all(judge: Judge, who: &str) {
    let cases = all_cases();
    let mut outcome = Outcome::default();
    for (file, case) in &cases {
        run_case(file, case, judge, &mut outcome);
    }
    assert_eq!(
        outcome.cells,
        outcome.probes * 81,
        "every probe has 81 cells"
    );
    assert!(
        outcome.wrong.is_empty(),
        "{who} disagrees with {} of {} cells:\n{}",
        outcome.wrong.len(),
        outcome.cells,
        outcome.wrong.join("\n")
    );
    eprintln!(
        "{who} agrees with {} cases: {} probes, {} cells (diagonal included)",
        cases.len(),
        outcome.probes,
        outcome.cells
    );
}

#[test]
fn oracle_agrees_with_every_truth_table() {
    check_all(Judge::Oracle, "the oracle");
}

#[test]
fn implementation_agrees_with_every_truth_table() {
    check_all(Judge::Implementation, "the implementation");
}

#[test]
fn model_addresses_and_placeholders() {
    assert_eq!(model_ip("x/a"), Ipv4Addr::new(10, 244, 1, 10));
    assert_eq!(model_ip("z/c"), Ipv4Addr::new(10, 244, 3, 12));
    let ips = model_ips();
    let mut value: serde_yaml::Value =
        serde_yaml::from_str("[\"{{ip y/b}}/32\", \"{{net x/b 4}}\"]").expect("yaml");
    substitute_value(&mut value, &ips).expect("substitute");
    assert_eq!(value[0], "10.244.2.11/32");
    assert_eq!(value[1], "0.0.0.0/4");
    assert_eq!(model_local().len(), 9);
}
