//! NetworkPolicy → identities and policy map contents.
//!
//! ```text
//! ClusterState ─► compile ─► DesiredPolicy: pod identities (for the ipcache)
//!                    ▲                     + PlacedPolicy (the policy maps' contents)
//!        IdentityAllocator (numbers stable across compiles)
//! ```
//!
//! Everything here is pure and kernel-free; the kernel writer copies
//! [`PlacedPolicy`] into the maps, and [`placed::InMemory`] decides packets
//! over it with the dataplane's own decision function.

pub mod audit;
pub mod cidr;
pub mod compile;
pub mod explain;
pub mod fail_closed;
pub mod identity;
pub mod placed;
pub mod pod_index;
pub mod ports;
pub mod selector;
pub mod unidentified;
pub mod validate;

#[cfg(test)]
mod tests;

pub use compile::{
    compile, DesiredPolicy, IpConflict, LocalEndpoints, LocalPods, PolicyProblem,
    NAMESPACE_NAME_LABEL,
};
pub use identity::{IdentityAllocator, IdentityError, LabelKey};
pub use placed::{InMemory, PlacedPolicy};
pub use selector::{Selector, SelectorError};
