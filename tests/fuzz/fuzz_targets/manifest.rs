//! Manifest decoding and the compilers on arbitrary bytes, the compiled
//! policy judged by the oracle where it can (see sluice_fuzz::manifest).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_fuzz::manifest::check(data);
});
