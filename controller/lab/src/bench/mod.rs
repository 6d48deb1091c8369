//! Benchmarks, each next to its baseline measured in the same run
//! (`cargo xtask bench`).

pub mod agent_probe;
pub mod bridge_cni;
pub mod control_plane;
pub mod frame;
pub mod machine;
mod plot;
pub mod policy_cost;
pub mod policy_scale;
pub mod prefilter;
pub mod report;
pub mod rr;
pub mod runtime_cost;
pub mod same_node;
pub mod scale;
pub mod services;
pub mod setups;
pub mod sim_cluster;
pub mod solo;
pub mod stats;
pub mod test_run;
pub mod throughput;
pub mod turns;

pub use throughput::{BenchError, BenchOptions};
