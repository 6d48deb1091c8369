//! NetworkPolicy enforcement with connection tracking. A new flow is
//! decided by the shared decision (`sluice_common::policy::decide_flow`:
//! egress of a local source, ingress of a local destination); later
//! packets and replies pass through conntrack, checked again once whenever
//! the policy revision moved. A refused flow becomes a tombstone for that
//! revision, so neither end can revive it as a new flow of its own.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use sluice_common::{
    conntrack::CtKey,
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
    parse::Ipv4Packet,
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

/// Decides a packet between `src` and `dst` (each given when it is a pod
/// on this node): `Err(reason)` to drop.
#[inline(always)]
pub fn enforce(
    pkt: &Ipv4Packet,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
) -> Result<(), Reason> {
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let revision = lookup::policy_revision();
    if let Some(quoted) = &pkt.quoted {
        if conntrack::related(quoted, pkt, src.is_some(), now, revision) {
            return Ok(());
        }
    }
    let key = conntrack::packet_key(pkt);
    let verdict = if let Some(entry) = conntrack::lookup(&key, now) {
        revalidate(entry, pkt, &key, src, dst, now, revision)
    } else {
        let reverse = key.reversed();
        if let Some(entry) = conntrack::lookup(&reverse, now) {
            // A reply: what counts is whether the original direction is
            // still allowed.
            revalidate(entry, pkt, &reverse, dst, src, now, revision)
        } else {
            let verdict = check(&key, src, dst);
            if verdict.is_ok() {
                conntrack::track(&key, pkt, revision, now);
            }
            verdict
        }
    };
    verdict.map_err(Reason::policy_drop)
}
