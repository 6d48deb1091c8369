//! Map capacities come from the configuration; a full map fails closed and
//! says so; a pinned map of another shape (resized, or changed by an
//! upgrade) is replaced instead of silently reused.

use std::{collections::BTreeMap, path::PathBuf};

use aya::maps::{HashMap, LpmTrie, Map, MapData};
use ipnet::Ipv4Net;
use sluice_agent::{
    kernel::bpf::{Dataplane, MapSizes, PodAttachment, PolicyMaps},
    policy::{ports::PortPrefix, PlacedPolicy},
};
use sluice_common::{
    direction::Direction,
    identity, maps,
    policy::{Isolation, PolicyEntry, PolicyKey, PEER_MARK},
};
use sluice_lab::netns::Netns;
use sluice_tests::{require_root, unique};

/// A private pin directory, removed on drop.
struct Pins(PathBuf);

impl Pins {
    fn new() -> Self {
        sluice_agent::kernel::bpffs::ensure_mounted(std::path::Path::new("/sys/fs/bpf"))
            .expect("bpffs");
        Self(PathBuf::from("/sys/fs/bpf/sluice").join(unique("maps")))
    }

    fn load(&self, sizes: MapSizes) -> Dataplane {
        Dataplane::load(&self.0, sizes).expect("loading the dataplane")
    }

    /// Kernel id of every pinned map, by name.
    fn map_ids(&self) -> BTreeMap<String, u32> {
        std::fs::read_dir(&self.0)
            .expect("pin dir")
            .flatten()
            .filter_map(|e| {
                let info = MapData::from_pin(e.path()).ok()?.info().ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), info.id()))
            })
            .collect()
    }

    fn max_entries(&self, name: &str) -> u32 {
        MapData::from_pin(self.0.join(name))
            .and_then(|m| m.info())
            .expect("pinned map info")
            .max_entries()
    }

    fn has_exact(&self, key: &PolicyKey) -> bool {
        let data = MapData::from_pin(self.0.join(maps::POLICY_EXACT.name)).expect("exact map");
        let exact: HashMap<_, PolicyKey, PolicyEntry> =
            HashMap::try_from(Map::HashMap(data)).expect("exact map type");
        exact.get(key, 0).is_ok()
    }

    /// The rules in both policy maps (not the peer marks).
    fn policy_keys(&self) -> Vec<PolicyKey> {
        let data = MapData::from_pin(self.0.join(maps::POLICY_EXACT.name)).expect("exact map");
        let exact: HashMap<_, PolicyKey, PolicyEntry> =
            HashMap::try_from(Map::HashMap(data)).expect("exact map type");
        let data = MapData::from_pin(self.0.join(maps::POLICY_RANGES.name)).expect("range map");
        let ranges: LpmTrie<_, PolicyKey, PolicyEntry> =
            LpmTrie::try_from(Map::LpmTrie(data)).expect("range map type");
        exact
            .keys()
            .map(|k| k.expect("key"))
            .chain(ranges.keys().map(|k| k.expect("key").data()))
            .filter(|k| k.direction & PEER_MARK == 0)
            .collect()
    }

    fn isolation(&self) -> Vec<u32> {
        let data = MapData::from_pin(self.0.join(maps::ISOLATION.name)).expect("isolation map");
        let map: HashMap<_, u32, Isolation> =
            HashMap::try_from(Map::HashMap(data)).expect("isolation map type");
        map.keys().map(|k| k.expect("key")).collect()
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = sluice_agent::kernel::bpf::remove_pins(&self.0);
    }
}

fn small() -> MapSizes {
    MapSizes {
        endpoints: 64,
        ipcache: 64,
        policy: 64,
        conntrack: 1024,
        cidr_identities: 64,
        services: 64,
        service_backends: 64,
    }
}

/// `endpoints` isolated for ingress, and for each (endpoint, identity,
/// port, range_bits) a TCP rule on one port (`range_bits` 0) or on a range
/// of 2^range_bits ports, placed as the compiler places them.
fn policy(endpoints: &[u32], rules: &[(u32, u32, u16, u32)]) -> PlacedPolicy {
    let mut placed = PlacedPolicy::default();
    for endpoint in endpoints {
        placed.isolate(*endpoint, Direction::Ingress);
    }
    for &(endpoint, identity, port, range_bits) in rules {
        let prefix = PortPrefix {
            port,
            bits: 16 - range_bits,
        };
        placed.allow(endpoint, Direction::Ingress, identity, 6, Some(prefix));
    }
    placed
}

fn policy_maps(dataplane: &mut Dataplane) -> PolicyMaps {
    dataplane.take_sync_maps().expect("sync maps").policy
}

