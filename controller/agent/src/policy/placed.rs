//! The policy maps' contents exactly as the dataplane reads them, the
//! compiler's output: isolation per endpoint, peer marks and rules on one
//! port or all ports (the exact hash), port-range prefixes (the LPM trie),
//! and the ipBlock regions (the CIDR-identity trie). The kernel writer
//! copies it into the maps without interpreting it; [`InMemory`] answers
//! the shared per-packet decision (`sluice_common::policy::decide`) from
//! it, so tests decide packets over the very layout the maps hold.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sluice_common::{
    direction::Direction,
    identity,
    ipcache::RemoteInfo,
    policy::{
        entry, peer_mark, Isolation, PolicyEntry, PolicyKey, PolicyLookup, ALL_PORTS, ANY_IDENTITY,
        KEY_FIXED_BITS, KEY_FULL_BITS, PEER_MARK,
    },
};

use super::ports::PortPrefix;

const ALLOW: PolicyEntry = PolicyEntry {
    flags: entry::ALLOW,
    _pad: 0,
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacedPolicy {
    /// Local endpoint id → isolated directions (enforced or in audit
    /// mode) and which have port ranges; only endpoints some policy
    /// selects.
    pub isolation: BTreeMap<u32, Isolation>,
    /// The exact hash: the marks of every identity a rule names, and rules
    /// on one port or on all ports (`ALL_PORTS`).
    pub exact: BTreeMap<PolicyKey, PolicyEntry>,
    /// The port-range trie: (key, prefix length) → entry.
    pub ranges: BTreeMap<(PolicyKey, u32), PolicyEntry>,
    /// The CIDR-identity trie: ipBlock region → its identity.
    pub regions: BTreeMap<Ipv4Net, u32>,
}

impl PlacedPolicy {
    /// Some policy selects `endpoint` for `direction`: only what a rule
    /// allows passes.
    pub fn isolate(&mut self, endpoint: u32, direction: Direction) {
        self.isolation
            .entry(endpoint)
            .or_default()
            .isolate(direction);
    }

    /// Puts an isolated `endpoint` in audit mode, both directions: what
    /// its policy would deny passes, reported. Nothing for an endpoint no
    /// policy isolates (nothing would be denied).
    pub fn audit(&mut self, endpoint: u32) {
        if let Some(isolation) = self.isolation.get_mut(&endpoint) {
            isolation.audit(Direction::Ingress);
            isolation.audit(Direction::Egress);
        }
    }

    /// Lets `identity` reach (egress) or be reached by (ingress) the
    /// isolated `endpoint` on `protocol` (`ANY_PROTOCOL`: everything) and
    /// `port` (`None`: every port). The identity is marked, so lookups for
    /// it are worth making; a port prefix shorter than 16 bits is a range
    /// and goes to the trie, which the endpoint's isolation entry then says
    /// to consult. Call [`Self::isolate`] first.
    pub fn allow(
        &mut self,
        endpoint: u32,
        direction: Direction,
        identity: u32,
        protocol: u8,
        port: Option<PortPrefix>,
    ) {
        self.exact
            .insert(peer_mark(endpoint, identity, direction), ALLOW);
        let mut key = PolicyKey {
            endpoint,
            identity,
            direction: direction as u8,
            protocol,
            dport: ALL_PORTS,
        };
        match port {
            None => {
                self.exact.insert(key, ALLOW);
            }
            Some(PortPrefix { port, bits: 16 }) => {
                key.dport = port.to_be_bytes();
                self.exact.insert(key, ALLOW);
            }
            Some(PortPrefix { port, bits }) => {
                key.dport = port.to_be_bytes();
                self.ranges.insert((key, KEY_FIXED_BITS + bits), ALLOW);
                if let Some(isolation) = self.isolation.get_mut(&endpoint) {
                    isolation.set_ranges(direction);
                }
            }
        }
    }

    /// Every rule (not the marks) as (key, prefix length), the way an LPM
    /// key would express it: one port matches all 96 bits, all ports only
    /// the fixed fields.
    pub fn rules(&self) -> impl Iterator<Item = (PolicyKey, u32)> + '_ {
        let exact = self
            .exact
            .keys()
            .filter(|k| k.direction & PEER_MARK == 0)
            .map(|k| {
                let bits = if k.dport == ALL_PORTS {
                    KEY_FIXED_BITS
                } else {
                    KEY_FULL_BITS
                };
                (*k, bits)
            });
        exact.chain(self.ranges.keys().copied())
    }

    /// The layout to write while not every ipBlock region fits its map: an
    /// address of a missing region would fall into a wider one, perhaps
    /// allowed where the missing one is an `except`, so no rule (nor mark)
    /// may name a CIDR identity. Isolation stays: what is withheld denies.
    pub fn withholding_regions(&self) -> PlacedPolicy {
        let label = |key: &PolicyKey| key.identity < identity::FIRST_CIDR;
        PlacedPolicy {
            isolation: self.isolation.clone(),
            exact: self
                .exact
                .iter()
                .filter(|(k, _)| label(k))
                .map(|(k, v)| (*k, *v))
                .collect(),
            ranges: self
                .ranges
                .iter()
                .filter(|((k, _), _)| label(k))
                .map(|(k, v)| (*k, *v))
                .collect(),
            regions: self.regions.clone(),
        }
    }
}

