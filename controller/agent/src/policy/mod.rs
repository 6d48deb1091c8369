//! NetworkPolicy → identities and policy map contents.
//!
//! ```text
//! ClusterState ─► compile ─► DesiredPolicy (pod/CIDR identities, isolation, rules)
//!                    ▲
//!        IdentityAllocator (numbers stable across compiles)
//! ```
//!
//! Everything here is pure and kernel-free; the syncer diffs
//! [`DesiredPolicy`] against the maps.

pub mod cidr;
pub mod compile;
pub mod identity;
pub mod ports;
pub mod selector;

#[cfg(test)]
mod tests;

pub use compile::{compile, DesiredPolicy, LocalEndpoints, PolicyProblem, NAMESPACE_NAME_LABEL};
pub use identity::{IdentityAllocator, IdentityError, LabelKey};
pub use selector::{Selector, SelectorError};
