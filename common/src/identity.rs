//! Security identities: numbers standing for "who" a packet comes from.
//!
//! Reserved identities sit below [`FIRST_CLUSTER`]; identities of label sets
//! are allocated above it. Identities are node-local: each agent numbers
//! the label sets itself. Every identity fits in 24 bits, so that a VXLAN
//! VNI could carry one once identities are cluster-wide.

/// Not known (yet): e.g. a pod before identities are computed.
pub const UNKNOWN: u32 = 0;
/// The local node (its host stack: kubelet probes, host processes).
pub const HOST: u32 = 1;
/// Anything outside the cluster.
pub const WORLD: u32 = 2;
/// Another node of the cluster (its host stack).
pub const REMOTE_NODE: u32 = 6;
/// First identity of a label set (namespace, namespace labels, pod labels).
pub const FIRST_CLUSTER: u32 = 256;
/// First identity of an ipBlock region; label identities stay below it.
pub const FIRST_CIDR: u32 = 1 << 23;
/// Largest identity (24 bits, the width of a VNI).
pub const MAX: u32 = (1 << 24) - 1;
