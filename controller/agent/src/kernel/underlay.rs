//! The node's side of cross-node routing: the underlay device, the VXLAN
//! device, and routes to the other nodes' pod ranges.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo},
    route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope},
    AddressFamily,
};
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};
use sluice_sys::netlink::{errno, is_gone};
use tracing::info;

use crate::{
    kernel::netlink::{Netlink, NetlinkError},
    topology::NodeRoute,
};

/// The node's collect-metadata VXLAN device.
pub const VXLAN_DEVICE: &str = "sluice_vxlan";
/// IANA's VXLAN port.
pub const VXLAN_PORT: u16 = sluice_common::config::VXLAN_PORT;
/// Routes the agent owns carry this protocol number, so it can find (and
/// only touch) its own.
pub const ROUTE_PROTOCOL: u8 = 201;

/// A network device as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
}

fn other(msg: String) -> NetlinkError {
    NetlinkError::Socket(std::io::Error::other(msg))
}

impl Netlink {
    /// The device holding `ip` (the node's InternalIP): the underlay.
    pub async fn device_with_address(&self, ip: Ipv4Addr) -> Result<Option<Device>, NetlinkError> {
        let mut addrs = self.handle().address().get().execute();
        let mut index = None;
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(Self::req("listing addresses"))?
        {
            let has = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(IpAddr::V4(v4)) | AddressAttribute::Local(IpAddr::V4(v4)) if *v4 == ip)
            });
            if has {
                index = Some(msg.header.index);
            }
        }
        match index {
            Some(index) => self.device(index).await,
            None => Ok(None),
        }
    }

    pub async fn device(&self, index: u32) -> Result<Option<Device>, NetlinkError> {
        let mut links = self.handle().link().get().match_index(index).execute();
        let msg = match links.try_next().await {
            Ok(msg) => msg,
            Err(e) if is_gone(&e) => None,
            Err(e) => return Err(Self::req(format!("looking up link {index}"))(e)),
        };
        Ok(msg.map(|m| {
            let mut dev = Device {
                index,
                name: String::new(),
                mtu: 1500,
            };
            for attr in m.attributes {
                match attr {
                    LinkAttribute::IfName(name) => dev.name = name,
                    LinkAttribute::Mtu(mtu) => dev.mtu = mtu,
                    _ => {}
                }
            }
            dev
        }))
    }

    /// The link's attributes; `None` when the kernel answers with none.
    async fn link_attributes(
        &self,
        index: u32,
    ) -> Result<Option<Vec<LinkAttribute>>, NetlinkError> {
        let mut links = self.handle().link().get().match_index(index).execute();
        Ok(links
            .try_next()
            .await
            .map_err(Self::req(format!("looking up link {index}")))?
            .map(|msg| msg.attributes))
    }

    /// Whether the link is one end of a veth pair (a lab's or a kind-style
    /// node's underlay).
    pub async fn is_veth(&self, index: u32) -> Result<bool, NetlinkError> {
        let Some(attributes) = self.link_attributes(index).await? else {
            return Ok(false);
        };
        Ok(attributes.iter().any(|attr| {
            matches!(attr, LinkAttribute::LinkInfo(infos)
                if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
        }))
    }

    /// Whether the link is a collect-metadata VXLAN device on our port.
    async fn is_our_vxlan(&self, index: u32) -> Result<bool, NetlinkError> {
        let Some(attributes) = self.link_attributes(index).await? else {
            return Ok(false);
        };
        let mut kind_ok = false;
        let mut external = false;
        let mut port = None;
        for attr in attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Vxlan) => kind_ok = true,
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            for d in data {
                                match d {
                                    InfoVxlan::CollectMetadata(on) => external = on,
                                    InfoVxlan::Port(p) => port = Some(p),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(kind_ok && external && port == Some(VXLAN_PORT))
    }

    /// Creates (or keeps) the node's VXLAN device: collect-metadata, so
    /// one device serves every remote node with the endpoint chosen per
    /// packet by the program; no ARP (the programs and routes need none).
    /// An existing device of that name with other settings is replaced.
    pub async fn ensure_vxlan(&self, mtu: u32) -> Result<u32, NetlinkError> {
        if let Some(index) = self.link_index(VXLAN_DEVICE).await? {
            if self.is_our_vxlan(index).await? {
                self.handle()
                    .link()
                    .set(
                        LinkUnspec::new_with_index(index)
                            .mtu(mtu)
                            .arp(false)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(Self::req(format!("configuring {VXLAN_DEVICE}")))?;
                return Ok(index);
            }
            info!(
                device = VXLAN_DEVICE,
                "replacing a device with other settings"
            );
            self.delete_link(VXLAN_DEVICE).await?;
        }
        // The VNI attribute is required by the netlink API even though a
        // collect-metadata device takes the VNI from each packet's key.
        let msg = LinkVxlan::new(VXLAN_DEVICE, 0)
            .port(VXLAN_PORT)
            .collect_metadata(true)
            .learning(false)
            .mtu(mtu)
            .arp(false)
            .up()
            .build();
        self.handle()
            .link()
            .add(msg)
            .execute()
            .await
            .or_else(|e| match errno(&e) {
                Some(libc::EEXIST) => Ok(()),
                _ => Err(e),
            })
            .map_err(Self::req(format!("creating {VXLAN_DEVICE}")))?;
        let index = self
            .link_index(VXLAN_DEVICE)
            .await?
            .ok_or_else(|| other(format!("{VXLAN_DEVICE} vanished after creation")))?;
        // IPv6 link-local chatter (DAD, RS) would only be dropped by the
        // program; keep the device IPv4-only.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{VXLAN_DEVICE}/disable_ipv6"),
            "1",
        );
        Ok(index)
    }

    /// Makes the agent's routes (those with [`ROUTE_PROTOCOL`]) exactly
    /// `desired`, all through `oif`, touching no other route. Tunnel routes
    /// source from the gateway address so replies come back through the
    /// tunnel to a pod-range address.
    pub async fn sync_node_routes(
        &self,
        desired: &BTreeSet<NodeRoute>,
        oif: u32,
        pref_src: Option<Ipv4Addr>,
    ) -> Result<(), NetlinkError> {
        let mut current = BTreeSet::new();
        let mut stale = Vec::new();
        let mut routes = self
            .handle()
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = routes
            .try_next()
            .await
            .map_err(Self::req("listing routes"))?
        {
            if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
                || msg.header.address_family != AddressFamily::Inet
            {
                continue;
            }
            let mut dst = None;
            let mut via = None;
            let mut route_oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(*a),
                    RouteAttribute::Oif(i) => route_oif = Some(*i),
                    _ => {}
                }
            }
            let route = dst
                .and_then(|d| Ipv4Net::new(d, msg.header.destination_prefix_length).ok())
                .map(|dst| NodeRoute { dst, via });
            match route {
                Some(r) if desired.contains(&r) && route_oif == Some(oif) => {
                    current.insert(r);
                }
                _ => stale.push(msg),
            }
        }
        for msg in stale {
            match self.handle().route().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(Self::req("deleting a stale node route")(e)),
            }
        }
        for route in desired.difference(&current) {
            let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(route.dst.addr(), route.dst.prefix_len())
                .output_interface(oif)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
            builder = match route.via {
                Some(gw) => builder.gateway(gw),
                None => builder.scope(RouteScope::Link),
            };
            if let Some(src) = pref_src {
                builder = builder.pref_source(src);
            }
            self.handle()
                .route()
                .add(builder.build())
                .replace()
                .execute()
                .await
                .map_err(Self::req(format!("adding route {}", route.dst)))?;
        }
        Ok(())
    }
}

/// The node routes packets between pods, tunnels and the underlay.
pub fn enable_ip_forwarding() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
}
