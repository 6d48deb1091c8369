//! proptest strategies for random clusters and NetworkPolicies.
//!
//! Every pool below is small on purpose: selectors, CIDRs, named ports and
//! port numbers are drawn from the same few values the objects use, so that
//! rules actually match things and probes land on rule boundaries.
//!
//! Strategies produce *drafts* whose cross-references (which namespace a pod
//! lives in, which pod's address a CIDR is built around) are
//! [`proptest::sample::Index`]es, resolved once the whole cluster exists.
//! That keeps every part independently shrinkable: dropping a pod never
//! invalidates a policy, it only re-points the reference.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, subsequence, Index};

use crate::oracle::{Cluster, Peer, Protocol, NAMESPACE_NAME_LABEL};

/// A random cluster plus the facts about it that are not in the objects.
#[derive(Clone, Debug)]
pub struct GeneratedCluster {
    pub cluster: Cluster,
    /// `nodes[i]` is the node (0 or 1) that `cluster.pods[i]` runs on; the
    /// pod's `spec.nodeName` says the same (`node-0`, `node-1`).
    pub nodes: Vec<u8>,
    /// Addresses outside the pods' 10.0.0.0/16 that probes also use as
    /// sources and destinations; no two are equal.
    pub externals: Vec<Ipv4Addr>,
}

impl GeneratedCluster {
    /// Every pod, then every external address: the ends worth probing.
    pub fn peers(&self) -> Vec<Peer<'_>> {
        let pods = self.cluster.pods.iter().map(Peer::Pod);
        let externals = self.externals.iter().copied().map(Peer::External);
        pods.chain(externals).collect()
    }
}

/// A proptest configuration for tests over [`cluster`]. A failing cluster
/// typically needs 1,000–2,000 shrink steps to become minimal, more than
/// proptest's default of 1,024; each step is cheap, so allow plenty.
pub fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------

/// Label keys, each with the values it may take.
type Vocabulary = &'static [(&'static str, &'static [&'static str])];

pub const NAMESPACE_NAMES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

const NAMESPACE_LABELS: Vocabulary = &[("team", &["red", "blue"]), ("env", &["prod"])];

/// Namespace selectors also use the API server's name label, including a
/// name no namespace has.
const NAMESPACE_SELECTOR_LABELS: Vocabulary = &[
    ("team", &["red", "blue"]),
    ("env", &["prod"]),
    (
        NAMESPACE_NAME_LABEL,
        &["alpha", "beta", "gamma", "delta", "omega"],
    ),
];

const POD_LABELS: Vocabulary = &[
    ("app", &["web", "db"]),
    ("tier", &["front", "back"]),
    ("release", &["stable"]),
];

const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

const CONTAINER_PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];
const CONTAINER_PORT_NUMBERS: [i32; 4] = [53, 80, 81, 8080];

/// `grpc` is named by policies but by no container, so it never resolves.
const POLICY_PORT_NAMES: [&str; 4] = ["http", "dns", "metrics", "grpc"];
const POLICY_PORT_NUMBERS: [i32; 5] = [53, 79, 80, 81, 8080];
/// endPort - port: a single port, short ranges, and one that spans the pool.
const END_PORT_SPANS: [i32; 4] = [0, 1, 2, 8000];

/// Third octets of pod addresses (10.0.<subnet>.<host>): neighbouring /24s
/// and one far away, so /17../24 CIDRs split the pods in different ways.
const POD_SUBNETS: [u8; 4] = [0, 1, 2, 130];

/// Outside 10.0.0.0/16; 10.1.0.5 is still inside 10.0.0.0/8, so wide
/// pod-anchored CIDRs catch it too.
const EXTERNAL_ADDRESSES: [Ipv4Addr; 5] = [
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(192, 0, 2, 77),
    Ipv4Addr::new(192, 0, 2, 200),
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(10, 1, 0, 5),
];

/// Probed in every cluster though nothing names it: only all-ports rules and
/// wide ranges can open it.
const UNMENTIONED_PORT: u16 = 9;

// ---------------------------------------------------------------------------
// The cluster strategy
// ---------------------------------------------------------------------------

/// A random valid cluster: 1–4 namespaces, 1–8 running pods, 0–4 policies
/// and 0–3 external addresses.
pub fn cluster() -> impl Strategy<Value = GeneratedCluster> {
    // proptest shrinks a tuple one element at a time, front to back, and
    // does not go back. Policies come first so that they end up minimal;
    // pods come last so that they are trimmed to what the final policies need.
    (
        policy_drafts(),
        vec(select(&EXTERNAL_ADDRESSES[..]), 0..=3),
        namespaces(),
        vec(pod_draft(), 1..=8),
    )
        .prop_map(|(policies, externals, namespaces, pods)| {
            assemble(namespaces, pods, policies, externals)
        })
}

