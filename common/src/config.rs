//! The node-wide settings the programs read (one entry, index 0 of
//! `SLUICE_CONFIG`), written by the agent when it sets up routing.

/// Routing modes of [`DataplaneConfig::routing`].
pub mod routing {
    /// No other nodes known: everything not local goes to the host stack.
    pub const NONE: u32 = 0;
    /// VXLAN with collect-metadata: the program sets the tunnel key.
    pub const TUNNEL: u32 = 1;
    /// Routed underlay: bpf_fib_lookup + bpf_redirect_neigh.
    pub const NATIVE: u32 = 2;
}

/// The VNI of every packet sluice tunnels. Identities are node-local (each
/// node numbers label sets itself and learns its peers' from its own
/// ipcache), so a sender's number would mean nothing to the receiver: the
/// VNI carries no identity. Cluster-wide identities would go here.
pub const TUNNEL_VNI: u32 = 0;

/// The UDP port of the node's VXLAN device (IANA's): the prefilter drops
/// packets to it from addresses that are not nodes.
pub const VXLAN_PORT: u16 = 4789;

/// The packet mark (`skb->mark` bit) `from_container` sets on a pod's
/// packet it routes to another node itself in native routing
/// (`bpf_redirect_neigh`), and `to_netdev` clears: such a packet was not
/// forwarded (nor translated) by the host stack, so it is not noted as a
/// stack-forwarded flow, which would send its replies through the stack.
/// (In tunnel mode the tunnel key tells the same.) Beside
/// [`crate::services::MASQUERADE_MARK`] (0x200); kube-proxy's are 0x4000
/// and 0x8000.
pub const ROUTED_MARK: u32 = 0x0400;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub routing: u32,
    /// ifindex of the node's VXLAN device (tunnel mode).
    pub tunnel_ifindex: u32,
    /// The node's network namespace (`SO_NETNS_COOKIE`): the socket hooks
    /// touch only its sockets. 0: none.
    pub netns_cookie: u64,
}

const _: () = assert!(core::mem::size_of::<DataplaneConfig>() == 16);

#[cfg(feature = "user")]
// SAFETY: plain-old-data, repr(C), no padding, no pointers.
unsafe impl aya::Pod for DataplaneConfig {}
