//! The lab's fixed addressing plan and names, as pure functions: which
//! namespace is called what, which node gets which address and pod CIDR.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;

/// The fabric: one bridge that every node's `eth0` hangs off, like a ToR
/// switch with the nodes' default gateway on it.
pub const FABRIC_BRIDGE: &str = "br0";
pub const FABRIC_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
pub const FABRIC_PREFIX: u8 = 24;
/// Node `i` is `172.30.0.{NODE_IP_OFFSET + i}`.
const NODE_IP_OFFSET: u8 = 10;
/// Node addresses must stay below the fabric's broadcast address.
pub const MAX_NODES: usize = 254 - NODE_IP_OFFSET as usize;

/// The "internet": a host behind the fabric with no route to pod CIDRs, so
/// its replies reach pods only when the node masquerades.
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const EXT_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const EXT_PREFIX: u8 = 24;
/// The fabric-side end of the external host's link.
pub const EXT_FABRIC_LINK: &str = "ext";

/// The uplink every node and the external host see.
pub const UPLINK: &str = "eth0";

/// Lab names prefix netns names, so they stay short and shell-safe.
const MAX_LAB_NAME: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("a lab has 1 to {MAX_NODES} nodes, not {0}")]
    NodeCount(usize),
    #[error(
        "pod CIDR {cidr} cannot hold {nodes} node /24s (node i gets the i-th /24, counting from 1); \
         use a prefix of /23 or shorter with room for {nodes} + 1 /24s"
    )]
    PodCidrTooSmall { cidr: Ipv4Net, nodes: usize },
    #[error("invalid pod reference {0:?}: want NAMESPACE/NAME")]
    PodRef(String),
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> TopologyError {
    TopologyError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    }
}

