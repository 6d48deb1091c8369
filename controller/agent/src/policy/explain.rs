//! `sluice policy explain`: why a flow is allowed or denied, from the
//! cluster state this agent holds, in the compiler's own terms.
//!
//! [`explain`] is pure: it resolves both ends, then walks the policies as
//! the compiler parsed them ([`compile::policies`]: the same validation,
//! the same fail-closed treatment of invalid and rejected policies, the
//! same rule and peer positions) and names every rule that lets the flow
//! through. It decides per flow what the compiler decides per identity, so
//! the two can disagree only through a bug; the unit tests check them
//! against each other over the upstream model.
//!
//! [`check_datapath`] then runs the dataplane's own decision
//! (`sluice_common::policy::decide`) over the maps the agent wrote, for
//! the ends that are this node's pods, and records every lookup it made:
//! a verdict there that differs from the computed one means the maps do
//! not hold what the state asks for.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use sluice_common::direction::Direction;
use sluice_common::explain::{
    DatapathCheck, DirectionExplanation, End, EndRef, ExplainQuery, Explanation, PortSpec,
    RuleMatch, Verdict,
};
use sluice_common::policy::{decide, Isolation, PolicyKey, PolicyLookup, ANY_IDENTITY, PEER_MARK};
use sluice_common::{identity, policy::ANY_PROTOCOL};

use super::audit;
use super::compile::{self, Cluster, LivePod, LocalEndpoints, LocalPods, Peer, Policy};
use super::ports::{resolve_named, PortMatch};
use crate::datastore::ClusterState;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("no Pod {0} in the cluster state this agent holds")]
    UnknownPod(String),
    #[error("Pod {pod} takes no part in policy: {reason}")]
    NoAddress { pod: String, reason: &'static str },
}

/// What an agent knows that an explanation draws on.
pub struct NodeView<'a> {
    /// The node whose agent answers.
    pub node: &'a str,
    pub state: &'a ClusterState,
    /// This node's pods: address → endpoint id.
    pub local: &'a LocalEndpoints,
    /// The Pods this node's endpoints were wired for.
    pub local_pods: &'a LocalPods,
    /// Every pod's label identity, as last compiled: a local endpoint
    /// without one is isolated both ways.
    pub identities: &'a BTreeMap<Ipv4Addr, u32>,
    /// This node's own addresses (towards its pods, and on the underlay):
    /// the `host` identity, which policy always lets through.
    pub hosts: &'a [Ipv4Addr],
    /// The node-wide policy audit mode, for this node's pods.
    pub audit_default: bool,
}

/// One end of the flow, resolved against the cluster.
#[derive(Clone, Copy)]
enum Side {
    /// `Cluster::pods[i]`.
    Pod(usize),
    /// `Cluster::disputed[i]`: a pod whose address another Pod claims too.
    Disputed(usize),
    /// An address no pod has.
    External(Ipv4Addr),
}

/// Explains a new flow as this node's agent sees the cluster.
pub fn explain(view: &NodeView, query: &ExplainQuery) -> Result<Explanation, ExplainError> {
    let cluster = Cluster::new(view.state, view.local_pods);
    let mut problems = Vec::new();
    let policies = compile::policies(view.state, &mut problems);
    let from = resolve(view.state, &cluster, &query.from)?;
    let to = resolve(view.state, &cluster, &query.to)?;
    let ctx = Context {
        view,
        cluster: &cluster,
        policies: &policies,
        problems: &problems,
        port: query.port,
    };
    Ok(Explanation {
        node: view.node.to_owned(),
        from: ctx.end(from),
        to: ctx.end(to),
        port: query.port,
        egress: ctx.direction(Direction::Egress, from, to),
        ingress: ctx.direction(Direction::Ingress, to, from),
    })
}

fn resolve(state: &ClusterState, cluster: &Cluster, end: &EndRef) -> Result<Side, ExplainError> {
    let position = |pods: &[LivePod], pick: &dyn Fn(&LivePod) -> bool| pods.iter().position(pick);
    match end {
        EndRef::Ip { ip } => Ok(position(&cluster.pods, &|p| p.ip == *ip)
            .map(Side::Pod)
            .or_else(|| position(&cluster.disputed, &|p| p.ip == *ip).map(Side::Disputed))
            .unwrap_or(Side::External(*ip))),
        EndRef::Pod { namespace, name } => {
            let named = |p: &LivePod| p.namespace == namespace && p.name() == name;
            if let Some(i) = position(&cluster.pods, &named) {
                return Ok(Side::Pod(i));
            }
            if let Some(i) = position(&cluster.disputed, &named) {
                return Ok(Side::Disputed(i));
            }
            let pod = state
                .pods
                .get(&(namespace.clone(), name.clone()))
                .ok_or_else(|| ExplainError::UnknownPod(end.to_string()))?;
            let spec = pod.spec.as_ref();
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            let reason = if spec.and_then(|s| s.host_network) == Some(true) {
                "it uses its node's network (hostNetwork)"
            } else if matches!(phase, Some("Succeeded" | "Failed")) {
                "it has finished"
            } else {
                "it has no IPv4 address yet"
            };
            Err(ExplainError::NoAddress {
                pod: end.to_string(),
                reason,
            })
        }
    }
}

