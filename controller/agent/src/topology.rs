//! What this node must know about the others, computed from Node objects:
//! their addresses and pod ranges, and from those the ipcache entries,
//! routes and masquerade exceptions the agent programs. Pure functions; the
//! kernel side is `node_sync`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use sluice_common::{
    identity,
    ipcache::{flags, RemoteInfo},
};

use crate::config::Routing;

/// A node as the dataplane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The InternalIP: tunnel endpoint or next hop.
    pub ip: Ipv4Addr,
    /// IPv4 pod ranges (`spec.podCIDRs`, else `spec.podCIDR`).
    pub pod_cidrs: Vec<Ipv4Net>,
}

/// A Node object the agent cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProblem {
    pub node: String,
    pub reason: String,
}

/// Reads what the dataplane needs from a Node object.
pub fn node_info(node: &Node) -> Result<NodeInfo, String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let ip = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        })
        .ok_or("no IPv4 InternalIP in status.addresses")?;
    let spec = node.spec.as_ref();
    let listed: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(cidrs) if !cidrs.is_empty() => cidrs.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    let mut pod_cidrs = Vec::new();
    for cidr in listed {
        match cidr.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(v4)) => pod_cidrs.push(v4.trunc()),
            // Dual-stack nodes list an IPv6 range too; not carried yet.
            Ok(ipnet::IpNet::V6(_)) => {}
            Err(e) => return Err(format!("invalid pod CIDR {cidr:?}: {e}")),
        }
    }
    Ok(NodeInfo {
        name,
        ip,
        pod_cidrs,
    })
}

/// The pod CIDR this node's agent allocates from: the configured one
/// (the lab, hand-run agents), else the node's own first IPv4 one, which
/// the controller manager allocates (a cluster).
pub fn own_pod_cidr(own: &NodeInfo, configured: Option<Ipv4Net>) -> Result<Ipv4Net, String> {
    configured
        .or_else(|| own.pod_cidrs.first().copied())
        .ok_or_else(|| "no IPv4 spec.podCIDR yet (and no --pod-cidr)".to_owned())
}

/// This node and the others, as usable for routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub own: Option<NodeInfo>,
    pub remotes: Vec<NodeInfo>,
    pub problems: Vec<NodeProblem>,
}

/// A route to another node's pod range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeRoute {
    pub dst: Ipv4Net,
    /// Native routing: the node's address. Tunnel: none (the VXLAN device).
    pub via: Option<Ipv4Addr>,
}

/// Sorts the Node objects into this node and usable remote nodes. A node
/// whose pod range overlaps one already taken (this node's first, then in
/// name order) is skipped as a whole: routing its range would steal
/// another node's pods.
pub fn topology(nodes: &BTreeMap<String, Node>, own_name: &str, own_cidr: Ipv4Net) -> Topology {
    let mut topo = Topology::default();
    let mut taken: Vec<(Ipv4Net, String)> = vec![(own_cidr, own_name.to_owned())];
    let mut problem = |node: &str, reason: String| {
        topo.problems.push(NodeProblem {
            node: node.to_owned(),
            reason,
        })
    };
    let mut remotes = Vec::new();
    for (name, node) in nodes {
        let info = match node_info(node) {
            Ok(info) => info,
            Err(reason) => {
                problem(name, reason);
                continue;
            }
        };
        if name == own_name {
            topo.own = Some(info);
            continue;
        }
        let clash = info.pod_cidrs.iter().find_map(|c| {
            taken
                .iter()
                .find(|(t, _)| t.contains(c) || c.contains(t))
                .map(|(t, owner)| format!("pod CIDR {c} overlaps {t} of node {owner}"))
        });
        if let Some(reason) = clash {
            problem(name, reason);
            continue;
        }
        taken.extend(info.pod_cidrs.iter().map(|c| (*c, name.clone())));
        remotes.push(info);
    }
    topo.remotes = remotes;
    topo
}

