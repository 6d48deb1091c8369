//! Tests over the whole compiler: map contents case by case, and packets
//! decided over them by the dataplane's own decision. The conformance truth
//! tables run in `controller/policy-oracle` (`tests/upstream.rs`).

mod compile_cases;
mod explain_cases;
mod fail_closed_cases;
mod support;
