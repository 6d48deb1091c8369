//! Test helpers: cluster states from YAML, the upstream e2e model, and an
//! evaluator that decides packets from a [`DesiredPolicy`] exactly as the
//! dataplane does (isolation map, CIDR-identity LPM, policy-map LPM).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use sluice_common::identity;
use sluice_common::policy::{direction, PolicyKey, ANY_IDENTITY, ANY_PROTOCOL};

use crate::datastore::{parse_documents, ClusterState, Event};
use crate::policy::DesiredPolicy;

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

pub fn namespace_mut<'a>(state: &'a mut ClusterState, ns: &str) -> &'a mut Namespace {
    state.namespaces.get_mut(ns).expect("namespace exists")
}

pub fn pod_mut<'a>(state: &'a mut ClusterState, pod: &str) -> &'a mut Pod {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    state
        .pods
        .get_mut(&(ns.to_owned(), name.to_owned()))
        .expect("pod exists")
}

/// The dataplane's per-packet decision over a compiled [`DesiredPolicy`].
pub struct Dataplane<'a> {
    pub desired: &'a DesiredPolicy,
    pub local: &'a BTreeMap<Ipv4Addr, u32>,
}

impl Dataplane<'_> {
    /// May `src` open a connection to `dst`:`dport`? Both ends' policies
    /// must agree: the sender's egress (if local) and the receiver's
    /// ingress (if local).
    pub fn flow(&self, src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, dport: u16) -> bool {
        let egress_ok = self
            .local
            .get(&src)
            .is_none_or(|&ep| self.allowed(ep, direction::EGRESS, dst, protocol, dport));
        let ingress_ok = self
            .local
            .get(&dst)
            .is_none_or(|&ep| self.allowed(ep, direction::INGRESS, src, protocol, dport));
        egress_ok && ingress_ok
    }

    pub fn allowed(
        &self,
        endpoint: u32,
        dir: u8,
        peer: Ipv4Addr,
        protocol: u8,
        dport: u16,
    ) -> bool {
        let isolated = self.desired.isolation.get(&endpoint).is_some_and(|i| {
            if dir == direction::INGRESS {
                i.ingress != 0
            } else {
                i.egress != 0
            }
        });
        if !isolated {
            return true;
        }
        // The ipcache: pods by label identity, anything else is the world.
        let label = self
            .desired
            .pod_identities
            .get(&peer)
            .copied()
            .unwrap_or(identity::WORLD);
        let cidr = self.cidr_identity(peer);
        let identities = [Some(label), cidr, Some(ANY_IDENTITY)];
        identities.into_iter().flatten().any(|identity| {
            [protocol, ANY_PROTOCOL].into_iter().any(|protocol| {
                let key = PolicyKey {
                    endpoint,
                    identity,
                    direction: dir,
                    protocol,
                    dport: dport.to_be_bytes(),
                };
                self.lpm_hits(&key)
            })
        })
    }

    /// Longest-prefix match of the peer in the CIDR-identity LPM.
    pub fn cidr_identity(&self, addr: Ipv4Addr) -> Option<u32> {
        self.desired
            .cidr_identities
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, id)| *id)
    }

    /// Whether some rule's key prefix covers the full-length `key`, bit for
    /// bit over the key's bytes as the kernel's LPM trie compares them.
    fn lpm_hits(&self, key: &PolicyKey) -> bool {
        let wanted = key_bytes(key);
        self.desired.rules.keys().any(|(rule, bits)| {
            let have = key_bytes(rule);
            (0..*bits as usize).all(|bit| {
                let (byte, shift) = (bit / 8, 7 - bit % 8);
                (have[byte] >> shift) & 1 == (wanted[byte] >> shift) & 1
            })
        })
    }
}

fn key_bytes(key: &PolicyKey) -> [u8; 12] {
    let mut out = [0; 12];
    out[0..4].copy_from_slice(&key.endpoint.to_ne_bytes());
    out[4..8].copy_from_slice(&key.identity.to_ne_bytes());
    out[8] = key.direction;
    out[9] = key.protocol;
    out[10..12].copy_from_slice(&key.dport);
    out
}

/// The CIDR-identity region that holds exactly `net`.
pub fn cidr_id(desired: &DesiredPolicy, net: &str) -> u32 {
    let net: Ipv4Net = net.parse().expect("net");
    *desired
        .cidr_identities
        .get(&net)
        .unwrap_or_else(|| panic!("no region {net} in {:?}", desired.cidr_identities))
}
