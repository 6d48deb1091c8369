//! Security identities: numbers standing for "who" a packet comes from.
//!
//! Reserved identities sit below [`FIRST_CLUSTER`]; identities of label sets
//! are allocated above it. They travel in the VXLAN VNI, so every identity
//! fits in 24 bits.

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
/// Largest identity: the VNI is 24 bits wide.
pub const MAX: u32 = (1 << 24) - 1;
