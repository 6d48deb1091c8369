//! What the commands need from the kernel, behind a trait so that the
//! command logic (ordering, rollback, CHECK's comparisons) is unit-tested
//! with a fake, and runs against netlink in [`crate::netlink`].

use std::net::IpAddr;

use ipnet::IpNet;

use sluice_sys::Netns;

use crate::error::Error;

/// Everything needed to wire one attachment.
#[derive(Debug)]
pub struct WireRequest<'a> {
    /// The pod's namespace.
    pub netns: &'a Netns,
    /// The interface name inside the pod (`CNI_IFNAME`).
    pub ifname: &'a str,
    /// The host side of the veth.
    pub host_ifname: &'a str,
    pub ip: IpAddr,
    pub gateway: IpAddr,
    /// The device's MTU.
    pub mtu: u32,
    /// A lower MTU for routes off the node, and the node's pod CIDR that
    /// keeps the device's.
    pub off_node: Option<(u32, IpNet)>,
}

/// What wiring produced, for the agent's endpoint record and the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
}

/// One interface as found by CHECK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub ifindex: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
}

/// A route as found in the pod's main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteState {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// The pod side as found by CHECK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    pub link: LinkState,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<RouteState>,
}

/// Both ends of an attachment as found by CHECK; `None` where missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub host: Option<LinkState>,
    pub pod: Option<PodState>,
}

pub trait Dataplane {
    /// Creates, moves, addresses and routes the veth pair. On failure the
    /// caller removes whatever exists with [`Dataplane::unwire`].
    fn wire(&mut self, request: &WireRequest<'_>) -> Result<Wired, Error>;

    /// Deletes the host side of a veth (the kernel removes its peer, and with
    /// it the pod's addresses, routes and neighbour entries). Returns whether
    /// the link existed; a missing link is not an error.
    fn unwire(&mut self, host_ifname: &str) -> Result<bool, Error>;

    /// Reports both ends of an attachment as they are now.
    fn observe(
        &mut self,
        host_ifname: &str,
        netns: &Netns,
        ifname: &str,
    ) -> Result<Observed, Error>;
}
