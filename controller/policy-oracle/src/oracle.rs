//! Kubernetes NetworkPolicy (networking.k8s.io/v1) semantics, evaluated
//! directly from the API objects.
//!
//! This is the ground truth of a differential test, so it is written to be
//! read next to the API documentation, not to be fast: every question is
//! answered by walking the objects again. Nothing here shares code or data
//! structures with the policy compiler it is compared against.
//!
//! Only objects that pass API validation are expected. Where an object could
//! not have passed validation, the oracle panics with a message instead of
//! guessing what it might mean.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label the API server puts on every namespace, with the namespace's
/// name as its value (Kubernetes >= 1.21). Selectors may use it whether or
/// not the object we were handed carries it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Everything that decides a verdict: the objects as the API server stores them.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    /// Each pod has `metadata.namespace` and an IPv4 `status.podIP`.
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
}

/// The transport protocols NetworkPolicy can name, as IP protocol numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Protocol {
    Tcp = 6,
    Udp = 17,
    Sctp = 132,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number (the `protocol` field of the IPv4 header).
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The spelling used in the Kubernetes API (`TCP`, `UDP`, `SCTP`).
    pub fn k8s_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the API spelling. The API is case-sensitive, so `tcp` is not TCP.
    pub fn from_k8s_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.k8s_name() == name)
    }

    /// A `protocol` field as the API server defaults it: absent means TCP.
    fn from_field(field: Option<&String>) -> Protocol {
        match field {
            None => Protocol::Tcp,
            Some(name) => Protocol::from_k8s_name(name)
                .unwrap_or_else(|| panic!("invalid protocol {name:?}: must be TCP, UDP or SCTP")),
        }
    }
}

/// One end of a connection.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// A pod of the cluster; it is matched by selectors and by its IP.
    Pod(&'a Pod),
    /// An address that belongs to no pod; only `ipBlock` peers (or "any
    /// peer") can match it.
    External(Ipv4Addr),
}

impl Peer<'_> {
    /// The address the other side sees, which is what `ipBlock` matches.
    pub fn address(&self) -> Ipv4Addr {
        match self {
            Peer::Pod(pod) => pod_ip(pod),
            Peer::External(ip) => *ip,
        }
    }
}

/// The two directions a policy can isolate a pod in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

// ---------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------

/// Whether `dst_pod` accepts a connection from `src` to its `port`.
pub fn ingress_allowed(
    cluster: &Cluster,
    dst_pod: &Pod,
    src: Peer<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let policies = policies_isolating(cluster, dst_pod, Direction::Ingress);
    if policies.is_empty() {
        return true;
    }
    policies.into_iter().any(|policy| {
        let namespace = policy_namespace(policy);
        ingress_rules(policy).any(|rule| {
            peers_match(cluster, namespace, rule.from.as_deref(), src)
                // For ingress the pod that owns the port is the selected pod.
                && ports_match(rule.ports.as_deref(), protocol, port, Some(dst_pod))
        })
    })
}

/// Whether `src_pod` may open a connection to `dst` on `port`.
pub fn egress_allowed(
    cluster: &Cluster,
    src_pod: &Pod,
    dst: Peer<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let policies = policies_isolating(cluster, src_pod, Direction::Egress);
    if policies.is_empty() {
        return true;
    }
    // For egress the pod that owns the port is the peer; an external
    // destination has no container ports, so named ports never match it.
    let port_owner = match dst {
        Peer::Pod(pod) => Some(pod),
        Peer::External(_) => None,
    };
    policies.into_iter().any(|policy| {
        let namespace = policy_namespace(policy);
        egress_rules(policy).any(|rule| {
            peers_match(cluster, namespace, rule.to.as_deref(), dst)
                && ports_match(rule.ports.as_deref(), protocol, port, port_owner)
        })
    })
}

