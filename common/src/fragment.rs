//! IPv4 fragment tracking: only a datagram's first fragment carries its L4
//! header, so the first fragment's ports and verdict are kept, keyed by
//! what identifies the datagram (RFC 791: source, destination, protocol
//! and IP id), and its later fragments are decided as packets of that
//! flow. `SLUICE_FRAGMENTS` (LRU hash): [`FragKey`] → [`FragEntry`].

/// A datagram, as its fragments name it (addresses as received, before
/// any translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// The IP id, network order (as in the header).
    pub id: u16,
    pub protocol: u8,
    pub _pad: u8,
}

/// What a datagram's first fragment was.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    /// bpf_ktime_get_ns() after which the entry is void.
    pub expires: u64,
    /// The first fragment's ports (ICMP: type/code and id), host order, as
    /// it arrived (before any translation).
    pub sport: u16,
    pub dport: u16,
    /// 0: the first fragment passed; otherwise the
    /// [`Reason`](crate::reason::Reason) it was dropped under, which its
    /// later fragments are dropped under too.
    pub dropped: u32,
}

/// How long a datagram's fragments are recognised after its first one:
/// the kernel's default reassembly timeout (`ipfrag_time`), after which
/// the receiver has thrown the first fragment away anyway.
pub const LIFETIME_NS: u64 = 30 * 1_000_000_000;

/// Fragment offset and flags in the IPv4 header's `frag_off` (host order).
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

const _: () = assert!(core::mem::size_of::<FragKey>() == 12);
const _: () = assert!(core::mem::size_of::<FragEntry>() == 16);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragEntry {}
}