/// 0–4 policies, mostly 2–3 (each of four slots is filled with probability
/// 0.65): with none or one, most flows are decided by "nothing isolates",
/// which tests little. An empty slot is also how a policy shrinks away.
fn policy_drafts() -> impl Strategy<Value = Vec<PolicyDraft>> {
    vec(prop::option::weighted(0.65, policy_draft()), 4)
        .prop_map(|slots| slots.into_iter().flatten().collect())
}

/// A namespace: its name, its labels, and whether the object already carries
/// the `kubernetes.io/metadata.name` label (the API server adds it, but a
/// consumer must not depend on seeing it).
type NamespaceDraft = (&'static str, BTreeMap<String, String>, bool);

fn namespaces() -> impl Strategy<Value = Vec<NamespaceDraft>> {
    let names = subsequence(&NAMESPACE_NAMES[..], 1..=NAMESPACE_NAMES.len());
    let extras = vec(
        (labels(NAMESPACE_LABELS, 0..=2), any::<bool>()),
        NAMESPACE_NAMES.len(),
    );
    (names, extras).prop_map(|(names, extras)| {
        names
            .into_iter()
            .zip(extras)
            .map(|(name, (labels, stamped))| (name, labels, stamped))
            .collect()
    })
}

/// A label set: up to `size` keys from `vocabulary`, each with one of its values.
fn labels(
    vocabulary: Vocabulary,
    size: RangeInclusive<usize>,
) -> impl Strategy<Value = BTreeMap<String, String>> {
    vec((select(vocabulary), any::<Index>()), size).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|((key, values), value)| (key.to_string(), value.get(values).to_string()))
            .collect()
    })
}

// ---------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct PodDraft {
    namespace: Index,
    labels: BTreeMap<String, String>,
    /// Only used by the first pod of each (namespace, labels) identity; see
    /// [`containers_by_identity`].
    ports: Vec<ContainerPort>,
    /// Put every other port in a second container, since named ports are
    /// looked up across all containers of a pod.
    sidecar: bool,
    node: u8,
    subnet: u8,
    /// The wanted last octet; see [`pod_addresses`] for clashes.
    host: u8,
}

fn pod_draft() -> impl Strategy<Value = PodDraft> {
    (
        any::<Index>(),
        labels(POD_LABELS, 0..=3),
        vec(container_port(), 0..=3),
        any::<bool>(),
        0u8..=1,
        select(&POD_SUBNETS[..]),
        1u8..=254,
    )
        .prop_map(
            |(namespace, labels, ports, sidecar, node, subnet, host)| PodDraft {
                namespace,
                labels,
                ports,
                sidecar,
                node,
                subnet,
                host,
            },
        )
}

fn container_port() -> impl Strategy<Value = ContainerPort> {
    let name = prop_oneof![4 => select(&CONTAINER_PORT_NAMES[..]).prop_map(Some), 1 => Just(None)];
    (name, select(&CONTAINER_PORT_NUMBERS[..]), protocol_field()).prop_map(
        |(name, container_port, protocol)| ContainerPort {
            name: name.map(str::to_string),
            container_port,
            protocol,
            ..Default::default()
        },
    )
}

/// A `protocol` field: absent (defaults to TCP) or spelled out.
fn protocol_field() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        2 => Just(Some(Protocol::Tcp)),
        2 => Just(Some(Protocol::Udp)),
        1 => Just(Some(Protocol::Sctp)),
    ]
    .prop_map(|protocol| protocol.map(|p| p.k8s_name().to_string()))
}

/// Drops ports that API validation would reject within one pod: a repeated
/// name, or a repeated (number, protocol).
fn valid_pod_ports(ports: &[ContainerPort]) -> Vec<ContainerPort> {
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let mut kept = Vec::new();
    for port in ports {
        let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_string());
        let name_is_new = port.name.as_ref().is_none_or(|name| !names.contains(name));
        if name_is_new && numbers.insert((port.container_port, protocol)) {
            names.extend(port.name.clone());
            kept.push(port.clone());
        }
    }
    kept
}

fn containers(draft: &PodDraft) -> Vec<Container> {
    let ports = valid_pod_ports(&draft.ports);
    let container = |name: &str, ports: Vec<ContainerPort>| Container {
        name: name.to_string(),
        image: Some("registry.example/app:1".to_string()),
        ports: Some(ports),
        ..Default::default()
    };
    if draft.sidecar {
        let (main, side): (Vec<_>, Vec<_>) =
            ports.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let strip = |v: Vec<(usize, ContainerPort)>| v.into_iter().map(|(_, p)| p).collect();
        vec![
            container("main", strip(main)),
            container("sidecar", strip(side)),
        ]
    } else {
        vec![container("main", ports)]
    }
}

