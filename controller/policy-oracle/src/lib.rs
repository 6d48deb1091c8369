//! Test-only: an independent model of Kubernetes NetworkPolicy to check
//! sluice's policy implementation against.
//!
//! - [`oracle`] decides flows straight from the API objects (Namespaces,
//!   Pods, NetworkPolicies), written next to the API documentation and
//!   sharing no code or data structures with the compiler
//!   (`sluice_agent::policy`) or the dataplane's decision
//!   (`sluice_common::policy::decide`).
//! - [`generate`] has proptest strategies for random valid clusters and the
//!   probes worth making in them.
//!
//! The tests of this crate are where the comparison happens:
//! `tests/upstream.rs` runs the conformance truth tables (the 48 upstream
//! cases and sluice's own) against both the oracle and the implementation,
//! which is also what keeps the oracle honest; `tests/differential.rs`
//! compares the implementation with the oracle over generated clusters.
//! Nothing in sluice's binaries depends on this crate.

pub mod generate;
pub mod oracle;
