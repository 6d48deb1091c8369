//! Host-side netlink: the node's gateway device and per-pod routes.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    link::LinkAttribute,
    neighbour::NeighbourState,
    route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope},
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The host device that holds the pods' gateway address, the way
/// cilium_host does: host-originated traffic to pods takes it as source,
/// and pods reach the host through it. It is one end of a veth pair (its
/// peer is [`HOST_PEER`]) because not every kernel has the dummy driver.
pub const HOST_DEVICE: &str = "sluice_host";
pub const HOST_PEER: &str = "sluice_net";

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

use sluice_sys::netlink::{is_exists, is_gone};

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the caller's network namespace; its
    /// connection task runs on the current tokio runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The raw handle, for the other netlink modules of the agent.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    pub(crate) fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
        let what = what.into();
        move |source| NetlinkError::Request { what, source }
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        sluice_sys::netlink::link_by_name(&self.handle, name)
            .await
            .map(|link| link.map(|l| l.header.index))
            .map_err(Self::req(format!("looking up link {name}")))
    }

    /// The MAC address of a link, if it has one.
    pub async fn link_mac(&self, index: u32) -> Result<Option<[u8; 6]>, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let msg = links
            .try_next()
            .await
            .map_err(Self::req(format!("looking up link {index}")))?;
        Ok(msg.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::Address(mac) if mac.len() == 6 => {
                    let mut out = [0u8; 6];
                    out.copy_from_slice(&mac);
                    Some(out)
                }
                _ => None,
            })
        }))
    }

    /// Creates the host device with the gateway address if missing; returns
    /// its ifindex.
    pub async fn ensure_host_device(&self, gateway: Ipv4Addr) -> Result<u32, NetlinkError> {
        let index = match self.link_index(HOST_DEVICE).await? {
            Some(index) => index,
            None => {
                self.handle
                    .link()
                    .add(LinkVeth::new(HOST_DEVICE, HOST_PEER).build())
                    .execute()
                    .await
                    .or_else(|e| if is_exists(&e) { Ok(()) } else { Err(e) })
                    .map_err(Self::req(format!("creating {HOST_DEVICE}")))?;
                self.link_index(HOST_DEVICE).await?.ok_or_else(|| {
                    NetlinkError::Socket(std::io::Error::other(format!(
                        "{HOST_DEVICE} vanished after creation"
                    )))
                })?
            }
        };
        self.handle
            .address()
            .add(index, IpAddr::V4(gateway), 32)
            .replace()
            .execute()
            .await
            .map_err(Self::req(format!("adding {gateway}/32 to {HOST_DEVICE}")))?;
        for (name, link) in [
            (HOST_DEVICE, Some(index)),
            (HOST_PEER, self.link_index(HOST_PEER).await?),
        ] {
            let Some(link) = link else { continue };
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(link).up().build())
                .execute()
                .await
                .map_err(Self::req(format!("bringing {name} up")))?;
        }
        Ok(index)
    }

    /// Route and permanent neighbour entry for a pod behind `ifindex`, so
    /// the host reaches it without ARP, sourcing from the gateway address.
    pub async fn add_pod_route(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        pod_mac: [u8; 6],
        gateway: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(ifindex)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Static)
            .pref_source(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(Self::req(format!("adding route {ip}/32")))?;
        self.handle
            .neighbours()
            .add(ifindex, IpAddr::V4(ip))
            .link_layer_address(&pod_mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(Self::req(format!("adding neighbour {ip}")))
    }

    /// Removes the pod route; already gone (e.g. with its veth) is fine.
    pub async fn del_pod_route(&self, ifindex: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(ifindex)
            .scope(RouteScope::Link)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(Self::req(format!("deleting route {ip}/32"))(e)),
        }
    }

    /// The pod routes ([`Self::add_pod_route`]'s kind: static, link
    /// scope, one address) to addresses in `pod_cidr`, with their devices.
    pub async fn pod_routes(
        &self,
        pod_cidr: ipnet::Ipv4Net,
    ) -> Result<Vec<(Ipv4Addr, u32)>, NetlinkError> {
        let mut found = Vec::new();
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = routes
            .try_next()
            .await
            .map_err(Self::req("listing routes"))?
        {
            let header = &msg.header;
            if header.protocol != RouteProtocol::Static
                || header.scope != RouteScope::Link
                || header.destination_prefix_length != 32
            {
                continue;
            }
            let mut dst = None;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let (Some(dst), Some(oif)) = (dst, oif) {
                if pod_cidr.contains(&dst) {
                    found.push((dst, oif));
                }
            }
        }
        Ok(found)
    }

    pub async fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        sluice_sys::netlink::delete_link(&self.handle, name)
            .await
            .map(drop)
            .map_err(Self::req(format!("deleting link {name}")))
    }
}
