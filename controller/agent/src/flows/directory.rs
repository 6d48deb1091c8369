//! What the agent knows to name a flow's ends: pods by address, nodes by
//! address, what each identity stands for, and which NetworkPolicies
//! select a pod. Built from the cluster state (pure), and rebuilt when it
//! changed while flows are being recorded; [`Directory::enrich`] turns a
//! decoded event into the [`Flow`] `sluice observe` shows.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use sluice_common::{
    direction::Direction,
    identity,
    observe::{protocol_name, rfc3339, DirectionVerdict, Flow, FlowEnd},
};

use super::decode::{Clock, RawFlow};
use crate::{
    datastore::ClusterState,
    policy::{identity::IdentityAllocator, selector::Labels, selector::Selector},
    topology,
};

#[derive(Debug, Clone, PartialEq, Eq)]
struct PodEntry {
    namespace: String,
    name: String,
    labels: Labels,
    node: Option<String>,
}

/// A policy's pod selector and the directions it isolates.
#[derive(Debug, Clone)]
struct Selecting {
    namespace: String,
    name: String,
    selector: Selector,
    ingress: bool,
    egress: bool,
}

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pods: BTreeMap<Ipv4Addr, PodEntry>,
    nodes: BTreeMap<Ipv4Addr, String>,
    pod_identities: BTreeMap<Ipv4Addr, u32>,
    /// Identity → what it stands for (`ns=x app=a`, `10.0.0.0/8`).
    identities: BTreeMap<u32, String>,
    policies: Vec<Selecting>,
}

impl Directory {
    pub fn build(
        state: &ClusterState,
        pod_identities: &BTreeMap<Ipv4Addr, u32>,
        identities: &IdentityAllocator,
    ) -> Self {
        let mut pods = BTreeMap::new();
        for ((namespace, name), pod) in &state.pods {
            let status = pod.status.as_ref();
            let ips = status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .map(|ip| ip.ip.as_str())
                .chain(status.and_then(|s| s.pod_ip.as_deref()));
            for ip in ips {
                if let Ok(IpAddr::V4(ip)) = ip.parse() {
                    pods.insert(
                        ip,
                        PodEntry {
                            namespace: namespace.clone(),
                            name: name.clone(),
                            labels: pod.metadata.labels.clone().unwrap_or_default(),
                            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                        },
                    );
                }
            }
        }
        let nodes = state
            .nodes
            .values()
            .filter_map(|n| topology::node_info(n).ok())
            .map(|n| (n.ip, n.name))
            .collect();
        let mut names = BTreeMap::new();
        for (key, id) in identities.labels() {
            let labels: Vec<String> = key
                .pod_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let means = if labels.is_empty() {
                format!("ns={}", key.namespace)
            } else {
                format!("ns={} {}", key.namespace, labels.join(" "))
            };
            names.insert(id, means);
        }
        for (net, id) in identities.cidrs() {
            names.insert(id, net.to_string());
        }
        let policies = state
            .policies
            .iter()
            .filter_map(|((ns, name), policy)| selecting(ns, name, policy))
            .collect();
        Self {
            pods,
            nodes,
            pod_identities: pod_identities.clone(),
            identities: names,
            policies,
        }
    }

    /// Pods known.
    pub fn pods(&self) -> usize {
        self.pods.len()
    }

    /// What `identity` stands for.
    fn identity_labels(&self, id: u32) -> Option<String> {
        match id {
            identity::HOST => Some("host".into()),
            identity::WORLD => Some("world".into()),
            identity::REMOTE_NODE => Some("remote-node".into()),
            _ => self.identities.get(&id).cloned(),
        }
    }

    /// One end: the pod (or node) at `ip`; `judged`, the identity policy
    /// judged it by, when the datapath said.
    fn end(&self, ip: Ipv4Addr, port: u16, judged: Option<u32>) -> FlowEnd {
        let pod = self.pods.get(&ip);
        let identity = judged
            .or_else(|| self.pod_identities.get(&ip).copied())
            .or_else(|| {
                (pod.is_none() && self.nodes.contains_key(&ip)).then_some(identity::REMOTE_NODE)
            });
        FlowEnd {
            ip,
            port,
            namespace: pod.map(|p| p.namespace.clone()),
            pod: pod.map(|p| p.name.clone()),
            labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
            node: pod
                .and_then(|p| p.node.clone())
                .or_else(|| self.nodes.get(&ip).cloned()),
            identity,
            identity_labels: identity.and_then(|id| self.identity_labels(id)),
        }
    }

    /// `namespace/name` of the policies that select the pod at `ip` in
    /// `direction`.
    fn policies_of(&self, ip: Ipv4Addr, direction: Direction) -> Vec<String> {
        let Some(pod) = self.pods.get(&ip) else {
            return Vec::new();
        };
        self.policies
            .iter()
            .filter(|p| p.namespace == pod.namespace)
            .filter(|p| match direction {
                Direction::Ingress => p.ingress,
                Direction::Egress => p.egress,
            })
            .filter(|p| p.selector.matches(&pod.labels))
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }

