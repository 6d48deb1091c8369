//! The policy compiler on valid clusters drawn by the oracle crate's
//! generator from the fuzz input: every flow must be as the oracle says
//! (see sluice_fuzz::policy).
#![no_main]

use sluice_fuzz::policy::{cluster_state, generated_from, judge, Strictness};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(generated) = generated_from(data) {
        judge(&generated, &cluster_state(&generated), Strictness::Exact);
    }
});