struct Context<'a> {
    view: &'a NodeView<'a>,
    cluster: &'a Cluster<'a>,
    policies: &'a [Policy<'a>],
    problems: &'a [compile::PolicyProblem],
    port: PortSpec,
}

impl Context<'_> {
    fn pod(&self, side: Side) -> Option<&LivePod<'_>> {
        match side {
            Side::Pod(i) => Some(&self.cluster.pods[i]),
            Side::Disputed(i) => Some(&self.cluster.disputed[i]),
            Side::External(_) => None,
        }
    }

    fn ip(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::External(ip) => ip,
            pod => self.pod(pod).map_or(Ipv4Addr::UNSPECIFIED, |p| p.ip),
        }
    }

    fn end(&self, side: Side) -> End {
        let pod = self.pod(side);
        End {
            pod: pod.map(|p| format!("{}/{}", p.namespace, p.name())),
            ip: Some(self.ip(side)),
            node: pod.and_then(|p| p.pod.spec.as_ref()?.node_name.clone()),
        }
    }

    /// The policy of `local` (the source for egress, the destination for
    /// ingress) about `peer`.
    fn direction(&self, direction: Direction, local: Side, peer: Side) -> DirectionExplanation {
        let mut out = DirectionExplanation {
            direction: direction.name().to_owned(),
            pod: None,
            verdict: Verdict::NotApplicable,
            isolated_by: Vec::new(),
            allowed_by: Vec::new(),
            notes: Vec::new(),
            datapath: None,
        };
        let Some(pod) = self.pod(local) else {
            out.notes.push(format!(
                "{} is no pod: no policy of it applies",
                self.ip(local)
            ));
            return out;
        };
        out.pod = Some(format!("{}/{}", pod.namespace, pod.name()));
        let isolating: Vec<&Policy> = self
            .policies
            .iter()
            .filter(|p| {
                p.namespace == pod.namespace
                    && p.selector.matches(pod.labels)
                    && p.rules(direction).is_some()
            })
            .collect();
        out.isolated_by = isolating
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        out.isolated_by.dedup();
        for policy in &out.isolated_by {
            out.notes.extend(
                self.problems
                    .iter()
                    .filter(|p| &p.policy == policy)
                    .map(ToString::to_string),
            );
        }
        let on_this_node = self.view.local.contains_key(&pod.ip);
        let unidentified = on_this_node && !self.view.identities.contains_key(&pod.ip);
        if isolating.is_empty() && !unidentified {
            out.verdict = Verdict::NotIsolated;
            return out;
        }
        if unidentified {
            out.notes.push(
                "this node's endpoint has no identity yet (its Pod not tied to it): isolated both ways until it has"
                    .to_owned(),
            );
        }
        if on_this_node && self.view.hosts.contains(&self.ip(peer)) {
            out.verdict = Verdict::Allowed;
            out.notes
                .push("the pod's own node always passes (kubelet probes)".to_owned());
            return out;
        }
        if let Side::Disputed(_) = local {
            out.verdict = Verdict::Denied;
            out.notes.push(format!(
                "{} is claimed by more than one Pod: isolated, nothing allowed",
                pod.ip
            ));
            return out;
        }
        if !unidentified {
            for policy in &isolating {
                for rule in policy.rules(direction).unwrap_or_default() {
                    out.allowed_by
                        .extend(self.rule_matches(policy, direction, rule, pod, peer));
                }
            }
        }
        out.verdict = if out.allowed_by.is_empty() {
            Verdict::Denied
        } else {
            Verdict::Allowed
        };
        if out.verdict == Verdict::Denied && !unidentified {
            out.notes.push(format!(
                "no rule of {} allows {} {}",
                out.isolated_by.join(", "),
                if direction == Direction::Ingress {
                    "from"
                } else {
                    "to"
                },
                self.end(peer)
            ));
            let mut unreadable = BTreeSet::new();
            let namespace = self.view.state.namespaces.get(pod.namespace);
            let audited = match audit::annotation(
                pod.pod,
                pod.namespace,
                namespace,
                &mut unreadable,
            ) {
                audit::Annotation::Audits(by) => Some(by),
                audit::Annotation::Enforces => None,
                audit::Annotation::Absent if on_this_node => {
                    self.view.audit_default.then_some(audit::AuditedBy::Node)
                }
                audit::Annotation::Absent => {
                    out.notes.push(
                        "no annotation puts the pod in policy audit mode; whether its node's policyAuditMode does is known only to that node's agent".to_owned(),
                    );
                    None
                }
            };
            if let Some(by) = audited {
                out.verdict = Verdict::WouldDeny;
                out.notes.push(format!(
                    "the pod is in policy audit mode ({}): it passes, reported as would-deny",
                    by.describe()
                ));
            }
            out.notes.extend(unreadable.iter().map(ToString::to_string));
        }
        out
    }

    /// Every (peer, port) of `rule` that lets the flow through.
    fn rule_matches(
        &self,
        policy: &Policy,
        direction: Direction,
        rule: &compile::Rule,
        local: &LivePod,
        peer: Side,
    ) -> Vec<RuleMatch> {
        let Some(port_text) = rule
            .ports
            .iter()
            .find_map(|p| self.port_matches(p, direction, local, peer))
        else {
            return Vec::new();
        };
        let matched = |peer_index, peer_text| RuleMatch {
            policy: format!("{}/{}", policy.namespace, policy.name),
            direction: direction.name().to_owned(),
            rule: rule.index,
            peer: peer_index,
            peer_text,
            port_text: port_text.clone(),
        };
        match &rule.peers {
            None => vec![matched(None, "any peer".to_owned())],
            Some(peers) => peers
                .iter()
                .filter(|(_, p)| self.peer_matches(policy, p, peer))
                .map(|(i, p)| matched(Some(*i), peer_text(p)))
                .collect(),
        }
    }

    fn peer_matches(&self, policy: &Policy, rule_peer: &Peer, peer: Side) -> bool {
        match rule_peer {
            // Selectors match label identities: a pod without one (its
            // address disputed) and any other address match none.
            Peer::Pods { namespaces, pods } => {
                let Side::Pod(i) = peer else { return false };
                let p = &self.cluster.pods[i];
                let namespace = match namespaces {
                    None => p.namespace == policy.namespace,
                    Some(s) => self
                        .cluster
                        .namespace_labels
                        .get(p.namespace)
                        .is_some_and(|labels| s.matches(labels)),
                };
                namespace && pods.matches(p.labels)
            }
            Peer::Block(block) => block.contains(self.ip(peer)),
        }
    }

    /// The port entry in words if it covers the flow's port. A named port
    /// is the destination pod's: the local pod's for ingress, the peer's
    /// for egress (an address that is no pod has no named ports).
    fn port_matches(
        &self,
        port: &PortMatch,
        direction: Direction,
        local: &LivePod,
        peer: Side,
    ) -> Option<String> {
        let protocol = self.port.protocol.number();
        let name = self.port.protocol.name();
        match port {
            PortMatch::All {
                protocol: ANY_PROTOCOL,
            } => Some("any port".to_owned()),
            PortMatch::All { protocol: p } => (*p == protocol).then(|| format!("all ports/{name}")),
            PortMatch::Range {
                protocol: p,
                first,
                last,
            } => (*p == protocol && (*first..=*last).contains(&self.port.port)).then(|| {
                if first == last {
                    format!("port {first}/{name}")
                } else {
                    format!("ports {first}-{last}/{name}")
                }
            }),
            PortMatch::Named {
                protocol: p,
                name: port_name,
            } => {
                let owner = match (direction, peer) {
                    (Direction::Ingress, _) => local,
                    (Direction::Egress, Side::Pod(i)) => &self.cluster.pods[i],
                    (Direction::Egress, _) => return None,
                };
                let number = resolve_named(owner.pod, port_name, *p)?;
                (*p == protocol && number == self.port.port)
                    .then(|| format!("port {port_name}/{name} (= {number})"))
            }
        }
    }
}

