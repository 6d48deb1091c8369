//! What a packet does at each attach point: `pod` (the host side of a
//! pod's veth), `overlay` (the node's VXLAN device), `netdev` (the underlay
//! device, native routing). Each program's decision is a function from the
//! packet to a [`Verdict`]; [`run`] counts it.
pub mod netdev;
pub mod overlay;
pub mod pod;

use aya_ebpf::programs::TcContext;
use sluice_common::{direction::Direction, reason::Reason};

use crate::{
    forward, lookup, metrics, parse,
    policy,
    verdict::{drop, pass, Verdict},
};

/// Runs one program's decision and counts its verdict.
#[inline(always)]
pub fn run(ctx: &TcContext, decide: fn(&TcContext) -> Verdict, direction: Direction) -> i32 {
    let verdict = decide(ctx);
    if let Some(reason) = verdict.reason {
        metrics::count(reason, direction, ctx.len());
    }
    verdict.action
}

/// A packet from another node (overlay or underlay) for a pod on this
/// node: the pod's ingress policy, then straight into the pod. `None`: not
/// for a local pod.
#[inline(always)]
fn to_local_pod(ctx: &TcContext, pkt: &parse::Ipv4Packet) -> Option<Verdict> {
    let dst = lookup::local_endpoint(pkt.hdr.daddr)?;
    if pkt.hdr.ttl <= 1 {
        // The host stack answers with time exceeded.
        return Some(pass(Reason::ToStack));
    }
    if let Err(reason) = policy::enforce(pkt, None, Some(&dst)) {
        return Some(drop(reason));
    }
    Some(forward::deliver_local(ctx, &pkt.hdr, &dst))
}
