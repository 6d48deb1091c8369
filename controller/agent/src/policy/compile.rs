//! Cluster state → desired contents of the identity and policy maps.
//!
//! Pure: the result depends only on the cluster state, the local endpoints
//! and the allocator's state. Invalid input never widens what is allowed:
//! a policy the API server would reject, or that the datastore rejected,
//! allows nothing and isolates what it could have selected (see
//! [`fail_closed`](super::fail_closed)); an address two Pods claim belongs
//! to neither; each is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use serde_json::Value;
use sluice_common::{direction::Direction, policy::ANY_IDENTITY};

use super::audit::{self, AuditProblem};
use super::cidr::{parse_block, Block};
use super::fail_closed::Isolation;
use super::identity::{IdentityAllocator, IdentityError, LabelKey};
use super::placed::PlacedPolicy;
use super::pod_index::{Namespaces, PodIndex};
use super::ports::{
    named_ports, parse_ports, range_prefixes, resolve_named, PortMatch, PortPrefix,
};
use super::selector::{Labels, Selector};
use super::validate;
use crate::datastore::{ClusterState, Rejected};

/// The pods of this node: pod IPv4 → endpoint id.
pub type LocalEndpoints = BTreeMap<Ipv4Addr, u32>;

/// The Pods this node's endpoints were wired for, by the endpoint's
/// address: (namespace, name), as kubelet named them to CNI ADD. Such an
/// address belongs to that Pod only, and that Pod has it even before its
/// object shows it (kubelet reports the IP after ADD).
pub type LocalPods = BTreeMap<Ipv4Addr, (String, String)>;

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What the maps should hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredPolicy {
    /// Every pod in the cluster with an IPv4 podIP (all nodes) → its label
    /// identity, for the ipcache.
    pub pod_identities: BTreeMap<Ipv4Addr, u32>,
    /// The policy maps' contents: isolation, rules, marks, ipBlock regions.
    pub placed: PlacedPolicy,
    /// Policies (or parts of them) that could not be compiled.
    pub problems: Vec<PolicyProblem>,
    /// Pods or regions left without an identity because a range ran out.
    pub identity_errors: Vec<IdentityError>,
    /// Addresses claimed by more than one live Pod: they belong to none of
    /// them (no identity, so no podSelector matches them).
    pub ip_conflicts: Vec<IpConflict>,
    /// Audit mode annotations of this node's pods that could not be read
    /// (those pods are enforced).
    pub audit_problems: Vec<AuditProblem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConflict {
    pub ip: Ipv4Addr,
    /// `namespace/name` of each claimant, in name order.
    pub pods: Vec<String>,
}

impl fmt::Display for IpConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is claimed by Pods {}", self.ip, self.pods.join(", "))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    /// `namespace/name`.
    pub policy: String,
    pub reason: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkPolicy {}: {}", self.policy, self.reason)
    }
}

