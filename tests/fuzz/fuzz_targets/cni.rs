//! The CNI plugin's environment and stdin parsing (see sluice_fuzz::cni).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::cni::check(data));