/// A connection goes through iff the source may send it (egress, if the
/// source is a pod) and the destination may receive it (ingress, if the
/// destination is a pod). External ends enforce nothing.
pub fn flow_allowed(
    cluster: &Cluster,
    src: Peer<'_>,
    dst: Peer<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let egress_ok = match src {
        Peer::Pod(src_pod) => egress_allowed(cluster, src_pod, dst, protocol, port),
        Peer::External(_) => true,
    };
    let ingress_ok = match dst {
        Peer::Pod(dst_pod) => ingress_allowed(cluster, dst_pod, src, protocol, port),
        Peer::External(_) => true,
    };
    egress_ok && ingress_ok
}

// ---------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------

/// The policies that select `pod` and whose effective policyTypes include
/// `direction`. A pod is isolated in a direction iff this is non-empty, and
/// then only these policies' rules in that direction can allow traffic.
pub fn policies_isolating<'c>(
    cluster: &'c Cluster,
    pod: &Pod,
    direction: Direction,
) -> Vec<&'c NetworkPolicy> {
    cluster
        .policies
        .iter()
        .filter(|policy| policy_selects(policy, pod))
        .filter(|policy| effective_policy_types(spec(policy)).contains(&direction))
        .collect()
}

/// Whether some policy isolates `pod` in `direction`.
pub fn is_isolated(cluster: &Cluster, pod: &Pod, direction: Direction) -> bool {
    !policies_isolating(cluster, pod, direction).is_empty()
}

/// `spec.podSelector` applied to the pods of the policy's own namespace. An
/// absent podSelector defaults to the empty selector (all pods).
pub fn policy_selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    pod_namespace(pod) == policy_namespace(policy)
        && optional_selector_matches(spec(policy).pod_selector.as_ref(), pod_labels(pod))
}

/// `spec.policyTypes` after the API server's defaulting: when it is absent
/// or empty, Ingress always, and Egress iff there is at least one egress rule.
/// Otherwise exactly the listed types, in any order.
pub fn effective_policy_types(spec: &NetworkPolicySpec) -> Vec<Direction> {
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            let has_egress_rules = spec.egress.as_ref().is_some_and(|rules| !rules.is_empty());
            if has_egress_rules {
                vec![Direction::Ingress, Direction::Egress]
            } else {
                vec![Direction::Ingress]
            }
        }
        Some(types) => types.iter().map(|t| parse_policy_type(t)).collect(),
    }
}

fn parse_policy_type(policy_type: &str) -> Direction {
    match policy_type {
        "Ingress" => Direction::Ingress,
        "Egress" => Direction::Egress,
        other => panic!("invalid policyType {other:?}: must be Ingress or Egress"),
    }
}

fn ingress_rules(policy: &NetworkPolicy) -> impl Iterator<Item = &NetworkPolicyIngressRule> {
    spec(policy).ingress.iter().flatten()
}

fn egress_rules(policy: &NetworkPolicy) -> impl Iterator<Item = &NetworkPolicyEgressRule> {
    spec(policy).egress.iter().flatten()
}

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

/// A rule's `from`/`to` list: absent or empty matches every peer, including
/// external addresses; otherwise the entries are ORed.
fn peers_match(
    cluster: &Cluster,
    policy_namespace: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    who: Peer<'_>,
) -> bool {
    match peers {
        None | Some([]) => true,
        Some(peers) => peers
            .iter()
            .any(|peer| peer_matches(cluster, policy_namespace, peer, who)),
    }
}

/// One `NetworkPolicyPeer`. Validation allows exactly one of: ipBlock alone,
/// or one or both of the selectors.
fn peer_matches(
    cluster: &Cluster,
    policy_namespace: &str,
    peer: &NetworkPolicyPeer,
    who: Peer<'_>,
) -> bool {
    let pod_selector = peer.pod_selector.as_ref();
    let namespace_selector = peer.namespace_selector.as_ref();
    match (&peer.ip_block, pod_selector, namespace_selector) {
        (Some(ip_block), None, None) => ip_block_matches(ip_block, who.address()),
        (Some(_), _, _) => panic!("invalid peer: ipBlock together with a selector"),
        (None, None, None) => {
            panic!("invalid peer: none of ipBlock, podSelector, namespaceSelector")
        }
        (None, _, _) => match who {
            // Selectors select pods; an address that is no pod's is never selected.
            Peer::External(_) => false,
            Peer::Pod(pod) => selector_peer_matches(
                cluster,
                policy_namespace,
                pod_selector,
                namespace_selector,
                pod,
            ),
        },
    }
}