/// The containers of every pod, keyed by (namespace, labels): the first pod
/// of an identity defines them and every later pod with the same identity
/// is stamped from them, as replicas of one Deployment are. The system
/// under test resolves named ports per label identity, so this must hold by
/// construction, not by luck.
fn containers_by_identity(
    drafts: &[PodDraft],
    namespace_of: impl Fn(&PodDraft) -> String,
) -> Vec<Vec<Container>> {
    let mut templates: BTreeMap<(String, BTreeMap<String, String>), Vec<Container>> =
        BTreeMap::new();
    drafts
        .iter()
        .map(|draft| {
            let identity = (namespace_of(draft), draft.labels.clone());
            templates
                .entry(identity)
                .or_insert_with(|| containers(draft))
                .clone()
        })
        .collect()
}

/// 10.0.<subnet>.<host> for each pod. An address taken by an earlier pod
/// moves to the next free host in the same /24, so addresses are unique and
/// a pod keeps its address when other pods are shrunk away.
fn pod_addresses(drafts: &[PodDraft]) -> Vec<Ipv4Addr> {
    let mut taken = BTreeSet::new();
    drafts
        .iter()
        .map(|draft| {
            let free = (0..254u16)
                .map(|step| {
                    let host = (u16::from(draft.host) - 1 + step) % 254 + 1;
                    let host = u8::try_from(host).expect("host octet is 1..=254");
                    Ipv4Addr::new(10, 0, draft.subnet, host)
                })
                .find(|address| !taken.contains(address))
                .expect("at most 8 pods cannot fill a /24");
            taken.insert(free);
            free
        })
        .collect()
}

fn build_pod(
    position: usize,
    draft: &PodDraft,
    namespace: &str,
    containers: Vec<Container>,
    address: Ipv4Addr,
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("pod-{position}")),
            namespace: Some(namespace.to_string()),
            labels: Some(draft.labels.clone()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers,
            node_name: Some(format!("node-{}", draft.node)),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_string()),
            pod_ip: Some(address.to_string()),
            ..Default::default()
        }),
    }
}

// ---------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct PolicyDraft {
    home: PolicyHome,
    pod_selector: Option<LabelSelector>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<RuleDraft>>,
    egress: Option<Vec<RuleDraft>>,
}

/// Which namespace a policy lives in.
#[derive(Clone, Debug)]
enum PolicyHome {
    /// The namespace of some pod: a policy where no pod lives selects nothing,
    /// and too many of those leave most flows unisolated.
    OfPod(Index),
    /// Any namespace, pods or not.
    Namespace(Index),
}

/// An ingress or egress rule: `from`/`to` and `ports`.
#[derive(Clone, Debug)]
struct RuleDraft {
    peers: Option<Vec<PeerDraft>>,
    ports: Option<Vec<NetworkPolicyPort>>,
}

#[derive(Clone, Debug)]
enum PeerDraft {
    /// podSelector and/or namespaceSelector, complete as generated.
    Selectors(NetworkPolicyPeer),
    IpBlock(IpBlockDraft),
}

/// A CIDR of `prefix` bits around `anchor`, with excepts strictly inside it.
#[derive(Clone, Debug)]
struct IpBlockDraft {
    anchor: Anchor,
    prefix: u8,
    excepts: Vec<ExceptDraft>,
}

#[derive(Clone, Debug)]
enum Anchor {
    Pod(Index),
    Fixed(Ipv4Addr),
}

/// `extra_bits` longer than the CIDR, around `anchor` if the CIDR contains
/// it, else around the CIDR's network with `fill` as host bits.
#[derive(Clone, Debug)]
struct ExceptDraft {
    anchor: Anchor,
    extra_bits: u8,
    fill: u32,
}

fn policy_draft() -> impl Strategy<Value = PolicyDraft> {
    // Absent or `{}` often, so that policies isolate whole namespaces as
    // default-deny policies do; narrower selectors otherwise.
    let pod_selector = prop_oneof![
        1 => Just(None),
        2 => Just(Some(LabelSelector::default())),
        5 => selector(POD_LABELS).prop_map(Some),
    ];
    let home = prop_oneof![
        3 => any::<Index>().prop_map(PolicyHome::OfPod),
        1 => any::<Index>().prop_map(PolicyHome::Namespace),
    ];
    (home, pod_selector, policy_types(), rules(), rules()).prop_map(
        |(home, pod_selector, policy_types, ingress, egress)| PolicyDraft {
            home,
            pod_selector,
            policy_types,
            ingress,
            egress,
        },
    )
}

/// Absent and empty lists are both defaulted by the oracle; the listed ones
/// cover both orders of the two types.
fn policy_types() -> impl Strategy<Value = Option<Vec<String>>> {
    let types = |list: &[&str]| Some(list.iter().map(|t| t.to_string()).collect::<Vec<_>>());
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Vec::new())),
        2 => Just(types(&["Ingress"])),
        2 => Just(types(&["Egress"])),
        2 => Just(types(&["Ingress", "Egress"])),
        1 => Just(types(&["Egress", "Ingress"])),
    ]
}

