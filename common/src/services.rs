//! Services (kube-proxy replacement): which (address, port, protocol) is a
//! Service frontend, its backends, and the translations the programs keep
//! per connection.
//!
//! - `SLUICE_SERVICES` (hash): [`ServiceKey`] → [`ServiceInfo`]: a
//!   ClusterIP port, or an external frontend (NodePort, externalIP,
//!   LoadBalancer IP), with how many ready backends it has.
//! - `SLUICE_SERVICE_BACKENDS` (hash): [`BackendSlot`] → [`Backend`]: the
//!   backends of service `id` in slots `0..count`, so picking one is one
//!   lookup, not a loop.
//! - `SLUICE_SERVICE_FLOWS` (LRU hash): a client's tuple towards the
//!   frontend ([`crate::conntrack::CtKey`]) → the [`ServiceFlow`] backend it
//!   was given, so every packet of a connection goes to the same backend,
//!   also after the backend set changed.
//! - `SLUICE_SERVICE_REVERSE` (LRU hash): the backend's reply tuple → the
//!   [`Frontend`] the client addressed, which replies carry as their source.
//! - `SLUICE_SERVICE_COUNTERS` (per-CPU array, by frontend id):
//!   [`ServiceCounter`]s, for metrics.
//! - `SLUICE_SERVICE_AFFINITY` (LRU hash): (client address, service) → the
//!   [`Affinity`] backend its new connections go to, for Services with
//!   `sessionAffinity: ClientIP`.
//! - `SLUICE_SOCK_REVERSE` (LRU hash): a node socket given a backend by the
//!   socket hooks, and that backend ([`SockKey`]) → the [`SockFrontend`] it
//!   addressed, shown to the application in place of the backend.

/// The source a pod's packets to itself through its own Service carry
/// (hairpin): a pod does not accept packets from its own address arriving
/// on its interface (a martian source), so the translation gives them this
/// link-local one, and the pod's replies to it are sent back to the pod
/// itself. The same address Cilium uses for this.
pub const HAIRPIN_SOURCE: [u8; 4] = [169, 254, 42, 1];

/// A Service frontend: address and port as the client addressed them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Agent-assigned, stable while the frontend exists: names its backend
    /// slots.
    pub id: u32,
    /// Ready backends, in slots `0..backends`, this node's first: the
    /// ones clients inside the cluster (pods, nodes) are given. Zero: the
    /// frontend refuses new connections (the host stack rejects them).
    pub backends: u32,
    /// How many of them are this node's (slots `0..local_backends`): the
    /// ones clients from outside the cluster are given under
    /// `externalTrafficPolicy: Local`.
    pub local_backends: u32,
    /// `sessionAffinity: ClientIP`: how long, in seconds, a client's new
    /// connections go to the backend its last one went to. Zero: none.
    pub affinity_timeout: u32,
    /// [`service_flags`].
    pub flags: u32,
    pub _pad: u32,
}

/// What kind of frontend a [`ServiceInfo`] is.
pub mod service_flags {
    /// Reached from outside the cluster: a NodePort on this node's
    /// address, an externalIP, a LoadBalancer ingress IP. Translated where
    /// such traffic arrives (`from_netdev`), handed to the host stack to be
    /// forwarded, and translated back on its way out (`to_netdev`). Pods
    /// and the node reach it as they reach a ClusterIP, translated at the
    /// source, to any ready backend whatever the traffic policy (as
    /// kube-proxy sends in-cluster clients to the cluster-wide endpoints).
    pub const EXTERNAL: u32 = 1 << 0;
    /// `externalTrafficPolicy: Cluster`: the translated packet leaves with
    /// the node's address (the host stack masquerades packets carrying
    /// [`super::MASQUERADE_MARK`]), so replies from a backend anywhere come
    /// back through this node. Without it (`Local`) clients from outside
    /// keep their address and get only this node's endpoints; on a node
    /// without one they are dropped, so that a load balancer's health
    /// check moves them elsewhere.
    pub const MASQUERADE: u32 = 1 << 1;
}

/// The packet mark (`skb->mark` bit) asking the host stack to masquerade a
/// translated external connection (the agent's `ip sluice_services` nft
/// table); kube-proxy's marks are 0x4000 and 0x8000.
pub const MASQUERADE_MARK: u32 = 0x0200;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSlot {
    pub service: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// The backend a client's connection was given.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceFlow {
    pub backend: Backend,
    pub _pad: u32,
    /// bpf_ktime_get_ns() after which the choice is forgotten (as the
    /// connection's conntrack entry would be).
    pub expires: u64,
}

/// The frontend a translated connection's replies come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    /// As [`ServiceFlow::expires`].
    pub expires: u64,
}

/// A client of a Service with session affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: [u8; 4],
    pub service: u32,
}

/// The backend a client's connections to a Service go to, and the slot it
/// was in (its connections check the slot still holds it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affinity {
    pub backend: Backend,
    pub slot: u32,
    pub _pad: u32,
    /// bpf_ktime_get_ns() after which the client may go anywhere.
    pub expires: u64,
}

/// Per-CPU counts of one frontend (`SLUICE_SERVICE_COUNTERS`, indexed by
/// its id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounter {
    /// New connections given a backend.
    pub connections: u64,
    /// New connections refused: no ready backend.
    pub refused: u64,
}

/// A node socket the socket hooks gave a backend, with that backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    pub backend: Backend,
}

/// The frontend such a socket addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFrontend {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<SockKey>() == 16);
const _: () = assert!(core::mem::size_of::<SockFrontend>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceCounter>() == 16);
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 24);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);
const _: () = assert!(core::mem::size_of::<Affinity>() == 24);
const _: () = assert!(core::mem::size_of::<BackendSlot>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceFlow>() == 24);
const _: () = assert!(core::mem::size_of::<Frontend>() == 16);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceInfo {}
    unsafe impl aya::Pod for super::BackendSlot {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::ServiceFlow {}
    unsafe impl aya::Pod for super::Frontend {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::ServiceCounter {}
    unsafe impl aya::Pod for super::Affinity {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::SockFrontend {}
}
