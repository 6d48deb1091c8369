//! The host side of a pod's veth: `from_container` on its TCX ingress
//! (every packet the pod sends), `to_container` on its TCX egress (what the
//! host stack delivers to the pod; redirected packets skip this hook).
use aya_ebpf::programs::TcContext;
use sluice_common::{
    config::{routing, ROUTED_MARK},
    ipcache::flags,
    reason::Reason,
    services::HAIRPIN_SOURCE,
};

use super::by_datagram;
use crate::{
    events, forward, fragment, lookup,
    parse::{self, ETH_P_ARP, ETH_P_IP},
    policy::{self, Arrival},
    service::{self, Toward},
    verdict::{drop, pass, Verdict},
};

pub fn from_container(ctx: &TcContext) -> Verdict {
    let eth = match parse::eth(ctx) {
        Ok(eth) => eth,
        Err(reason) => return drop(reason),
    };
    match u16::from_be(eth.proto) {
        ETH_P_IP => {}
        // The pod's gateway is a static neighbour, but the pod may still ask
        // (e.g. after someone flushed its table); the host answers nothing
        // for the gateway, which is harmless, and other ARP is the host's.
        ETH_P_ARP => return pass(Reason::ToStack),
        _ => return drop(Reason::DropUnsupportedL3),
    }
    let mut pkt = match parse::ipv4(ctx) {
        Ok(pkt) => pkt,
        Err(reason) => return drop(reason),
    };
    by_datagram(ctx, &mut pkt, from_pod)
}

/// An IPv4 packet from the pod.
#[inline(always)]
fn from_pod(ctx: &TcContext, pkt: &mut parse::Ipv4Packet) -> Verdict {
    // Anti-spoofing: the source must be an endpoint, and the packet must
    // come in through that endpoint's own veth.
    // SAFETY: the context's skb pointer is valid for this program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let src = match lookup::local_endpoint(pkt.hdr.saddr) {
        Some(src) if src.ifindex == ifindex => src,
        _ => return drop(Reason::DropSpoofedSource),
    };
    if let Err(reason) = fragment::decidable(pkt) {
        return drop(reason);
    }

    // Let the host stack answer with ICMP time-exceeded.
    if pkt.hdr.ttl <= 1 {
        return pass(Reason::ToStack);
    }
    // A pod answering itself through its own Service (hairpin): back to
    // itself, then as any backend's reply.
    if pkt.hdr.daddr == HAIRPIN_SOURCE {
        if let Err(reason) = service::hairpin_back(ctx, pkt) {
            return drop(reason);
        }
    }
    // A Service frontend: to a backend, before policy and forwarding
    // judge the packet, so both see the backend. A local pod's address is
    // no frontend (frontends are ClusterIPs, node addresses, external
    // addresses), so traffic between local pods skips the lookup.
    let mut dst = lookup::local_endpoint(pkt.hdr.daddr);
    let translated = if dst.is_some() {
        false
    } else {
        match service::to_backend(ctx, pkt) {
            Ok(Toward::NotAService) => false,
            Ok(Toward::Backend) => true,
            // The host stack refuses it (RST, port unreachable), as
            // kube-proxy does; nothing is blackholed.
            Ok(Toward::NoBackend) => return pass(Reason::ToStack),
            Err(reason) => return drop(reason),
        }
    };
    if translated {
        // The backend, which may be a pod here.
        dst = lookup::local_endpoint(pkt.hdr.daddr);
    }
    let arrival = Arrival::Direct;
    let passed = match policy::enforce(pkt, Some(&src), dst.as_ref(), arrival, translated) {
        Ok(passed) => passed,
        Err(reason) => return drop(reason),
    };
    if passed.admitted {
        policy::admitted(pkt, Some(&src), dst.as_ref(), arrival, translated);
    }
    // A reply in a flow the stack handed in (perhaps translated: a Service
    // backend answering, a hostPort): back through the stack, which
    // translates it back, not straight to the peer.
    if passed.via_stack {
        return pass(Reason::ToStack);
    }
    if passed.service_reply {
        if let Err(reason) = service::from_backend(ctx, pkt) {
            return drop(reason);
        }
    }
    if passed.service_error {
        if let Err(reason) = service::error_from_backend(ctx, pkt) {
            return drop(reason);
        }
    }
    // Translated to itself: policy judged the pod reaching itself; the
    // source changes only so the pod accepts the packet.
    if translated && pkt.hdr.saddr == pkt.hdr.daddr {
        if let Err(reason) = service::hairpin_out(ctx, pkt) {
            return drop(reason);
        }
    }
    if let Some(dst) = dst {
        return forward::deliver_local(ctx, &pkt.hdr, &dst);
    }
    to_other_node(ctx, &pkt.hdr)
}

/// A pod's packet for a non-local address: to the node owning it, or to the
/// host stack (outside the cluster: masqueraded there).
fn to_other_node(ctx: &TcContext, hdr: &parse::Ipv4Hdr) -> Verdict {
    let Some(remote) = lookup::ipcache(hdr.daddr) else {
        return pass(Reason::ToStack);
    };
    if remote.flags & flags::REMOTE_POD_CIDR == 0 {
        return pass(Reason::ToStack);
    }
    let config = lookup::config();
    match config.routing {
        routing::TUNNEL => {
            forward::encapsulate(ctx, hdr, remote.tunnel_endpoint, config.tunnel_ifindex)
        }
        routing::NATIVE => {
            // Not the stack's forwarding: `to_netdev` leaves the flow be.
            // SAFETY: the context's skb pointer is valid for this program run.
            let mark = unsafe { (*ctx.skb.skb).mark };
            ctx.set_mark(mark | ROUTED_MARK);
            forward::route_native(ctx, hdr)
        }
        _ => pass(Reason::ToStack),
    }
}

/// A packet the host stack sends to a pod (the host itself, traffic it
/// routed in from outside the cluster, replies it de-masqueraded):
/// everything that reaches a pod without the redirects, which skip this
/// hook. Its ingress policy applies like anyone else's; the node's own
/// addresses carry the `host` identity and pass. A flow that starts here
/// came through the stack: its replies are sent back there.
pub fn to_container(ctx: &TcContext) -> Verdict {
    let eth = match parse::eth(ctx) {
        Ok(eth) => eth,
        Err(reason) => return drop(reason),
    };
    if u16::from_be(eth.proto) != ETH_P_IP {
        // ARP and the like from the host; the pod drops what it does not
        // speak.
        return pass(Reason::FromStack);
    }
    let mut pkt = match parse::ipv4(ctx) {
        Ok(pkt) => pkt,
        Err(reason) => return drop(reason),
    };
    by_datagram(ctx, &mut pkt, from_stack)
}

/// An IPv4 packet the host stack sends to the pod.
#[inline(always)]
fn from_stack(_ctx: &TcContext, pkt: &mut parse::Ipv4Packet) -> Verdict {
    let Some(dst) = lookup::local_endpoint(pkt.hdr.daddr) else {
        // Not addressed to the pod's own IP (broadcast and the like).
        return pass(Reason::FromStack);
    };
    if let Err(reason) = fragment::decidable(pkt) {
        return drop(reason);
    }
    match policy::enforce(pkt, None, Some(&dst), Arrival::FromStack, false) {
        Ok(passed) => {
            if passed.admitted {
                policy::admitted(pkt, None, Some(&dst), Arrival::FromStack, false);
            }
            pass(Reason::FromStack)
        }
        Err(reason) => drop(reason),
    }
}
