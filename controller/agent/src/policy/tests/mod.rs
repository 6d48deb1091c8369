//! Tests over the whole compiler: map contents case by case, and the
//! upstream truth tables through an evaluator of the dataplane algorithm.

mod compile_cases;
mod conformance;
mod support;