/// podSelector alone: pods of the policy's namespace. namespaceSelector
/// alone: every pod of the matching namespaces. Both: pods matching
/// podSelector inside namespaces matching namespaceSelector.
fn selector_peer_matches(
    cluster: &Cluster,
    policy_namespace: &str,
    pod_selector: Option<&LabelSelector>,
    namespace_selector: Option<&LabelSelector>,
    pod: &Pod,
) -> bool {
    let namespace = pod_namespace(pod);
    let namespace_ok = match namespace_selector {
        None => namespace == policy_namespace,
        Some(selector) => selector_matches(selector, &namespace_labels(cluster, namespace)),
    };
    namespace_ok && optional_selector_matches(pod_selector, pod_labels(pod))
}

/// Inside `cidr` and inside none of `except`. An IPv6 block never contains
/// an IPv4 address.
fn ip_block_matches(ip_block: &IPBlock, address: Ipv4Addr) -> bool {
    let address = IpAddr::V4(address);
    let in_cidr = parse_cidr(&ip_block.cidr).contains(&address);
    let in_except = ip_block
        .except
        .iter()
        .flatten()
        .any(|except| parse_cidr(except).contains(&address));
    in_cidr && !in_except
}

fn parse_cidr(cidr: &str) -> IpNet {
    cidr.parse()
        .unwrap_or_else(|e| panic!("invalid CIDR {cidr:?} in ipBlock: {e}"))
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// A rule's `ports` list: absent or empty matches every port of every
/// protocol; otherwise the entries are ORed. `port_owner` is the pod whose
/// container ports named ports resolve against (None for an external
/// destination).
fn ports_match(
    ports: Option<&[NetworkPolicyPort]>,
    protocol: Protocol,
    port: u16,
    port_owner: Option<&Pod>,
) -> bool {
    match ports {
        None | Some([]) => true,
        Some(entries) => entries
            .iter()
            .any(|entry| port_entry_matches(entry, protocol, port, port_owner)),
    }
}

/// One `NetworkPolicyPort`: the protocol (default TCP) must be the packet's,
/// and then the port: absent = every port, a number (with optional endPort)
/// = that inclusive range, a name = the owner's container port of that name
/// and protocol.
fn port_entry_matches(
    entry: &NetworkPolicyPort,
    protocol: Protocol,
    port: u16,
    port_owner: Option<&Pod>,
) -> bool {
    let entry_protocol = Protocol::from_field(entry.protocol.as_ref());
    if entry_protocol != protocol {
        return false;
    }
    match (&entry.port, entry.end_port) {
        (None, None) => true,
        (None, Some(_)) => panic!("invalid port entry: endPort without port"),
        (Some(IntOrString::Int(first)), end_port) => {
            let last = end_port.unwrap_or(*first);
            assert!(
                last >= *first,
                "invalid port entry: endPort {last} < port {first}"
            );
            (*first..=last).contains(&i32::from(port))
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            panic!("invalid port entry: endPort with a named port")
        }
        (Some(IntOrString::String(name)), None) => {
            port_owner.is_some_and(|pod| named_port_matches(pod, name, entry_protocol, port))
        }
    }
}

/// Whether `pod` has a container port called `name`, on `protocol` (a
/// container port's protocol defaults to TCP), whose number is `port`.
fn named_port_matches(pod: &Pod, name: &str, protocol: Protocol, port: u16) -> bool {
    let containers = pod.spec.iter().flat_map(|spec| &spec.containers);
    containers
        .flat_map(|container| container.ports.iter().flatten())
        .any(|container_port| {
            container_port.name.as_deref() == Some(name)
                && Protocol::from_field(container_port.protocol.as_ref()) == protocol
                && container_port.container_port == i32::from(port)
        })
}

// ---------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------

/// matchLabels AND every matchExpression. `{}` matches everything.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_ok = selector
        .match_expressions
        .iter()
        .flatten()
        .all(|requirement| requirement_matches(requirement, labels));
    labels_ok && expressions_ok
}