/// The value of the longest prefix in `map` that holds `addr`, as an LPM
/// trie answers.
pub fn longest_match<V>(map: &BTreeMap<Ipv4Net, V>, addr: Ipv4Addr) -> Option<&V> {
    (0..=32u8).rev().find_map(|len| {
        let net = Ipv4Net::new(addr, len).ok()?.trunc();
        map.get(&net)
    })
}

/// The shared decision's lookups over in-memory maps: a placed policy and
/// the ipcache beside it (`Topology::ipcache_with_pods`), answering what
/// the kernel's maps holding them would.
pub struct InMemory<'a> {
    pub policy: &'a PlacedPolicy,
    pub ipcache: &'a BTreeMap<Ipv4Net, RemoteInfo>,
}

impl PolicyLookup for InMemory<'_> {
    fn isolation(&self, endpoint: u32) -> Option<Isolation> {
        self.policy.isolation.get(&endpoint).copied()
    }

    fn exact(&self, key: &PolicyKey) -> bool {
        self.policy.exact.contains_key(key)
    }

    fn range(&self, key: &PolicyKey) -> bool {
        // Every prefix longer than the fixed fields, as the trie would
        // match it against the full-length key.
        let port = u16::from_be_bytes(key.dport);
        (KEY_FIXED_BITS..=KEY_FULL_BITS).any(|bits| {
            let port_bits = bits - KEY_FIXED_BITS;
            let mask = if port_bits == 0 {
                0
            } else {
                u16::MAX << (16 - port_bits)
            };
            let prefix = PolicyKey {
                dport: (port & mask).to_be_bytes(),
                ..*key
            };
            self.policy.ranges.contains_key(&(prefix, bits))
        })
    }

    fn peer_identity(&self, addr: [u8; 4]) -> u32 {
        longest_match(self.ipcache, addr.into()).map_or(identity::WORLD, |e| e.identity)
    }

    fn cidr_identity(&self, addr: [u8; 4]) -> u32 {
        longest_match(&self.policy.regions, addr.into())
            .copied()
            .unwrap_or(ANY_IDENTITY)
    }
}

#[cfg(test)]
mod tests {
    use sluice_common::policy::{decide, decide_flow, Decision, ANY_PROTOCOL};

    use super::*;

    const TCP: u8 = 6;

    fn prefix(port: u16, bits: u32) -> Option<PortPrefix> {
        Some(PortPrefix { port, bits })
    }

    /// An ipcache where the peer 10.0.0.7 has identity 300.
    fn peer_10_0_0_7_is_300() -> BTreeMap<Ipv4Net, RemoteInfo> {
        BTreeMap::from([(
            Ipv4Net::from(Ipv4Addr::new(10, 0, 0, 7)),
            RemoteInfo {
                identity: 300,
                tunnel_endpoint: [0; 4],
                flags: 0,
                _pad: 0,
            },
        )])
    }

    #[test]
    fn one_port_and_all_ports_go_to_the_hash_ranges_to_the_trie() {
        let mut placed = PlacedPolicy::default();
        placed.isolate(1, Direction::Ingress);
        placed.isolate(2, Direction::Egress);
        placed.allow(1, Direction::Ingress, 300, TCP, prefix(80, 16));
        placed.allow(1, Direction::Ingress, 300, ANY_PROTOCOL, None);
        placed.allow(1, Direction::Ingress, 300, 17, None);
        // 1024-2047 for endpoint 2's egress.
        placed.allow(2, Direction::Egress, 300, TCP, prefix(1024, 6));
        let rules: Vec<_> = placed
            .rules()
            .map(|(k, bits)| (k.endpoint, k.protocol, u16::from_be_bytes(k.dport), bits))
            .collect();
        assert_eq!(
            rules,
            vec![
                (1, ANY_PROTOCOL, 0, KEY_FIXED_BITS),
                (1, TCP, 80, KEY_FULL_BITS),
                (1, 17, 0, KEY_FIXED_BITS),
                (2, TCP, 1024, KEY_FIXED_BITS + 6),
            ]
        );
        // Identity 300 is marked once per (endpoint, direction).
        assert!(placed
            .exact
            .contains_key(&peer_mark(1, 300, Direction::Ingress)));
        assert!(placed
            .exact
            .contains_key(&peer_mark(2, 300, Direction::Egress)));
        assert_eq!(placed.exact.len(), 5);
        assert!(!placed.isolation[&1].has_ranges(Direction::Ingress));
        assert!(placed.isolation[&2].has_ranges(Direction::Egress));
        assert!(!placed.isolation[&2].has_ranges(Direction::Ingress));
        assert!(placed.isolation[&2].isolates(Direction::Egress));
    }

