//! Flow events: what the programs tell `sluice observe` through the
//! `SLUICE_FLOW_EVENTS` ring buffer. One fixed-size record per event: a new
//! flow's policy verdict (allowed, denied, or would-deny in audit mode), a
//! dropped packet with its reason, a connection given a Service backend. Established flows emit
//! nothing (their path is the per-packet cost that matters).
//!
//! Emission is off unless the agent switches it on in
//! `SLUICE_FLOW_EVENT_CONFIG` (while someone is subscribed, or always, as
//! configured), and bounded per CPU by a token bucket; what the bucket
//! refuses and what the full ring loses are counted in
//! `SLUICE_FLOW_EVENT_COUNTERS`.

use crate::maps;

/// What an event reports ([`FlowEvent::kind`]).
pub mod kind {
    /// Policy admitted a new flow (its first packet, or the first after a
    /// policy change).
    pub const ALLOWED: u8 = 1;
    /// Policy refused a packet (a new flow's, or one of a flow refused
    /// since the last policy change).
    pub const DENIED: u8 = 2;
    /// A packet dropped for another reason than policy.
    pub const DROPPED: u8 = 3;
    /// A connection to a Service frontend was given a backend:
    /// `orig_daddr:orig_dport` is the frontend, `daddr:dport` the backend.
    pub const TRANSLATED: u8 = 4;
    /// Policy would have refused a new flow, but audit mode let it pass
    /// (`direction`: the one that would deny).
    pub const WOULD_DENY: u8 = 5;
}

/// One direction's policy decision in an event ([`FlowEvent::egress`],
/// [`FlowEvent::ingress`]).
pub mod decision {
    /// This node did not decide this direction (the pod is elsewhere, or
    /// egress denied first).
    pub const NOT_HERE: u8 = 0;
    /// No policy isolates the pod in this direction.
    pub const OPEN: u8 = 1;
    pub const ALLOWED: u8 = 2;
    pub const DENIED: u8 = 3;
    /// Denied, but passed: the pod is in audit mode for this direction.
    pub const WOULD_DENY: u8 = 4;
}

/// [`FlowEvent::reason`] of events that carry none (allowed, translated).
pub const NO_REASON: u32 = u32::MAX;

/// One event, as the programs write it into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC, converted to wall time by the
    /// agent.
    pub time_ns: u64,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Host byte order; ICMP's are its type and echo id, as in conntrack.
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// A [`kind`].
    pub kind: u8,
    /// The [`crate::direction::Direction`] that decided or dropped, seen
    /// from the pod.
    pub direction: u8,
    pub _pad0: u8,
    /// The [`crate::reason::Reason`] number of a drop, else [`NO_REASON`].
    pub reason: u32,
    /// [`decision`] of each direction.
    pub egress: u8,
    pub ingress: u8,
    pub _pad1: [u8; 2],
    /// The identities policy judged the ends by (the ipcache's label
    /// identity of each address; `identity::WORLD` for unknown ones). Zero
    /// in events other than verdicts.
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Translated events: the Service frontend the client addressed.
    pub orig_daddr: [u8; 4],
    pub orig_dport: u16,
    pub _pad2: u16,
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 48);

#[cfg(feature = "user")]
// SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
unsafe impl aya::Pod for FlowEvent {}

/// The switch and the bounds (index 0 of `SLUICE_FLOW_EVENT_CONFIG`),
/// written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventConfig {
    /// Non-zero: emit. Zero (the map's initial state): one lookup per
    /// new flow and drop, nothing more.
    pub enabled: u32,
    /// Events per second each CPU may emit, sustained.
    pub rate: u32,
    /// Events each CPU may emit at once after a quiet spell.
    pub burst: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<EventConfig>() == 16);

#[cfg(feature = "user")]
// SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
unsafe impl aya::Pod for EventConfig {}

/// A CPU's token bucket (its slot of the per-CPU
/// `SLUICE_FLOW_EVENT_BUCKETS`), written by the programs only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens, in thousandths of an event.
    pub tokens: u64,
    /// When the bucket was last refilled (bpf_ktime_get_ns).
    pub updated_ns: u64,
}

const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);

#[cfg(feature = "user")]
// SAFETY: plain-old-data, repr(C), no padding, no pointers.
unsafe impl aya::Pod for TokenBucket {}

/// Thousandths of an event per token: refills in whole nanoseconds stay
/// exact enough at low rates.
pub const MILLI: u64 = 1000;

/// The bucket after `now`: refilled at `rate` per second up to `burst`,
/// and one event taken if there is one. Returns whether the event may go.
/// Pure, so the programs and the unit tests run the same arithmetic.
#[inline(always)]
pub fn take_token(bucket: &mut TokenBucket, now: u64, rate: u32, burst: u32) -> bool {
    let cap = burst as u64 * MILLI;
    let elapsed = now.saturating_sub(bucket.updated_ns);
    // rate * MILLI tokens per 1e9 ns; at most a second's worth at once,
    // which keeps the product in range for any u32 rate.
    let elapsed = if elapsed > 1_000_000_000 {
        1_000_000_000
    } else {
        elapsed
    };
    let refill = elapsed * rate as u64 / 1_000_000;
    let mut tokens = bucket.tokens + refill;
    if tokens > cap {
        tokens = cap;
    }
    bucket.updated_ns = now;
    if tokens >= MILLI {
        bucket.tokens = tokens - MILLI;
        true
    } else {
        bucket.tokens = tokens;
        false
    }
}

/// Slots of `SLUICE_FLOW_EVENT_COUNTERS` (per-CPU u64).
pub mod counters {
    /// Events written into the ring buffer.
    pub const EMITTED: u32 = 0;
    /// Events lost: the ring buffer was full (the agent reads too slowly).
    pub const LOST: u32 = 1;
    /// Events the token bucket refused.
    pub const RATE_LIMITED: u32 = 2;

    pub const ALL: [(u32, &str); 3] = [
        (EMITTED, "emitted"),
        (LOST, "lost"),
        (RATE_LIMITED, "rate_limited"),
    ];
}

const _: () = assert!(counters::RATE_LIMITED < maps::FLOW_EVENT_COUNTERS.capacity);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket {
            tokens: 0,
            updated_ns: 0,
        };
        // After a long quiet spell: full.
        let t0 = 100_000_000_000;
        let sent = (0..20).filter(|_| take_token(&mut b, t0, 1000, 8)).count();
        assert_eq!(sent, 8, "the burst");
        // 1000/s: one per millisecond.
        assert!(!take_token(&mut b, t0 + 500_000, 1000, 8));
        assert!(take_token(&mut b, t0 + 1_000_000, 1000, 8));
        assert!(!take_token(&mut b, t0 + 1_000_001, 1000, 8));
        // A second at 1000/s refills no more than the burst.
        let sent = (0..20)
            .filter(|_| take_token(&mut b, t0 + 1_001_000_000, 1000, 8))
            .count();
        assert_eq!(sent, 8);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut b = TokenBucket {
            tokens: 0,
            updated_ns: 5_000,
        };
        assert!(!take_token(&mut b, 1_000, 1_000_000, 4));
    }

    #[test]
    fn rate_zero_refuses_everything_after_the_burst_is_gone() {
        let mut b = TokenBucket::default();
        assert!(!take_token(&mut b, 1 << 40, 0, 4));
    }
}