fn peer_text(peer: &Peer) -> String {
    match peer {
        Peer::Pods {
            namespaces: None,
            pods,
        } => format!("podSelector {pods}"),
        Peer::Pods {
            namespaces: Some(ns),
            pods,
        } if pods.is_empty() => format!("namespaceSelector {ns}"),
        Peer::Pods {
            namespaces: Some(ns),
            pods,
        } => format!("namespaceSelector {ns}, podSelector {pods}"),
        Peer::Block(block) if block.except.is_empty() => format!("ipBlock {}", block.cidr),
        Peer::Block(block) => {
            let except: Vec<String> = block.except.iter().map(ToString::to_string).collect();
            format!("ipBlock {} except {}", block.cidr, except.join(", "))
        }
    }
}

/// Fills in, for each direction whose pod is this node's, what the
/// dataplane's decision over `maps` (the kernel's maps, or a copy of
/// their layout) says, and whether it agrees with the computed verdict.
pub fn check_datapath<M: PolicyLookup>(
    explanation: &mut Explanation,
    local: &LocalEndpoints,
    maps: &M,
) {
    let (Some(from), Some(to)) = (explanation.from.ip, explanation.to.ip) else {
        return;
    };
    let port = explanation.port;
    let node = explanation.node.clone();
    for (direction, own, peer) in [
        (Direction::Egress, from, to),
        (Direction::Ingress, to, from),
    ] {
        let explained = match direction {
            Direction::Egress => &mut explanation.egress,
            Direction::Ingress => &mut explanation.ingress,
        };
        if explained.pod.is_none() {
            continue;
        }
        let Some(&endpoint) = local.get(&own) else {
            continue;
        };
        let recorder = Recorder {
            maps,
            lookups: RefCell::default(),
        };
        let decision = decide(
            &recorder,
            endpoint,
            direction,
            peer.octets(),
            port.protocol.number(),
            port.port,
        );
        let verdict = Verdict::from(decision);
        explained.datapath = Some(DatapathCheck {
            node: node.clone(),
            endpoint,
            verdict,
            agrees: verdict == explained.verdict,
            lookups: recorder.lookups.into_inner(),
        });
    }
}

