//! Definitions shared by the eBPF dataplane and user space.
//!
//! Every map key and value is defined exactly once here, `#[repr(C)]` with
//! explicit padding, so the kernel side and the agent can never disagree on a
//! layout. The agent's local API (used by the CNI plugin) lives behind the
//! `api` feature because it needs `std` and serde.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod endpoint;
pub mod metrics;

#[cfg(feature = "api")]
pub mod api;

/// Names of the maps as they appear in the eBPF object and under the pin
/// directory (`/sys/fs/bpf/sluice/<node>/<NAME>`).
pub mod maps {
    pub const ENDPOINTS: &str = "SLUICE_ENDPOINTS";
    pub const METRICS: &str = "SLUICE_METRICS";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// TC ingress of the host side of a pod's veth: packets leaving the pod.
    pub const FROM_CONTAINER: &str = "from_container";
}
