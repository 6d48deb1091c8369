//! The lab's underlay, wired with rtnetlink: a bridge in the fabric
//! namespace (the "switch" with the nodes' gateway on it), one veth per
//! node, and one to the external host. Everything lives inside the lab's
//! own namespaces, so deleting those removes all of it.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
};

use futures::TryStreamExt as _;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{
    netns::Netns,
    topology::{
        NodePlan, EXT_FABRIC_LINK, EXT_GATEWAY, EXT_IP, EXT_PREFIX, FABRIC_BRIDGE, FABRIC_GATEWAY,
        FABRIC_PREFIX, UPLINK,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {0} not found after creating it")]
    Missing(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FabricError {
    let what = what.into();
    move |source| FabricError::Io { what, source }
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> FabricError {
    let what = what.into();
    move |source| FabricError::Netlink { what, source }
}

/// One end of the underlay outside the fabric: a node or the external host.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// The veth's name on the fabric side.
    pub fabric_link: String,
    /// The namespace (name under /run/netns) holding the other end, which
    /// is named [`UPLINK`].
    pub netns: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The fabric-side address of this link's subnet, if the bridge does not
    /// carry it (the external host sits on its own subnet).
    pub fabric_ip: Option<(Ipv4Addr, u8)>,
}

/// The uplinks of these nodes plus the external host.
pub fn uplinks(nodes: &[NodePlan], ext_netns: &str) -> Vec<Uplink> {
    nodes
        .iter()
        .map(|n| Uplink {
            fabric_link: n.name.clone(),
            netns: n.netns.clone(),
            ip: n.ip,
            prefix: FABRIC_PREFIX,
            gateway: FABRIC_GATEWAY,
            fabric_ip: None,
        })
        .chain([Uplink {
            fabric_link: EXT_FABRIC_LINK.to_owned(),
            netns: ext_netns.to_owned(),
            ip: EXT_IP,
            prefix: EXT_PREFIX,
            gateway: EXT_GATEWAY,
            fabric_ip: Some((EXT_GATEWAY, EXT_PREFIX)),
        }])
        .collect()
}

/// Wires the fabric namespace and every uplink's namespace (all must
/// exist). Node uplinks join the bridge; the external host is routed.
pub fn build(fabric: &Netns, uplinks: &[Uplink]) -> Result<(), FabricError> {
    let links = uplinks.to_vec();
    fabric
        .run(move || block_on(build_fabric(&links)))
        .map_err(io_err("entering the fabric netns"))??;
    for uplink in uplinks {
        let up = uplink.clone();
        Netns::existing(&uplink.netns)
            .run(move || block_on(configure_uplink(&up)))
            .map_err(io_err(format!("entering netns {}", uplink.netns)))??;
    }
    Ok(())
}

/// A current-thread runtime for one batch of netlink requests on the
/// calling thread (which is inside the namespace they are for).
fn block_on(
    work: impl std::future::Future<Output = Result<(), FabricError>>,
) -> Result<(), FabricError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(io_err("starting a tokio runtime"))?
        .block_on(work)
}

fn connect() -> Result<Handle, FabricError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(io_err("opening netlink"))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn build_fabric(uplinks: &[Uplink]) -> Result<(), FabricError> {
    let handle = connect()?;
    handle
        .link()
        .add(LinkBridge::new(FABRIC_BRIDGE).build())
        .execute()
        .await
        .map_err(nl_err(format!("creating bridge {FABRIC_BRIDGE}")))?;
    let bridge = require_link(&handle, FABRIC_BRIDGE).await?;
    add_address(&handle, bridge, FABRIC_GATEWAY, FABRIC_PREFIX).await?;
    set_up(&handle, bridge, FABRIC_BRIDGE).await?;
    for uplink in uplinks {
        // The peer is created here, named as it will be over there, and
        // moved right away, before the next uplink reuses the name.
        handle
            .link()
            .add(LinkVeth::new(&uplink.fabric_link, UPLINK).build())
            .execute()
            .await
            .map_err(nl_err(format!(
                "creating veth {} <-> {UPLINK}",
                uplink.fabric_link
            )))?;
        let peer = require_link(&handle, UPLINK).await?;
        let target_ns = Netns::existing(&uplink.netns);
        let target = File::open(target_ns.path())
            .map_err(io_err(format!("opening netns {}", uplink.netns)))?;
        handle
            .link()
            .change(
                LinkUnspec::new_with_index(peer)
                    .setns_by_fd(target.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!(
                "moving {UPLINK} into netns {}",
                uplink.netns
            )))?;
        let link = require_link(&handle, &uplink.fabric_link).await?;
        match uplink.fabric_ip {
            Some((ip, prefix)) => add_address(&handle, link, ip, prefix).await?,
            None => handle
                .link()
                .set(LinkUnspec::new_with_index(link).controller(bridge).build())
                .execute()
                .await
                .map_err(nl_err(format!(
                    "adding {} to {FABRIC_BRIDGE}",
                    uplink.fabric_link
                )))?,
        }
        set_up(&handle, link, &uplink.fabric_link).await?;
    }
    enable_forwarding()
}

async fn configure_uplink(uplink: &Uplink) -> Result<(), FabricError> {
    let handle = connect()?;
    let link = require_link(&handle, UPLINK).await?;
    add_address(&handle, link, uplink.ip, uplink.prefix).await?;
    set_up(&handle, link, UPLINK).await?;
    handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(uplink.gateway)
                .build(),
        )
        .execute()
        .await
        .map_err(nl_err(format!(
            "adding default route via {}",
            uplink.gateway
        )))?;
    // Kubernetes nodes forward (kubeadm refuses to join a node that does
    // not); the external host forwarding too changes nothing.
    enable_forwarding()
}

/// `net.ipv4.ip_forward=1` for the namespace of the calling thread: net
/// sysctls resolve against the opener's namespace.
fn enable_forwarding() -> Result<(), FabricError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(io_err("setting net.ipv4.ip_forward=1"))
}

async fn require_link(handle: &Handle, name: &str) -> Result<u32, FabricError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(msg.header.index),
        Ok(None) => Err(FabricError::Missing(name.to_owned())),
        Err(source) => Err(FabricError::Netlink {
            what: format!("looking up link {name}"),
            source,
        }),
    }
}

async fn add_address(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), FabricError> {
    handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .replace()
        .execute()
        .await
        .map_err(nl_err(format!("adding {ip}/{prefix}")))
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), FabricError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl_err(format!("bringing {name} up")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::plan_nodes;

    #[test]
    fn every_node_and_the_external_host_get_an_uplink() {
        let nodes = plan_nodes("lab", 2, "10.244.0.0/16".parse().expect("cidr")).expect("plan");
        let links = uplinks(&nodes, "lab-ext");
        let got: Vec<_> = links
            .iter()
            .map(|u| {
                (
                    u.fabric_link.as_str(),
                    u.ip.to_string(),
                    u.gateway.to_string(),
                    u.fabric_ip.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("node1", "172.30.0.11".into(), "172.30.0.1".into(), false),
                ("node2", "172.30.0.12".into(), "172.30.0.1".into(), false),
                ("ext", "203.0.113.10".into(), "203.0.113.1".into(), true),
            ]
        );
        assert_eq!(links[1].netns, "lab-node2");
    }
}