/// RFC 1123 label, as Kubernetes requires of namespace and pod names.
pub fn validate_dns_label(what: &'static str, value: &str) -> Result<(), TopologyError> {
    if value.is_empty() || value.len() > 63 {
        return Err(invalid(what, value, "must be 1 to 63 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            what,
            value,
            "only lowercase letters, digits and '-' are allowed",
        ));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(invalid(
            what,
            value,
            "must start and end with a letter or digit",
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain, as Kubernetes requires of most object names.
pub fn validate_dns_subdomain(what: &'static str, value: &str) -> Result<(), TopologyError> {
    if value.is_empty() || value.len() > 253 {
        return Err(invalid(what, value, "must be 1 to 253 characters"));
    }
    for label in value.split('.') {
        validate_dns_label(what, label).map_err(|_| {
            invalid(
                what,
                value,
                "must be lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit",
            )
        })?;
    }
    Ok(())
}

/// A label key (`[prefix/]name`) and value, by the API server's rules.
pub fn validate_label(key: &str, value: &str) -> Result<(), TopologyError> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        validate_dns_subdomain("label key prefix", prefix)?;
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(invalid(
            "label key",
            key,
            "the name part must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ));
    }
    if !value.is_empty() && !is_label_name(value) {
        return Err(invalid(
            "label value",
            value,
            "must be empty or 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

fn is_label_name(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub fn validate_lab_name(name: &str) -> Result<(), TopologyError> {
    validate_dns_label("lab name", name)?;
    if name.len() > MAX_LAB_NAME {
        return Err(invalid("lab name", name, "must be at most 40 characters"));
    }
    Ok(())
}

/// `node{index}`, 1-based.
pub fn node_name(index: usize) -> String {
    format!("node{index}")
}

/// The index of a node name made by [`node_name`].
pub fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node")
        .filter(|n| !n.starts_with('0'))
        .and_then(|n| n.parse().ok())
}

pub fn node_ip(index: usize) -> Ipv4Addr {
    debug_assert!((1..=MAX_NODES).contains(&index));
    Ipv4Addr::new(172, 30, 0, NODE_IP_OFFSET + index as u8)
}

/// The `index`-th /24 of the cluster CIDR, counting from 1, so no node gets
/// the cluster's network address as its own.
pub fn node_pod_cidr(
    cluster: Ipv4Net,
    index: usize,
    nodes: usize,
) -> Result<Ipv4Net, TopologyError> {
    let too_small = || TopologyError::PodCidrTooSmall {
        cidr: cluster,
        nodes,
    };
    if cluster.prefix_len() > 23 {
        return Err(too_small());
    }
    let room = 1usize << (24 - cluster.prefix_len());
    if index >= room || nodes >= room {
        return Err(too_small());
    }
    let base = u32::from(cluster.network()) + ((index as u32) << 8);
    Ipv4Net::new(Ipv4Addr::from(base), 24).map_err(|_| too_small())
}

/// What a lab needs to know about a node before it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub index: usize,
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

/// Names and addresses of `nodes` nodes of lab `lab`.
pub fn plan_nodes(
    lab: &str,
    nodes: usize,
    cluster: Ipv4Net,
) -> Result<Vec<NodePlan>, TopologyError> {
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(TopologyError::NodeCount(nodes));
    }
    (1..=nodes)
        .map(|index| {
            Ok(NodePlan {
                index,
                name: node_name(index),
                netns: node_netns(lab, index),
                ip: node_ip(index),
                pod_cidr: node_pod_cidr(cluster, index, nodes)?,
            })
        })
        .collect()
}

pub fn fabric_netns(lab: &str) -> String {
    format!("{lab}-fabric")
}

pub fn ext_netns(lab: &str) -> String {
    format!("{lab}-ext")
}

pub fn node_netns(lab: &str, index: usize) -> String {
    format!("{lab}-{}", node_name(index))
}

pub fn pod_netns(lab: &str, pod: &PodName) -> String {
    format!("{lab}-pod-{}-{}", pod.namespace, pod.name)
}

/// Whether `netns` is one this lab makes: exactly the shapes above, so a
/// lab named `a` never claims the namespaces of a lab named `a-b`.
pub fn is_lab_netns(lab: &str, netns: &str) -> bool {
    let Some(rest) = netns.strip_prefix(lab).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    rest == "fabric"
        || rest == "ext"
        || node_index(rest).is_some()
        || rest.strip_prefix("pod-").is_some_and(|p| p.contains('-'))
}

/// `NAMESPACE/NAME` of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl PodName {
    pub fn new(namespace: &str, name: &str) -> Result<Self, TopologyError> {
        validate_dns_label("namespace", namespace)?;
        validate_dns_label("pod name", name)?;
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The container id the lab hands to CNI: `_` cannot occur in either
    /// name, so distinct pods never share one.
    pub fn container_id(&self) -> String {
        format!("{}_{}", self.namespace, self.name)
    }
}

impl FromStr for PodName {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| TopologyError::PodRef(s.to_owned()))?;
        Self::new(namespace, name)
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    #[test]
    fn nodes_get_consecutive_addresses_and_the_ith_slash24() {
        let plan = plan_nodes("lab", 3, cidr("10.244.0.0/16")).expect("plan");
        let got: Vec<_> = plan
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.netns.as_str(),
                    n.ip.to_string(),
                    n.pod_cidr.to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "node1",
                    "lab-node1",
                    "172.30.0.11".into(),
                    "10.244.1.0/24".into()
                ),
                (
                    "node2",
                    "lab-node2",
                    "172.30.0.12".into(),
                    "10.244.2.0/24".into()
                ),
                (
                    "node3",
                    "lab-node3",
                    "172.30.0.13".into(),
                    "10.244.3.0/24".into()
                ),
            ]
        );
    }

    #[test]
    fn pod_cidr_must_have_room_for_every_node() {
        assert_eq!(
            node_pod_cidr(cidr("10.9.0.0/23"), 1, 1),
            Ok(cidr("10.9.1.0/24"))
        );
        assert!(node_pod_cidr(cidr("10.9.0.0/23"), 1, 2).is_err());
        assert!(node_pod_cidr(cidr("10.9.0.0/24"), 1, 1).is_err());
        // A CIDR with host bits set counts from its network address.
        assert_eq!(
            node_pod_cidr(cidr("10.244.7.9/16"), 2, 2),
            Ok(cidr("10.244.2.0/24"))
        );
        assert!(plan_nodes("lab", 0, cidr("10.244.0.0/16")).is_err());
        assert!(plan_nodes("lab", MAX_NODES + 1, cidr("10.0.0.0/8")).is_err());
        let last = plan_nodes("lab", MAX_NODES, cidr("10.0.0.0/8")).expect("plan");
        assert_eq!(
            last.last().map(|n| n.ip),
            Some(Ipv4Addr::new(172, 30, 0, 254))
        );
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(validate_dns_label("pod name", "a-1").is_ok());
        for bad in ["", "A", "a_b", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(validate_dns_label("pod name", bad).is_err(), "{bad:?}");
        }
        assert!(validate_dns_subdomain("name", "allow.x-1").is_ok());
        assert!(validate_dns_subdomain("name", "a..b").is_err());
        assert!(validate_lab_name(&"a".repeat(41)).is_err());
        assert!(validate_lab_name("sluice-lab").is_ok());
    }

    #[test]
    fn labels_follow_the_api_server_rules() {
        for (k, v) in [
            ("pod", "a"),
            ("kubernetes.io/metadata.name", "x"),
            ("a_b.c", ""),
            ("k", "A-1_b.2"),
        ] {
            assert!(validate_label(k, v).is_ok(), "{k}={v}");
        }
        for (k, v) in [
            ("", "a"),
            ("-a", "a"),
            ("a", "-b"),
            ("a b", "c"),
            ("Bad_/x", "y"),
            ("k", &"v".repeat(64)),
        ] {
            assert!(validate_label(k, v).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn pod_references_parse_and_print() {
        let pod: PodName = "x/a".parse().expect("pod");
        assert_eq!(pod.to_string(), "x/a");
        assert_eq!(pod.container_id(), "x_a");
        assert_eq!(pod_netns("lab", &pod), "lab-pod-x-a");
        for bad in ["x", "x/", "/a", "x/A", "x/a/b"] {
            assert!(bad.parse::<PodName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lab_netns_match_only_their_own_shapes() {
        for own in ["a-fabric", "a-ext", "a-node1", "a-node12", "a-pod-x-a"] {
            assert!(is_lab_netns("a", own), "{own}");
        }
        for other in [
            "a-b-node1",
            "a-b-fabric",
            "ab-node1",
            "a-node",
            "a-node01",
            "a",
            "b-ext",
        ] {
            assert!(!is_lab_netns("a", other), "{other}");
        }
        assert_eq!(node_index("node7"), Some(7));
        assert_eq!(node_index("node"), None);
    }
}