/// `audit_default`: the node-wide audit mode, for this node's pods that no
/// annotation decides (see [`audit`](super::audit)).
pub fn compile(
    state: &ClusterState,
    local: &LocalEndpoints,
    local_pods: &LocalPods,
    ids: &mut IdentityAllocator,
    audit_default: bool,
) -> DesiredPolicy {
    let mut out = DesiredPolicy::default();
    let cluster = Cluster::new(state, local_pods);
    out.ip_conflicts.clone_from(&cluster.conflicts);

    let keys: BTreeSet<LabelKey> = cluster.pods.iter().map(|p| cluster.key(p)).collect();
    out.identity_errors.extend(ids.sync_labels(&keys));
    let identities: Vec<Option<u32>> = cluster
        .pods
        .iter()
        .map(|p| ids.label(&cluster.key(p)))
        .collect();
    for (pod, identity) in cluster.pods.iter().zip(&identities) {
        if let Some(identity) = identity {
            out.pod_identities.insert(pod.ip, *identity);
        }
    }

    let policies = policies(state, &mut out.problems);

    let regions = regions(&policies, &cluster);
    out.identity_errors.extend(ids.sync_cidrs(&regions));
    for net in &regions {
        if let Some(identity) = ids.cidr(net) {
            out.placed.regions.insert(*net, identity);
        }
    }

    let ctx = Emitter {
        cluster: &cluster,
        identities: &identities,
        regions: &regions,
        ids,
    };
    for policy in &policies {
        let selected: Vec<(usize, u32)> = cluster
            .select(Namespaces::One(policy.namespace), &policy.selector)
            .into_iter()
            .filter_map(|i| {
                local
                    .get(&cluster.pods[i].ip)
                    .map(|endpoint| (i, *endpoint))
            })
            .collect();
        // A local endpoint whose address is disputed has no identity, yet
        // one of the claimants is the pod behind it: it stays isolated
        // wherever a claimant would be, and nothing is allowed to it.
        let disputed: Vec<u32> = cluster
            .disputed
            .iter()
            .filter(|p| p.namespace == policy.namespace && policy.selector.matches(p.labels))
            .filter_map(|p| local.get(&p.ip).copied())
            .collect();
        let directions = [
            (Direction::Ingress, &policy.ingress),
            (Direction::Egress, &policy.egress),
        ];
        for (dir, rules) in directions {
            if rules.is_some() {
                for &endpoint in &disputed {
                    out.placed.isolate(endpoint, dir);
                }
            }
        }
        if selected.is_empty() {
            continue;
        }
        for (dir, rules) in directions {
            let Some(rules) = rules else { continue };
            let resolved: Vec<_> = rules.iter().map(|r| ctx.resolve(policy, r)).collect();
            for &(pod, endpoint) in &selected {
                out.placed.isolate(endpoint, dir);
                for (rule, peers) in rules.iter().zip(&resolved) {
                    ctx.emit(&mut out.placed, endpoint, dir, pod, rule, peers);
                }
            }
        }
    }
    // Audit mode belongs to a known pod: a disputed address (which pod
    // sends from it?) stays enforced.
    let mut audit_problems = BTreeSet::new();
    for pod in &cluster.pods {
        let Some(endpoint) = local.get(&pod.ip) else {
            continue;
        };
        let namespace = state.namespaces.get(pod.namespace);
        if audit::audited(
            pod.pod,
            pod.namespace,
            namespace,
            audit_default,
            &mut audit_problems,
        )
        .is_some()
        {
            out.placed.audit(*endpoint);
        }
    }
    out.audit_problems = audit_problems.into_iter().collect();
    out
}

/// Every NetworkPolicy as compiled: valid ones as they are, invalid and
/// rejected ones as what they still isolate (each such one reported in
/// `problems`).
pub(super) fn policies<'a>(
    state: &'a ClusterState,
    problems: &mut Vec<PolicyProblem>,
) -> Vec<Policy<'a>> {
    let rejected: BTreeMap<(&str, &str), &Rejected> = state.rejected_policies().collect();
    let mut policies: Vec<Policy> = Vec::new();
    for ((ns, name), policy) in &state.policies {
        if !rejected.contains_key(&(ns.as_str(), name.as_str())) {
            policies.extend(Policy::parse(ns, name, policy, problems));
        }
    }
    for (&(ns, name), rejected) in &rejected {
        let last_good = state.policies.get(&(ns.to_owned(), name.to_owned()));
        problems.push(PolicyProblem {
            policy: format!("{ns}/{name}"),
            reason: format!(
                "{}; allows nothing, isolates what it could select",
                rejected.reason
            ),
        });
        policies.extend(Policy::broken(ns, name, &rejected.versions, last_good));
    }
    policies
}

/// A pod that takes part in policy: it has an IPv4 address and is not done.
pub(super) struct LivePod<'a> {
    pub(super) namespace: &'a str,
    pub(super) pod: &'a Pod,
    pub(super) ip: Ipv4Addr,
    pub(super) labels: &'a Labels,
}

impl LivePod<'_> {
    pub(super) fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }
}

/// The cluster as policy sees it.
pub(super) struct Cluster<'a> {
    pub(super) namespace_labels: BTreeMap<&'a str, Labels>,
    pub(super) pods: Vec<LivePod<'a>>,
    /// `pods` by namespace and label.
    index: PodIndex<'a>,
    conflicts: Vec<IpConflict>,
    /// The claimants of disputed addresses, which `pods` leaves out.
    pub(super) disputed: Vec<LivePod<'a>>,
}

static NO_LABELS: Labels = Labels::new();

