//! Veth naming (pure) and the netlink sequence that wires a pod.
//!
//! The host-side name is derived from the attachment alone, so DEL, CHECK, a
//! retried ADD and the agent's GC all find the link without any state.

use std::{net::IpAddr, os::fd::AsRawFd};

use netlink_packet_route::{
    address::AddressHeaderFlags,
    link::{InfoData, InfoVeth},
    route::{RouteAttribute, RouteMetric, RouteScope},
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use crate::{
    dataplane::{WireRequest, Wired},
    error::Error,
    netlink::{self, link_by_name},
};

/// Prefix of host-side veth names ("lxc", as in Cilium, so tools that know
/// that convention recognise the devices).
pub const HOST_PREFIX: &str = "lxc";
/// Hex characters of the hash in a name: prefix + 11 = 14 <= IFNAMSIZ - 1.
const HASH_CHARS: usize = 11;

/// Host-side veth name of an attachment: "lxc" + the first 11 hex characters
/// of sha256("<container_id>/<ifname>"). 44 bits of hash make a collision
/// between the pods of one node vanishingly unlikely.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("{HOST_PREFIX}{}", attachment_hash(container_id, ifname))
}

fn attachment_hash(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(HASH_CHARS);
    hex
}

/// Host prefix length of an address: the pod gets a /32 (or /128), the
/// node's pod CIDR is routed by the agent, not by an on-link prefix.
pub fn host_prefix_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Wires the veth: `host` is a netlink handle bound to the host namespace,
/// `pod` one bound to the pod's namespace.
///
/// Order matters for rollback: the first thing created is the veth pair, and
/// deleting its host side removes everything created after it, so the
/// caller's rollback is "delete the host side" whatever step failed.
pub async fn wire(host: &Handle, pod: &Handle, req: &WireRequest<'_>) -> Result<Wired, Error> {
    // A retried ADD (the runtime lost our answer, or we died half-way) finds
    // its own earlier veth: both names derive from this attachment, so
    // removing them is safe and makes ADD idempotent.
    // Deleting the host side takes the pod side with it, wherever it is.
    if netlink::delete_link_by_name(host, req.host_ifname).await? {
        tracing::info!(
            ifname = req.host_ifname,
            "deleted a leftover link from an earlier ADD"
        );
    }
    if link_by_name(pod, req.ifname).await?.is_some() {
        return Err(Error::Wiring {
            message: format!(
                "interface {} already exists in {}",
                req.ifname,
                req.netns.path().display()
            ),
        });
    }

    let netns_fd = req.netns.fd().ok_or_else(|| Error::Wiring {
        message: format!("{} is not held open", req.netns.path().display()),
    })?;
    // The pod's side is born in the pod's namespace under its final name:
    // moving a device between namespaces waits for an RCU grace period
    // (tens of ms here), and a rename would follow. The host side comes up
    // with the pair; the pod side cannot (it is configured before the two
    // are joined, and a veth without its peer refuses to open).
    let peer = LinkUnspec::new_with_name(req.ifname)
        .mtu(req.mtu)
        .setns_by_fd(netns_fd.as_raw_fd())
        .build();
    let pair = LinkVeth::new(req.host_ifname, req.ifname)
        .mtu(req.mtu)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link().add(pair).execute().await.map_err(|e| {
        Error::netlink(
            format!(
                "creating veth {} <-> {} in {}",
                req.host_ifname,
                req.ifname,
                req.netns.path().display()
            ),
            e,
        )
    })?;

    let host_link = netlink::require_link(host, req.host_ifname).await?;
    let host_mac = sluice_sys::netlink::mac_of(&host_link).ok_or_else(|| Error::Wiring {
        message: format!("{} has no MAC address", req.host_ifname),
    })?;
    let pod_link = netlink::require_link(pod, req.ifname).await?;
    let pod_index = pod_link.header.index;
    let pod_mac = sluice_sys::netlink::mac_of(&pod_link).ok_or_else(|| Error::Wiring {
        message: format!("{} has no MAC address", req.ifname),
    })?;
    netlink::set_up(pod, pod_index, req.ifname).await?;
    let lo = netlink::require_link(pod, "lo").await?;
    netlink::set_up(pod, lo.header.index, "lo").await?;

    let prefix_len = host_prefix_len(req.ip);
    let mut add_address = pod.address().add(pod_index, req.ip, prefix_len);
    if req.ip.is_ipv6() {
        // No duplicate address detection: the address is the agent's to
        // hand out, and DAD would leave it tentative (unusable) for a while.
        add_address.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    add_address.execute().await.map_err(|e| {
        Error::netlink(
            format!("adding {}/{prefix_len} to {}", req.ip, req.ifname),
            e,
        )
    })?;

    // The gateway is not on any prefix of the pod (it has a /32), so it is
    // reached through an explicit on-link route...
    let to_gateway = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(req.gateway, host_prefix_len(req.gateway))
        .map_err(|e| invalid_route(req.gateway, e))?
        .output_interface(pod_index)
        .scope(RouteScope::Link)
        .build();
    pod.route().add(to_gateway).execute().await.map_err(|e| {
        Error::netlink(
            format!("adding route {} dev {}", req.gateway, req.ifname),
            e,
        )
    })?;
    // ...and everything else goes through it: off the node at the lower
    // MTU where there is one, the node's own pods at the device's.
    let unspecified = match req.gateway {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let mut routes = vec![(unspecified, 0, req.off_node.map(|(mtu, _)| mtu))];
    if let Some((_, node_pods)) = req.off_node {
        routes.push((node_pods.network(), node_pods.prefix_len(), None));
    }
    for (dst, prefix_len, mtu) in routes {
        let mut route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, prefix_len)
            .and_then(|b| b.gateway(req.gateway))
            .map_err(|e| invalid_route(req.gateway, e))?
            .output_interface(pod_index)
            .build();
        if let Some(mtu) = mtu {
            route
                .attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        pod.route().add(route).execute().await.map_err(|e| {
            Error::netlink(
                format!(
                    "adding route {dst}/{prefix_len} via {} dev {}{}",
                    req.gateway,
                    req.ifname,
                    mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
                ),
                e,
            )
        })?;
    }

    // Nothing answers ARP for the gateway (the eBPF program on the host side
    // redirects instead), so the pod learns its MAC from a permanent entry.
    pod.neighbours()
        .add(pod_index, req.gateway)
        .link_layer_address(&host_mac)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            Error::netlink(
                format!("adding neighbour {} on {}", req.gateway, req.ifname),
                e,
            )
        })?;

    Ok(Wired {
        host_ifindex: host_link.header.index,
        host_mac,
        pod_mac,
    })
}

