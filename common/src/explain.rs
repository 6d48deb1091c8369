//! `sluice policy explain`: the question (which flow) and the answer (the
//! verdict of each direction, the policies and rules behind it, and what
//! the datapath's own maps say), as they travel on the agent's local API.
//! The CLI and the lab print them; the agent computes them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One end of the flow to explain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EndRef {
    /// A Pod by namespace and name.
    Pod { namespace: String, name: String },
    /// An address: a pod's, or one outside the cluster (ipBlock peers).
    Ip { ip: Ipv4Addr },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{0:?} is neither NAMESPACE/POD nor an IPv4 address")]
    BadEnd(String),
    #[error("{0:?} is not PORT[/PROTOCOL] (e.g. 80/TCP)")]
    BadPortSyntax(String),
    #[error("port {0:?} is not a number in 1-65535")]
    BadPort(String),
    #[error("protocol {0:?} is not TCP, UDP or SCTP")]
    BadProtocol(String),
}

impl FromStr for EndRef {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, QueryError> {
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(EndRef::Ip { ip });
        }
        let bad = || QueryError::BadEnd(s.to_owned());
        let (namespace, name) = s.split_once('/').ok_or_else(bad)?;
        let word = |w: &str| !w.is_empty() && !w.contains(['/', ' ']);
        if !word(namespace) || !word(name) {
            return Err(bad());
        }
        Ok(EndRef::Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for EndRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndRef::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            EndRef::Ip { ip } => write!(f, "{ip}"),
        }
    }
}

/// The transport protocols NetworkPolicy names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// A destination port and its protocol: `80/TCP`, `53/udp`, or `80`
/// (TCP, as NetworkPolicy defaults it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: Protocol,
}

impl FromStr for PortSpec {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, QueryError> {
        let (port, protocol) = match s.split('/').collect::<Vec<_>>().as_slice() {
            [port] => (*port, "TCP"),
            [port, protocol] => (*port, *protocol),
            _ => return Err(QueryError::BadPortSyntax(s.to_owned())),
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| QueryError::BadPort(port.to_owned()))?;
        let protocol = match protocol.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => return Err(QueryError::BadProtocol(protocol.to_owned())),
        };
        Ok(PortSpec { port, protocol })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.name())
    }
}

/// What to explain: a new flow from `from` to `to` on `port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainQuery {
    pub from: EndRef,
    pub to: EndRef,
    pub port: PortSpec,
}

/// One end, as the agent resolved it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// `namespace/name` when the end is a pod.
    pub pod: Option<String>,
    pub ip: Option<Ipv4Addr>,
    /// The node the pod runs on, when the Pod object says.
    pub node: Option<String>,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pod, self.ip) {
            (Some(pod), Some(ip)) => write!(f, "{pod} ({ip})"),
            (Some(pod), None) => write!(f, "{pod} (no address)"),
            (None, Some(ip)) => write!(f, "{ip} (no pod)"),
            (None, None) => f.write_str("?"),
        }
    }
}

/// What one direction's policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The end is not a pod: no policy of it applies.
    NotApplicable,
    /// No policy selects the pod in this direction.
    NotIsolated,
    Allowed,
    Denied,
    /// Denied, but the pod is in policy audit mode: it passes.
    WouldDeny,
}

impl Verdict {
    /// Whether traffic passes this direction.
    pub fn passes(self) -> bool {
        self != Verdict::Denied
    }

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::NotApplicable => "not applicable",
            Verdict::NotIsolated => "allowed (not isolated)",
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::WouldDeny => "would deny (audit mode: passes)",
        }
    }
}

/// What the datapath's decision says, in an explanation's terms.
impl From<crate::policy::Decision> for Verdict {
    fn from(decision: crate::policy::Decision) -> Self {
        use crate::policy::Decision;
        match decision {
            Decision::Open => Verdict::NotIsolated,
            Decision::Allowed => Verdict::Allowed,
            Decision::Denied => Verdict::Denied,
            Decision::WouldDeny => Verdict::WouldDeny,
        }
    }
}

/// A rule that lets the flow through, e.g. `x/allow-from-y ingress[0]
/// from[1] (namespaceSelector ns=y) port 80/TCP`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    /// `namespace/name` of the NetworkPolicy.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Index of the rule in the policy's list of that direction.
    pub rule: usize,
    /// Index of the matching peer in `from`/`to`; `None`: the rule names
    /// no peer (every peer).
    pub peer: Option<usize>,
    /// The peer in words.
    pub peer_text: String,
    /// The port in words.
    pub port_text: String,
}