/// A list field that may be absent, present but empty, or have `size` items.
fn optional_list<S>(
    element: S,
    size: RangeInclusive<usize>,
) -> impl Strategy<Value = Option<Vec<S::Value>>>
where
    S: Strategy,
    S::Value: Clone,
{
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        4 => vec(element, size).prop_map(Some),
    ]
}

fn rules() -> impl Strategy<Value = Option<Vec<RuleDraft>>> {
    let rule = (
        optional_list(peer(), 1..=2),
        optional_list(policy_port(), 1..=3),
    )
        .prop_map(|(peers, ports)| RuleDraft { peers, ports });
    optional_list(rule, 1..=3)
}

fn peer() -> impl Strategy<Value = PeerDraft> {
    let pods = || selector(POD_LABELS).prop_map(Some);
    let namespaces = || selector(NAMESPACE_SELECTOR_LABELS).prop_map(Some);
    let selectors = |(pod_selector, namespace_selector)| {
        PeerDraft::Selectors(NetworkPolicyPeer {
            pod_selector,
            namespace_selector,
            ip_block: None,
        })
    };
    prop_oneof![
        3 => (pods(), Just(None)).prop_map(selectors),
        2 => (Just(None), namespaces()).prop_map(selectors),
        2 => (pods(), namespaces()).prop_map(selectors),
        3 => ip_block().prop_map(PeerDraft::IpBlock),
    ]
}

fn ip_block() -> impl Strategy<Value = IpBlockDraft> {
    // Mostly /8../32 around an address we use; now and then the whole space.
    let prefix = prop_oneof![12 => 8u8..=32, 1 => Just(0u8)];
    let except =
        (anchor(), 1u8..=8, any::<u32>()).prop_map(|(anchor, extra_bits, fill)| ExceptDraft {
            anchor,
            extra_bits,
            fill,
        });
    (anchor(), prefix, vec(except, 0..=2)).prop_map(|(anchor, prefix, excepts)| IpBlockDraft {
        anchor,
        prefix,
        excepts,
    })
}

fn anchor() -> impl Strategy<Value = Anchor> {
    prop_oneof![
        3 => any::<Index>().prop_map(Anchor::Pod),
        1 => select(&EXTERNAL_ADDRESSES[..]).prop_map(Anchor::Fixed),
    ]
}

fn policy_port() -> impl Strategy<Value = NetworkPolicyPort> {
    let number = || select(&POLICY_PORT_NUMBERS[..]);
    prop_oneof![
        // Every port of the protocol; `{}` is every TCP port.
        1 => protocol_field().prop_map(|protocol| NetworkPolicyPort { protocol, ..Default::default() }),
        4 => (protocol_field(), number()).prop_map(|(protocol, port)| NetworkPolicyPort {
            protocol,
            port: Some(IntOrString::Int(port)),
            end_port: None,
        }),
        2 => (protocol_field(), number(), select(&END_PORT_SPANS[..])).prop_map(|(protocol, port, span)| {
            NetworkPolicyPort {
                protocol,
                port: Some(IntOrString::Int(port)),
                end_port: Some((port + span).min(65535)),
            }
        }),
        2 => (protocol_field(), select(&POLICY_PORT_NAMES[..])).prop_map(|(protocol, name)| {
            NetworkPolicyPort { protocol, port: Some(IntOrString::String(name.to_string())), end_port: None }
        }),
    ]
}

/// A label selector over `vocabulary`, valid per API validation: In/NotIn
/// have at least one value, Exists/DoesNotExist have none.
fn selector(vocabulary: Vocabulary) -> impl Strategy<Value = LabelSelector> {
    let match_labels = || labels(vocabulary, 1..=2);
    let expressions = || vec(requirement(vocabulary), 1..=2);
    prop_oneof![
        2 => Just(LabelSelector::default()),
        // The same "everything", spelled with empty fields.
        1 => Just(LabelSelector { match_labels: Some(BTreeMap::new()), match_expressions: Some(Vec::new()) }),
        4 => match_labels().prop_map(|labels| LabelSelector { match_labels: Some(labels), match_expressions: None }),
        4 => expressions().prop_map(|exprs| LabelSelector { match_labels: None, match_expressions: Some(exprs) }),
        1 => (match_labels(), expressions()).prop_map(|(labels, exprs)| LabelSelector {
            match_labels: Some(labels),
            match_expressions: Some(exprs),
        }),
    ]
}

