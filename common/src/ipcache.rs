//! The ipcache: what the dataplane knows about addresses that are not local
//! endpoints — other nodes' pod ranges and the nodes themselves (later also
//! remote pods' identities and ipBlocks). An LPM trie, so one lookup finds
//! the most specific entry whatever the number of prefixes.

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

/// Routing modes of [`DataplaneConfig::routing`].
pub mod routing {
    /// No other nodes known: everything not local goes to the host stack.
    pub const NONE: u32 = 0;
    /// VXLAN with collect-metadata: the program sets the tunnel key.
    pub const TUNNEL: u32 = 1;
    /// Routed underlay: bpf_fib_lookup + bpf_redirect_neigh.
    pub const NATIVE: u32 = 2;
}

/// The node-wide settings the programs read (one entry, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub routing: u32,
    /// ifindex of the node's VXLAN device (tunnel mode).
    pub tunnel_ifindex: u32,
    /// ifindex of the underlay device (native mode).
    pub underlay_ifindex: u32,
    /// Bumped by the agent after every policy change; conntrack entries
    /// checked at an older revision are checked again.
    pub policy_revision: u32,
}

const _: () = assert!(core::mem::size_of::<DataplaneConfig>() == 16);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
    unsafe impl aya::Pod for super::Ipv4Prefix {}
    unsafe impl aya::Pod for super::RemoteInfo {}
    unsafe impl aya::Pod for super::DataplaneConfig {}
}
