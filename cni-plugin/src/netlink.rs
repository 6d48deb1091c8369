//! The real [`Dataplane`]: rtnetlink on a current-thread tokio runtime.
//!
//! One thread does everything, because network namespace membership is per
//! thread: the pod-side netlink socket is created while this thread is
//! briefly inside the pod's namespace (see [`Netns::run_in`]), and no other
//! thread must ever run a netlink or namespace operation.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{LinkFlags, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
    AddressFamily,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use sluice_sys::Netns;
use tokio::runtime::Runtime;

use crate::{
    dataplane::{Dataplane, LinkState, Observed, PodState, RouteState, WireRequest, Wired},
    error::Error,
    veth,
};

pub struct NetlinkDataplane {
    runtime: Runtime,
    /// Bound to the namespace the plugin was started in: the node's.
    host: Handle,
}

impl NetlinkDataplane {
    /// Connects to netlink in the calling thread's namespace.
    pub fn new() -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::io("starting the tokio runtime", e))?;
        let host = connect(&runtime)?;
        Ok(NetlinkDataplane { runtime, host })
    }

    /// A handle bound to `netns`.
    fn connect_in(&self, netns: &Netns) -> Result<Handle, Error> {
        netns
            .run_in(|| connect(&self.runtime))
            .map_err(|e| Error::io("entering the pod's network namespace", e))?
    }
}

/// Opens a netlink socket in the calling thread's current namespace and
/// starts its connection task on `runtime`.
fn connect(runtime: &Runtime) -> Result<Handle, Error> {
    // The socket registers with the runtime's reactor when it is created.
    let _entered = runtime.enter();
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?;
    runtime.spawn(connection);
    Ok(handle)
}

impl Dataplane for NetlinkDataplane {
    fn wire(&mut self, request: &WireRequest<'_>) -> Result<Wired, Error> {
        let pod = self.connect_in(request.netns)?;
        self.runtime.block_on(veth::wire(&self.host, &pod, request))
    }

    fn unwire(&mut self, host_ifname: &str) -> Result<bool, Error> {
        self.runtime
            .block_on(delete_link_by_name(&self.host, host_ifname))
    }

    fn observe(
        &mut self,
        host_ifname: &str,
        netns: &Netns,
        ifname: &str,
    ) -> Result<Observed, Error> {
        let pod = self.connect_in(netns)?;
        self.runtime.block_on(async {
            let host = link_by_name(&self.host, host_ifname)
                .await?
                .map(|l| link_state(&l));
            let pod = match link_by_name(&pod, ifname).await? {
                None => None,
                Some(link) => Some(PodState {
                    addresses: addresses(&pod, link.header.index).await?,
                    routes: main_routes(&pod).await?,
                    link: link_state(&link),
                }),
            };
            Ok(Observed { host, pod })
        })
    }
}

/// The link called `name`, or `None` if there is none.
pub(crate) async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, Error> {
    sluice_sys::netlink::link_by_name(handle, name)
        .await
        .map_err(|e| Error::netlink(format!("looking up link {name}"), e))
}

/// Like [`link_by_name`], for a link that must exist (one just created).
pub(crate) async fn require_link(handle: &Handle, name: &str) -> Result<LinkMessage, Error> {
    link_by_name(handle, name)
        .await?
        .ok_or_else(|| Error::Wiring {
            message: format!("link {name} vanished while being wired"),
        })
}

/// Deletes the link `name` if it exists; returns whether it did.
pub(crate) async fn delete_link_by_name(handle: &Handle, name: &str) -> Result<bool, Error> {
    sluice_sys::netlink::delete_link(handle, name)
        .await
        .map_err(|e| Error::netlink(format!("deleting link {name}"), e))
}

pub(crate) async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), Error> {
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("setting {name} up"), e))
}

fn link_state(link: &LinkMessage) -> LinkState {
    LinkState {
        ifindex: link.header.index,
        mac: sluice_sys::netlink::mac_of(link),
        up: link.header.flags.contains(LinkFlags::Up),
    }
}

async fn addresses(handle: &Handle, index: u32) -> Result<Vec<IpNet>, Error> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink("listing addresses", e))?;
    Ok(messages
        .iter()
        .filter_map(|msg| {
            // IFA_LOCAL is the interface's own address where it differs from
            // IFA_ADDRESS (point-to-point); otherwise the two are equal.
            let ip = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                })
                .or_else(|| {
                    msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                })?;
            IpNet::new(ip, msg.header.prefix_len).ok()
        })
        .collect())
}

/// Routes of the main table, both families.
async fn main_routes(handle: &Handle) -> Result<Vec<RouteState>, Error> {
    let mut routes = Vec::new();
    for query in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let messages: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("listing routes", e))?;
        routes.extend(messages.iter().filter_map(route_state));
    }
    Ok(routes)
}

fn route_state(msg: &RouteMessage) -> Option<RouteState> {
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let ip = |addr: &RouteAddress| match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let unspecified = match msg.header.address_family {
        AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst = unspecified;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = ip(a)?,
            RouteAttribute::Gateway(a) => gateway = ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some(RouteState {
        dst: IpNet::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
    })
}
