//! Connection tracking: one entry per flow, keyed by the tuple of its first
//! packet, so replies (the reversed tuple) and later packets pass without a
//! policy lookup. Entries carry the policy revision they were checked at:
//! after a policy change the next packet of every flow is checked again, so
//! revoked access stops with the next packet, not when the flow ends.

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
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// bpf_ktime_get_ns() after which the entry is void.
    pub expires: u64,
    /// Policy revision the flow was last checked at.
    pub revision: u32,
    pub flags: u32,
}

/// Entry flags (bit 0, once "reply seen", is unused and stays free).
pub mod ct_flags {
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

/// Lifetimes, in nanoseconds, renewed by every packet.
pub mod timeout {
    const S: u64 = 1_000_000_000;
    pub const TCP_SYN: u64 = 60 * S;
    pub const TCP_ESTABLISHED: u64 = 6 * 3600 * S;
    pub const TCP_CLOSING: u64 = 10 * S;
    pub const UDP: u64 = 60 * S;
    pub const ICMP: u64 = 30 * S;
    pub const OTHER: u64 = 60 * S;
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 16);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
}
