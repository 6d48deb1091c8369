//! The underlay device: `from_netdev` on its TCX ingress, `to_netdev` on
//! its TCX egress.
use aya_ebpf::programs::TcContext;

use sluice_common::{
    config::{routing, ROUTED_MARK},
    reason::Reason,
};

use super::{by_datagram, to_local_pod, FromNode};
use crate::{
    lookup,
    parse::{self, ETH_P_IP},
    policy,
    service::{self, Toward},
    verdict::{drop, pass, pass_uncounted, Verdict},
};

/// Traffic to an external Service frontend is translated to its backend
/// and left to the host stack to forward. In native routing, local pods'
/// traffic from other nodes (or from outside) skips the host stack; in
/// tunnel mode it arrives through the VXLAN device, and what reaches a
/// pod from outside is the stack's to route (`to_container` sees it). The
/// node's own traffic is left alone, whatever it is, and not counted.
pub fn from_netdev(ctx: &TcContext) -> Verdict {
    let Ok(eth) = parse::eth(ctx) else {
        return pass_uncounted();
    };
    if u16::from_be(eth.proto) != ETH_P_IP {
        return pass_uncounted();
    }
    let Ok(mut pkt) = parse::ipv4(ctx) else {
        return pass_uncounted();
    };
    by_datagram(ctx, &mut pkt, from_underlay)
}

/// An IPv4 packet from the underlay.
#[inline(always)]
fn from_underlay(ctx: &TcContext, pkt: &mut parse::Ipv4Packet) -> Verdict {
    match service::from_outside(ctx, pkt) {
        Ok(Toward::NotAService) => {}
        // Translated: the stack forwards it (and masquerades it if asked).
        // Without a ready backend: the stack refuses it.
        Ok(Toward::Backend | Toward::NoBackend) => return pass(Reason::ToStack),
        Err(reason) => return drop(reason),
    }
    if lookup::config().routing != routing::NATIVE {
        return pass_uncounted();
    }
    match to_local_pod(ctx, pkt) {
        FromNode::Done(verdict) => verdict,
        FromNode::ToStack => pass(Reason::ToStack),
        FromNode::NotLocal => pass_uncounted(),
    }
}

/// Everything leaving through the underlay passes, uncounted; a local
/// pod's packet that the stack forwarded here (after a Service DNAT, say)
/// is noted, so the reply from the other node goes back through the stack.
/// Packets `from_container` routed here itself carry
/// [`ROUTED_MARK`] (cleared here) and are not noted. A backend's reply to a client
/// outside (or an ICMP error about it), in a connection `from_netdev`
/// translated, gets the external frontend back.
pub fn to_netdev(ctx: &TcContext) -> Verdict {
    let Ok(eth) = parse::eth(ctx) else {
        return pass_uncounted();
    };
    if u16::from_be(eth.proto) != ETH_P_IP {
        return pass_uncounted();
    }
    let Ok(mut pkt) = parse::ipv4(ctx) else {
        return pass_uncounted();
    };
    by_datagram(ctx, &mut pkt, to_underlay)
}

/// An IPv4 packet leaving through the underlay.
#[inline(always)]
fn to_underlay(ctx: &TcContext, pkt: &mut parse::Ipv4Packet) -> Verdict {
    // SAFETY: the context's skb pointer is valid for this program run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark & ROUTED_MARK != 0 {
        ctx.set_mark(mark & !ROUTED_MARK);
    } else if let Some(src) = lookup::local_endpoint(pkt.hdr.saddr) {
        policy::note_stack_forwarded(pkt, &src);
    }
    if let Err(reason) = service::leaving_node(ctx, pkt) {
        return drop(reason);
    }
    pass_uncounted()
}