#[test]
fn capacities_follow_the_config_and_reshaped_pins_are_replaced() {
    require_root!();
    let pins = Pins::new();
    let sizes = small();
    let mut dataplane = pins.load(sizes);
    for (name, _, size) in sizes.by_map() {
        assert_eq!(pins.max_entries(name), size, "{name}");
    }
    // Same shape: the pinned map and what it holds are kept.
    policy_maps(&mut dataplane)
        .apply(&policy(&[7], &[(7, 300, 80, 0), (7, 300, 1024, 8)]))
        .expect("apply");
    drop(dataplane);
    let before = pins.map_ids();
    assert!(before.len() >= sizes.by_map().len(), "{before:?}");
    drop(pins.load(sizes));
    assert_eq!(pins.map_ids(), before, "every map kept across a reload");
    assert_eq!(pins.policy_keys().len(), 2, "kept across a reload");
    // Resized: replaced, empty until the agent fills it again.
    let bigger = MapSizes {
        policy: 128,
        ..sizes
    };
    drop(pins.load(bigger));
    assert_eq!(pins.max_entries(maps::POLICY_RANGES.name), 128);
    assert_eq!(pins.policy_keys().len(), 0, "a new map");
    assert_eq!(pins.isolation(), vec![7], "other maps untouched");
    let after = pins.map_ids();
    for (name, id) in &before {
        let replaced = name == maps::POLICY_RANGES.name || name == maps::POLICY_EXACT.name;
        assert_eq!(after[name] != *id, replaced, "{name}");
    }
    // A new conntrack table starts its insert count again (evictions are
    // inserts minus what the table holds).
    let before = after;
    drop(pins.load(MapSizes {
        conntrack: 2048,
        ..bigger
    }));
    let after = pins.map_ids();
    let with_conntrack = [
        maps::CONNTRACK,
        maps::SERVICE_FLOWS,
        maps::SERVICE_REVERSE,
        maps::TABLE_INSERTS,
    ];
    for (name, id) in &before {
        let replaced = with_conntrack.iter().any(|m| m.name == name);
        assert_eq!(after[name] != *id, replaced, "{name}");
    }
}

#[test]
fn a_full_policy_map_still_isolates_and_reports_it() {
    require_root!();
    let pins = Pins::new();
    let mut dataplane = pins.load(small());
    let mut maps = policy_maps(&mut dataplane);
    let rules: Vec<_> = (0..100).map(|p| (7, 300, 1000 + p, 0)).collect();
    let err = maps
        .apply(&policy(&[7, 8], &rules))
        .expect_err("100 rules in a 64-entry map");
    assert_eq!(err.full_map(), Some(maps::POLICY_EXACT.name), "{err}");
    let mut isolation = pins.isolation();
    isolation.sort();
    assert_eq!(isolation, vec![7, 8], "isolation applied all the same");
    // The mark went in first, so the 63 rules that fit are reachable.
    assert_eq!(pins.policy_keys().len(), 63, "as many rules as fit");
    assert!(
        pins.has_exact(&sluice_common::policy::peer_mark(
            7,
            300,
            Direction::Ingress
        )),
        "the mark is in"
    );
}

#[test]
fn ipblock_rules_are_withheld_while_their_regions_do_not_fit() {
    require_root!();
    let pins = Pins::new();
    let mut dataplane = pins.load(small());
    let mut maps = policy_maps(&mut dataplane);
    let cidr_identity = identity::FIRST_CIDR + 1;
    let mut placed = policy(&[7], &[(7, 300, 80, 0), (7, cidr_identity, 80, 0)]);
    placed.regions = BTreeMap::from([("192.0.2.0/24".parse().expect("cidr"), cidr_identity)]);
    maps.apply(&placed).expect("everything fits");
    assert_eq!(pins.policy_keys().len(), 2);

    // 100 regions cannot fit in 64: an address of a missing region could
    // land in an allowed wider one, so no rule may name a CIDR identity.
    let regions: BTreeMap<Ipv4Net, u32> = (0..100u32)
        .map(|i| {
            let net = Ipv4Net::new([198, 18, i as u8, 0].into(), 24).expect("cidr");
            (net, identity::FIRST_CIDR + 1 + i)
        })
        .collect();
    placed.regions = regions;
    let err = maps
        .apply(&placed)
        .expect_err("100 regions in a 64-entry map");
    assert_eq!(err.full_map(), Some(maps::CIDR_IDENTITY.name), "{err}");
    let keys = pins.policy_keys();
    assert_eq!(keys.len(), 1, "only the label rule is left: {keys:?}");
    assert_eq!(keys[0].identity, 300);
    assert_eq!(pins.isolation(), vec![7]);
}

