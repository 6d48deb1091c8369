//! The sluice node agent (`sluice-agent`): one per node, it owns IPAM, the
//! endpoints the CNI plugin registers, the eBPF programs and maps, and keeps
//! the maps in line with the cluster.
//!
//! Pure logic and kernel I/O live apart so the logic is unit-tested without
//! a kernel:
//!
//! - pure: [`datastore`] (cluster objects and their event path),
//!   [`policy`] (NetworkPolicy compiler), [`services`] (Services and
//!   EndpointSlices → frontends and backends), [`topology`] (Node objects →
//!   routes and ipcache), [`endpoints`] (IPAM and the endpoint registry
//!   behind the CNI API), [`config`], [`prefilter`] (the underlay deny
//!   list, with its one map writer), [`flows`] (flow events: decoding,
//!   naming, history, filters);
//! - kernel I/O: everything under [`kernel`] (BPF objects and maps,
//!   netlink, nftables, bpffs), exercised by the namespace tests in
//!   `tests/`;
//! - wiring: [`reconcile`] (the one event path from objects to the
//!   kernel), [`cni_api`] (the unix socket the CNI plugin calls),
//!   [`registration`] (CNI ADD answered once the pod's policy is in),
//!   [`metrics`].

pub mod cni_api;
pub mod config;
pub mod datastore;
pub mod endpoints;
pub mod flows;
pub mod kernel;
pub mod metrics;
pub mod policy;
pub mod prefilter;
pub mod reconcile;
pub mod registration;
pub mod services;
pub mod topology;

/// The eBPF object built by build.rs from `dataplane-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-dataplane"));
