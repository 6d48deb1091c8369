//! What the fuzz targets (`fuzz_targets/*.rs`) check, as plain functions:
//! each target is a thin `fuzz_target!` around one of these, so a crash
//! input replays through the same code with `cargo xtask fuzz TARGET
//! --replay FILE` or the target binary.

pub mod cni;
pub mod ebpf;
pub mod manifest;
pub mod policy;
pub mod validity;
