//! Per-CPU packet counters, indexed by (reason, direction).
//!
//! Reasons are stable numbers: user space turns them into metric labels and
//! `sluice` output, so a number is never reused for another meaning.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
// SAFETY: plain-old-data, repr(C), no padding, no pointers.
unsafe impl aya::Pod for Counter {}

/// Traffic direction, seen from the pod.
pub mod dir {
    /// Leaving the pod.
    pub const EGRESS: u32 = 0;
    /// Entering the pod.
    pub const INGRESS: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Why a packet was forwarded or dropped.
pub mod reason {
    /// Delivered straight to a pod on this node (bpf_redirect_peer).
    pub const FORWARD_LOCAL: u32 = 0;
    /// Handed to the host stack (pod -> host, outside, ARP).
    pub const TO_STACK: u32 = 1;
    /// Dropped: source address is not the sending pod's own.
    pub const DROP_SPOOFED_SOURCE: u32 = 2;
    /// Dropped: truncated or malformed L2/L3/L4 header.
    pub const DROP_MALFORMED: u32 = 3;
    /// Dropped: L3 protocol the dataplane does not carry (yet).
    pub const DROP_UNSUPPORTED_L3: u32 = 4;
    /// Dropped: redirect to the destination pod failed.
    pub const DROP_REDIRECT_FAILED: u32 = 5;
    /// Sent to another node through the VXLAN tunnel.
    pub const FORWARD_TUNNEL: u32 = 6;
    /// Sent to another node over the routed underlay.
    pub const FORWARD_NATIVE: u32 = 7;
    /// Dropped: a tunnelled packet without tunnel metadata, or setting the
    /// tunnel key failed.
    pub const DROP_NO_TUNNEL_KEY: u32 = 8;
    /// Dropped: a tunnelled packet whose inner source does not belong to
    /// the node that sent it.
    pub const DROP_TUNNEL_SOURCE: u32 = 9;
    /// Dropped: the host routed a packet into the tunnel for an address no
    /// node owns.
    pub const DROP_NO_TUNNEL_ENDPOINT: u32 = 10;
    /// Dropped: the destination's ingress policy does not allow the peer.
    pub const DROP_POLICY_INGRESS: u32 = 11;
    /// Dropped: the source's egress policy does not allow the peer.
    pub const DROP_POLICY_EGRESS: u32 = 12;
    /// Delivered to a pod by the host stack: the node's own traffic,
    /// traffic routed in from outside, replies of masqueraded flows.
    pub const FROM_STACK: u32 = 13;
    /// Number of reasons; sizes the counter map.
    pub const COUNT: u32 = 14;

    /// Metric label of a reason.
    pub const fn name(reason: u32) -> &'static str {
        match reason {
            FORWARD_LOCAL => "forward_local",
            TO_STACK => "to_stack",
            DROP_SPOOFED_SOURCE => "drop_spoofed_source",
            DROP_MALFORMED => "drop_malformed",
            DROP_UNSUPPORTED_L3 => "drop_unsupported_l3",
            DROP_REDIRECT_FAILED => "drop_redirect_failed",
            FORWARD_TUNNEL => "forward_tunnel",
            FORWARD_NATIVE => "forward_native",
            DROP_NO_TUNNEL_KEY => "drop_no_tunnel_key",
            DROP_TUNNEL_SOURCE => "drop_tunnel_source",
            DROP_NO_TUNNEL_ENDPOINT => "drop_no_tunnel_endpoint",
            DROP_POLICY_INGRESS => "drop_policy_ingress",
            DROP_POLICY_EGRESS => "drop_policy_egress",
            FROM_STACK => "from_stack",
            _ => "unknown",
        }
    }

    pub const fn is_drop(reason: u32) -> bool {
        matches!(
            reason,
            DROP_SPOOFED_SOURCE
                | DROP_MALFORMED
                | DROP_UNSUPPORTED_L3
                | DROP_REDIRECT_FAILED
                | DROP_NO_TUNNEL_KEY
                | DROP_TUNNEL_SOURCE
                | DROP_NO_TUNNEL_ENDPOINT
                | DROP_POLICY_INGRESS
                | DROP_POLICY_EGRESS
        )
    }
}

/// Capacity of the counter map. Leaves room for reasons added later without
/// changing the pinned map's size.
pub const MAX_ENTRIES: u32 = 256;

/// Index of the counter for `(reason, direction)`.
pub const fn index(reason: u32, direction: u32) -> u32 {
    reason * dir::COUNT + direction
}

const _: () = assert!(index(reason::COUNT, 0) <= MAX_ENTRIES);

/// Policy verdicts, per policy direction (`policy::direction`), where a
/// policy isolates the endpoint: an allowance when a flow is admitted (its
/// first packet, and the first after a policy change), a denial for every
/// refused packet, counted for the direction that refused it.
pub mod verdict {
    use crate::policy::direction;

    pub const ALLOWED: u32 = 0;
    pub const DENIED: u32 = 1;
    pub const COUNT: u32 = 2;
    /// Policy directions counted.
    pub const DIRECTIONS: [u8; 2] = [direction::INGRESS, direction::EGRESS];
    /// Capacity of the verdict map (a per-CPU array of packet counts).
    pub const MAX_ENTRIES: u32 = COUNT * 2;

    /// Index of the count for `(verdict, policy direction)`.
    pub const fn index(verdict: u32, policy_direction: u8) -> u32 {
        verdict * 2 + policy_direction as u32
    }

    /// Metric label of a verdict.
    pub const fn name(verdict: u32) -> &'static str {
        match verdict {
            ALLOWED => "allowed",
            DENIED => "denied",
            _ => "unknown",
        }
    }

    const _: () = assert!(index(DENIED, direction::EGRESS) < MAX_ENTRIES);
}
