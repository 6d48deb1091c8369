//! NetworkPolicy enforcement with connection tracking. Packets between
//! pods no policy isolates pass without conntrack (see [`enforce`]). A new
//! flow of an isolated pod is decided by the shared decision
//! (`sluice_common::policy::decide_flow`: egress of a local source,
//! ingress of a local destination); later packets and replies pass through
//! conntrack, checked again once whenever the policy revision moved. A
//! refused flow becomes a tombstone for that revision, so neither end can
//! revive it as a new flow of its own.
use sluice_common::{
    conntrack::{ct_flags, CtKey},
    counters::verdict::Verdict,
    direction::Direction,
    endpoint::EndpointInfo,
    ipcache::flags as ipcache_flags,
    flow::decision as flow_decision,
    policy::{decide, decide_flow, Decision, PolicyLookup},
    reason::Reason,
};

use crate::{
    conntrack::{self, Checked, Entry, FlowKey},
    events,
    lookup::{self, BpfPolicy},
    metrics::count_verdict,
    parse::{Frag, Ipv4Packet, IPPROTO_TCP, TCP_ACK, TCP_SYN},
};

/// Policy for a flow's first packet (or a re-check), `flow` being its
/// first packet's tuple and `src`/`dst` the local endpoints at its ends.
/// Verdicts are counted where a policy decided: a denial for the direction
/// that denied, allowances only when the flow passes as a whole. A
/// direction in audit mode is left undecided (see [`admitted`]).
#[inline(always)]
fn check(
    flow: &CtKey,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
) -> Result<(), Direction> {
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
/// per policy revision (both ways for an adopted flow, whose opener is a
/// guess); a tombstone of this revision refuses every packet, from either
/// end, with the direction that refused it. Inlined: BPF calls take at
/// most five arguments.
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
            renew(entry, pkt, src, dst, now, revision);
            return Ok(());
        }
        Checked::AtRevision(Err(direction)) => {
            count_verdict(Verdict::Denied, direction);
            Err(direction)
        }
        Checked::Outdated if entry.adopted() => both_ways(flow, src, dst),
        Checked::Outdated => check(flow, src, dst),
    };
    entry.set_checked(pkt, verdict, revision, now);
    if verdict.is_ok() {
        renew(entry, pkt, src, dst, now, revision);
    }
    verdict
}

/// A flow whose opener is not known: policy must allow it both ways.
#[inline(always)]
fn both_ways(
    flow: &CtKey,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
) -> Result<(), Direction> {
    check(flow, src, dst)?;
    check(&flow.reversed(), dst, src)
}

/// Renews an allowed flow's entry (coarsely, see `Entry::refresh`); a flow
/// whose local pods need its entry keeps them in conntrack as long.
#[inline(always)]
fn renew(
    entry: Entry,
    pkt: &Ipv4Packet,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
    now: u64,
    revision: u32,
) {
    if let Some(expires) = entry.refresh(pkt, revision, now) {
        if entry.steers() {
            keep_stateful(src, dst, expires);
        }
    }
}

/// Keeps the local pods at a flow's ends in conntrack until `until`.
#[inline(always)]
fn keep_stateful(src: Option<&EndpointInfo>, dst: Option<&EndpointInfo>, until: u64) {
    for endpoint in [src, dst].into_iter().flatten() {
        conntrack::keep_stateful(endpoint.id, until);
    }
}

/// Whether a local pod's packets may skip conntrack: no policy isolates it
/// (it has no isolation entry at all: if in doubt, track) and none of its
/// flows needs its entry to be forwarded right. A pod that is not local
/// (`None`) is decided where it is.
#[inline(always)]
fn untracked(endpoint: Option<&EndpointInfo>) -> bool {
    match endpoint {
        None => true,
        Some(e) => BpfPolicy.isolation(e.id).is_none() && !conntrack::stateful(e.id),
    }
}

/// Which end opened a flow conntrack does not know.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opener {
    /// The packet's sender: the flow starts with this packet.
    Sender,
    /// The packet's receiver: the packet answers a connection under way.
    Receiver,
    /// A connection under way, opened by either end.
    Unknown,
}

/// The first port of Linux's default ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768-60999): clients' ports.
const EPHEMERAL_FIRST: u16 = 32768;
const EPHEMERAL_LAST: u16 = 60999;