impl<'a> Cluster<'a> {
    pub(super) fn new(state: &'a ClusterState, local_pods: &LocalPods) -> Self {
        let named: BTreeMap<(&str, &str), Ipv4Addr> = local_pods
            .iter()
            .map(|(ip, (ns, name))| ((ns.as_str(), name.as_str()), *ip))
            .collect();
        let mut namespace_labels: BTreeMap<&str, Labels> = BTreeMap::new();
        for (name, ns) in &state.namespaces {
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels
                .entry(NAMESPACE_NAME_LABEL.to_owned())
                .or_insert_with(|| name.clone());
            namespace_labels.insert(name, labels);
        }
        let mut claimed = Vec::new();
        let mut claims: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        for ((namespace, name), pod) in &state.pods {
            if !live(pod) {
                continue;
            }
            // A pod this node wired has the address CNI gave it; another
            // Pod object claiming that address is not believed.
            let ip = match named.get(&(namespace.as_str(), name.as_str())) {
                Some(ip) => *ip,
                None => match ipv4(pod) {
                    Some(ip) if !local_pods.contains_key(&ip) => ip,
                    _ => continue,
                },
            };
            claims
                .entry(ip)
                .or_default()
                .push(format!("{namespace}/{name}"));
            claimed.push((namespace, pod, ip));
        }
        // Two live Pods claiming one address: a transient of IP reuse, or a
        // Pod object lying. Which one sends from it cannot be told, so it
        // is neither: without an identity it matches no podSelector.
        let conflicts: Vec<IpConflict> = claims
            .into_iter()
            .filter(|(_, pods)| pods.len() > 1)
            .map(|(ip, pods)| IpConflict { ip, pods })
            .collect();
        let disputed: BTreeSet<Ipv4Addr> = conflicts.iter().map(|c| c.ip).collect();
        let (mut pods, mut disputed_pods) = (Vec::new(), Vec::new());
        for (namespace, pod, ip) in claimed {
            let live = LivePod {
                namespace,
                pod,
                ip,
                labels: pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
            };
            if disputed.contains(&ip) {
                disputed_pods.push(live);
                continue;
            }
            // A namespace we have pods of but no object for: the API server
            // would still have given it its name label.
            namespace_labels
                .entry(namespace.as_str())
                .or_insert_with(|| {
                    Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), namespace.clone())])
                });
            pods.push(live);
        }
        let index = PodIndex::new(pods.iter().map(|p| (p.namespace, p.labels)));
        Cluster {
            namespace_labels,
            pods,
            index,
            conflicts,
            disputed: disputed_pods,
        }
    }

    fn key(&self, pod: &LivePod) -> LabelKey {
        LabelKey {
            namespace: pod.namespace.to_owned(),
            namespace_labels: self.namespace_labels[pod.namespace].clone(),
            pod_labels: pod.labels.clone(),
            named_ports: named_ports(pod.pod),
        }
    }

    /// The pods in `namespaces` that `selector` picks, as indices into
    /// `pods`, in order.
    fn select(&self, namespaces: Namespaces<'_>, selector: &Selector) -> Vec<usize> {
        self.index.select(
            namespaces,
            selector,
            |i| self.pods[i].namespace,
            |i| self.pods[i].labels,
        )
    }

    /// The namespaces (of pods, or with an object) whose labels `selector`
    /// matches.
    fn namespaces_matching(&self, selector: &Selector) -> Vec<&'a str> {
        self.namespace_labels
            .iter()
            .filter(|(_, labels)| selector.matches(labels))
            .map(|(name, _)| *name)
            .collect()
    }
}

/// Whether the pod takes part in policy with an address of its own: not
/// done (Succeeded/Failed: its address may already belong to another pod)
/// and not sharing the node's address (hostNetwork: the node's identity
/// covers it).
fn live(pod: &Pod) -> bool {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The pod's IPv4 address as its object reports it.
fn ipv4(pod: &Pod) -> Option<Ipv4Addr> {
    let status = pod.status.as_ref()?;
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
}

/// A policy, validated.
pub(super) struct Policy<'a> {
    pub(super) namespace: &'a str,
    pub(super) name: &'a str,
    pub(super) selector: Selector,
    /// `None`: the policy does not isolate in this direction.
    pub(super) ingress: Option<Vec<Rule>>,
    pub(super) egress: Option<Vec<Rule>>,
}

impl Policy<'_> {
    pub(super) fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// A valid rule. Invalid rules are dropped (after a problem is recorded),
