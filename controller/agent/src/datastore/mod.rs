//! What the agent knows about the cluster: Nodes, Namespaces, Pods and
//! NetworkPolicies, and the one event path that keeps it current.
//!
//! ```text
//! Kubernetes API (watcher) ─┐
//!                           ├─► Event ─► ClusterState::apply ─► Changed
//! manifest dir (DirSource) ─┘
//! ```
//!
//! Sources only translate what they see into [`Event`]s; [`ClusterState`]
//! is the single place that interprets them, so the lab's manifest
//! directory and a real cluster cannot drift apart in behaviour.

pub mod cluster_state;
pub mod dir_source;
mod dir_watch;
pub mod kube_source;
pub mod resource;

#[cfg(test)]
mod fixtures;

pub use cluster_state::{Changed, ClusterState, Event};
pub use dir_source::{DirSource, DirSourceError, Timing as DirTiming};
pub use kube_source::{KubeSource, KubeSourceError};
pub use resource::{
    parse_documents, parse_json, Kind, Location, ObjectKey, ParseError, ParseErrorKind, Rejected,
    Resource,
};