fn requirement(vocabulary: Vocabulary) -> impl Strategy<Value = LabelSelectorRequirement> {
    (
        select(vocabulary),
        select(&OPERATORS[..]),
        vec(any::<Index>(), 1..=2),
    )
        .prop_map(|((key, pool), operator, picks)| {
            let values = match operator {
                "In" | "NotIn" => {
                    let chosen: BTreeSet<&str> = picks.iter().map(|pick| *pick.get(pool)).collect();
                    Some(chosen.into_iter().map(str::to_string).collect())
                }
                _ => None,
            };
            LabelSelectorRequirement {
                key: key.to_string(),
                operator: operator.to_string(),
                values,
            }
        })
}

// ---------------------------------------------------------------------------
// Resolving drafts into objects
// ---------------------------------------------------------------------------

fn assemble(
    namespace_drafts: Vec<NamespaceDraft>,
    pod_drafts: Vec<PodDraft>,
    policy_drafts: Vec<PolicyDraft>,
    externals: Vec<Ipv4Addr>,
) -> GeneratedCluster {
    let names: Vec<&str> = namespace_drafts.iter().map(|(name, _, _)| *name).collect();
    let namespace_of = |index: &Index| names[index.index(names.len())].to_string();

    let containers = containers_by_identity(&pod_drafts, |draft| namespace_of(&draft.namespace));
    let pod_ips = pod_addresses(&pod_drafts);
    let pods: Vec<Pod> = pod_drafts
        .iter()
        .zip(containers)
        .zip(&pod_ips)
        .enumerate()
        .map(|(i, ((draft, containers), ip))| {
            build_pod(i, draft, &namespace_of(&draft.namespace), containers, *ip)
        })
        .collect();

    let policies = policy_drafts
        .iter()
        .enumerate()
        .map(|(i, draft)| {
            let namespace = match &draft.home {
                PolicyHome::OfPod(pod) => namespace_of(&pod.get(&pod_drafts).namespace),
                PolicyHome::Namespace(namespace) => namespace_of(namespace),
            };
            build_policy(i, draft, &namespace, &pod_ips)
        })
        .collect();

    let externals: BTreeSet<Ipv4Addr> = externals.into_iter().collect();
    GeneratedCluster {
        cluster: Cluster {
            namespaces: namespace_drafts.into_iter().map(build_namespace).collect(),
            pods,
            policies,
        },
        nodes: pod_drafts.iter().map(|draft| draft.node).collect(),
        externals: externals.into_iter().collect(),
    }
}

