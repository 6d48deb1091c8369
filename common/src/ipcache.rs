//! The ipcache: what the dataplane knows about addresses that are not local
//! endpoints: other nodes' pod ranges and the nodes themselves, and every
//! pod's label identity (a /32 each). An LPM trie, so one lookup finds the
//! most specific entry whatever the number of prefixes.

/// Key data of the IPv4 ipcache (the LPM trie's prefix length travels
/// beside it, in `aya`'s `Key`).
///
/// The address is kept in network byte order so a packet's bytes are the key
/// as they are.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    pub addr: [u8; 4],
}

/// Entry flags.
pub mod flags {
    /// The prefix is a pod range of another node: reachable through that
    /// node (`tunnel_endpoint`).
    pub const REMOTE_POD_CIDR: u32 = 1 << 0;
    /// The prefix is a node's own address.
    pub const NODE: u32 = 1 << 1;
}

/// Value of the ipcache.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteInfo {
    /// Security identity of the addresses (see [`crate::identity`]).
    pub identity: u32,
    /// IPv4 address of the node owning the prefix (network order); packets
    /// for the prefix are tunnelled to it. Zero: not behind a node.
    pub tunnel_endpoint: [u8; 4],
    pub flags: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Ipv4Prefix>() == 4);
const _: () = assert!(core::mem::size_of::<RemoteInfo>() == 16);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
    unsafe impl aya::Pod for super::Ipv4Prefix {}
    unsafe impl aya::Pod for super::RemoteInfo {}
}