/// Who opened the flow of a packet conntrack does not know. Anything but
/// TCP, and a bare SYN, starts a flow of its own (as with every flow
/// before pods were tracked only when isolated). A TCP segment without an
/// entry belongs to a connection already under way, which was not tracked
/// while no policy isolated its pods (or whose entry was evicted): its
/// opener is the end with a client's port, when exactly one end has one
/// (a server listens below the ephemeral range), else unknown. Only a
/// pod's own flows can be under way untracked: what was `translated` or
/// came through the stack (`arrival`) starts with this packet.
#[inline(always)]
fn opener(pkt: &Ipv4Packet, arrival: Arrival, translated: bool) -> Opener {
    if arrival != Arrival::Direct
        || translated
        || pkt.hdr.protocol != IPPROTO_TCP
        || pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    {
        return Opener::Sender;
    }
    let ephemeral = |port: u16| (EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&port);
    match (ephemeral(pkt.sport), ephemeral(pkt.dport)) {
        (true, false) => Opener::Sender,
        (false, true) => Opener::Receiver,
        _ => Opener::Unknown,
    }
}

/// A source address whose replies the programs forward straight to it (a
/// pod here or on another node, or another node's gateway, which is
/// routed as part of its pod range): a flow from it that the stack handed
/// in must have its entry found by every reply.
#[inline(always)]
fn forwarded_directly(addr: [u8; 4]) -> bool {
    lookup::local_endpoint(addr).is_some()
        || lookup::ipcache(addr).is_some_and(|e| e.flags & ipcache_flags::REMOTE_POD_CIDR != 0)
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
    /// A new flow policy admitted with this packet: the caller reports it
    /// ([`admitted`]), outside this function, whose frame and registers
    /// are at the verifier's limits.
    pub admitted: bool,
}

const PASSED: Passed = Passed {
    via_stack: false,
    service_reply: false,
    service_error: false,
    admitted: false,
};

/// Decides a packet between `src` and `dst` (each given when it is a pod
/// on this node): `Err(reason)` to drop. A later fragment is decided by
/// its first fragment's ports; without them the caller has dropped it
/// (`fragment::decidable`). `translated`: the packet is a client's,
/// translated to a Service backend (a new flow is tracked as such).
///
/// Conntrack is for flows where it decides something: between pods no
/// policy isolates, straight from one to the other, a packet passes
/// without it (no policy would refuse it, no reply needs an entry to
/// pass); so a flow is tracked from its first packet whenever one of its
/// local pods is isolated in either direction (the other node tracks it
/// for its own pod). Translated flows and those the stack handed in are
/// always tracked, and a pod with such a flow whose replies need the
/// entry stays tracked while it lives (`STATEFUL_ENDPOINTS`).
#[inline(always)]
pub fn enforce(
    pkt: &Ipv4Packet,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
    arrival: Arrival,
    translated: bool,
) -> Result<Passed, Reason> {
    if arrival == Arrival::Direct && !translated && untracked(src) && untracked(dst) {
        return Ok(PASSED);
    }
    tracked(pkt, src, dst, arrival, translated)
}

/// [`enforce`] through conntrack. A function of its own (not inlined): its
/// locals would otherwise push the caller's stack frame, beside the
/// Service translation's, past what the verifier allows.
#[inline(never)]
fn tracked(
    pkt: &Ipv4Packet,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
    arrival: Arrival,
    translated: bool,
) -> Result<Passed, Reason> {
    let now = conntrack::now();
    let revision = lookup::policy_revision();
    if let Some(quoted) = pkt.quoted() {
        if let Some(related) = conntrack::related(quoted, pkt, src.is_some(), now, revision) {
            return Ok(Passed {
                via_stack: related.via_stack,
                service_reply: false,
                service_error: related.service,
                admitted: false,
            });
        }
    }
    let via_stack = arrival == Arrival::FromStack;
    let mut new_flags = 0;
    if via_stack {
        new_flags |= ct_flags::VIA_STACK;
        if forwarded_directly(pkt.hdr.saddr) {
            new_flags |= ct_flags::STEERS;
        }
    }
    if translated {
        new_flags |= ct_flags::SERVICE | ct_flags::STEERS;
    }
    let tuple = conntrack::packet_key(pkt);
    let flow = FlowKey::of(&tuple);
    let (verdict, passed) = match conntrack::lookup(&flow, now) {
        Some(entry) if !entry.forward(&flow) => {
            // A reply: what counts is whether the original direction is
            // still allowed.
            let passed = Passed {
                via_stack: entry.via_stack(),
                service_reply: entry.service(),
                service_error: false,
                admitted: false,
            };
            let reverse = tuple.reversed();
            (
                revalidate(entry, pkt, &reverse, dst, src, now, revision),
                passed,
            )
        }
        Some(entry) if !entry.superseded_by(pkt, new_flags) => {
            let passed = Passed {
                via_stack: entry.via_stack(),
                service_reply: false,
                service_error: false,
                admitted: false,
            };
            (
                revalidate(entry, pkt, &tuple, src, dst, now, revision),
                passed,
            )
        }
        _ => {
            let opener = opener(pkt, arrival, translated);
            let (verdict, first) = match opener {
                Opener::Sender => (check(&tuple, src, dst), flow),
                Opener::Receiver => (
                    check(&tuple.reversed(), dst, src),
                    FlowKey {
                        key: flow.key,
                        reversed: !flow.reversed,
                    },
                ),
                Opener::Unknown => {
                    new_flags |= ct_flags::ADOPTED;
                    (both_ways(&tuple, src, dst), flow)
                }
            };
            if verdict.is_ok() {
                let expires = conntrack::track(&first, pkt, new_flags, revision, now);
                if new_flags & ct_flags::STEERS != 0 {
                    keep_stateful(src, dst, expires);
                }
            }
            let passed = Passed {
                via_stack,
                service_reply: false,
                service_error: false,
                admitted: true,
            };
            (verdict, passed)
        }
    };
    verdict.map(|()| passed).map_err(Reason::policy_drop)
}

