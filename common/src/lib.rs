//! Definitions shared by the eBPF dataplane and user space.
//!
//! Every map key and value is defined exactly once here, `#[repr(C)]` with
//! explicit padding, so the kernel side and the agent can never disagree on a
//! layout. The agent's local API (used by the CNI plugin) lives behind the
//! `api` feature because it needs `std` and serde.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod conntrack;
pub mod endpoint;
pub mod identity;
pub mod ipcache;
pub mod metrics;
pub mod policy;

#[cfg(feature = "api")]
pub mod api;

/// Names of the maps as they appear in the eBPF object and under the pin
/// directory (`/sys/fs/bpf/sluice/<node>/<NAME>`).
pub mod maps {
    pub const ENDPOINTS: &str = "SLUICE_ENDPOINTS";
    pub const METRICS: &str = "SLUICE_METRICS";
    pub const POLICY_VERDICTS: &str = "SLUICE_POLICY_VERDICTS";
    pub const IPCACHE: &str = "SLUICE_IPCACHE";
    pub const CONFIG: &str = "SLUICE_CONFIG";
    pub const POLICY_RANGES: &str = "SLUICE_POLICY_RANGES";
    pub const POLICY_EXACT: &str = "SLUICE_POLICY_EXACT";
    pub const ISOLATION: &str = "SLUICE_ISOLATION";
    pub const CIDR_IDENTITY: &str = "SLUICE_CIDR_IDENTITY";
    pub const CONNTRACK: &str = "SLUICE_CONNTRACK";
}

/// Names of the programs in the eBPF object.
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
    /// TC ingress of the underlay device (native routing): packets for
    /// local pods from other nodes.
    pub const FROM_NETDEV: &str = "from_netdev";
}
