//! Benchmarks, each next to its baseline measured in the same run
//! (`cargo xtask bench`).

pub mod frame;
pub mod policy_cost;
pub mod prefilter;
pub mod services;
pub mod test_run;
pub mod throughput;

pub use throughput::{report, run, BenchError, BenchOptions, Measurement};

/// The median of runs (0 for none), what every report shows.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
