//! Connection tracking: one entry per flow, keyed by its tuple in a
//! direction-independent order ([`CtKey::normalized`]), so a packet and its
//! reply find the same entry in one lookup; the entry says which end sent
//! the first packet ([`ct_flags::REVERSED`]). Entries carry the policy
//! revision they were checked at: after a policy change the next packet of
//! every flow is checked again, so revoked access stops with the next
//! packet, not when the flow ends.
//!
//! Only flows where state decides something are tracked: those touching a
//! pod some policy isolates, translated ones, and those the host stack
//! handed in (see the dataplane's `policy::enforce`).

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Host order. ICMP echo: both are the echo id, so request and reply
    /// map to one entry.
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    pub const fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }

    /// The key of this tuple's flow whichever way the packet runs: the
    /// lower (address, port) end first. `true` when that swapped the ends,
    /// i.e. the packet runs from the higher end to the lower one.
    pub fn normalized(&self) -> (Self, bool) {
        let src = (u32::from_be_bytes(self.saddr), self.sport);
        let dst = (u32::from_be_bytes(self.daddr), self.dport);
        if src > dst {
            (self.reversed(), true)
        } else {
            (*self, false)
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_coarse_ns()` after which the entry is void (the same
    /// clock as `bpf_ktime_get_ns()`, at a tick's resolution).
    pub expires: u64,
    /// Policy revision the flow was last checked at.
    pub revision: u32,
    pub flags: u32,
}

/// Entry flags (bit 0, once "reply seen", is unused and stays free).
pub mod ct_flags {
    /// The flow's first packet ran from the key's `daddr` end to its
    /// `saddr` end (keys are normalized, [`super::CtKey::normalized`]).
    pub const REVERSED: u32 = 1 << 8;
    /// Which end opened the flow was not seen: the entry adopted a TCP
    /// connection already under way when policy first isolated one of its
    /// pods (until then it was untracked), and neither end's port looked
    /// like a client's ephemeral one, so the flow passes only while policy
    /// allows it both ways.
    pub const ADOPTED: u32 = 1 << 6;
    /// The flow's replies must be found to be forwarded right (a Service
    /// translation to undo, or a stack-handed flow of a pod peer whose
    /// replies must go back through the stack): its local pods keep
    /// conntrack on while it lives (`SLUICE_STATEFUL_ENDPOINTS`), isolated
    /// or not.
    pub const STEERS: u32 = 1 << 7;
    /// A TCP FIN or RST was seen: the flow winds down.
    pub const CLOSING: u32 = 1 << 1;
    /// The policy of the entry's revision denies the flow: the destination's
    /// ingress, or the source's egress. The entry stays (a tombstone) so
    /// that no packet of the flow, from either end, is taken for the first
    /// packet of a new flow in the other direction, which the other end's
    /// policy might allow; the next policy change checks it again.
    pub const DENIED_INGRESS: u32 = 1 << 2;
    pub const DENIED_EGRESS: u32 = 1 << 3;
    pub const DENIED: u32 = DENIED_INGRESS | DENIED_EGRESS;
    /// The host stack handed the flow's first packet to the dataplane (it
    /// delivered it to a pod, or forwarded a pod's packet to another node):
    /// it may have translated it (kube-proxy's Service DNAT, a hostPort), so
    /// the replies go back through the stack, whose conntrack undoes the
    /// translation, instead of straight to the other end.
    pub const VIA_STACK: u32 = 1 << 4;
    /// The flow is a connection to a Service, translated by the programs
    /// (the key is the translated tuple): its replies get the frontend
    /// back as their source (`SLUICE_SERVICE_REVERSE`).
    pub const SERVICE: u32 = 1 << 5;
}

/// Lifetimes, in nanoseconds of `bpf_ktime_get_coarse_ns`, renewed by the
/// flow's packets (at most once per [`timeout::REFRESH`]).
pub mod timeout {
    const S: u64 = 1_000_000_000;
    /// An entry's expiry is rewritten only when a packet would move it by
    /// more than this (or its flags or revision change): a flow lives
    /// between its lifetime minus this and its lifetime after its last
    /// packet, and a busy flow writes its entry (a cache line both
    /// directions' CPUs read) once a second instead of once a packet.
    pub const REFRESH: u64 = S;
    pub const TCP_SYN: u64 = 60 * S;
    pub const TCP_ESTABLISHED: u64 = 6 * 3600 * S;
    pub const TCP_CLOSING: u64 = 10 * S;
    pub const UDP: u64 = 60 * S;
    pub const ICMP: u64 = 30 * S;
    pub const OTHER: u64 = 60 * S;
}

/// Slots of `SLUICE_STATEFUL_ENDPOINTS` (an array indexed by endpoint id
/// modulo this, a power of two): per local pod, the coarse time until
/// which its flows go through conntrack though no policy isolates it,
/// because a flow of it needs its entry ([`ct_flags::STEERS`]). Two pods
/// sharing a slot (pod CIDRs wider than /16) share the longer time: more
/// tracking, never less.
pub const STATEFUL_SLOTS: u32 = 65536;

/// The slot of an endpoint id in `SLUICE_STATEFUL_ENDPOINTS`.
pub const fn stateful_slot(endpoint: u32) -> u32 {
    endpoint & (STATEFUL_SLOTS - 1)
}

const _: () = assert!(STATEFUL_SLOTS.is_power_of_two());
const _: () = assert!(STATEFUL_SLOTS == crate::maps::STATEFUL_ENDPOINTS.capacity);
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16) -> CtKey {
        CtKey {
            saddr,
            daddr,
            sport,
            dport,
            protocol: 6,
            _pad: [0; 3],
        }
    }

    #[test]
    fn a_packet_and_its_reply_share_one_key() {
        let out = key([10, 0, 0, 2], [10, 0, 0, 3], 40000, 80);
        let (k1, swapped1) = out.normalized();
        let (k2, swapped2) = out.reversed().normalized();
        assert_eq!(k1, k2);
        assert!(!swapped1);
        assert!(swapped2);
        // The address decides before the port (network order: 10.0.1.0 is
        // above 10.0.0.255).
        let (k, swapped) = key([10, 0, 1, 0], [10, 0, 0, 255], 1, 2).normalized();
        assert!(swapped);
        assert_eq!(k.saddr, [10, 0, 0, 255]);
        // Same address (a pod reaching itself): the port decides.
        let (k, swapped) = key([10, 0, 0, 2], [10, 0, 0, 2], 40000, 80).normalized();
        assert!(swapped);
        assert_eq!((k.sport, k.dport), (80, 40000));
    }

    #[test]
    fn endpoints_share_a_slot_only_beyond_its_count() {
        assert_eq!(stateful_slot(5), 5);
        assert_eq!(stateful_slot(STATEFUL_SLOTS + 5), 5);
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
}