/// so they allow nothing while the policy still isolates.
pub(super) struct Rule {
    /// Its position in the policy's `ingress` or `egress` list.
    pub(super) index: usize,
    /// `None`: any peer. Each with its position in `from` or `to`.
    pub(super) peers: Option<Vec<(usize, Peer)>>,
    pub(super) ports: Vec<PortMatch>,
}

pub(super) enum Peer {
    Pods {
        /// `None`: the policy's own namespace.
        namespaces: Option<Selector>,
        pods: Selector,
    },
    Block(Block),
}

impl<'a> Policy<'a> {
    /// The policy as compiled: itself if the API server would take it,
    /// else what it isolates with nothing allowed.
    fn parse(
        namespace: &'a str,
        name: &'a str,
        policy: &NetworkPolicy,
        problems: &mut Vec<PolicyProblem>,
    ) -> Vec<Self> {
        let mut problem = |reason: String| {
            problems.push(PolicyProblem {
                policy: format!("{namespace}/{name}"),
                reason,
            })
        };
        let errors = validate::network_policy(policy);
        if !errors.is_empty() {
            let rejection = validate::rejection("NetworkPolicy.networking.k8s.io", name, &errors);
            problem(format!(
                "{rejection}; allows nothing, isolates what it could select"
            ));
            let value = serde_json::to_value(policy).unwrap_or(Value::Null);
            return Policy::broken(namespace, name, &[value], None);
        }
        let default_spec = Default::default();
        let spec = policy.spec.as_ref().unwrap_or(&default_spec);
        let selector = match Selector::parse_optional(spec.pod_selector.as_ref()) {
            Ok(selector) => selector,
            Err(e) => {
                // Validated above, so not expected; still, what it cannot
                // name it isolates all of.
                problem(format!(
                    "spec.podSelector: {e}; isolates the whole namespace, allows nothing"
                ));
                return vec![Policy::isolating(
                    namespace,
                    name,
                    Selector::default(),
                    true,
                    true,
                )];
            }
        };

        // The API server's defaulting: Ingress always, Egress if there are
        // egress rules.
        let (mut isolates_ingress, mut isolates_egress) = (false, false);
        match spec.policy_types.as_deref() {
            None | Some([]) => {
                isolates_ingress = true;
                isolates_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
            Some(types) => {
                for t in types {
                    match t.as_str() {
                        "Ingress" => isolates_ingress = true,
                        "Egress" => isolates_egress = true,
                        other => {
                            // Validated above; if it were not, it could
                            // have named either direction.
                            problem(format!(
                                "spec.policyTypes: unknown type {other:?}; isolates both directions"
                            ));
                            (isolates_ingress, isolates_egress) = (true, true);
                        }
                    }
                }
            }
        }

        let ingress = isolates_ingress.then(|| {
            let raw = spec.ingress.iter().flatten();
            parse_rules(
                raw.map(|r| (&r.from, &r.ports)),
                "ingress",
                "from",
                &mut problem,
            )
        });
        let egress = isolates_egress.then(|| {
            let raw = spec.egress.iter().flatten();
            parse_rules(raw.map(|r| (&r.to, &r.ports)), "egress", "to", &mut problem)
        });
        vec![Policy {
            namespace,
            name,
            selector,
            ingress,
            egress,
        }]
    }

    /// Isolation without rules.
    fn isolating(
        namespace: &'a str,
        name: &'a str,
        selector: Selector,
        ingress: bool,
        egress: bool,
    ) -> Self {
        Policy {
            namespace,
            name,
            selector,
            ingress: ingress.then(Vec::new),
            egress: egress.then(Vec::new),
        }
    }

    /// What a policy that cannot be taken still isolates: each version's
    /// podSelector in the directions it could name, and what the last good
    /// version isolated (an invalid edit releases nothing). Where a
    /// version's podSelector cannot be read, the pods the last good version
    /// selected stay isolated in that version's directions too; without a
    /// last good version, the whole namespace is.
    fn broken(
        namespace: &'a str,
        name: &'a str,
        versions: &[Value],
        last_good: Option<&NetworkPolicy>,
    ) -> Vec<Self> {
        let mut out = Vec::new();
        let mut unknown = versions.is_empty().then_some((true, true));
        for version in versions {
            let isolation = Isolation::of(version);
            match isolation.selector {
                Some(selector) => out.push(Policy::isolating(
                    namespace,
                    name,
                    selector,
                    isolation.ingress,
                    isolation.egress,
                )),
                None => {
                    let (ingress, egress) = unknown.unwrap_or_default();
                    unknown = Some((ingress || isolation.ingress, egress || isolation.egress));
                }
            }
        }
        let last = last_good
            .and_then(|p| serde_json::to_value(p).ok())
            .map(|v| Isolation::of(&v));
        let (ingress, egress) = unknown.unwrap_or_default();
        match last {
            Some(Isolation {
                selector: Some(selector),
                ingress: last_ingress,
                egress: last_egress,
            }) => out.push(Policy::isolating(
                namespace,
                name,
                selector,
                ingress || last_ingress,
                egress || last_egress,
            )),
            _ if unknown.is_some() => out.push(Policy::isolating(
                namespace,
                name,
                Selector::default(),
                ingress,
                egress,
            )),
            _ => {}
        }
        out
    }
}

type RawRule<'a> = (
    &'a Option<Vec<NetworkPolicyPeer>>,
    &'a Option<Vec<NetworkPolicyPort>>,
);

