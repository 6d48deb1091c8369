//! The dataplane's per-CPU counters: packets and bytes by (reason,
//! direction), and policy verdicts by (verdict, direction).

use crate::{direction::Direction, maps, reason::Reason};

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

/// Capacity of the packet counter map. Leaves room for reasons added later
/// without changing the pinned map's size.
pub const MAX_ENTRIES: u32 = maps::PACKET_COUNTERS.capacity;

/// Index of the counter for `(reason, direction)`.
pub const fn index(reason: Reason, direction: Direction) -> u32 {
    reason as u32 * Direction::COUNT + direction as u32
}

const _: () = assert!(crate::reason::LIMIT * Direction::COUNT <= MAX_ENTRIES);

/// Policy verdicts, per direction, where a policy isolates the endpoint: an
/// allowance when a flow is admitted (its first packet, and the first
/// after a policy change), a denial for every refused packet, counted for
/// the direction that refused it.
pub mod verdict {
    use crate::{direction::Direction, maps};

    #[repr(u32)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Verdict {
        Allowed = 0,
        Denied = 1,
        /// Audit mode let through a new flow policy would deny, counted for
        /// the direction that would deny (once, when the flow is admitted:
        /// audited directions are not decided again after a policy change).
        WouldDeny = 2,
    }

    impl Verdict {
        pub const ALL: [Verdict; 3] = [Verdict::Allowed, Verdict::Denied, Verdict::WouldDeny];

        /// Label in metrics and output.
        pub const fn name(self) -> &'static str {
            match self {
                Verdict::Allowed => "allowed",
                Verdict::Denied => "denied",
                Verdict::WouldDeny => "would-deny",
            }
        }
    }

    /// Capacity of the verdict map (a per-CPU array of packet counts).
    pub const MAX_ENTRIES: u32 = maps::POLICY_VERDICTS.capacity;

    /// Index of the count for `(verdict, direction)`.
    pub const fn index(verdict: Verdict, direction: Direction) -> u32 {
        verdict as u32 * Direction::COUNT + direction as u32
    }

    const _: () = assert!(index(Verdict::WouldDeny, Direction::Egress) < MAX_ENTRIES);
}

/// Slots of the insert counters ([`maps::TABLE_INSERTS`]): entries added
/// to an LRU table that was not holding their key. Nothing deletes from
/// these tables but the kernel's LRU, so what was added and is no longer
/// held was evicted.
pub mod inserts {
    use crate::maps;

    /// Tracked flows ([`maps::CONNTRACK`]).
    pub const CONNTRACK: u32 = 0;

    const _: () = assert!(CONNTRACK < maps::TABLE_INSERTS.capacity);
}
