//! The maps about where addresses live: the ipcache (other nodes, their
//! pod ranges, every pod's identity) and the node-wide settings.

use std::collections::BTreeMap;

use aya::maps::{Array, LpmTrie, MapData};
use ipnet::Ipv4Net;
use sluice_common::{
    config::DataplaneConfig,
    ipcache::{Ipv4Prefix, RemoteInfo},
    maps,
};

use super::{
    diff::{self, Trie},
    map_error, DataplaneError, SyncStats,
};

/// The ipcache; its contents come from the node topology and the pod
/// identities together (`Topology::ipcache_with_pods`).
pub struct Ipcache(Trie<Ipv4Net, RemoteInfo>);

impl Ipcache {
    pub fn new(map: LpmTrie<MapData, Ipv4Prefix, RemoteInfo>) -> Self {
        Self(Trie {
            name: maps::IPCACHE.name,
            map,
        })
    }

    /// Makes the ipcache hold exactly `desired`; stale entries go only after
    /// the new ones are in, so lookups never miss while the agent syncs.
    pub fn sync(
        &mut self,
        desired: &BTreeMap<Ipv4Net, RemoteInfo>,
    ) -> Result<SyncStats, DataplaneError> {
        diff::sync(&mut self.0, desired)
    }

    /// The entry the programs find for `addr` (longest prefix match).
    pub fn lookup(&self, addr: [u8; 4]) -> Option<RemoteInfo> {
        self.0
            .map
            .get(&aya::maps::lpm_trie::Key::new(32, Ipv4Prefix { addr }), 0)
            .ok()
    }

    /// What the map holds now (a previous agent's work, at start).
    pub fn pinned(&self) -> Result<BTreeMap<Ipv4Net, RemoteInfo>, DataplaneError> {
        diff::contents(&self.0)
    }
}

/// The node-wide settings the programs read.
pub struct ConfigMap(Array<MapData, DataplaneConfig>);

impl ConfigMap {
    pub fn new(map: Array<MapData, DataplaneConfig>) -> Self {
        Self(map)
    }

    pub fn set(&mut self, config: DataplaneConfig) -> Result<(), DataplaneError> {
        self.0
            .set(0, config, 0)
            .map_err(map_error(maps::CONFIG.name))
    }
}