impl fmt::Display for RuleMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.direction == "ingress" {
            "from"
        } else {
            "to"
        };
        write!(f, "{} {}[{}] ", self.policy, self.direction, self.rule)?;
        match self.peer {
            Some(peer) => write!(f, "{field}[{peer}] ({})", self.peer_text)?,
            None => write!(f, "({})", self.peer_text)?,
        }
        write!(f, " {}", self.port_text)
    }
}

/// What the kernel's maps say about the same direction: the dataplane's
/// own decision function run over the maps this agent wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathCheck {
    /// The node whose maps were read.
    pub node: String,
    /// The pod's endpoint id in that node's maps.
    pub endpoint: u32,
    pub verdict: Verdict,
    /// Whether `verdict` is the computed one. `false` is a bug: the maps
    /// do not hold what the cluster state asks for.
    pub agrees: bool,
    /// The map lookups the decision made, in order, with their answers.
    pub lookups: Vec<String>,
}

/// One direction of the flow: the egress policy of its source or the
/// ingress policy of its destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionExplanation {
    /// `ingress` or `egress`.
    pub direction: String,
    /// The pod whose policy this is (`namespace/name`).
    pub pod: Option<String>,
    /// Computed from the cluster state the agent holds.
    pub verdict: Verdict,
    /// The NetworkPolicies that select the pod in this direction.
    pub isolated_by: Vec<String>,
    /// The rules that let the flow through (empty when denied).
    pub allowed_by: Vec<RuleMatch>,
    /// Anything else that decided or bears on the verdict.
    pub notes: Vec<String>,
    /// `None`: the pod is not on the answering node, whose maps hold only
    /// its own pods' policy.
    pub datapath: Option<DatapathCheck>,
}

/// The answer to an [`ExplainQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The node whose agent answered.
    pub node: String,
    pub from: End,
    pub to: End,
    pub port: PortSpec,
    pub egress: DirectionExplanation,
    pub ingress: DirectionExplanation,
}

impl Explanation {
    /// Both directions let the flow through.
    pub fn allowed(&self) -> bool {
        self.egress.verdict.passes() && self.ingress.verdict.passes()
    }

    /// Some direction's datapath check disagrees with the computed verdict.
    pub fn disagreements(&self) -> impl Iterator<Item = &DirectionExplanation> {
        [&self.egress, &self.ingress]
            .into_iter()
            .filter(|d| d.datapath.as_ref().is_some_and(|c| !c.agrees))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_pods_or_addresses() {
        assert_eq!(
            "x/a".parse(),
            Ok(EndRef::Pod {
                namespace: "x".into(),
                name: "a".into()
            })
        );
        assert_eq!(
            "10.244.1.3".parse(),
            Ok(EndRef::Ip {
                ip: Ipv4Addr::new(10, 244, 1, 3)
            })
        );
        for bad in ["a", "x/", "/a", "x/a/b", "10.0.0.300", ""] {
            assert!(
                matches!(bad.parse::<EndRef>(), Err(QueryError::BadEnd(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ports_default_to_tcp_and_are_checked() {
        let tcp80 = PortSpec {
            port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!("80/TCP".parse(), Ok(tcp80));
        assert_eq!("80".parse(), Ok(tcp80));
        assert_eq!("80/tcp".parse(), Ok(tcp80));
        assert_eq!(
            "53/UDP".parse::<PortSpec>().map(|p| p.protocol),
            Ok(Protocol::Udp)
        );
        assert_eq!(
            "0/TCP".parse::<PortSpec>(),
            Err(QueryError::BadPort("0".into()))
        );
        assert_eq!(
            "http/TCP".parse::<PortSpec>(),
            Err(QueryError::BadPort("http".into()))
        );
        assert_eq!(
            "80/ICMP".parse::<PortSpec>(),
            Err(QueryError::BadProtocol("ICMP".into()))
        );
        assert!(matches!(
            "80/TCP/x".parse::<PortSpec>(),
            Err(QueryError::BadPortSyntax(_))
        ));
        assert_eq!(tcp80.to_string(), "80/TCP");
    }

    #[test]
    fn a_rule_match_reads_like_the_policy() {
        let m = RuleMatch {
            policy: "x/allow-from-y".into(),
            direction: "ingress".into(),
            rule: 0,
            peer: Some(1),
            peer_text: "namespaceSelector ns=y".into(),
            port_text: "port 80/TCP".into(),
        };
        assert_eq!(
            m.to_string(),
            "x/allow-from-y ingress[0] from[1] (namespaceSelector ns=y) port 80/TCP"
        );
    }
}
