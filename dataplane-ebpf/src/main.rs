//! sluice's TC programs. This file holds only the entry points, one per
//! attach point; each calls into `programs/` for its decision, which calls
//! down into the concern modules and never back up:
//!
//! ```text
//! programs/{pod,overlay,netdev}   what a packet does at each attach point
//! programs/prefilter              what never enters the node (XDP)
//!   ├─ service     Service frontends to backends and back (kube-proxy replacement)
//!   ├─ policy      NetworkPolicy enforcement: conntrack + the shared decision
//!   │   └─ conntrack   flow entries, timeouts, tombstones, related ICMP errors
//!   ├─ fragment    IPv4 fragments: later ones decided as their first one
//!   ├─ forward     delivery: into a local pod, into the tunnel, native routing
//!   ├─ parse       bounds-checked header parsing
//!   ├─ lookup      typed access to the maps (endpoints, ipcache, config)
//!   ├─ metrics     per-CPU counters
//!   ├─ events      flow events for `sluice observe` (ring buffer)
//!   └─ verdict     what a program returns, and the reason it is counted under
//! maps            the map statics, from the table in sluice_common::maps
//! ```
#![no_std]
#![no_main]

mod conntrack;
mod events;
mod forward;
mod fragment;
mod lookup;
mod maps;
mod metrics;
mod parse;
mod policy;
mod programs;
mod service;
mod verdict;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use sluice_common::direction::Direction;

/// TC ingress of the host side of a pod's veth: every packet the pod sends.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    programs::run(&ctx, programs::pod::from_container, Direction::Egress)
}

/// TC egress of the host side of a pod's veth: what the host stack routes
/// to the pod, checked against its ingress policy.
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    programs::run(&ctx, programs::pod::to_container, Direction::Ingress)
}

/// TC ingress of the node's VXLAN device: pod traffic from other nodes.
#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    programs::run(&ctx, programs::overlay::from_overlay, Direction::Ingress)
}

/// TC egress of the node's VXLAN device: host traffic for remote pods.
#[classifier]
pub fn to_overlay(ctx: TcContext) -> i32 {
    programs::run(&ctx, programs::overlay::to_overlay, Direction::Egress)
}

/// TC ingress of the underlay device.
#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    programs::run(&ctx, programs::netdev::from_netdev, Direction::Ingress)
}

/// TC egress of the underlay device.
#[classifier]
pub fn to_netdev(ctx: TcContext) -> i32 {
    programs::run(&ctx, programs::netdev::to_netdev, Direction::Egress)
}

/// XDP on the underlay device: drops what must never enter the node.
#[xdp]
pub fn prefilter(ctx: XdpContext) -> u32 {
    let reason = programs::prefilter::decide(&ctx);
    if let Some(reason) = reason {
        let len = ctx.data_end() - ctx.data();
        metrics::count(reason, Direction::Ingress, len as u32);
    }
    programs::prefilter::action(reason)
}

/// The prefilter's deny list at TC ingress instead: only for the
/// benchmark that compares the two (the agent never attaches it).
#[classifier]
pub fn prefilter_tc(ctx: TcContext) -> i32 {
    let (action, reason) = programs::prefilter::decide_tc(&ctx);
    if let Some(reason) = reason {
        metrics::count(reason, Direction::Ingress, ctx.len());
    }
    action
}

/// The host's sockets connecting (TCP, UDP): a ClusterIP becomes a backend.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    programs::sock::to_backend(&ctx)
}

/// The host's unconnected UDP sockets sending: as `sock_connect4`.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    programs::sock::to_backend(&ctx)
}

/// The host's UDP sockets receiving: the backend's address is shown as the
/// ClusterIP the socket addressed.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    programs::sock::to_frontend(&ctx)
}

/// The host's sockets asking for their peer: as `sock_recvmsg4`.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    programs::sock::to_frontend(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// SAFETY: the loader reads the license from this section by name; no
// other symbol is called `LICENSE` or placed there.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