/// The program the pod filter on `ifname`'s ingress runs (in the current
/// netns).
fn filter_program(ifname: &str) -> u64 {
    let out = std::process::Command::new("tc")
        .args(["-j", "filter", "show", "dev", ifname, "ingress"])
        .output()
        .expect("tc filter show");
    let filters: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("tc's JSON");
    filters
        .iter()
        .find_map(|f| f["options"]["prog"]["id"].as_u64())
        .unwrap_or_else(|| panic!("no BPF filter on {ifname}: {filters:?}"))
}

/// A reload with replaced (empty) maps must not put new programs on them
/// while the agent has not filled them: that would open every isolated
/// pod. The pod filters keep the previous programs until
/// `complete_upgrade`; a reload with the same shapes upgrades them at
/// once. Switching `podAttachment` moves a veth over at its next attach:
/// TCX links go once the filters are in place, and back.
#[test]
fn pod_filters_keep_the_old_maps_until_the_new_ones_are_filled() {
    require_root!();
    let pins = Pins::new();
    let ns = Netns::create(&unique("slmap")).expect("netns");
    ns.ip("link add sl0 type veth peer name sl1")
        .expect("veth pair");
    ns.ip("link set sl0 up").expect("link up");
    let dir = pins.0.clone();
    let programs = ns
        .run(move || {
            let old_pin = dir.join("links/sl0");
            let ifindex = nix::net::if_::if_nametoindex("sl0").expect("ifindex");
            let mut dataplane = Dataplane::load(&dir, small()).expect("load");
            dataplane.attach("sl0", ifindex).expect("attach, TCX");
            assert!(old_pin.exists());
            dataplane.set_pod_attachment(PodAttachment::Tc);
            dataplane.attach("sl0", ifindex).expect("attach, tc");
            assert!(!old_pin.exists(), "the TCX link is left");
            dataplane
                .attach("sl0", ifindex)
                .expect("attach again (idempotent)");
            let first = filter_program("sl0");
            drop(dataplane);
            assert_eq!(filter_program("sl0"), first, "filter gone with the agent");

            let resized = MapSizes {
                policy: 128,
                ..small()
            };
            // A map an earlier version had, under a name this one lacks.
            MapData::from_pin(dir.join(maps::CONFIG.name))
                .expect("config map")
                .pin(dir.join("SLUICE_POLICY"))
                .expect("pinning an old map name");
            let dataplane = Dataplane::load(&dir, resized).expect("reload, resized");
            assert!(dataplane.upgrade_pending());
            // The agent dies before it filled the new maps: the next one
            // must not take the new maps for filled.
            drop(dataplane);
            let mut dataplane = Dataplane::load(&dir, resized).expect("reload after a crash");
            assert!(dataplane.upgrade_pending(), "pending across restarts");
            let pending = filter_program("sl0");
            assert!(dir.join("SLUICE_POLICY").exists());
            dataplane.complete_upgrade().expect("complete the upgrade");
            assert!(!dataplane.upgrade_pending());
            assert!(!dir.join("SLUICE_POLICY").exists(), "old map left behind");
            let upgraded = filter_program("sl0");
            drop(dataplane);

            let mut dataplane = Dataplane::load(&dir, resized).expect("reload, same shapes");
            assert!(!dataplane.upgrade_pending());
            let same_shape = filter_program("sl0");
            let filters_left = || {
                let out = std::process::Command::new("tc")
                    .args(["filter", "show", "dev", "sl0", "ingress"])
                    .output()
                    .expect("tc filter show");
                !out.stdout.is_empty()
            };
            // Back to TCX (the default of a new load).
            dataplane.attach("sl0", ifindex).expect("attach, TCX again");
            assert!(old_pin.exists());
            assert!(!filters_left(), "filter left after the move to TCX");
            dataplane.set_pod_attachment(PodAttachment::Tc);
            dataplane.attach("sl0", ifindex).expect("attach, tc again");
            dataplane.detach("sl0").expect("detach");
            assert!(!filters_left(), "filter left after detach");
            assert!(!old_pin.exists(), "link left after detach");
            [first, pending, upgraded, same_shape]
        })
        .expect("entering the netns");
    let [first, pending, upgraded, same_shape] = programs;
    assert_eq!(pending, first, "upgraded before the new maps were filled");
    assert_ne!(upgraded, first, "not upgraded by complete_upgrade");
    assert_ne!(same_shape, upgraded, "a same-shape reload upgrades at load");
}
