//! The eBPF programs on arbitrary frames through BPF_PROG_TEST_RUN (see
//! sluice_fuzz::ebpf). Needs root.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::{fuzz_target, Corpus};
use sluice_fuzz::ebpf::{Harness, Input, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

// libFuzzer sees coverage of this process only, not of the kernel's
// programs: the outcome of each run (hook, verdict, frame rewritten or
// not) is turned into coverage by calling one of these functions, each
// its own edge, so inputs reaching a new outcome are kept.
macro_rules! outcomes {
    ($($name:ident),* $(,)?) => {
        $(#[inline(never)] fn $name() { std::hint::black_box(stringify!($name)); })*
        const OUTCOMES: &[fn()] = &[$($name),*];
    };
}
outcomes!(
    o00, o01, o02, o03, o04, o05, o06, o07, o08, o09, o10, o11, o12, o13, o14, o15, o16, o17, o18,
    o19, o20, o21, o22, o23, o24, o25, o26, o27, o28, o29, o30, o31, o32, o33, o34, o35,
);

fuzz_target!(
    init: {
        let harness = Harness::new().unwrap_or_else(|e| panic!("ebpf_parser setup: {e}"));
        HARNESS.with(|h| *h.borrow_mut() = Some(harness));
    },
    |data: &[u8]| -> Corpus {
        let Some(input) = Input::parse(data) else {
            return Corpus::Reject;
        };
        let ran = HARNESS.with(|h| {
            h.borrow_mut()
                .as_mut()
                .expect("initialised")
                .run(&input)
        });
        let verdict = match ran.verdict {
            TC_ACT_OK => 0,
            TC_ACT_SHOT => 1,
            TC_ACT_REDIRECT => 2,
            _ => unreachable!("Harness::run checks the verdict"),
        };
        let hook = input.hook as usize;
        OUTCOMES[(hook * 3 + verdict) * 2 + usize::from(ran.rewritten)]();
        Corpus::Keep
    }
);
