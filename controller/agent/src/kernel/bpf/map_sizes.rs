//! How big each map is: the agent config's `mapSizes`, defaulting to the
//! capacities of the map table (`sluice_common::maps`).

use sluice_common::maps;

/// Map capacities: the config file's `mapSizes` (keys absent there keep
/// these defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MapSizes {
    /// Local pods; also sizes the isolation map (one entry per local pod
    /// at most, so it can never be the one that overflows).
    pub endpoints: u32,
    /// Other nodes' pod CIDRs and addresses, and every pod's address.
    pub ipcache: u32,
    /// Policy rules of this node's pods, in each of the two rule maps
    /// (exact ports and all-ports rules; port ranges split into prefixes).
    pub policy: u32,
    /// Tracked flows; when full the least recently used one is evicted
    /// and its next packet is checked against policy again.
    pub conntrack: u32,
    /// Distinct ipBlock regions (CIDRs and their exceptions).
    pub cidr_identities: u32,
    /// Service frontends (each ClusterIP port).
    pub services: u32,
    /// Backends of all frontends together (a backend of two ports counts
    /// twice).
    pub service_backends: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            endpoints: maps::ENDPOINTS.capacity,
            ipcache: maps::IPCACHE.capacity,
            policy: maps::POLICY_EXACT.capacity,
            conntrack: maps::CONNTRACK.capacity,
            cidr_identities: maps::CIDR_IDENTITY.capacity,
            services: maps::SERVICES.capacity,
            service_backends: maps::SERVICE_BACKENDS.capacity,
        }
    }
}

impl MapSizes {
    /// Smallest and largest capacity accepted for any map.
    pub const MIN: u32 = 64;
    pub const MAX: u32 = 1 << 24;

    /// (map name, config key, capacity) of every sized map. The
    /// connections' Service state lives as long as conntrack's flows and is
    /// sized like it.
    pub fn by_map(&self) -> [(&'static str, &'static str, u32); 12] {
        [
            (maps::ENDPOINTS.name, "endpoints", self.endpoints),
            (maps::ISOLATION.name, "endpoints", self.endpoints),
            (maps::IPCACHE.name, "ipcache", self.ipcache),
            (maps::POLICY_EXACT.name, "policy", self.policy),
            (maps::POLICY_RANGES.name, "policy", self.policy),
            (maps::CONNTRACK.name, "conntrack", self.conntrack),
            (
                maps::CIDR_IDENTITY.name,
                "cidrIdentities",
                self.cidr_identities,
            ),
            (maps::SERVICES.name, "services", self.services),
            (maps::SERVICE_COUNTERS.name, "services", self.services),
            (
                maps::SERVICE_BACKENDS.name,
                "serviceBackends",
                self.service_backends,
            ),
            (maps::SERVICE_FLOWS.name, "conntrack", self.conntrack),
            (maps::SERVICE_REVERSE.name, "conntrack", self.conntrack),
        ]
    }

    /// The config key whose value is out of range, with the value.
    pub fn invalid(&self) -> Option<(&'static str, u32)> {
        self.by_map()
            .into_iter()
            .find(|(_, _, size)| !(Self::MIN..=Self::MAX).contains(size))
            .map(|(_, key, size)| (key, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_map_table_s_and_isolation_follows_endpoints() {
        let sizes = MapSizes::default();
        for (name, _, size) in sizes.by_map() {
            let table = maps::by_name(name).expect("a map of the table");
            if name == maps::ISOLATION.name {
                assert_eq!(size, sizes.endpoints);
            } else if name == maps::SERVICE_FLOWS.name || name == maps::SERVICE_REVERSE.name {
                assert_eq!(size, sizes.conntrack);
            } else if name == maps::SERVICE_COUNTERS.name {
                assert_eq!(size, sizes.services);
            } else {
                assert_eq!(size, table.capacity, "{name}");
            }
        }
        assert_eq!(maps::ISOLATION.capacity, maps::ENDPOINTS.capacity);
        assert_eq!(maps::POLICY_RANGES.capacity, maps::POLICY_EXACT.capacity);
    }
}