    #[test]
    fn ranges_match_by_prefix_as_the_trie_does() {
        let mut placed = PlacedPolicy::default();
        placed.isolate(1, Direction::Ingress);
        placed.allow(1, Direction::Ingress, 300, TCP, prefix(1024, 6));
        let ipcache = peer_10_0_0_7_is_300();
        let maps = InMemory {
            policy: &placed,
            ipcache: &ipcache,
        };
        let verdict = |port| decide(&maps, 1, Direction::Ingress, [10, 0, 0, 7], TCP, port);
        for (port, want) in [
            (1023, Decision::Denied),
            (1024, Decision::Allowed),
            (2047, Decision::Allowed),
            (2048, Decision::Denied),
        ] {
            assert_eq!(verdict(port), want, "port {port}");
        }
        let other = decide(&maps, 1, Direction::Ingress, [10, 0, 0, 8], TCP, 1500);
        assert_eq!(other, Decision::Denied, "an unknown peer is the world");
        let egress = decide(&maps, 1, Direction::Egress, [10, 0, 0, 8], TCP, 1500);
        assert_eq!(egress, Decision::Open);
    }

    #[test]
    fn audit_mode_is_decided_and_reported_but_not_enforced() {
        let mut placed = PlacedPolicy::default();
        placed.isolate(1, Direction::Ingress);
        placed.allow(1, Direction::Ingress, 300, TCP, prefix(80, 16));
        placed.audit(1);
        placed.audit(2); // no policy isolates endpoint 2: nothing to audit
        assert!(!placed.isolation.contains_key(&2));
        let isolation = placed.isolation[&1];
        assert!(isolation.audits(Direction::Ingress) && !isolation.audits(Direction::Egress));
        let ipcache = peer_10_0_0_7_is_300();
        let maps = InMemory {
            policy: &placed,
            ipcache: &ipcache,
        };
        let from_300 = |port| decide(&maps, 1, Direction::Ingress, [10, 0, 0, 7], TCP, port);
        assert_eq!(from_300(80), Decision::Allowed);
        assert_eq!(from_300(81), Decision::WouldDeny);
        // What the datapath enforces: nothing in that direction.
        let enforced = decide_flow(&maps, None, Some(1), [10, 0, 0, 7], [10, 0, 0, 1], TCP, 81);
        assert_eq!(enforced.ingress, Some(Decision::Open));
        assert_eq!(enforced.denied_by(), None);
        let egress = decide(&maps, 1, Direction::Egress, [10, 0, 0, 7], TCP, 81);
        assert_eq!(egress, Decision::Open);

        // Isolated again (as an endpoint without an identity is, after
        // compiling): enforcement wins over audit mode.
        placed.isolate(1, Direction::Ingress);
        let isolation = placed.isolation[&1];
        assert!(isolation.isolates(Direction::Ingress) && !isolation.audits(Direction::Ingress));
        let maps = InMemory {
            policy: &placed,
            ipcache: &ipcache,
        };
        assert_eq!(
            decide(&maps, 1, Direction::Ingress, [10, 0, 0, 7], TCP, 81),
            Decision::Denied
        );
    }

    #[test]
    fn withholding_regions_drops_every_rule_and_mark_naming_one() {
        let cidr = identity::FIRST_CIDR + 3;
        let mut placed = PlacedPolicy::default();
        placed.isolate(1, Direction::Egress);
        placed.allow(1, Direction::Egress, 300, TCP, prefix(80, 16));
        placed.allow(1, Direction::Egress, cidr, TCP, prefix(80, 16));
        placed.allow(1, Direction::Egress, cidr, TCP, prefix(1024, 6));
        placed
            .regions
            .insert("192.0.2.0/24".parse().expect("cidr"), cidr);
        let withheld = placed.withholding_regions();
        assert!(withheld.exact.keys().all(|k| k.identity == 300));
        assert_eq!(withheld.exact.len(), 2, "the label rule and its mark");
        assert!(withheld.ranges.is_empty());
        assert_eq!(withheld.isolation, placed.isolation, "isolation stays");
    }

    #[test]
    fn longest_match_prefers_the_most_specific_prefix() {
        let map: BTreeMap<Ipv4Net, u32> = [("10.0.0.0/8", 1), ("10.1.0.0/16", 2), ("0.0.0.0/0", 3)]
            .into_iter()
            .map(|(net, v)| (net.parse().expect("net"), v))
            .collect();
        assert_eq!(longest_match(&map, Ipv4Addr::new(10, 1, 2, 3)), Some(&2));
        assert_eq!(longest_match(&map, Ipv4Addr::new(10, 2, 2, 3)), Some(&1));
        assert_eq!(longest_match(&map, Ipv4Addr::new(192, 0, 2, 1)), Some(&3));
        assert_eq!(
            longest_match(&BTreeMap::<Ipv4Net, u32>::new(), Ipv4Addr::LOCALHOST),
            None
        );
    }
}
