//! Typed access to the maps the agent writes: each lookup copies its value
//! out, so no map pointer outlives the function that took it.
use aya_ebpf::maps::lpm_trie::Key;
use sluice_common::{
    config::DataplaneConfig,
    endpoint::{EndpointInfo, IpKey},
    identity,
    ipcache::{Ipv4Prefix, RemoteInfo},
    policy::{Isolation, PolicyKey, PolicyLookup, ANY_IDENTITY, KEY_FULL_BITS},
};

use crate::maps::{
    CIDR_IDENTITY, CONFIG, ENDPOINTS, IPCACHE, ISOLATION, POLICY_EXACT, POLICY_RANGES,
    POLICY_REVISION,
};

/// The pod on this node with this address.
#[inline(always)]
pub fn local_endpoint(addr: [u8; 4]) -> Option<EndpointInfo> {
    // SAFETY: a map value pointer, valid for this program run; copied out.
    ENDPOINTS
        .get_ptr(IpKey::v4(addr))
        .map(|endpoint| unsafe { *endpoint })
}

/// The ipcache's most specific entry for an address.
#[inline(always)]
pub fn ipcache(addr: [u8; 4]) -> Option<RemoteInfo> {
    IPCACHE.get(Key::new(32, Ipv4Prefix { addr })).copied()
}

/// Label identity of an address: the ipcache's, else the outside world.
#[inline(always)]
pub fn peer_identity(addr: [u8; 4]) -> u32 {
    match ipcache(addr) {
        Some(entry) => entry.identity,
        None => identity::WORLD,
    }
}

/// The node-wide settings; all zero (no routing) until the agent set them.
#[inline(always)]
pub fn config() -> DataplaneConfig {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// The policy revision conntrack entries must have been checked at.
#[inline(always)]
pub fn policy_revision() -> u32 {
    POLICY_REVISION.get(0).copied().unwrap_or(0)
}

/// The policy maps as the shared decision reads them.
pub struct BpfPolicy;

impl PolicyLookup for BpfPolicy {
    #[inline(always)]
    fn isolation(&self, endpoint: u32) -> Option<Isolation> {
        // SAFETY: a map value pointer, valid for this program run; copied out.
        ISOLATION
            .get_ptr(&endpoint)
            .map(|isolation| unsafe { *isolation })
    }

    #[inline(always)]
    fn exact(&self, key: &PolicyKey) -> bool {
        POLICY_EXACT.get_ptr(key).is_some()
    }

    #[inline(always)]
    fn range(&self, key: &PolicyKey) -> bool {
        POLICY_RANGES.get(Key::new(KEY_FULL_BITS, *key)).is_some()
    }

    #[inline(always)]
    fn peer_identity(&self, addr: [u8; 4]) -> u32 {
        peer_identity(addr)
    }

    #[inline(always)]
    fn cidr_identity(&self, addr: [u8; 4]) -> u32 {
        CIDR_IDENTITY
            .get(Key::new(32, Ipv4Prefix { addr }))
            .copied()
            .unwrap_or(ANY_IDENTITY)
    }
}