/// The valid rules of one direction; each invalid one becomes a problem.
fn parse_rules<'a>(
    raw: impl Iterator<Item = RawRule<'a>>,
    what: &str,
    peer_field: &str,
    problem: &mut impl FnMut(String),
) -> Vec<Rule> {
    let mut valid = Vec::new();
    for (i, (peers, ports)) in raw.enumerate() {
        match parse_rule(i, peers.as_deref(), ports.as_deref(), peer_field) {
            Ok(rule) => valid.push(rule),
            Err(reason) => problem(format!("spec.{what}[{i}]: {reason}; rule allows nothing")),
        }
    }
    valid
}

fn parse_rule(
    index: usize,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    peer_field: &str,
) -> Result<Rule, String> {
    let ports = parse_ports(ports).map_err(|e| format!("ports: {e}"))?;
    let peers = match peers {
        None | Some([]) => None,
        Some(peers) => {
            let mut parsed = Vec::new();
            for (i, peer) in peers.iter().enumerate() {
                // `None` is an IPv6 ipBlock: it matches no IPv4 traffic.
                let peer = parse_peer(peer).map_err(|e| format!("{peer_field}[{i}]: {e}"))?;
                parsed.extend(peer.map(|p| (i, p)));
            }
            Some(parsed)
        }
    };
    Ok(Rule {
        index,
        peers,
        ports,
    })
}

fn parse_peer(peer: &NetworkPolicyPeer) -> Result<Option<Peer>, String> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (Some(block), None, None) => Ok(parse_block(block)
            .map_err(|e| e.to_string())?
            .map(Peer::Block)),
        (Some(_), _, _) => Err("ipBlock cannot be combined with a selector".into()),
        (None, None, None) => Err("a peer needs podSelector, namespaceSelector or ipBlock".into()),
        (None, namespaces, pods) => {
            let namespaces = namespaces
                .as_ref()
                .map(Selector::parse)
                .transpose()
                .map_err(|e| format!("namespaceSelector: {e}"))?;
            let pods =
                Selector::parse_optional(pods.as_ref()).map_err(|e| format!("podSelector: {e}"))?;
            Ok(Some(Peer::Pods { namespaces, pods }))
        }
    }
}

/// Every region prefix: all cidrs and excepts of valid rules, plus the /32
/// of each pod an egress named port may reach through an ipBlock, so that
/// such a port can be granted to that one address.
fn regions(policies: &[Policy], cluster: &Cluster) -> BTreeSet<Ipv4Net> {
    let mut regions = BTreeSet::new();
    for policy in policies {
        let rules = policy.ingress.iter().flatten().map(|r| (r, false));
        let rules = rules.chain(policy.egress.iter().flatten().map(|r| (r, true)));
        for (rule, egress) in rules {
            let named = rule
                .ports
                .iter()
                .any(|p| matches!(p, PortMatch::Named { .. }));
            for (_, peer) in rule.peers.iter().flatten() {
                let Peer::Block(block) = peer else { continue };
                regions.extend(block.prefixes());
                if egress && named {
                    regions.extend(
                        cluster
                            .pods
                            .iter()
                            .filter(|p| block.contains(p.ip))
                            .map(|p| Ipv4Net::from(p.ip)),
                    );
                }
            }
        }
    }
    regions
}

