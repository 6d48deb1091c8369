//! Flow events into the `SLUICE_FLOW_EVENTS` ring buffer (layout and
//! meaning in `sluice_common::flow`): new flows policy admitted (or audit
//! mode let through, as `policy::admitted` found), drops (policy's
//! denials among them), Service translations. Each emitter first reads
//! the agent's switch, so with nobody listening an event costs one array
//! lookup; when on, a
//! per-CPU token bucket bounds the rate, and what it refuses or the full
//! ring loses is counted. Events are written straight into the reserved
//! ring slot, never built on the stack (the callers' frames are near the
//! verifier's limit). Only paths that decide something new call in: the
//! established-flow path emits nothing.
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use sluice_common::{
    conntrack::CtKey,
    direction::Direction,
    flow::{counters, decision, kind, take_token, FlowEvent, NO_REASON},
    reason::Reason,
};

use crate::{
    conntrack,
    lookup::{self, BpfPolicy},
    maps::{FLOW_EVENTS, FLOW_EVENT_BUCKETS, FLOW_EVENT_CONFIG, FLOW_EVENT_COUNTERS},
    parse::{Ipv4Packet, ETH_HLEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP},
};

#[inline(always)]
fn count(slot: u32) {
    if let Some(n) = FLOW_EVENT_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU array slot, valid for this program run; no
        // other CPU writes it.
        unsafe { *n += 1 };
    }
}

/// Whether an event may be emitted now: the switch is on and this CPU's
/// bucket has a token. Returns the time read for the bucket.
#[inline(always)]
fn admit() -> Option<u64> {
    // SAFETY: a map value pointer, valid for this program run; copied out.
    let config = FLOW_EVENT_CONFIG.get_ptr(0).map(|c| unsafe { *c })?;
    if config.enabled == 0 {
        return None;
    }
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let bucket = FLOW_EVENT_BUCKETS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; BPF programs do not preempt each other on
    // one CPU.
    if !take_token(unsafe { &mut *bucket }, now, config.rate, config.burst) {
        count(counters::RATE_LIMITED);
        return None;
    }
    Some(now)
}

/// Reserves a slot and lets `fill` write the event; counts it emitted or
/// lost.
#[inline(always)]
fn emit(now: u64, fill: impl FnOnce(&mut FlowEvent)) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(counters::LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved slot is ours and as large as a FlowEvent; every
    // field is written before submit (the default first, then `fill`).
    unsafe {
        event.write(FlowEvent {
            time_ns: now,
            reason: NO_REASON,
            ..FlowEvent::default()
        });
        fill(&mut *event);
    }
    entry.submit(0);
    count(counters::EMITTED);
}

/// A new flow policy admitted (`flow`: its packet's tuple), with how
/// each direction was decided (`sluice_common::flow::decision`, from
/// `policy::admitted`) and the identities policy judged the ends by.
#[inline(always)]
pub fn allowed(flow: &CtKey, egress: u8, ingress: u8) {
    let Some(now) = admit() else {
        return;
    };
    let src_identity = lookup::peer_identity(flow.saddr);
    let dst_identity = lookup::peer_identity(flow.daddr);
    emit(now, |e| {
        e.saddr = flow.saddr;
        e.daddr = flow.daddr;
        e.sport = flow.sport;
        e.dport = flow.dport;
        e.protocol = flow.protocol;
        // The direction audit mode let through (egress first, as policy
        // decides), else the destination's, which decides last (egress
        // when only the source is here).
        (e.kind, e.direction) = if egress == decision::WOULD_DENY {
            (kind::WOULD_DENY, Direction::Egress as u8)
        } else if ingress == decision::WOULD_DENY {
            (kind::WOULD_DENY, Direction::Ingress as u8)
        } else if ingress == decision::NOT_HERE {
            (kind::ALLOWED, Direction::Egress as u8)
        } else {
            (kind::ALLOWED, Direction::Ingress as u8)
        };
        e.egress = egress;
        e.ingress = ingress;
        e.src_identity = src_identity;
        e.dst_identity = dst_identity;
    });
}

/// A new connection to a Service frontend given a backend (`key`: the
/// client's packet before translation).
#[inline(always)]
pub fn translated(key: &CtKey, backend_addr: [u8; 4], backend_port: u16) {
    let Some(now) = admit() else {
        return;
    };
    emit(now, |e| {
        e.saddr = key.saddr;
        e.daddr = backend_addr;
        e.sport = key.sport;
        e.dport = backend_port;
        e.protocol = key.protocol;
        e.kind = kind::TRANSLATED;
        e.direction = Direction::Egress as u8;
        e.orig_daddr = key.daddr;
        e.orig_dport = key.dport;
    });
}

/// A packet dropped for `reason`: its addresses and ports read again from
/// the packet, as far as it has them. A policy drop is a denial, reported
/// with the direction that refused and the identities policy judged the
/// ends by. Not inlined: the drop path only, kept out of the callers'
/// frames.
#[inline(never)]
pub fn dropped(ctx: &TcContext, reason: Reason, direction: Direction) {
    let Some(now) = admit() else {
        return;
    };
    let ethertype = ctx.load::<u16>(12).map(u16::from_be).unwrap_or(0);
    let (mut saddr, mut daddr, mut protocol, mut sport, mut dport) = ([0; 4], [0; 4], 0, 0, 0);
    if ethertype == ETH_P_IP {
        saddr = ctx.load::<[u8; 4]>(ETH_HLEN + 12).unwrap_or([0; 4]);
        daddr = ctx.load::<[u8; 4]>(ETH_HLEN + 16).unwrap_or([0; 4]);
        protocol = ctx.load::<u8>(ETH_HLEN + 9).unwrap_or(0);
        let ihl = ctx.load::<u8>(ETH_HLEN).map(|b| (b & 0x0f) as usize * 4).unwrap_or(0);
        let frag = ctx.load::<u16>(ETH_HLEN + 6).map(u16::from_be).unwrap_or(0);
        // Ports only from a first (or only) fragment with a sane header.
        if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
            && frag & 0x1fff == 0
            && (20..=60).contains(&ihl)
        {
            let l4 = ETH_HLEN + ihl;
            sport = ctx.load::<u16>(l4).map(u16::from_be).unwrap_or(0);
            dport = ctx.load::<u16>(l4 + 2).map(u16::from_be).unwrap_or(0);
        }
    }
    let denied = reason.is_policy_drop();
    let (src_identity, dst_identity, refusing) = if denied {
        (
            lookup::peer_identity(saddr),
            lookup::peer_identity(daddr),
            decision::DENIED,
        )
    } else {
        (0, 0, decision::NOT_HERE)
    };
    emit(now, |e| {
        e.saddr = saddr;
        e.daddr = daddr;
        e.sport = sport;
        e.dport = dport;
        e.protocol = protocol;
        e.kind = if denied { kind::DENIED } else { kind::DROPPED };
        e.direction = direction as u8;
        e.reason = reason as u32;
        if reason == Reason::DropPolicyEgress {
            e.egress = refusing;
        } else {
            e.ingress = refusing;
        }
        e.src_identity = src_identity;
        e.dst_identity = dst_identity;
    });
}