/// The builder's error type is not exported by rtnetlink, hence `Display`.
fn invalid_route(gateway: IpAddr, e: impl std::fmt::Display) -> Error {
    Error::Wiring {
        message: format!("cannot build a route via {gateway}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_keep_their_prefix() {
        for (id, ifname) in [("a", "eth0"), (&"f".repeat(64)[..], "net1")] {
            let host = host_ifname(id, ifname);
            assert!(host.len() <= crate::env::MAX_IFNAME_LEN, "{host}");
            assert!(host.starts_with("lxc"), "{host}");
            assert!(crate::env::validate_ifname(&host).is_ok(), "{host}");
        }
    }

    #[test]
    fn names_are_deterministic() {
        let hex: String = Sha256::digest(b"abc/eth0")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(host_ifname("abc", "eth0"), format!("lxc{}", &hex[..11]));
        assert_eq!(host_ifname("abc", "eth0"), host_ifname("abc", "eth0"));
    }

    #[test]
    fn names_are_distinct() {
        let names = [
            host_ifname("abc", "eth0"),
            host_ifname("abc", "eth1"),
            host_ifname("abd", "eth0"),
            // The separator keeps id/ifname splits of the same text apart.
            host_ifname("abce", "th0"),
        ];
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn prefix_lengths() {
        assert_eq!(host_prefix_len("10.0.0.1".parse().expect("ip")), 32);
        assert_eq!(host_prefix_len("fd00::1".parse().expect("ip")), 128);
    }
}