/// The peers of one rule, resolved against the cluster.
struct Resolved {
    any: bool,
    /// Indices into `Cluster::pods`.
    pods: BTreeSet<usize>,
    /// CIDR identities of the regions the rule's ipBlocks cover.
    cidr_identities: BTreeSet<u32>,
    blocks: Vec<Block>,
}

struct Emitter<'a> {
    cluster: &'a Cluster<'a>,
    identities: &'a [Option<u32>],
    regions: &'a BTreeSet<Ipv4Net>,
    ids: &'a IdentityAllocator,
}

impl Emitter<'_> {
    fn resolve(&self, policy: &Policy, rule: &Rule) -> Resolved {
        let mut resolved = Resolved {
            any: rule.peers.is_none(),
            pods: BTreeSet::new(),
            cidr_identities: BTreeSet::new(),
            blocks: Vec::new(),
        };
        for (_, peer) in rule.peers.iter().flatten() {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    let picked = match namespaces {
                        None => self.cluster.select(Namespaces::One(policy.namespace), pods),
                        Some(s) => {
                            let matching = self.cluster.namespaces_matching(s);
                            self.cluster.select(Namespaces::Some(&matching), pods)
                        }
                    };
                    resolved.pods.extend(picked);
                }
                Peer::Block(block) => {
                    resolved.cidr_identities.extend(
                        block
                            .regions(self.regions)
                            .filter_map(|net| self.ids.cidr(&net)),
                    );
                    resolved.blocks.push(block.clone());
                }
            }
        }
        resolved
    }

    /// The peer identities of a port that does not depend on the peer.
    fn identities(&self, peers: &Resolved) -> BTreeSet<u32> {
        if peers.any {
            return BTreeSet::from([ANY_IDENTITY]);
        }
        peers
            .pods
            .iter()
            .filter_map(|&i| self.identities[i])
            .chain(peers.cidr_identities.iter().copied())
            .collect()
    }

    fn emit(
        &self,
        out: &mut PlacedPolicy,
        endpoint: u32,
        dir: Direction,
        local_pod: usize,
        rule: &Rule,
        peers: &Resolved,
    ) {
        let mut allow = |identity: u32, protocol: u8, port: Option<PortPrefix>| {
            out.allow(endpoint, dir, identity, protocol, port)
        };
        for port in &rule.ports {
            match port {
                PortMatch::All { protocol } => {
                    for identity in self.identities(peers) {
                        allow(identity, *protocol, None);
                    }
                }
                PortMatch::Range {
                    protocol,
                    first,
                    last,
                } => {
                    let prefixes = range_prefixes(*first, *last);
                    for identity in self.identities(peers) {
                        for prefix in &prefixes {
                            allow(identity, *protocol, Some(*prefix));
                        }
                    }
                }
                PortMatch::Named { protocol, name } if dir == Direction::Ingress => {
                    // The destination is the local pod itself.
                    let Some(number) =
                        resolve_named(self.cluster.pods[local_pod].pod, name, *protocol)
                    else {
                        continue;
                    };
                    for identity in self.identities(peers) {
                        allow(identity, *protocol, Some(exact(number)));
                    }
                }
                PortMatch::Named { protocol, name } => {
                    // Each destination pod names its own port: grant each
                    // peer pod's identity the number that pod gives it.
                    for (i, pod) in self.cluster.pods.iter().enumerate() {
                        let Some(number) = resolve_named(pod.pod, name, *protocol) else {
                            continue;
                        };
                        if peers.any || peers.pods.contains(&i) {
                            if let Some(identity) = self.identities[i] {
                                allow(identity, *protocol, Some(exact(number)));
                            }
                        }
                        if peers.blocks.iter().any(|b| b.contains(pod.ip)) {
                            if let Some(identity) = self.ids.cidr(&Ipv4Net::from(pod.ip)) {
                                allow(identity, *protocol, Some(exact(number)));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn exact(port: u16) -> PortPrefix {
    PortPrefix { port, bits: 16 }
}

/// Every pod's label set by its address, as [`compile`] keys identities:
/// what a restarted agent matches the pinned ipcache against
/// ([`super::identity::seeds`]).
pub fn pod_label_keys(
    state: &ClusterState,
    local_pods: &LocalPods,
) -> BTreeMap<Ipv4Addr, LabelKey> {
    let cluster = Cluster::new(state, local_pods);
    cluster
        .pods
        .iter()
        .map(|pod| (pod.ip, cluster.key(pod)))
        .collect()
}
