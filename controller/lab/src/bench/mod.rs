//! Benchmarks, each next to its baseline measured in the same run
//! (`cargo xtask bench`).

pub mod frame;
pub mod policy_cost;
pub mod services;
pub mod test_run;
pub mod throughput;

pub use throughput::{report, run, BenchError, BenchOptions, Measurement};
