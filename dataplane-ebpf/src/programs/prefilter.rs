//! The prefilter: XDP on the underlay device, before the kernel has
//! allocated anything for a packet. It drops only what must never enter
//! the node: sources in the operator's deny list, IPv4 headers that are
//! not one, and (tunnel routing) VXLAN from addresses that are no node's.
//! Everything else, non-IPv4 above all (ARP, IPv6), passes untouched and
//! uncounted, so the node's own traffic never depends on it.
//!
//! Reads go straight to the packet (XDP has no skb to load from), each
//! bounds-checked against `data_end` as the verifier demands.
use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use sluice_common::{
    config::{routing, VXLAN_PORT},
    ipcache::{flags, Ipv4Prefix},
    reason::Reason,
};

use crate::{
    lookup,
    maps::PREFILTER_DENY,
    parse::{EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP, IPPROTO_UDP},
};

/// The packet's `T` at `offset`, if it lies wholly within the packet.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Whether the operator's deny list covers `saddr`.
#[inline(always)]
fn denied(saddr: [u8; 4]) -> bool {
    PREFILTER_DENY
        .get(Key::new(32, Ipv4Prefix { addr: saddr }))
        .is_some()
}

/// Whether `saddr` is a node's own address (its InternalIP): the ipcache's
/// node entries name their node as the tunnel endpoint, which tells them
/// from the gateway addresses that also carry the flag.
#[inline(always)]
fn is_node(saddr: [u8; 4]) -> bool {
    lookup::ipcache(saddr)
        .is_some_and(|info| info.flags & flags::NODE != 0 && info.tunnel_endpoint == saddr)
}

/// Why the packet must not enter the node; `None`: let it in.
#[inline(always)]
pub fn decide(ctx: &XdpContext) -> Option<Reason> {
    // A frame shorter than an Ethernet header is the driver's to drop.
    let eth: *const EthHdr = at(ctx, 0)?;
    // SAFETY: bounds-checked by `at`.
    if u16::from_be(unsafe { (*eth).proto }) != ETH_P_IP {
        return None;
    }
    let Some(ip) = at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Some(Reason::DropBadIpv4Header);
    };
    // SAFETY: bounds-checked by `at`; copied out.
    let hdr = unsafe { *ip };
    let ihl = ((hdr.version_ihl & 0x0f) as usize) * 4;
    if hdr.version_ihl >> 4 != 4 || ihl < 20 {
        return Some(Reason::DropBadIpv4Header);
    }
    let tot_len = u16::from_be(hdr.tot_len) as usize;
    let frame = ctx.data_end() - ctx.data();
    if tot_len < ihl || ETH_HLEN + tot_len > frame {
        return Some(Reason::DropBadIpv4Header);
    }
    if denied(hdr.saddr) {
        return Some(Reason::DropDeniedSource);
    }
    // Only the first fragment has the UDP header; the rest cannot be
    // reassembled without it.
    if hdr.protocol != IPPROTO_UDP || u16::from_be(hdr.frag_off) & 0x1fff != 0 {
        return None;
    }
    // In native routing no VXLAN device listens: the port is nobody's,
    // perhaps an application's, and the stack answers for it.
    if lookup::config().routing != routing::TUNNEL {
        return None;
    }
    // The UDP destination port, after options if any; the header was
    // checked to lie within the packet.
    let dport: *const u16 = at(ctx, ETH_HLEN + ihl + 2)?;
    // SAFETY: bounds-checked by `at`.
    if u16::from_be(unsafe { *dport }) == VXLAN_PORT && !is_node(hdr.saddr) {
        return Some(Reason::DropVxlanNotFromNode);
    }
    None
}

/// The XDP action for a decision.
#[inline(always)]
pub fn action(reason: Option<Reason>) -> u32 {
    match reason {
        Some(_) => xdp_action::XDP_DROP,
        None => xdp_action::XDP_PASS,
    }
}

/// The deny list alone at TC ingress: what the prefilter benchmark
/// compares XDP with. The agent never attaches it.
#[inline(always)]
pub fn decide_tc(ctx: &TcContext) -> (i32, Option<Reason>) {
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return (TC_ACT_OK, None);
    };
    if u16::from_be(eth.proto) != ETH_P_IP {
        return (TC_ACT_OK, None);
    }
    match ctx.load::<[u8; 4]>(ETH_HLEN + 12) {
        Ok(saddr) if denied(saddr) => (TC_ACT_SHOT, Some(Reason::DropDeniedSource)),
        _ => (TC_ACT_OK, None),
    }
}
