//! The sluice node agent (`sluice-agent`) and user CLI (`sluice`).
//!
//! Pure logic (IPAM, request handling) is separated from the kernel-facing
//! parts (`dataplane`, `netlink`, `bpffs`) so it can be unit-tested; the
//! kernel-facing parts are exercised by the namespace tests in `tests/`.

pub mod agent;
pub mod bench;
pub mod bpffs;
pub mod cluster;
pub mod config;
pub mod counters;
pub mod dataplane;
pub mod ipam;
pub mod kernel;
pub mod lab;
pub mod masquerade;
pub mod metrics;
pub mod metrics_http;
pub mod netlink;
pub mod node_sync;
pub mod nodes;
pub mod policy;
pub mod reconcile;
pub mod server;
pub mod state;
pub mod underlay;

/// The eBPF object built by build.rs from `dataplane-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-dataplane"));
