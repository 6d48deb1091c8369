//! Definitions shared by the eBPF dataplane and user space.
//!
//! Every map key and value is defined exactly once here, `#[repr(C)]` with
//! explicit padding, so the kernel side and the agent can never disagree on
//! a layout; so are the maps themselves ([`maps`]), the reasons packets are
//! counted under ([`reason`]), the one direction encoding ([`direction`])
//! and the per-packet policy decision ([`policy::decide`]). The agent's
//! local API (used by the CNI plugin) lives behind the `api` feature
//! because it needs `std` and serde.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod config;
pub mod conntrack;
pub mod counters;
pub mod direction;
pub mod endpoint;
pub mod flow;
pub mod fragment;
pub mod identity;
pub mod ipcache;
pub mod maps;
pub mod policy;
pub mod reason;
pub mod services;

#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "api")]
pub mod explain;
#[cfg(feature = "api")]
pub mod observe;

/// Names of the programs in the eBPF object, by attach point.
pub mod programs {
    /// TC ingress of the host side of a pod's veth: packets leaving the pod.
    pub const FROM_CONTAINER: &str = "from_container";
    /// TC egress of the host side of a pod's veth: what the host stack
    /// delivers to the pod (the rest arrives by redirect, past this hook).
    pub const TO_CONTAINER: &str = "to_container";
    /// TC ingress of the node's VXLAN device: packets from other nodes.
    pub const FROM_OVERLAY: &str = "from_overlay";
    /// TC egress of the node's VXLAN device: sets the tunnel key for
    /// packets the host stack routes there.
    pub const TO_OVERLAY: &str = "to_overlay";
    /// TC ingress of the underlay device: external Service traffic, and
    /// (native routing) packets for local pods from other nodes.
    pub const FROM_NETDEV: &str = "from_netdev";
    /// TC egress of the underlay device: notes pods' packets the host
    /// stack forwards to other nodes; external Services' replies.
    pub const TO_NETDEV: &str = "to_netdev";
    /// The cgroup socket hooks (on the host's root cgroup): the node's own
    /// sockets reaching ClusterIPs.
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    /// XDP on the underlay device: drops what must never enter the node
    /// (denied sources, malformed IPv4, VXLAN from non-nodes).
    pub const PREFILTER: &str = "prefilter";
    /// The prefilter's deny list checked at TC ingress instead: not
    /// attached by the agent; the prefilter benchmark's comparison.
    pub const PREFILTER_TC: &str = "prefilter_tc";
}
