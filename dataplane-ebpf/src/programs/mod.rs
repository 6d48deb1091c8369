//! What a packet does at each attach point: `pod` (the host side of a
//! pod's veth), `overlay` (the node's VXLAN device), `netdev` (the underlay
//! device); and what the node's sockets' addresses become (`sock`, the
//! cgroup socket hooks); what never enters the node at all (`prefilter`,
//! XDP on the underlay). Each program's decision is a function from the
//! packet to a [`Verdict`]; [`run`] counts it.
pub mod netdev;
pub mod overlay;
pub mod pod;
pub mod prefilter;
pub mod sock;

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use sluice_common::{direction::Direction, reason::Reason};

use crate::{
    events, forward, fragment, lookup, metrics,
    parse::{self, Frag},
    policy::{self, Arrival},
    service,
    verdict::{drop, pass, Verdict},
};

/// Runs one program's decision and counts its verdict.
#[inline(always)]
pub fn run(ctx: &TcContext, decide: fn(&TcContext) -> Verdict, direction: Direction) -> i32 {
    let verdict = decide(ctx);
    if let Some(reason) = verdict.reason {
        metrics::count(reason, direction, ctx.len());
        if verdict.action == TC_ACT_SHOT {
            events::dropped(ctx, reason, direction);
        }
    }
    verdict.action
}

/// Decides an IPv4 packet as part of its datagram: a later fragment with
/// its first fragment's ports (or dropped as its first fragment was); a
/// first fragment's verdict and ports, as it arrived, are kept for the
/// later ones. One call of `decide`, and the packet as it arrived copied
/// for every packet: a value computed on one path only is a register the
/// verifier refuses to see spilled on the others.
#[inline(always)]
fn by_datagram(
    ctx: &TcContext,
    pkt: &mut parse::Ipv4Packet,
    decide: fn(&TcContext, &mut parse::Ipv4Packet) -> Verdict,
) -> Verdict {
    let arrived = fragment::First::of(pkt);
    let resolved = if pkt.frag.is_later() {
        fragment::resolve(pkt)
    } else {
        Ok(())
    };
    let verdict = match resolved {
        Ok(()) => decide(ctx, pkt),
        Err(reason) => drop(reason),
    };
    if pkt.frag == Frag::First {
        arrived.record(&verdict);
    }
    verdict
}

/// What became of a packet from another node.
enum FromNode {
    /// Not for a pod on this node: the host's.
    NotLocal,
    /// Decided: dropped or delivered into the pod.
    Done(Verdict),
    /// For a pod, in a flow this node's stack forwarded (and perhaps
    /// translated): the stack gets it, to translate it back.
    ToStack,
}

/// A packet from another node (overlay or underlay) for a pod on this
/// node: the pod's ingress policy, then straight into the pod, unless it
/// answers a flow this node's stack forwarded.
#[inline(always)]
fn to_local_pod(ctx: &TcContext, pkt: &mut parse::Ipv4Packet) -> FromNode {
    let Some(dst) = lookup::local_endpoint(pkt.hdr.daddr) else {
        return FromNode::NotLocal;
    };
    if let Err(reason) = fragment::decidable(pkt) {
        return FromNode::Done(drop(reason));
    }
    if pkt.hdr.ttl <= 1 {
        // The host stack answers with time exceeded.
        return FromNode::Done(pass(Reason::ToStack));
    }
    let passed = match policy::enforce(pkt, None, Some(&dst), Arrival::Direct, false) {
        Ok(passed) => passed,
        Err(reason) => return FromNode::Done(drop(reason)),
    };
    if passed.admitted {
        policy::admitted(pkt, None, Some(&dst), Arrival::Direct, false);
    }
    if passed.via_stack {
        return FromNode::ToStack;
    }
    if passed.service_reply {
        // A backend elsewhere answering this node's client.
        if let Err(reason) = service::from_backend(ctx, pkt) {
            return FromNode::Done(drop(reason));
        }
    }
    if passed.service_error {
        // An error about this node's client's packet to a backend.
        if let Err(reason) = service::error_from_backend(ctx, pkt) {
            return FromNode::Done(drop(reason));
        }
    }
    FromNode::Done(forward::deliver_local(ctx, &pkt.hdr, &dst))
}
