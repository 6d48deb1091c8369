//! Writing a [`PlacedPolicy`] into the policy maps, in an order that never
//! lets more through than either the old or the new policy: ipBlock
//! regions, then peer marks (so every rule that fits is reachable), rules
//! and ranges, then isolation, then every stale entry. A full map stops
//! nothing: isolation still applies and stale entries still go, so what is
//! missing denies (fails closed); the first error is reported after.

use std::collections::BTreeMap;

use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData};
use ipnet::Ipv4Net;
use sluice_common::{
    identity,
    ipcache::Ipv4Prefix,
    maps,
    policy::{
        Isolation, PolicyEntry, PolicyKey, PolicyLookup, ANY_IDENTITY, KEY_FULL_BITS, PEER_MARK,
    },
};

use super::Ipcache;
use super::{
    diff::{self, Hash, Trie},
    DataplaneError, SyncStats,
};
use crate::policy::PlacedPolicy;

/// The NetworkPolicy maps; owned by the policy syncer.
pub struct PolicyMaps {
    exact: Hash<PolicyKey, PolicyEntry>,
    ranges: Trie<(PolicyKey, u32), PolicyEntry>,
    isolation: Hash<u32, Isolation>,
    regions: Trie<Ipv4Net, u32>,
    /// Entries the last apply wanted in each map.
    wanted: [(&'static str, usize); 4],
}

impl PolicyMaps {
    pub fn new(
        exact: HashMap<MapData, PolicyKey, PolicyEntry>,
        ranges: LpmTrie<MapData, PolicyKey, PolicyEntry>,
        isolation: HashMap<MapData, u32, Isolation>,
        regions: LpmTrie<MapData, sluice_common::ipcache::Ipv4Prefix, u32>,
    ) -> Self {
        Self {
            exact: Hash {
                name: maps::POLICY_EXACT.name,
                map: exact,
            },
            ranges: Trie {
                name: maps::POLICY_RANGES.name,
                map: ranges,
            },
            isolation: Hash {
                name: maps::ISOLATION.name,
                map: isolation,
            },
            regions: Trie {
                name: maps::CIDR_IDENTITY.name,
                map: regions,
            },
            wanted: Default::default(),
        }
    }

    /// The ipBlock regions the map holds now (a previous agent's work, at
    /// start): prefix → CIDR identity.
    pub fn pinned_regions(&self) -> Result<BTreeMap<Ipv4Net, u32>, DataplaneError> {
        diff::contents(&self.regions)
    }

    /// Entries the last [`Self::apply`] wanted in each map (rules withheld
    /// for a full region map not counted), to compare with capacities.
    pub fn wanted_entries(&self) -> [(&'static str, usize); 4] {
        self.wanted
    }

    /// Makes the maps hold exactly `policy`, writing only differences.
    pub fn apply(&mut self, policy: &PlacedPolicy) -> Result<SyncStats, DataplaneError> {
        let mut stats = SyncStats::default();
        let mut first_error = None;
        let mut note = |(written, error): (usize, Option<DataplaneError>)| {
            stats.written += written;
            match error {
                Some(e) => {
                    first_error.get_or_insert(e);
                    false
                }
                None => true,
            }
        };
        let regions_fit = note(diff::write(&mut self.regions, &policy.regions));
        let withheld;
        let placed = if regions_fit {
            policy
        } else {
            withheld = policy.withholding_regions();
            &withheld
        };
        self.wanted = [
            (maps::POLICY_EXACT.name, placed.exact.len()),
            (maps::POLICY_RANGES.name, placed.ranges.len()),
            (maps::ISOLATION.name, placed.isolation.len()),
            (maps::CIDR_IDENTITY.name, placed.regions.len()),
        ];
        let (marks, rules): (Vec<_>, Vec<_>) = placed
            .exact
            .iter()
            .partition(|(k, _)| k.direction & PEER_MARK != 0);
        note(diff::write(&mut self.exact, marks.into_iter().chain(rules)));
        note(diff::write(&mut self.ranges, &placed.ranges));
        // Sized like the endpoint map, so it cannot be full.
        note(diff::write(&mut self.isolation, &placed.isolation));
        stats.removed +=
            diff::remove_stale(&mut self.isolation, |k| placed.isolation.contains_key(k))?;
        stats.removed += diff::remove_stale(&mut self.exact, |k| placed.exact.contains_key(k))?;
        stats.removed += diff::remove_stale(&mut self.ranges, |k| placed.ranges.contains_key(k))?;
        stats.removed += diff::remove_stale(&mut self.regions, |k| placed.regions.contains_key(k))?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

/// The shared per-packet decision's lookups answered by the kernel's maps
/// themselves, as the programs make them (exact hash lookups, longest
/// prefix matches in the tries): what `sluice policy explain` checks the
/// computed verdict against. A failed lookup counts as a miss, as it does
/// for the programs.
pub struct KernelPolicy<'a> {
    pub policy: &'a PolicyMaps,
    pub ipcache: &'a Ipcache,
}

impl PolicyLookup for KernelPolicy<'_> {
    fn isolation(&self, endpoint: u32) -> Option<Isolation> {
        self.policy.isolation.map.get(&endpoint, 0).ok()
    }

    fn exact(&self, key: &PolicyKey) -> bool {
        self.policy.exact.map.get(key, 0).is_ok()
    }

    fn range(&self, key: &PolicyKey) -> bool {
        self.policy
            .ranges
            .map
            .get(&Key::new(KEY_FULL_BITS, *key), 0)
            .is_ok()
    }

    fn peer_identity(&self, addr: [u8; 4]) -> u32 {
        self.ipcache
            .lookup(addr)
            .map_or(identity::WORLD, |e| e.identity)
    }

    fn cidr_identity(&self, addr: [u8; 4]) -> u32 {
        self.policy
            .regions
            .map
            .get(&Key::new(32, Ipv4Prefix { addr }), 0)
            .unwrap_or(ANY_IDENTITY)
    }
}