/// How policy treated one direction of a new flow it admitted, at the
/// local `endpoint` (`None`: not decided here), `peer` being the other
/// end's address: a `sluice_common::flow::decision`. A direction in audit
/// mode, which enforcement left undecided (`decide_flow`), is decided
/// here and counted, allowed or would-deny: only audited pods pay for it.
#[inline(always)]
fn admitted_at(
    endpoint: Option<&EndpointInfo>,
    direction: Direction,
    peer: [u8; 4],
    flow: &CtKey,
) -> u8 {
    let Some(endpoint) = endpoint else {
        return flow_decision::NOT_HERE;
    };
    match BpfPolicy.isolation(endpoint.id) {
        Some(isolation) if isolation.audits(direction) => {
            match decide(&BpfPolicy, endpoint.id, direction, peer, flow.protocol, flow.dport) {
                Decision::WouldDeny => {
                    count_verdict(Verdict::WouldDeny, direction);
                    flow_decision::WOULD_DENY
                }
                Decision::Open => flow_decision::OPEN,
                _ => {
                    count_verdict(Verdict::Allowed, direction);
                    flow_decision::ALLOWED
                }
            }
        }
        Some(isolation) if isolation.isolates(direction) => flow_decision::ALLOWED,
        _ => flow_decision::OPEN,
    }
}

/// A new flow policy admitted ([`Passed::admitted`]) with this packet
/// (its first, or the first seen of a connection under way) between its
/// local ends `src`/`dst`, as [`enforce`] got it: counts what audit mode
/// let through and reports the flow. Decided the way enforcement decided
/// it: from its opener, the packet's receiver for a reply of a
/// connection under way; an adopted flow (opener unknown) both ways,
/// reported the way audit mode would deny it, if one does. Not inlined: a
/// frame of its own, nothing in the callers' registers.
#[inline(never)]
pub fn admitted(
    pkt: &Ipv4Packet,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
    arrival: Arrival,
    translated: bool,
) {
    let tuple = conntrack::packet_key(pkt);
    let opener = opener(pkt, arrival, translated);
    let (flow, src, dst) = match opener {
        Opener::Receiver => (tuple.reversed(), dst, src),
        _ => (tuple, src, dst),
    };
    let egress = admitted_at(src, Direction::Egress, flow.daddr, &flow);
    let ingress = admitted_at(dst, Direction::Ingress, flow.saddr, &flow);
    let audited = egress == flow_decision::WOULD_DENY || ingress == flow_decision::WOULD_DENY;
    if opener == Opener::Unknown && !audited {
        let back = flow.reversed();
        let back_egress = admitted_at(dst, Direction::Egress, back.daddr, &back);
        let back_ingress = admitted_at(src, Direction::Ingress, back.saddr, &back);
        if back_egress == flow_decision::WOULD_DENY || back_ingress == flow_decision::WOULD_DENY {
            events::allowed(&back, back_egress, back_ingress);
            return;
        }
    }
    events::allowed(&flow, egress, ingress);
}

/// A local pod's packet the host stack forwards to another node (after
/// translating it, typically: kube-proxy's DNAT of a Service address to a
/// backend elsewhere). The flow as translated is new to conntrack: track
/// it as having come through the stack, so its replies, arriving from the
/// other node, go back through the stack to be translated back, and keep
/// the pod (`src`) tracked while it lives, so those replies find it. Flows
/// conntrack knows are left as they are; the pods' own packets that
/// `from_container` routed itself never get here (the callers skip them:
/// the tunnel key, [`sluice_common::config::ROUTED_MARK`]).
#[inline(always)]
pub fn note_stack_forwarded(pkt: &Ipv4Packet, src: &EndpointInfo) {
    if pkt.frag == Frag::Untracked {
        return;
    }
    let now = conntrack::now();
    let flow = FlowKey::of(&conntrack::packet_key(pkt));
    if conntrack::lookup(&flow, now).is_some() {
        return;
    }
    let flags = ct_flags::VIA_STACK | ct_flags::STEERS;
    let expires = conntrack::track(&flow, pkt, flags, lookup::policy_revision(), now);
    conntrack::keep_stateful(src.id, expires);
}