    fn direction_verdict(
        &self,
        decided: Option<&'static str>,
        pod: Ipv4Addr,
        direction: Direction,
    ) -> Option<DirectionVerdict> {
        Some(DirectionVerdict {
            decision: decided?.to_owned(),
            policies: self.policies_of(pod, direction),
        })
    }

    /// Names a decoded event's ends, rules and policies.
    pub fn enrich(&self, raw: &RawFlow, node: &str, clock: &Clock) -> Flow {
        let unix_ns = clock.unix_ns(raw.monotonic_ns);
        let source = self.end(raw.saddr, raw.sport, raw.src_identity);
        let destination = self.end(raw.daddr, raw.dport, raw.dst_identity);
        let ports = matches!(raw.protocol, 6 | 17 | 132);
        let strip = |mut end: FlowEnd| {
            if !ports {
                end.port = 0;
            }
            end
        };
        Flow {
            time: rfc3339(unix_ns),
            time_unix_ns: unix_ns,
            node: node.to_owned(),
            verdict: raw.verdict,
            direction: raw.direction.name().to_owned(),
            reason: raw.reason.map(|r| match r {
                Ok(reason) => reason.name().to_owned(),
                Err(n) => format!("reason_{n}"),
            }),
            protocol: protocol_name(raw.protocol),
            service: raw
                .frontend
                .map(|(ip, port)| strip(self.end(ip, port, None))),
            egress: self.direction_verdict(raw.egress, raw.saddr, Direction::Egress),
            ingress: self.direction_verdict(raw.ingress, raw.daddr, Direction::Ingress),
            source: strip(source),
            destination: strip(destination),
        }
    }
}

/// The selector and directions of a policy, as the compiler reads them
/// (the API server's defaulting of `policyTypes`). A selector that does
/// not parse selects nothing here (the compiler reports it).
fn selecting(namespace: &str, name: &str, policy: &NetworkPolicy) -> Option<Selecting> {
    let spec = policy.spec.as_ref()?;
    let selector = Selector::parse_optional(spec.pod_selector.as_ref()).ok()?;
    let (mut ingress, mut egress) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            ingress = true;
            egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for t in types {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    _ => {}
                }
            }
        }
    }
    Some(Selecting {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        selector,
        ingress,
        egress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{parse_documents, Event};
    use sluice_common::{observe::FlowVerdict, reason::Reason};

    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {nodeName: node2, containers: [{name: c, image: i}]}
status: {podIP: 10.244.2.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: y}
spec: {podSelector: {matchLabels: {pod: b}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other, namespace: y}
spec: {podSelector: {matchLabels: {pod: c}}}
"#;
        for resource in parse_documents(yaml) {
            state.apply(Event::Apply(resource.expect("valid fixture")));
        }
        state
    }

    fn raw_denied() -> RawFlow {
        super::super::decode::decode(&super::super::decode::tests::bytes(
            &super::super::decode::tests::denied_ingress(),
        ))
        .expect("decode")
    }

    #[test]
    fn names_both_pods_their_nodes_and_the_selecting_policy() {
        let directory = Directory::build(
            &state(),
            &BTreeMap::from([(Ipv4Addr::new(10, 244, 1, 2), 300)]),
            &IdentityAllocator::new(),
        );
        let flow = directory.enrich(&raw_denied(), "node2", &Clock::with_offset(1_000_000_000));
        assert_eq!(flow.verdict, FlowVerdict::Denied);
        assert_eq!(flow.node, "node2");
        assert_eq!(flow.time_unix_ns, 1_000_005_000);
        assert_eq!(flow.time, "1970-01-01T00:00:01.000005Z");
        assert_eq!(
            flow.reason.as_deref(),
            Some(Reason::DropPolicyIngress.name())
        );
        assert_eq!(flow.protocol, "TCP");
        assert_eq!(flow.source.name(), "x/a");
        assert_eq!(flow.source.node.as_deref(), Some("node1"));
        assert_eq!(flow.source.identity, Some(300));
        assert_eq!(flow.source.labels.get("pod").map(String::as_str), Some("a"));
        assert_eq!(flow.destination.name(), "y/b");
        assert_eq!(flow.destination.port, 80);
        let ingress = flow.ingress.expect("ingress decided here");
        assert_eq!(ingress.decision, "denied");
        assert_eq!(
            flow.source.identity_labels, None,
            "no label set allocated here"
        );
        assert_eq!(ingress.policies, ["y/deny-b"]);
        assert_eq!(flow.egress.expect("egress decided").decision, "open");
    }

    #[test]
    fn an_unknown_address_keeps_its_ip_and_icmp_has_no_ports() {
        let mut raw = raw_denied();
        raw.saddr = Ipv4Addr::new(192, 0, 2, 1);
        raw.protocol = 1;
        let flow = Directory::default().enrich(&raw, "node1", &Clock::with_offset(0));
        assert_eq!(flow.source.name(), "192.0.2.1");
        assert_eq!(flow.source.namespace, None);
        assert_eq!((flow.source.port, flow.destination.port), (0, 0));
        assert_eq!(flow.protocol, "ICMP");
    }
}
