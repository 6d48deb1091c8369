//! Benchmarks, each next to its baseline measured in the same run
//! (`cargo xtask bench`).

pub mod frame;
pub mod machine;
mod plot;
pub mod policy_cost;
pub mod prefilter;
pub mod report;
pub mod runtime_cost;
pub mod services;
pub mod stats;
pub mod test_run;
pub mod throughput;
pub mod turns;

pub use stats::median;
pub use throughput::{BenchError, BenchOptions};