/// The decision's lookups, passed through and written down.
struct Recorder<'m, M> {
    maps: &'m M,
    lookups: RefCell<Vec<String>>,
}

impl<M> Recorder<'_, M> {
    fn note(&self, line: String) {
        self.lookups.borrow_mut().push(line);
    }
}

fn key_text(key: &PolicyKey) -> String {
    let direction = if key.direction & !PEER_MARK == Direction::Ingress as u8 {
        "ingress"
    } else {
        "egress"
    };
    let mark = if key.direction & PEER_MARK != 0 {
        " mark"
    } else {
        ""
    };
    let port = u16::from_be_bytes(key.dport);
    let port = if port == 0 {
        "*".to_owned()
    } else {
        port.to_string()
    };
    let protocol = match key.protocol {
        ANY_PROTOCOL => "*".to_owned(),
        p => p.to_string(),
    };
    format!(
        "(endpoint {}, identity {}, {direction}{mark}, proto {protocol}, port {port})",
        key.endpoint,
        identity_text(key.identity)
    )
}

fn identity_text(id: u32) -> String {
    match id {
        0 => "any".to_owned(),
        identity::HOST => "1 (host)".to_owned(),
        identity::WORLD => "2 (world)".to_owned(),
        identity::REMOTE_NODE => "6 (remote-node)".to_owned(),
        id if id >= identity::FIRST_CIDR => format!("{id} (cidr)"),
        id => id.to_string(),
    }
}

fn hit(found: bool) -> &'static str {
    if found {
        "hit"
    } else {
        "miss"
    }
}

impl<M: PolicyLookup> PolicyLookup for Recorder<'_, M> {
    fn isolation(&self, endpoint: u32) -> Option<Isolation> {
        let answer = self.maps.isolation(endpoint);
        self.note(match answer {
            Some(i) => {
                let audited: Vec<&str> = Direction::ALL
                    .into_iter()
                    .filter(|d| i.audits(*d))
                    .map(|d| d.name())
                    .collect();
                let mut text = format!(
                    "isolation[{endpoint}]: ingress {} egress {}",
                    i.ingress, i.egress
                );
                if !audited.is_empty() {
                    text += &format!(" (audit mode: {})", audited.join(", "));
                }
                text
            }
            None => format!("isolation[{endpoint}]: miss (open both ways)"),
        });
        answer
    }

    fn exact(&self, key: &PolicyKey) -> bool {
        let answer = self.maps.exact(key);
        self.note(format!("policy {}: {}", key_text(key), hit(answer)));
        answer
    }

    fn range(&self, key: &PolicyKey) -> bool {
        let answer = self.maps.range(key);
        self.note(format!("port ranges {}: {}", key_text(key), hit(answer)));
        answer
    }

    fn peer_identity(&self, addr: [u8; 4]) -> u32 {
        let answer = self.maps.peer_identity(addr);
        self.note(format!(
            "ipcache[{}]: identity {}",
            Ipv4Addr::from(addr),
            identity_text(answer)
        ));
        answer
    }

    fn cidr_identity(&self, addr: [u8; 4]) -> u32 {
        let answer = self.maps.cidr_identity(addr);
        let region = match answer {
            ANY_IDENTITY => "in no ipBlock".to_owned(),
            id => format!("identity {}", identity_text(id)),
        };
        self.note(format!(
            "ipBlock regions[{}]: {region}",
            Ipv4Addr::from(addr)
        ));
        answer
    }
}
