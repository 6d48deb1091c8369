//! NetworkPolicy enforcement with connection tracking. A new flow is
//! decided by the shared decision (`sluice_common::policy::decide_flow`:
//! egress of a local source, ingress of a local destination); later
//! packets and replies pass through conntrack, checked again once whenever
//! the policy revision moved. A refused flow becomes a tombstone for that
//! revision, so neither end can revive it as a new flow of its own.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use sluice_common::{
    conntrack::{ct_flags, CtKey},
    counters::verdict::Verdict,
    direction::Direction,
    endpoint::EndpointInfo,
    policy::{decide_flow, Decision},
    reason::Reason,
};

use crate::{
    conntrack::{self, Checked, Entry},
    lookup::{self, BpfPolicy},
    metrics::count_verdict,
    parse::{Frag, Ipv4Packet},
};

/// Policy for a flow's first packet (or a re-check), `flow` being its
/// first packet's tuple and `src`/`dst` the local endpoints at its ends.
/// Verdicts are counted where a policy decided: a denial for the direction
/// that denied, allowances only when the flow passes as a whole.
#[inline(always)]
fn check(flow: &CtKey, src: Option<&EndpointInfo>, dst: Option<&EndpointInfo>) -> Result<(), Direction> {
    let decision = decide_flow(
        &BpfPolicy,
        src.map(|e| e.id),
        dst.map(|e| e.id),
        flow.saddr,
        flow.daddr,
        flow.protocol,
        flow.dport,
    );
    if let Some(direction) = decision.denied_by() {
        count_verdict(Verdict::Denied, direction);
        return Err(direction);
    }
    for (decided, direction) in [
        (decision.egress, Direction::Egress),
        (decision.ingress, Direction::Ingress),
    ] {
        if decided == Some(Decision::Allowed) {
            count_verdict(Verdict::Allowed, direction);
        }
    }
    Ok(())
}

/// A tracked flow against the current policy (`flow`: its first packet's
/// tuple, `src`/`dst` the local endpoints at its ends): checked again once
/// per policy revision; a tombstone of this revision refuses every packet,
/// from either end, with the direction that refused it. Inlined: BPF calls
/// take at most five arguments.
#[inline(always)]
fn revalidate(
    entry: Entry,
    pkt: &Ipv4Packet,
    flow: &CtKey,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
    now: u64,
    revision: u32,
) -> Result<(), Direction> {
    let verdict = match entry.checked(revision) {
        Checked::AtRevision(Ok(())) => {
            entry.refresh(pkt, revision, now);
            return Ok(());
        }
        Checked::AtRevision(Err(direction)) => {
            count_verdict(Verdict::Denied, direction);
            Err(direction)
        }
        Checked::Outdated => check(flow, src, dst),
    };
    entry.set_checked(pkt, verdict, revision, now);
    if verdict.is_ok() {
        entry.refresh(pkt, revision, now);
    }
    verdict
}

/// How a packet reached the program deciding it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Straight from a pod, or from another node's dataplane.
    Direct,
    /// From the host stack, which may have translated it (Service DNAT, a
    /// hostPort): a flow that starts here is marked so its replies go back
    /// through the stack.
    FromStack,
}

/// A packet policy let through.
#[derive(Clone, Copy)]
pub struct Passed {
    /// The flow came in through the host stack: send this packet back
    /// there, not straight to the other end.
    pub via_stack: bool,
    /// A backend's reply in a translated connection to a Service: it must
    /// get the frontend back as its source before the client sees it.
    pub service_reply: bool,
    /// An ICMP error about a client's translated packet: its quote must
    /// name the frontend again before the client sees it.
    pub service_error: bool,
}

/// Decides a packet between `src` and `dst` (each given when it is a pod
/// on this node): `Err(reason)` to drop. A later fragment is decided by
/// its first fragment's ports; without them the caller has dropped it
/// (`fragment::decidable`).
#[inline(always)]
/// `translated`: the packet is a client's, translated to a Service backend
/// (a new flow is tracked as such).
pub fn enforce(
    pkt: &Ipv4Packet,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
    arrival: Arrival,
    translated: bool,
) -> Result<Passed, Reason> {
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let revision = lookup::policy_revision();
    if let Some(quoted) = pkt.quoted() {
        if let Some(related) = conntrack::related(quoted, pkt, src.is_some(), now, revision) {
            return Ok(Passed {
                via_stack: related.via_stack,
                service_reply: false,
                service_error: related.service,
            });
        }
    }
    let via_stack = arrival == Arrival::FromStack;
    let mut new_flags = if via_stack { ct_flags::VIA_STACK } else { 0 };
    if translated {
        new_flags |= ct_flags::SERVICE;
    }
    let key = conntrack::packet_key(pkt);
    let forward = conntrack::lookup(&key, now);
    let superseded = forward.is_some_and(|entry| entry.superseded_by(pkt, new_flags));
    let (verdict, passed) = if let Some(entry) = forward.filter(|_| !superseded) {
        let passed = Passed {
            via_stack: entry.via_stack(),
            service_reply: false,
            service_error: false,
        };
        (revalidate(entry, pkt, &key, src, dst, now, revision), passed)
    } else {
        let reverse = key.reversed();
        let reply = if superseded {
            None
        } else {
            conntrack::lookup(&reverse, now)
        };
        if let Some(entry) = reply {
            // A reply: what counts is whether the original direction is
            // still allowed.
            let passed = Passed {
                via_stack: entry.via_stack(),
                service_reply: entry.service(),
                service_error: false,
            };
            (
                revalidate(entry, pkt, &reverse, dst, src, now, revision),
                passed,
            )
        } else {
            let verdict = check(&key, src, dst);
            if verdict.is_ok() {
                conntrack::track(&key, pkt, new_flags, revision, now);
            }
            let passed = Passed {
                via_stack,
                service_reply: false,
                service_error: false,
            };
            (verdict, passed)
        }
    };
    verdict.map(|()| passed).map_err(Reason::policy_drop)
}

/// A local pod's packet the host stack forwards to another node (after
/// translating it, typically: kube-proxy's DNAT of a Service address to a
/// backend elsewhere). The flow as translated is new to conntrack: track
/// it as having come through the stack, so its replies, arriving from the
/// other node, go back through the stack to be translated back. Flows
/// conntrack knows (pods' own, forwarded directly) are left as they are;
/// their own enforcement points keep them.
#[inline(always)]
pub fn note_stack_forwarded(pkt: &Ipv4Packet) {
    if pkt.frag == Frag::Untracked {
        return;
    }
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = conntrack::packet_key(pkt);
    if conntrack::lookup(&key, now).is_some() || conntrack::lookup(&key.reversed(), now).is_some()
    {
        return;
    }
    conntrack::track(&key, pkt, ct_flags::VIA_STACK, lookup::policy_revision(), now);
}
