//! A ring buffer record to a typed event: pure, so malformed records are
//! tested without a kernel.

use std::net::Ipv4Addr;

use sluice_common::{
    direction::Direction,
    flow::{decision, kind, FlowEvent, NO_REASON},
    observe::FlowVerdict,
    reason::Reason,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("flow event of {0} bytes, expected {size}", size = std::mem::size_of::<FlowEvent>())]
    Size(usize),
    #[error("unknown flow event kind {0}")]
    Kind(u8),
    #[error("unknown direction {0}")]
    Direction(u8),
}

/// A decoded event: what the datapath said, before naming anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFlow {
    /// CLOCK_MONOTONIC nanoseconds.
    pub monotonic_ns: u64,
    pub verdict: FlowVerdict,
    pub direction: Direction,
    /// Unknown reason numbers (a newer datapath) are kept as numbers.
    pub reason: Option<Result<Reason, u32>>,
    pub protocol: u8,
    pub saddr: Ipv4Addr,
    pub sport: u16,
    pub daddr: Ipv4Addr,
    pub dport: u16,
    pub frontend: Option<(Ipv4Addr, u16)>,
    /// Each direction's decision where this node made it: `open`,
    /// `allowed`, `denied` or `would-deny`.
    pub egress: Option<&'static str>,
    pub ingress: Option<&'static str>,
    /// The identities policy judged the ends by (verdicts only).
    pub src_identity: Option<u32>,
    pub dst_identity: Option<u32>,
}

fn decided(code: u8) -> Option<&'static str> {
    match code {
        decision::OPEN => Some("open"),
        decision::ALLOWED => Some("allowed"),
        decision::DENIED => Some("denied"),
        decision::WOULD_DENY => Some("would-deny"),
        _ => None,
    }
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<RawFlow, DecodeError> {
    if bytes.len() != std::mem::size_of::<FlowEvent>() {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length is checked; FlowEvent is plain old data (any bit
    // pattern is a value); the read tolerates any alignment.
    let e: FlowEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let verdict = match e.kind {
        kind::ALLOWED => FlowVerdict::Allowed,
        kind::DENIED => FlowVerdict::Denied,
        kind::DROPPED => FlowVerdict::Dropped,
        kind::TRANSLATED => FlowVerdict::Translated,
        kind::WOULD_DENY => FlowVerdict::WouldDeny,
        other => return Err(DecodeError::Kind(other)),
    };
    let direction = match e.direction {
        0 => Direction::Ingress,
        1 => Direction::Egress,
        other => return Err(DecodeError::Direction(other)),
    };
    let reason = (e.reason != NO_REASON).then(|| Reason::from_number(e.reason).ok_or(e.reason));
    Ok(RawFlow {
        monotonic_ns: e.time_ns,
        verdict,
        direction,
        reason,
        protocol: e.protocol,
        saddr: e.saddr.into(),
        sport: e.sport,
        daddr: e.daddr.into(),
        dport: e.dport,
        frontend: (e.kind == kind::TRANSLATED).then(|| (e.orig_daddr.into(), e.orig_dport)),
        egress: decided(e.egress),
        ingress: decided(e.ingress),
        src_identity: (e.src_identity != 0).then_some(e.src_identity),
        dst_identity: (e.dst_identity != 0).then_some(e.dst_identity),
    })
}

/// Converts the datapath's monotonic times to wall-clock time: the offset
/// between the two clocks, read once (a wall clock step later shifts
/// events by the step; NTP slewing stays in the noise).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix ns minus monotonic ns.
    offset: i128,
}

impl Clock {
    pub fn now() -> Self {
        let read = |clock| {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid clock id and a timespec to write into.
            let ok = unsafe { libc::clock_gettime(clock, &mut t) } == 0;
            ok.then(|| t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128)
        };
        let offset = match (read(libc::CLOCK_REALTIME), read(libc::CLOCK_MONOTONIC)) {
            (Some(real), Some(mono)) => real - mono,
            _ => 0,
        };
        Self { offset }
    }

    pub const fn with_offset(offset: i128) -> Self {
        Self { offset }
    }

    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset).clamp(0, u64::MAX as i128) as u64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn bytes(e: &FlowEvent) -> Vec<u8> {
        // SAFETY: plain old data of exactly this size.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const FlowEvent).cast::<u8>(),
                std::mem::size_of::<FlowEvent>(),
            )
        }
        .to_vec()
    }

    pub fn denied_ingress() -> FlowEvent {
        FlowEvent {
            time_ns: 5_000,
            saddr: [10, 244, 1, 2],
            daddr: [10, 244, 2, 3],
            sport: 40_000,
            dport: 80,
            protocol: 6,
            kind: kind::DENIED,
            direction: Direction::Ingress as u8,
            reason: Reason::DropPolicyIngress as u32,
            egress: decision::OPEN,
            ingress: decision::DENIED,
            ..FlowEvent::default()
        }
    }

    #[test]
    fn decodes_a_denial_with_its_decisions() {
        let flow = decode(&bytes(&denied_ingress())).expect("decode");
        assert_eq!(flow.verdict, FlowVerdict::Denied);
        assert_eq!(flow.direction, Direction::Ingress);
        assert_eq!(flow.reason, Some(Ok(Reason::DropPolicyIngress)));
        assert_eq!(flow.saddr, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(flow.dport, 80);
        assert_eq!(flow.egress, Some("open"));
        assert_eq!(flow.ingress, Some("denied"));
        assert_eq!(flow.src_identity, None);
        assert_eq!(flow.frontend, None);
    }

    #[test]
    fn decodes_a_translation_and_an_allowance_s_identities() {
        let e = FlowEvent {
            kind: kind::TRANSLATED,
            reason: NO_REASON,
            orig_daddr: [10, 96, 0, 10],
            orig_dport: 53,
            ..denied_ingress()
        };
        let flow = decode(&bytes(&e)).expect("decode");
        assert_eq!(flow.frontend, Some((Ipv4Addr::new(10, 96, 0, 10), 53)));
        assert_eq!(flow.reason, None);
        let e = FlowEvent {
            kind: kind::ALLOWED,
            reason: NO_REASON,
            ingress: decision::ALLOWED,
            src_identity: 260,
            dst_identity: 261,
            ..denied_ingress()
        };
        let flow = decode(&bytes(&e)).expect("decode");
        assert_eq!(flow.ingress, Some("allowed"));
        assert_eq!(
            (flow.src_identity, flow.dst_identity),
            (Some(260), Some(261))
        );
    }

    #[test]
    fn refuses_what_is_not_an_event_and_keeps_unknown_reasons() {
        assert_eq!(decode(&[0; 7]), Err(DecodeError::Size(7)));
        let e = FlowEvent {
            kind: 99,
            ..denied_ingress()
        };
        assert_eq!(decode(&bytes(&e)), Err(DecodeError::Kind(99)));
        let e = FlowEvent {
            direction: 7,
            ..denied_ingress()
        };
        assert_eq!(decode(&bytes(&e)), Err(DecodeError::Direction(7)));
        let e = FlowEvent {
            kind: kind::DROPPED,
            reason: 4000,
            ..denied_ingress()
        };
        assert_eq!(decode(&bytes(&e)).expect("decode").reason, Some(Err(4000)));
    }

    #[test]
    fn the_clock_shifts_monotonic_to_unix() {
        let clock = Clock::with_offset(1_000);
        assert_eq!(clock.unix_ns(5), 1_005);
        assert_eq!(Clock::with_offset(-10).unix_ns(5), 0);
    }
}