impl Topology {
    /// The ipcache: every remote pod range behind its node, and every
    /// node's own address with its reserved identity.
    pub fn ipcache(&self) -> BTreeMap<Ipv4Net, RemoteInfo> {
        let mut out = BTreeMap::new();
        for node in &self.remotes {
            for cidr in &node.pod_cidrs {
                out.insert(
                    *cidr,
                    RemoteInfo {
                        identity: identity::UNKNOWN,
                        tunnel_endpoint: node.ip.octets(),
                        flags: flags::REMOTE_POD_CIDR,
                        _pad: 0,
                    },
                );
            }
        }
        let own = self.own.iter().map(|n| (n, identity::HOST));
        let remotes = self.remotes.iter().map(|n| (n, identity::REMOTE_NODE));
        for (node, identity) in own.chain(remotes) {
            out.insert(
                Ipv4Net::from(node.ip),
                RemoteInfo {
                    identity,
                    tunnel_endpoint: node.ip.octets(),
                    flags: flags::NODE,
                    _pad: 0,
                },
            );
        }
        out
    }

    /// [`Self::ipcache`] plus every pod's address with its identity (pods
    /// on other nodes behind their node) and this node's gateway address as
    /// the host itself; other nodes' gateways (the first address of their
    /// ranges, the same convention) as remote nodes.
    pub fn ipcache_with_pods(
        &self,
        pods: &BTreeMap<Ipv4Addr, u32>,
        gateway: Ipv4Addr,
    ) -> BTreeMap<Ipv4Net, RemoteInfo> {
        let mut out = self.ipcache();
        let owner = |ip: Ipv4Addr| {
            self.remotes
                .iter()
                .find(|n| n.pod_cidrs.iter().any(|c| c.contains(&ip)))
        };
        for (ip, identity) in pods {
            let entry = match owner(*ip) {
                Some(node) => RemoteInfo {
                    identity: *identity,
                    tunnel_endpoint: node.ip.octets(),
                    flags: flags::REMOTE_POD_CIDR,
                    _pad: 0,
                },
                None => RemoteInfo {
                    identity: *identity,
                    tunnel_endpoint: [0; 4],
                    flags: 0,
                    _pad: 0,
                },
            };
            out.insert(Ipv4Net::from(*ip), entry);
        }
        for node in &self.remotes {
            for cidr in &node.pod_cidrs {
                if let Some(gw) = cidr.hosts().next() {
                    out.insert(
                        Ipv4Net::from(gw),
                        RemoteInfo {
                            identity: identity::REMOTE_NODE,
                            tunnel_endpoint: node.ip.octets(),
                            flags: flags::REMOTE_POD_CIDR | flags::NODE,
                            _pad: 0,
                        },
                    );
                }
            }
        }
        out.insert(
            Ipv4Net::from(gateway),
            RemoteInfo {
                identity: identity::HOST,
                tunnel_endpoint: self.own.as_ref().map_or([0; 4], |n| n.ip.octets()),
                flags: flags::NODE,
                _pad: 0,
            },
        );
        out
    }

    /// Kernel routes to the other nodes' pod ranges, so the host itself
    /// (and traffic the programs leave to it) reaches remote pods.
    pub fn routes(&self, routing: Routing) -> BTreeSet<NodeRoute> {
        self.remotes
            .iter()
            .flat_map(|node| {
                node.pod_cidrs.iter().map(move |dst| NodeRoute {
                    dst: *dst,
                    via: match routing {
                        Routing::Tunnel => None,
                        Routing::Native => Some(node.ip),
                    },
                })
            })
            .collect()
    }