/// A selector field that may be absent; where absence is allowed (spec.podSelector,
/// or one of a peer's two selectors) it constrains nothing.
fn optional_selector_matches(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.is_none_or(|selector| selector_matches(selector, labels))
}

/// In / NotIn / Exists / DoesNotExist. NotIn also matches when the key is absent.
fn requirement_matches(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => {
            assert!(!values.is_empty(), "invalid selector: In with no values");
            value.is_some_and(|v| values.contains(v))
        }
        "NotIn" => {
            assert!(!values.is_empty(), "invalid selector: NotIn with no values");
            value.is_none_or(|v| !values.contains(v))
        }
        "Exists" => {
            assert!(values.is_empty(), "invalid selector: Exists with values");
            value.is_some()
        }
        "DoesNotExist" => {
            assert!(
                values.is_empty(),
                "invalid selector: DoesNotExist with values"
            );
            value.is_none()
        }
        other => panic!("invalid selector operator {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Object accessors
// ---------------------------------------------------------------------------

/// The labels a namespaceSelector sees: the object's own labels plus
/// `kubernetes.io/metadata.name=<name>`, which the API server always sets.
pub fn namespace_labels(cluster: &Cluster, name: &str) -> BTreeMap<String, String> {
    let namespace = cluster
        .namespaces
        .iter()
        .find(|ns| ns.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("pod refers to namespace {name:?}, which is not in the cluster"));
    let mut labels = namespace.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    labels
}

fn spec(policy: &NetworkPolicy) -> &NetworkPolicySpec {
    policy
        .spec
        .as_ref()
        .unwrap_or_else(|| panic!("NetworkPolicy {:?} has no spec", policy.metadata.name))
}

fn policy_namespace(policy: &NetworkPolicy) -> &str {
    policy
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_else(|| panic!("NetworkPolicy {:?} has no namespace", policy.metadata.name))
}

/// The namespace a pod lives in.
pub fn pod_namespace(pod: &Pod) -> &str {
    pod.metadata
        .namespace
        .as_deref()
        .unwrap_or_else(|| panic!("pod {:?} has no namespace", pod.metadata.name))
}

fn pod_labels(pod: &Pod) -> &BTreeMap<String, String> {
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
}

/// The pod's `status.podIP`, which must be IPv4.
pub fn pod_ip(pod: &Pod) -> Ipv4Addr {
    let ip = pod
        .status
        .as_ref()
        .and_then(|status| status.pod_ip.as_deref())
        .unwrap_or_else(|| panic!("pod {:?} has no status.podIP", pod.metadata.name));
    ip.parse().unwrap_or_else(|e| {
        panic!(
            "pod {:?} has podIP {ip:?}, not IPv4: {e}",
            pod.metadata.name
        )
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn namespace(name: &str, pairs: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(pairs)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// `ports` are (name, number, protocol) container ports.
    fn pod(
        ns: &str,
        name: &str,
        ip: &str,
        pairs: &[(&str, &str)],
        ports: &[(&str, i32, &str)],
    ) -> Pod {
        let ports = ports
            .iter()
            .map(|(port_name, number, protocol)| ContainerPort {
                name: Some(port_name.to_string()),
                container_port: *number,
                protocol: Some(protocol.to_string()),
                ..Default::default()
            })
            .collect();
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(labels(pairs)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    ports: Some(ports),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_yaml::from_str(yaml).expect("test policy YAML must parse")
    }

    /// Namespaces `x` (team=a) and `y` (team=b); pods x/a, x/b, y/a, y/b
    /// labelled app=<a|b>; the `a` pods serve `http` on TCP/8080.
    fn cluster(policies: &[&str]) -> Cluster {
        let http = [("http", 8080, "TCP")];
        Cluster {
            namespaces: vec![
                namespace("x", &[("team", "a")]),
                namespace("y", &[("team", "b")]),
            ],
            pods: vec![
                pod("x", "a", "10.0.1.1", &[("app", "a")], &http),
                pod("x", "b", "10.0.1.2", &[("app", "b")], &[]),
                pod("y", "a", "10.0.2.1", &[("app", "a")], &http),
                pod("y", "b", "10.0.2.2", &[("app", "b")], &[]),
            ],
            policies: policies.iter().map(|yaml| policy(yaml)).collect(),
        }
    }

    fn find<'c>(cluster: &'c Cluster, ns_and_name: &str) -> Peer<'c> {
        let (ns, name) = ns_and_name.split_once('/').expect("pod written as ns/name");
        let pod = cluster
            .pods
            .iter()
            .find(|p| pod_namespace(p) == ns && p.metadata.name.as_deref() == Some(name))
            .expect("test pod exists");
        Peer::Pod(pod)
    }

    fn allowed(cluster: &Cluster, src: &str, dst: &str, protocol: Protocol, port: u16) -> bool {
        flow_allowed(
            cluster,
            find(cluster, src),
            find(cluster, dst),
            protocol,
            port,
        )
    }

    fn tcp(cluster: &Cluster, src: &str, dst: &str, port: u16) -> bool {
        allowed(cluster, src, dst, Protocol::Tcp, port)
    }

    const DENY_INGRESS_X: &str = "
metadata: {name: deny, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

    #[test]
    fn no_policy_allows_everything() {
        let c = cluster(&[]);
        assert!(tcp(&c, "x/a", "y/b", 1));
        assert!(flow_allowed(
            &c,
            Peer::External(Ipv4Addr::new(192, 0, 2, 1)),
            find(&c, "x/a"),
            Protocol::Sctp,
            9
        ));
    }

    #[test]
    fn default_deny_ingress_isolates_only_its_namespace_and_direction() {
        let c = cluster(&[DENY_INGRESS_X]);
        assert!(!tcp(&c, "y/a", "x/a", 80));
        assert!(
            !tcp(&c, "x/a", "x/a", 80),
            "a pod reaching itself is not special"
        );
        assert!(!tcp(&c, "x/b", "x/a", 80));
        assert!(tcp(&c, "x/a", "y/a", 80), "egress from x is not isolated");
        let external = Peer::External(Ipv4Addr::new(192, 0, 2, 1));
        assert!(!flow_allowed(
            &c,
            external,
            find(&c, "x/a"),
            Protocol::Udp,
            53
        ));
    }

    #[test]
    fn allow_from_namespace_by_label_and_by_metadata_name() {
        let by_label = "
metadata: {name: from-team-b, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
";
        let c = cluster(&[by_label]);
        assert!(tcp(&c, "y/a", "x/a", 80));
        assert!(tcp(&c, "y/b", "x/b", 80));
        assert!(
            !tcp(&c, "x/b", "x/a", 80),
            "own namespace does not have team=b"
        );

        // The API server's kubernetes.io/metadata.name label exists even though
        // the Namespace objects here do not carry it.
        let by_name = "
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]}
";
        let c = cluster(&[by_name]);
        assert!(tcp(&c, "y/b", "x/a", 80));
        assert!(!tcp(&c, "x/b", "x/a", 80));
    }

    #[test]
    fn both_selectors_in_one_peer_are_anded_and_separate_peers_are_ored() {
        let and = "
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
      podSelector: {matchLabels: {app: b}}
";
        let c = cluster(&[and]);
        assert!(tcp(&c, "y/b", "x/a", 80));
        assert!(!tcp(&c, "y/a", "x/a", 80), "right namespace, wrong pod");
        assert!(
            !tcp(&c, "x/b", "x/a", 80),
            "right pod labels, wrong namespace"
        );

        let or = "
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
    - podSelector: {matchLabels: {app: b}}
";
        let c = cluster(&[or]);
        assert!(tcp(&c, "y/b", "x/a", 80));
        assert!(tcp(&c, "y/a", "x/a", 80), "namespace alone suffices");
        assert!(
            tcp(&c, "x/b", "x/a", 80),
            "podSelector alone means the policy's namespace"
        );
        assert!(!tcp(&c, "x/a", "x/a", 80));
    }

    #[test]
    fn selector_operators() {
        let pod_labels = labels(&[("app", "a"), ("tier", "front")]);
        let sel =
            |yaml: &str| -> LabelSelector { serde_yaml::from_str(yaml).expect("selector YAML") };
        assert!(selector_matches(&sel("{}"), &pod_labels));
        assert!(selector_matches(
            &sel("{matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}"),
            &pod_labels
        ));
        assert!(!selector_matches(
            &sel("{matchExpressions: [{key: app, operator: NotIn, values: [a, b]}]}"),
            &pod_labels
        ));
        assert!(selector_matches(
            &sel("{matchExpressions: [{key: tier, operator: Exists}]}"),
            &pod_labels
        ));
        assert!(!selector_matches(
            &sel("{matchExpressions: [{key: app, operator: DoesNotExist}]}"),
            &pod_labels
        ));
        assert!(!selector_matches(
            &sel("{matchLabels: {app: a}, matchExpressions: [{key: tier, operator: In, values: [back]}]}"),
            &pod_labels
        ));
    }

    #[test]
    fn ip_block_except_covering_a_pod_ip() {
        let policy = "
metadata: {name: cidr, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.1/32]}
";
        let c = cluster(&[policy]);
        assert!(tcp(&c, "x/a", "y/b", 80), "ipBlock matches pod IPs too");
        assert!(!tcp(&c, "x/a", "y/a", 80), "except carves the pod out");
        let inside = Peer::External(Ipv4Addr::new(10, 0, 9, 9));
        let outside = Peer::External(Ipv4Addr::new(192, 0, 2, 1));
        assert!(flow_allowed(&c, find(&c, "x/a"), inside, Protocol::Udp, 53));
        assert!(!flow_allowed(
            &c,
            find(&c, "x/a"),
            outside,
            Protocol::Udp,
            53
        ));
    }

    #[test]
    fn selector_peers_never_match_external_addresses() {
        let policy = "
metadata: {name: all-ns, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {}
";
        let c = cluster(&[policy]);
        assert!(tcp(&c, "y/b", "x/a", 80));
        let external = Peer::External(Ipv4Addr::new(10, 0, 1, 200));
        assert!(!flow_allowed(
            &c,
            external,
            find(&c, "x/a"),
            Protocol::Tcp,
            80
        ));
    }

    #[test]
    fn named_port_egress_resolves_against_the_destination_pod() {
        let policy = "
metadata: {name: http-out, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Egress]
  egress:
  - ports:
    - port: http
";
        let c = cluster(&[policy]);
        assert!(tcp(&c, "x/b", "y/a", 8080), "y/a names 8080 http");
        assert!(!tcp(&c, "x/b", "y/a", 80));
        assert!(!tcp(&c, "x/b", "y/b", 8080), "y/b has no port named http");
        assert!(
            !allowed(&c, "x/b", "y/a", Protocol::Udp, 8080),
            "http is a TCP port"
        );
        let external = Peer::External(Ipv4Addr::new(192, 0, 2, 1));
        assert!(!flow_allowed(
            &c,
            find(&c, "x/b"),
            external,
            Protocol::Tcp,
            8080
        ));
    }

    #[test]
    fn named_port_needs_the_container_port_protocol() {
        // y/a's `http` is TCP/8080; a UDP rule of that name resolves to nothing.
        let policy = "
metadata: {name: http-udp, namespace: y}
spec:
  podSelector: {}
  ingress:
  - ports:
    - {port: http, protocol: UDP}
";
        let c = cluster(&[policy]);
        assert!(!allowed(&c, "x/a", "y/a", Protocol::Udp, 8080));
        assert!(!tcp(&c, "x/a", "y/a", 8080));
    }

    #[test]
    fn empty_from_and_ports_lists_match_everything() {
        let policy = "
metadata: {name: empty-lists, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: []
    ports: []
  egress:
  - {}
";
        let c = cluster(&[policy]);
        assert!(allowed(&c, "y/a", "x/a", Protocol::Sctp, 7));
        let external = Peer::External(Ipv4Addr::new(203, 0, 113, 9));
        assert!(flow_allowed(
            &c,
            external,
            find(&c, "x/b"),
            Protocol::Udp,
            9
        ));
        assert!(flow_allowed(
            &c,
            find(&c, "x/b"),
            external,
            Protocol::Tcp,
            443
        ));
    }

    #[test]
    fn end_port_is_an_inclusive_range() {
        let policy = "
metadata: {name: range, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - {protocol: UDP, port: 80, endPort: 82}
";
        let c = cluster(&[policy]);
        let udp = |port| allowed(&c, "y/a", "x/a", Protocol::Udp, port);
        assert!(!udp(79));
        assert!(udp(80) && udp(81) && udp(82));
        assert!(!udp(83));
        assert!(!tcp(&c, "y/a", "x/a", 81));
    }

    #[test]
    fn policy_types_default_from_egress_rules() {
        // No policyTypes and egress rules present: Ingress and Egress, so
        // ingress is denied (no ingress rules) and egress allows only port 53.
        let with_egress = "
metadata: {name: dns-only, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  egress:
  - ports: [{protocol: UDP, port: 53}]
";
        let c = cluster(&[with_egress]);
        assert!(allowed(&c, "x/a", "y/b", Protocol::Udp, 53));
        assert!(!allowed(&c, "x/a", "y/b", Protocol::Udp, 54));
        assert!(!tcp(&c, "y/b", "x/a", 80), "ingress isolated too");

        // An empty egress list does not count as egress rules.
        let empty_egress = "
metadata: {name: ingress-only, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  egress: []
";
        let c = cluster(&[empty_egress]);
        assert!(tcp(&c, "x/a", "y/b", 80), "egress not isolated");
        assert!(!tcp(&c, "y/b", "x/a", 80));
    }

    #[test]
    fn sctp_rule_does_not_open_tcp_but_still_isolates() {
        let policy = "
metadata: {name: sctp-80, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - ports: [{protocol: SCTP, port: 80}]
";
        let c = cluster(&[policy]);
        assert!(allowed(&c, "y/a", "x/a", Protocol::Sctp, 80));
        assert!(!tcp(&c, "y/a", "x/a", 80));
        assert!(!allowed(&c, "y/a", "x/a", Protocol::Udp, 80));
    }

    #[test]
    fn policies_are_additive_and_egress_and_ingress_both_apply() {
        let c = cluster(&[
            DENY_INGRESS_X,
            "
metadata: {name: allow-80, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{port: 80}]}]
",
            "
metadata: {name: y-egress-none, namespace: y}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Egress]
",
        ]);
        assert!(tcp(&c, "y/a", "x/a", 80));
        assert!(!tcp(&c, "y/a", "x/b", 80));
        assert!(!tcp(&c, "y/b", "x/a", 80), "source egress denies");
    }

    #[test]
    fn protocol_numbers() {
        assert_eq!(Protocol::ALL.map(Protocol::number), [6, 17, 132]);
        assert_eq!(Protocol::from_k8s_name("SCTP"), Some(Protocol::Sctp));
        assert_eq!(Protocol::from_k8s_name("tcp"), None);
    }
}
