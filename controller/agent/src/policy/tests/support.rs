//! Test helpers: cluster states from YAML, the upstream e2e model, and an
//! evaluator that decides packets from a [`DesiredPolicy`] exactly as the
//! dataplane does (isolation map, CIDR-identity LPM, policy-map LPM).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use sluice_common::direction::Direction;
use sluice_common::ipcache::RemoteInfo;
use sluice_common::policy::{decide, decide_flow, Decision};

use crate::datastore::{parse_documents, ClusterState, Event};
use crate::policy::{DesiredPolicy, InMemory};
use crate::topology::Topology;

/// A state holding every object of a multi-document manifest.
pub fn state(yaml: &str) -> ClusterState {
    let mut state = ClusterState::default();
    for resource in parse_documents(yaml) {
        state.apply(Event::Apply(resource.expect("test manifest parses")));
    }
    state
}

pub fn add_policy(state: &mut ClusterState, policy: NetworkPolicy) {
    let ns = policy
        .metadata
        .namespace
        .clone()
        .unwrap_or("default".into());
    let name = policy.metadata.name.clone().expect("policy name");
    state.policies.insert((ns, name), policy);
}

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// `x/a` etc. in upstream's row order.
pub fn model_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// Fake addresses: all nine inside one /4, as upstream's ipBlock cases
/// assume, and in different /24s per namespace.
pub fn model_ip(pod: &str) -> Ipv4Addr {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    let n = NAMESPACES.iter().position(|x| *x == ns).expect("model ns") as u8;
    let p = PODS.iter().position(|x| *x == name).expect("model pod") as u8;
    Ipv4Addr::new(10, 244, n + 1, 10 + p)
}

/// The upstream e2e model: namespaces x, y, z (labels ns and
/// kubernetes.io/metadata.name), pods a, b, c labelled pod=<name> serving
/// 80 and 81 on TCP, UDP and SCTP under named container ports.
pub fn model_state() -> ClusterState {
    let mut docs = Vec::new();
    for ns in NAMESPACES {
        docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n    kubernetes.io/metadata.name: {ns}\n"
        ));
    }
    for pod in model_pods() {
        let (ns, name) = pod.split_once('/').unwrap();
        let mut containers = String::new();
        for proto in ["tcp", "udp", "sctp"] {
            for port in [80, 81] {
                containers.push_str(&format!(
                    "  - name: c{port}-{proto}\n    image: agnhost\n    ports:\n    - name: serve-{port}-{proto}\n      containerPort: {port}\n      protocol: {}\n",
                    proto.to_uppercase()
                ));
            }
        }
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    pod: {name}\nspec:\n  containers:\n{containers}status:\n  phase: Running\n  podIP: {}\n",
            model_ip(&pod)
        ));
    }
    state(&docs.join("---\n"))
}

/// Every model pod is local; endpoint ids 1..=9 in row order.
pub fn model_local() -> BTreeMap<Ipv4Addr, u32> {
    model_pods()
        .iter()
        .zip(1..)
        .map(|(p, id)| (model_ip(p), id))
        .collect()
}

pub fn pod_mut<'a>(state: &'a mut ClusterState, pod: &str) -> &'a mut Pod {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    state
        .pods
        .get_mut(&(ns.to_owned(), name.to_owned()))
        .expect("pod exists")
}

/// The dataplane's per-packet decision (the shared `decide_flow`) over the
/// maps a compiled [`DesiredPolicy`] fills: its placed policy, and an
/// ipcache holding the pods' identities.
pub struct Dataplane<'a> {
    pub desired: &'a DesiredPolicy,
    pub local: &'a BTreeMap<Ipv4Addr, u32>,
}

/// The gateway the evaluator's node has: outside every model address.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

impl Dataplane<'_> {
    fn ipcache(&self) -> BTreeMap<Ipv4Net, RemoteInfo> {
        Topology::default().ipcache_with_pods(&self.desired.pod_identities, GATEWAY)
    }

    /// May `src` open a connection to `dst`:`dport`? Both ends' policies
    /// must agree: the sender's egress (if local) and the receiver's
    /// ingress (if local).
    pub fn flow(&self, src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, dport: u16) -> bool {
        let ipcache = self.ipcache();
        let maps = InMemory {
            policy: &self.desired.placed,
            ipcache: &ipcache,
        };
        let decision = decide_flow(
            &maps,
            self.local.get(&src).copied(),
            self.local.get(&dst).copied(),
            src.octets(),
            dst.octets(),
            protocol,
            dport,
        );
        decision.denied_by().is_none()
    }

    /// One direction of one endpoint's policy towards `peer`.
    pub fn allowed(
        &self,
        endpoint: u32,
        direction: Direction,
        peer: Ipv4Addr,
        protocol: u8,
        dport: u16,
    ) -> bool {
        let ipcache = self.ipcache();
        let maps = InMemory {
            policy: &self.desired.placed,
            ipcache: &ipcache,
        };
        decide(&maps, endpoint, direction, peer.octets(), protocol, dport) != Decision::Denied
    }
}

/// The CIDR-identity region that holds exactly `net`.
pub fn cidr_id(desired: &DesiredPolicy, net: &str) -> u32 {
    let net: Ipv4Net = net.parse().expect("net");
    *desired
        .placed
        .regions
        .get(&net)
        .unwrap_or_else(|| panic!("no region {net} in {:?}", desired.placed.regions))
}