    /// Destinations pod traffic reaches with its own source address: every
    /// pod range and every node of the cluster.
    pub fn cluster_destinations(&self, own_cidr: Ipv4Net) -> BTreeSet<Ipv4Net> {
        let nodes = self.own.iter().chain(&self.remotes);
        let mut out: BTreeSet<Ipv4Net> = nodes
            .flat_map(|n| n.pod_cidrs.iter().copied().chain([Ipv4Net::from(n.ip)]))
            .collect();
        out.insert(own_cidr);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidrs: &[&str]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
            "status": {"addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip},
            ]},
        }))
        .expect("node")
    }

    fn nodes(list: Vec<Node>) -> BTreeMap<String, Node> {
        list.into_iter()
            .map(|n| (n.metadata.name.clone().expect("name"), n))
            .collect()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    #[test]
    fn the_configured_pod_cidr_wins_over_the_nodes() {
        let mut own =
            node_info(&node("n1", "172.30.0.11", &["fd00::/64", "10.244.1.0/24"])).expect("info");
        assert_eq!(own_pod_cidr(&own, None), Ok(net("10.244.1.0/24")));
        assert_eq!(
            own_pod_cidr(&own, Some(net("10.9.0.0/24"))),
            Ok(net("10.9.0.0/24"))
        );
        own.pod_cidrs.clear();
        assert!(own_pod_cidr(&own, None).unwrap_err().contains("podCIDR"));
    }

    #[test]
    fn reads_internal_ip_and_ipv4_pod_cidrs() {
        let n = node("n1", "172.30.0.11", &["10.244.1.0/24", "fd00:1::/64"]);
        let info = node_info(&n).expect("info");
        assert_eq!(info.ip, Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(info.pod_cidrs, vec![net("10.244.1.0/24")]);

        let mut only_legacy = node("n2", "172.30.0.12", &[]);
        only_legacy.spec.as_mut().expect("spec").pod_cidr = Some("10.244.2.7/24".into());
        assert_eq!(
            node_info(&only_legacy).expect("info").pod_cidrs,
            vec![net("10.244.2.0/24")]
        );
    }

    #[test]
    fn nodes_without_address_or_with_bad_cidr_are_problems() {
        let no_ip: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n3"}, "spec": {"podCIDR": "10.244.3.0/24"},
        }))
        .expect("node");
        let bad = node("n4", "172.30.0.14", &["10.244.999.0/24"]);
        let topo = topology(
            &nodes(vec![
                no_ip,
                bad,
                node("n1", "172.30.0.11", &["10.244.1.0/24"]),
            ]),
            "n1",
            net("10.244.1.0/24"),
        );
        assert!(topo.remotes.is_empty());
        assert_eq!(topo.problems.len(), 2);
        assert!(topo.problems[0].reason.contains("InternalIP"), "{topo:?}");
        assert!(topo.problems[1].reason.contains("10.244.999.0"), "{topo:?}");
        assert_eq!(topo.own.expect("own").ip, Ipv4Addr::new(172, 30, 0, 11));
    }

    #[test]
    fn overlapping_pod_cidrs_skip_the_later_node() {
        let topo = topology(
            &nodes(vec![
                node("a", "172.30.0.11", &["10.244.1.0/24"]),
                node("b", "172.30.0.12", &["10.244.0.0/16"]),
                node("c", "172.30.0.13", &["10.244.3.0/24"]),
                node("d", "172.30.0.14", &["10.244.3.128/25"]),
            ]),
            "a",
            net("10.244.1.0/24"),
        );
        let names: Vec<_> = topo.remotes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["c"]);
        assert_eq!(topo.problems.len(), 2, "{topo:?}");
    }

    #[test]
    fn ipcache_routes_and_cluster_destinations() {
        let topo = topology(
            &nodes(vec![
                node("a", "172.30.0.11", &["10.244.1.0/24"]),
                node("b", "172.30.0.12", &["10.244.2.0/24"]),
            ]),
            "a",
            net("10.244.1.0/24"),
        );
        let cache = topo.ipcache();
        assert_eq!(cache.len(), 3);
        let remote = cache[&net("10.244.2.0/24")];
        assert_eq!(remote.tunnel_endpoint, [172, 30, 0, 12]);
        assert_eq!(remote.flags, flags::REMOTE_POD_CIDR);
        assert_eq!(cache[&net("172.30.0.11/32")].identity, identity::HOST);
        assert_eq!(
            cache[&net("172.30.0.12/32")].identity,
            identity::REMOTE_NODE
        );

        let tunnel: Vec<_> = topo.routes(Routing::Tunnel).into_iter().collect();
        assert_eq!(
            tunnel,
            [NodeRoute {
                dst: net("10.244.2.0/24"),
                via: None
            }]
        );
        let native: Vec<_> = topo.routes(Routing::Native).into_iter().collect();
        assert_eq!(native[0].via, Some(Ipv4Addr::new(172, 30, 0, 12)));

        let dsts: Vec<_> = topo
            .cluster_destinations(net("10.244.1.0/24"))
            .into_iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            dsts,
            [
                "10.244.1.0/24",
                "10.244.2.0/24",
                "172.30.0.11/32",
                "172.30.0.12/32"
            ]
        );
    }
}