fn build_namespace((name, mut labels, stamped): NamespaceDraft) -> Namespace {
    if stamped {
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn build_policy(
    position: usize,
    draft: &PolicyDraft,
    namespace: &str,
    pod_ips: &[Ipv4Addr],
) -> NetworkPolicy {
    let resolve_rules = |rules: &Option<Vec<RuleDraft>>| {
        rules.as_ref().map(|rules| {
            rules
                .iter()
                .map(|rule| resolve_rule(rule, pod_ips))
                .collect::<Vec<_>>()
        })
    };
    let ingress = resolve_rules(&draft.ingress).map(|rules| {
        rules
            .into_iter()
            .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
            .collect()
    });
    let egress = resolve_rules(&draft.egress).map(|rules| {
        rules
            .into_iter()
            .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
            .collect()
    });
    NetworkPolicy {
        metadata: ObjectMeta {
            // Unique in the cluster, hence in every namespace.
            name: Some(format!("policy-{position}")),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: draft.pod_selector.clone(),
            policy_types: draft.policy_types.clone(),
            ingress,
            egress,
        }),
    }
}

type ResolvedRule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn resolve_rule(rule: &RuleDraft, pod_ips: &[Ipv4Addr]) -> ResolvedRule {
    let peers = rule.peers.as_ref().map(|peers| {
        peers
            .iter()
            .map(|peer| resolve_peer(peer, pod_ips))
            .collect()
    });
    (peers, rule.ports.clone())
}

fn resolve_peer(peer: &PeerDraft, pod_ips: &[Ipv4Addr]) -> NetworkPolicyPeer {
    match peer {
        PeerDraft::Selectors(peer) => peer.clone(),
        PeerDraft::IpBlock(block) => NetworkPolicyPeer {
            ip_block: Some(resolve_ip_block(block, pod_ips)),
            ..Default::default()
        },
    }
}

fn resolve_anchor(anchor: &Anchor, pod_ips: &[Ipv4Addr]) -> Ipv4Addr {
    match anchor {
        Anchor::Pod(index) => *index.get(pod_ips),
        Anchor::Fixed(address) => *address,
    }
}

/// Canonical CIDR strings (host bits cleared), excepts strictly inside the
/// CIDR and distinct, as API validation requires.
fn resolve_ip_block(block: &IpBlockDraft, pod_ips: &[Ipv4Addr]) -> IPBlock {
    let cidr = Ipv4Net::new(resolve_anchor(&block.anchor, pod_ips), block.prefix)
        .expect("prefix is at most 32")
        .trunc();
    let excepts: BTreeSet<Ipv4Net> = block
        .excepts
        .iter()
        .filter(|_| cidr.prefix_len() < 32) // nothing is strictly inside a /32
        .map(|except| resolve_except(except, cidr, pod_ips))
        .collect();
    IPBlock {
        cidr: cidr.to_string(),
        except: (!excepts.is_empty()).then(|| excepts.iter().map(Ipv4Net::to_string).collect()),
    }
}

fn resolve_except(except: &ExceptDraft, cidr: Ipv4Net, pod_ips: &[Ipv4Addr]) -> Ipv4Net {
    let anchor = resolve_anchor(&except.anchor, pod_ips);
    let inside = if cidr.contains(&anchor) {
        anchor
    } else {
        let host_bits = u32::from(cidr.hostmask()) & except.fill;
        Ipv4Addr::from(u32::from(cidr.network()) | host_bits)
    };
    let prefix = (cidr.prefix_len() + except.extra_bits).min(32);
    Ipv4Net::new(inside, prefix)
        .expect("prefix is at most 32")
        .trunc()
}

// ---------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------

/// The (protocol, port) pairs worth probing in `generated`: every port number
/// that a policy (port or endPort) or a container port mentions, together
/// with its neighbours on both sides, plus [`UNMENTIONED_PORT`], each on all
/// three protocols. Sorted and without duplicates.
pub fn probes(generated: &GeneratedCluster) -> Vec<(Protocol, u16)> {
    let cluster = &generated.cluster;
    let policy_ports = cluster
        .policies
        .iter()
        .filter_map(|policy| policy.spec.as_ref())
        .flat_map(|spec| {
            let ingress = spec
                .ingress
                .iter()
                .flatten()
                .flat_map(|rule| rule.ports.iter().flatten());
            let egress = spec
                .egress
                .iter()
                .flatten()
                .flat_map(|rule| rule.ports.iter().flatten());
            ingress.chain(egress)
        })
        .flat_map(|entry| {
            let number = match &entry.port {
                Some(IntOrString::Int(port)) => Some(*port),
                _ => None,
            };
            number.into_iter().chain(entry.end_port)
        });
    let container_ports = cluster
        .pods
        .iter()
        .filter_map(|pod| pod.spec.as_ref())
        .flat_map(|spec| &spec.containers)
        .flat_map(|container| container.ports.iter().flatten())
        .map(|port| port.container_port);

    let numbers: BTreeSet<u16> = policy_ports
        .chain(container_ports)
        .flat_map(|n| [n - 1, n, n + 1])
        .filter_map(|n| u16::try_from(n).ok().filter(|n| *n != 0))
        .chain([UNMENTIONED_PORT])
        .collect();
    Protocol::ALL
        .into_iter()
        .flat_map(|protocol| numbers.iter().map(move |port| (protocol, *port)))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{flow_allowed, pod_ip, pod_namespace, policies_isolating, Direction};
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::time::Instant;

    /// Checks the generator's promises that the oracle does not check itself.
    fn check_generated(generated: &GeneratedCluster) -> Result<(), String> {
        let cluster = &generated.cluster;
        let pod_net: Ipv4Net = "10.0.0.0/16".parse().expect("literal CIDR");
        let ips: BTreeSet<Ipv4Addr> = cluster.pods.iter().map(pod_ip).collect();
        if ips.len() != cluster.pods.len() || !ips.iter().all(|ip| pod_net.contains(ip)) {
            return Err(format!("pod IPs not unique or outside {pod_net}: {ips:?}"));
        }
        if generated.externals.iter().any(|ip| pod_net.contains(ip)) {
            return Err("external address inside the pod network".into());
        }
        let mut identities = BTreeMap::new();
        for pod in &cluster.pods {
            let spec = pod.spec.as_ref().ok_or("pod without spec")?;
            let identity = (pod_namespace(pod).to_string(), pod.metadata.labels.clone());
            let ports: Vec<_> = spec.containers.iter().map(|c| c.ports.clone()).collect();
            if identities.entry(identity).or_insert_with(|| ports.clone()) != &ports {
                return Err(format!(
                    "pods with one identity differ in ports: {:?}",
                    pod.metadata
                ));
            }
        }
        for policy in &cluster.policies {
            let spec = policy.spec.as_ref().ok_or("policy without spec")?;
            let ingress = spec.ingress.iter().flatten().map(|r| (&r.from, &r.ports));
            let egress = spec.egress.iter().flatten().map(|r| (&r.to, &r.ports));
            for (peers, ports) in ingress.chain(egress) {
                peers.iter().flatten().try_for_each(check_peer)?;
                ports.iter().flatten().try_for_each(check_port)?;
            }
        }
        Ok(())
    }

    fn check_peer(peer: &NetworkPolicyPeer) -> Result<(), String> {
        let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        let Some(block) = &peer.ip_block else {
            return if selectors {
                Ok(())
            } else {
                Err("empty peer".into())
            };
        };
        if selectors {
            return Err("ipBlock with selectors".into());
        }
        let cidr: Ipv4Net = block.cidr.parse().map_err(|e| format!("{e}"))?;
        if cidr.trunc() != cidr {
            return Err(format!("non-canonical cidr {cidr}"));
        }
        for except in block.except.iter().flatten() {
            let except: Ipv4Net = except.parse().map_err(|e| format!("{e}"))?;
            if !(cidr.contains(&except) && except.prefix_len() > cidr.prefix_len()) {
                return Err(format!("except {except} not strictly inside {cidr}"));
            }
        }
        Ok(())
    }

    fn check_port(entry: &NetworkPolicyPort) -> Result<(), String> {
        match (&entry.port, entry.end_port) {
            (Some(IntOrString::Int(port)), Some(end)) if end < *port => {
                Err("endPort < port".into())
            }
            (Some(IntOrString::String(_)) | None, Some(_)) => {
                Err("endPort without numeric port".into())
            }
            _ => Ok(()),
        }
    }

    proptest! {
        #![proptest_config(proptest_config(256))]
        #[test]
        fn generated_clusters_are_valid(generated in cluster()) {
            if let Err(problem) = check_generated(&generated) {
                prop_assert!(false, "{}", problem);
            }
        }
    }

    /// Counts how often each kind of field occurs, to show that the
    /// generator covers all of them.
    fn census(cluster: &Cluster, counts: &mut BTreeMap<String, usize>) {
        let mut count = |kind: String| *counts.entry(kind).or_default() += 1;
        for policy in &cluster.policies {
            let spec = policy
                .spec
                .as_ref()
                .expect("generated policies have a spec");
            count(format!("policyTypes {:?}", spec.policy_types));
            let operators = spec
                .pod_selector
                .iter()
                .flat_map(|s| s.match_expressions.iter().flatten());
            for requirement in operators {
                count(format!("operator {}", requirement.operator));
            }
            let ingress = spec.ingress.iter().flatten().map(|r| (&r.from, &r.ports));
            let egress = spec.egress.iter().flatten().map(|r| (&r.to, &r.ports));
            for (peers, ports) in ingress.chain(egress) {
                for peer in peers.iter().flatten() {
                    let kind = match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector)
                    {
                        (Some(b), _, _) if b.except.is_some() => "peer ipBlock with except",
                        (Some(_), _, _) => "peer ipBlock",
                        (None, Some(_), Some(_)) => "peer pod+namespace selectors",
                        (None, Some(_), None) => "peer podSelector",
                        (None, None, _) => "peer namespaceSelector",
                    };
                    count(kind.to_string());
                    let selectors = peer.pod_selector.iter().chain(&peer.namespace_selector);
                    for requirement in selectors.flat_map(|s| s.match_expressions.iter().flatten())
                    {
                        count(format!("operator {}", requirement.operator));
                    }
                }
                for entry in ports.iter().flatten() {
                    let kind = match (&entry.port, entry.end_port) {
                        (None, _) => "port protocol only",
                        (Some(IntOrString::Int(_)), None) => "port number",
                        (Some(IntOrString::Int(_)), Some(_)) => "port range",
                        (Some(IntOrString::String(_)), _) => "port named",
                    };
                    count(kind.to_string());
                    count(format!("port protocol {:?}", entry.protocol));
                }
            }
        }
    }

    /// How one direction of a flow was decided.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Decision {
        /// No policy isolates the pod in this direction.
        Open,
        /// Isolated, and a rule allowed it.
        RuleAllowed,
        /// Isolated by policies that have no rules in this direction at all.
        DefaultDenied,
        /// Isolated, rules exist, none matched.
        RuleDenied,
    }

    fn decide(cluster: &Cluster, pod: &Pod, direction: Direction, allowed: bool) -> Decision {
        let policies = policies_isolating(cluster, pod, direction);
        let rule_count: usize = policies
            .iter()
            .filter_map(|p| p.spec.as_ref())
            .map(|spec| match direction {
                Direction::Ingress => spec.ingress.as_ref().map_or(0, Vec::len),
                Direction::Egress => spec.egress.as_ref().map_or(0, Vec::len),
            })
            .sum();
        match (policies.is_empty(), allowed, rule_count) {
            (true, _, _) => Decision::Open,
            (false, true, _) => Decision::RuleAllowed,
            (false, false, 0) => Decision::DefaultDenied,
            (false, false, _) => Decision::RuleDenied,
        }
    }

    /// Counts of flows by how they were decided.
    #[derive(Default)]
    struct Tally {
        open: usize,
        rule_allowed: usize,
        default_denied: usize,
        rule_denied: usize,
    }

    impl Tally {
        fn total(&self) -> usize {
            self.open + self.rule_allowed + self.default_denied + self.rule_denied
        }
        fn share(&self, n: usize) -> f64 {
            100.0 * n as f64 / self.total() as f64
        }
    }

    fn classify(
        tally: &mut Tally,
        cluster: &Cluster,
        src: Peer<'_>,
        dst: Peer<'_>,
        protocol: Protocol,
        port: u16,
    ) {
        let egress = match src {
            Peer::Pod(pod) => {
                let ok = crate::oracle::egress_allowed(cluster, pod, dst, protocol, port);
                decide(cluster, pod, Direction::Egress, ok)
            }
            Peer::External(_) => Decision::Open,
        };
        let ingress = match dst {
            Peer::Pod(pod) => {
                let ok = crate::oracle::ingress_allowed(cluster, pod, src, protocol, port);
                decide(cluster, pod, Direction::Ingress, ok)
            }
            Peer::External(_) => Decision::Open,
        };
        let sides = [egress, ingress];
        let denied = |d: &Decision| matches!(d, Decision::DefaultDenied | Decision::RuleDenied);
        if sides.contains(&Decision::RuleDenied) {
            tally.rule_denied += 1;
        } else if sides.iter().any(denied) {
            tally.default_denied += 1;
        } else if sides.contains(&Decision::RuleAllowed) {
            tally.rule_allowed += 1;
        } else {
            tally.open += 1;
        }
    }

    /// Every probed (src, dst, protocol, port) of a cluster; external to
    /// external is skipped, as no pod takes part in it.
    fn flows(generated: &GeneratedCluster) -> Vec<(Peer<'_>, Peer<'_>, Protocol, u16)> {
        let peers = generated.peers();
        let probes = probes(generated);
        let mut flows = Vec::new();
        for src in &peers {
            for dst in &peers {
                if matches!((src, dst), (Peer::External(_), Peer::External(_))) {
                    continue;
                }
                flows.extend(
                    probes
                        .iter()
                        .map(|(protocol, port)| (*src, *dst, *protocol, *port)),
                );
            }
        }
        flows
    }

    #[test]
    fn smoke_oracle_over_generated_clusters() {
        let mut runner = TestRunner::deterministic();
        let strategy = cluster();
        let clusters: Vec<GeneratedCluster> = (0..256)
            .map(|_| {
                strategy
                    .new_tree(&mut runner)
                    .expect("strategy generates")
                    .current()
            })
            .collect();

        let started = Instant::now();
        let mut evaluations = 0usize;
        let mut allowed = 0usize;
        for generated in &clusters {
            for (src, dst, protocol, port) in flows(generated) {
                evaluations += 1;
                allowed += usize::from(flow_allowed(&generated.cluster, src, dst, protocol, port));
            }
        }
        let elapsed = started.elapsed();

        let mut tally = Tally::default();
        for generated in &clusters {
            for (src, dst, protocol, port) in flows(generated) {
                classify(&mut tally, &generated.cluster, src, dst, protocol, port);
            }
        }
        assert_eq!(
            tally.open + tally.rule_allowed,
            allowed,
            "classification agrees with flow_allowed"
        );

        let mut counts = BTreeMap::new();
        clusters
            .iter()
            .for_each(|generated| census(&generated.cluster, &mut counts));
        eprintln!("field kinds over 256 clusters: {counts:?}");
        // 6 policyTypes spellings, 5 peer kinds, 4 operators, 4 port kinds, 4 protocol fields.
        assert_eq!(
            counts.len(),
            6 + 5 + 4 + 4 + 4,
            "some field kind never occurs: {counts:?}"
        );

        let denied = evaluations - allowed;
        let per_second = evaluations as f64 / elapsed.as_secs_f64();
        eprintln!(
            "{evaluations} flows over 256 clusters: {allowed} allowed ({:.1}%), {denied} denied ({:.1}%)",
            tally.share(allowed),
            tally.share(denied)
        );
        eprintln!(
            "  allowed, nothing isolates: {:.1}%; allowed by a rule: {:.1}%; \
             denied, no rules in that direction: {:.1}%; denied, rules did not match: {:.1}%",
            tally.share(tally.open),
            tally.share(tally.rule_allowed),
            tally.share(tally.default_denied),
            tally.share(tally.rule_denied)
        );
        eprintln!("  {per_second:.0} evaluations per second ({elapsed:.2?})");

        // A generator whose policies rarely bite would make the differential
        // test pass vacuously; these bounds catch that.
        assert!(tally.share(allowed) > 20.0 && tally.share(denied) > 20.0);
        assert!(
            tally.share(tally.rule_allowed) > 10.0,
            "rules rarely allow anything"
        );
        assert!(
            tally.share(tally.rule_denied) > 10.0,
            "rules rarely deny anything"
        );
    }
}
