//! Forwarding decisions: packets leaving a pod, and packets for local pods
//! arriving from other nodes.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect_peer,
    programs::TcContext,
};
use sluice_common::{
    endpoint::{EndpointInfo, IpKey},
    metrics::reason,
};

use crate::{
    maps::ENDPOINTS,
    parse::{self, ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPV4_CSUM_OFF, IPV4_TTL_OFF},
    policy, remote,
};

/// Reason of a verdict that is not counted: the underlay's own traffic
/// passing by.
pub const UNCOUNTED: u32 = u32::MAX;

pub struct Verdict {
    pub action: i32,
    pub reason: u32,
}

pub const fn verdict(action: i32, reason: u32) -> Verdict {
    Verdict { action, reason }
}

/// The pod on this node with this address.
fn local_endpoint(addr: [u8; 4]) -> Option<EndpointInfo> {
    // SAFETY: a map value pointer, valid for this program run; copied out.
    ENDPOINTS
        .get_ptr(IpKey::v4(addr))
        .map(|endpoint| unsafe { *endpoint })
}

pub fn from_container(ctx: &TcContext) -> Verdict {
    let Ok(eth) = parse::eth(ctx) else {
        return verdict(TC_ACT_SHOT, reason::DROP_MALFORMED);
    };
    match u16::from_be(eth.proto) {
        ETH_P_IP => {}
        // The pod's gateway is a static neighbour, but the pod may still ask
        // (e.g. after someone flushed its table); the host answers nothing
        // for the gateway, which is harmless, and other ARP is the host's.
        ETH_P_ARP => return verdict(TC_ACT_OK, reason::TO_STACK),
        _ => return verdict(TC_ACT_SHOT, reason::DROP_UNSUPPORTED_L3),
    }
    let Ok(pkt) = parse::ipv4(ctx) else {
        return verdict(TC_ACT_SHOT, reason::DROP_MALFORMED);
    };

    // Anti-spoofing: the source must be an endpoint, and the packet must
    // come in through that endpoint's own veth.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let src = match ENDPOINTS.get_ptr(IpKey::v4(pkt.hdr.saddr)) {
        Some(src) if unsafe { (*src).ifindex } == ifindex => unsafe { *src },
        _ => return verdict(TC_ACT_SHOT, reason::DROP_SPOOFED_SOURCE),
    };

    // Let the host stack answer with ICMP time-exceeded.
    if pkt.hdr.ttl <= 1 {
        return verdict(TC_ACT_OK, reason::TO_STACK);
    }
    let dst = local_endpoint(pkt.hdr.daddr);
    if let Err(drop) = policy::enforce(&pkt, Some(&src), dst.as_ref()) {
        return verdict(TC_ACT_SHOT, drop);
    }
    if let Some(dst) = dst {
        return deliver_local(ctx, &pkt.hdr, &dst);
    }
    remote::forward(ctx, &pkt.hdr)
}

/// A packet the host stack sends to a pod (the host itself, traffic it
/// routed in from outside the cluster, replies it de-masqueraded):
/// everything that reaches a pod without the redirects above, which skip
/// this hook. Its ingress policy applies like anyone else's; the node's own
/// addresses carry the `host` identity and pass.
pub fn to_container(ctx: &TcContext) -> Verdict {
    let Ok(eth) = parse::eth(ctx) else {
        return verdict(TC_ACT_SHOT, reason::DROP_MALFORMED);
    };
    if u16::from_be(eth.proto) != ETH_P_IP {
        // ARP and the like from the host; the pod drops what it does not
        // speak.
        return verdict(TC_ACT_OK, reason::FROM_STACK);
    }
    let Ok(pkt) = parse::ipv4(ctx) else {
        return verdict(TC_ACT_SHOT, reason::DROP_MALFORMED);
    };
    let Some(dst) = local_endpoint(pkt.hdr.daddr) else {
        // Not addressed to the pod's own IP (broadcast and the like).
        return verdict(TC_ACT_OK, reason::FROM_STACK);
    };
    match policy::enforce(&pkt, None, Some(&dst)) {
        Ok(()) => verdict(TC_ACT_OK, reason::FROM_STACK),
        Err(drop) => verdict(TC_ACT_SHOT, drop),
    }
}

/// A packet from another node (overlay or underlay): local pods get it
/// directly, everything else is the host's.
pub fn to_local_pod(ctx: &TcContext, pkt: &parse::Ipv4Packet) -> Option<Verdict> {
    let dst = local_endpoint(pkt.hdr.daddr)?;
    if pkt.hdr.ttl <= 1 {
        return Some(verdict(TC_ACT_OK, reason::TO_STACK));
    }
    if let Err(drop) = policy::enforce(pkt, None, Some(&dst)) {
        return Some(verdict(TC_ACT_SHOT, drop));
    }
    Some(deliver_local(ctx, &pkt.hdr, &dst))
}

/// Decrements the TTL as a router does; the caller checked it is above 1.
pub fn decrement_ttl(ctx: &TcContext, hdr: &parse::Ipv4Hdr) -> Result<(), ()> {
    let old_word = u16::from_be_bytes([hdr.ttl, hdr.protocol]);
    let new_word = u16::from_be_bytes([hdr.ttl - 1, hdr.protocol]);
    ctx.l3_csum_replace(
        ETH_HLEN + IPV4_CSUM_OFF,
        old_word.to_be() as u64,
        new_word.to_be() as u64,
        2,
    )
    .map_err(|_| ())?;
    ctx.store(ETH_HLEN + IPV4_TTL_OFF, &(hdr.ttl - 1), 0)
        .map_err(|_| ())
}

/// Route to a pod on this node: decrement TTL, rewrite L2 as the pod's
/// gateway would, and hand the packet straight to the pod's netns, skipping
/// the host's routing and netfilter.
fn deliver_local(ctx: &TcContext, hdr: &parse::Ipv4Hdr, dst: &EndpointInfo) -> Verdict {
    if decrement_ttl(ctx, hdr).is_err() {
        return verdict(TC_ACT_SHOT, reason::DROP_MALFORMED);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&dst.pod_mac);
    macs[6..].copy_from_slice(&dst.host_mac);
    if ctx.store(0, &macs, 0).is_err() {
        return verdict(TC_ACT_SHOT, reason::DROP_MALFORMED);
    }
    let ret = unsafe { bpf_redirect_peer(dst.ifindex, 0) };
    if ret == i64::from(TC_ACT_REDIRECT) {
        verdict(TC_ACT_REDIRECT, reason::FORWARD_LOCAL)
    } else {
        verdict(TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED)
    }
}
