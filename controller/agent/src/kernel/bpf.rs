//! Loading the eBPF object, its pinned maps, and attaching the programs.
//!
//! Layout under the node's pin directory (`<bpf-root>/<node-name>/`):
//! the maps by name, and `links/<ifname>` for each attached program. Pins
//! outlive the agent, so traffic keeps flowing across agent restarts; a new
//! agent atomically swaps its freshly loaded program into the existing links.

use std::{
    io,
    path::{Path, PathBuf},
};

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use ipnet::Ipv4Net;
use sluice_common::{
    endpoint::{EndpointInfo, IpKey},
    identity,
    ipcache::{DataplaneConfig, Ipv4Prefix, RemoteInfo},
    maps,
    policy::{
        peer_mark, Isolation, PolicyEntry, PolicyKey, ALL_PORTS, KEY_FIXED_BITS, KEY_FULL_BITS,
        PEER_MARK,
    },
    programs,
};
use tracing::{info, warn};

use crate::EBPF_OBJECT;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF object lacks {0}")]
    Missing(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn program_error(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl DataplaneError {
    /// The map that is full, if that is what this error is: the kernel
    /// answers E2BIG for a full hash and ENOSPC for a full LPM trie.
    pub fn full_map(&self) -> Option<&'static str> {
        let DataplaneError::Map {
            name,
            source: aya::maps::MapError::SyscallError(e),
        } = self
        else {
            return None;
        };
        matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)).then_some(*name)
    }
}

/// The programs and where each attaches.
const PROGRAMS: [(&str, TcAttachType); 5] = [
    (programs::FROM_CONTAINER, TcAttachType::Ingress),
    (programs::TO_CONTAINER, TcAttachType::Egress),
    (programs::FROM_OVERLAY, TcAttachType::Ingress),
    (programs::TO_OVERLAY, TcAttachType::Egress),
    (programs::FROM_NETDEV, TcAttachType::Ingress),
];

/// Link pins are named `<ifname>` for pod veths (the common case, and the
/// layout agents before cross-node routing used) and `<program>@<ifname>`
/// for the node's own devices, which may carry two programs.
fn link_pin_name(program: &str, ifname: &str) -> String {
    if program == programs::FROM_CONTAINER {
        ifname.to_owned()
    } else {
        format!("{program}@{ifname}")
    }
}

/// The program (and its attach type) a link pin belongs to.
fn pin_program(pin_name: &str) -> Option<(&'static str, TcAttachType)> {
    let program = match pin_name.split_once('@') {
        Some((program, _)) => program,
        None => programs::FROM_CONTAINER,
    };
    PROGRAMS.iter().copied().find(|(p, _)| *p == program)
}

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
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            endpoints: 65536,
            ipcache: 65536,
            policy: 65536,
            conntrack: 262144,
            cidr_identities: 16384,
        }
    }
}

impl MapSizes {
    /// Smallest and largest capacity accepted for any map.
    pub const MIN: u32 = 64;
    pub const MAX: u32 = 1 << 24;

    /// (map name, config key, capacity) of every sized map.
    pub fn by_map(&self) -> [(&'static str, &'static str, u32); 7] {
        [
            (maps::ENDPOINTS, "endpoints", self.endpoints),
            (maps::ISOLATION, "endpoints", self.endpoints),
            (maps::IPCACHE, "ipcache", self.ipcache),
            (maps::POLICY_EXACT, "policy", self.policy),
            (maps::POLICY_RANGES, "policy", self.policy),
            (maps::CONNTRACK, "conntrack", self.conntrack),
            (maps::CIDR_IDENTITY, "cidrIdentities", self.cidr_identities),
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

/// What decides whether a pinned map can be reused: the kernel never
/// checks (nor does aya), and a program would misread a map of another
/// layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// The shape of every map of `object` this agent would create, capacities
/// as configured.
fn wanted_shapes(
    object: &[u8],
    sizes: &MapSizes,
) -> Result<BTreeMap<String, MapShape>, DataplaneError> {
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| DataplaneError::Load(aya::EbpfError::ParseError(e)))?;
    Ok(obj
        .maps
        .iter()
        .map(|(name, map)| {
            let configured = sizes
                .by_map()
                .into_iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, size)| size);
            let shape = MapShape {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: configured.unwrap_or(map.max_entries()),
            };
            (name.clone(), shape)
        })
        .collect())
}

/// A directory in the pin directory (bpffs holds no plain files) saying
/// that maps were created or replaced and the agent has not yet filled
/// them: made before any map is removed and removed once the links run the
/// new programs, so an agent that dies in between leaves it for the next.
const UPGRADE_PENDING: &str = "upgrade-pending";

/// The shape of the map pinned at `path`; `None` when nothing is pinned.
fn pinned_shape(path: &Path) -> Result<Option<MapShape>, DataplaneError> {
    let Ok(pinned) = MapData::from_pin(path) else {
        // Not pinned (anything else is reported by the load).
        return Ok(None);
    };
    let info = pinned.info().map_err(|source| DataplaneError::Map {
        name: "pinned map",
        source,
    })?;
    Ok(Some(MapShape {
        map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }))
}

/// Prepares the pin directory for a load: every pinned map whose shape
/// differs from what this agent loads (a resized map in the config, a
/// layout changed by an upgrade) is removed so the load creates it anew.
/// Returns whether maps are (or, after an interrupted start, still are)
/// new and unfilled: the load creates missing maps empty too. All maps
/// hold state the agent rebuilds (endpoints from its state file, the rest
/// from the cluster) or counters (which restart from zero). The programs
/// running keep the old maps alive until their links are upgraded, which
/// waits until the new maps are filled ([`Dataplane::complete_upgrade`]).
fn prepare_pins(
    pin_dir: &Path,
    shapes: &BTreeMap<String, MapShape>,
) -> Result<bool, DataplaneError> {
    let mut missing = Vec::new();
    let mut misshapen = Vec::new();
    for (name, wanted) in shapes {
        match pinned_shape(&pin_dir.join(name))? {
            None => missing.push(name),
            Some(pinned) if pinned != *wanted => {
                warn!(map = %name, pinned = %pinned, wanted = %wanted, "replacing a pinned map of another shape; its contents are rebuilt");
                misshapen.push(name);
            }
            Some(_) => {}
        }
    }
    let marker = pin_dir.join(UPGRADE_PENDING);
    let io = |path: PathBuf| move |source| DataplaneError::Io { path, source };
    if !missing.is_empty() || !misshapen.is_empty() {
        std::fs::create_dir_all(&marker).map_err(io(marker.clone()))?;
        info!(?missing, replaced = ?misshapen, "new maps: links keep their programs until the maps are filled");
    }
    for name in misshapen {
        let path = pin_dir.join(name);
        std::fs::remove_file(&path).map_err(io(path.clone()))?;
    }
    Ok(marker.is_dir())
}

/// Removes pinned maps other than `ours` (an older version's), once no
/// link runs a program that could use them.
fn remove_foreign_pins(pin_dir: &Path, ours: &BTreeSet<String>) -> Result<(), DataplaneError> {
    let entries = std::fs::read_dir(pin_dir).map_err(|source| DataplaneError::Io {
        path: pin_dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir && !ours.contains(&name) {
            info!(map = %name, "removing a map of an earlier version");
            std::fs::remove_file(entry.path()).map_err(|source| DataplaneError::Io {
                path: entry.path(),
                source,
            })?;
        }
    }
    Ok(())
}

/// The node's pin directory.
pub fn pin_dir(bpf_root: &Path, node_name: &str) -> PathBuf {
    bpf_root.join(node_name)
}

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    endpoints: HashMap<MapData, IpKey, EndpointInfo>,
    remote: Option<RemoteMaps>,
    policy: Option<PolicyMaps>,
    /// The maps of this agent's object; any other pinned map is an earlier
    /// version's.
    map_names: BTreeSet<String>,
    /// Maps were created or replaced at load: the links keep the previous
    /// programs, with the previous maps, until the new maps are filled.
    upgrade_pending: bool,
}

/// The NetworkPolicy maps; owned by the policy syncer.
pub struct PolicyMaps {
    exact: HashMap<MapData, PolicyKey, PolicyEntry>,
    ranges: LpmTrie<MapData, PolicyKey, PolicyEntry>,
    isolation: HashMap<MapData, u32, Isolation>,
    cidr: LpmTrie<MapData, Ipv4Prefix, u32>,
    /// Entries the last sync wanted in each map.
    wanted: [(&'static str, usize); 4],
}

/// The maps describing other nodes; owned by whoever syncs the nodes.
pub struct RemoteMaps {
    ipcache: LpmTrie<MapData, Ipv4Prefix, RemoteInfo>,
    config: Array<MapData, DataplaneConfig>,
}

impl Dataplane {
    pub fn load(pin_dir: &Path, sizes: MapSizes) -> Result<Self, DataplaneError> {
        let links = pin_dir.join("links");
        std::fs::create_dir_all(&links).map_err(|source| DataplaneError::Io {
            path: links.clone(),
            source,
        })?;
        let shapes = wanted_shapes(EBPF_OBJECT, &sizes)?;
        let upgrade_pending = prepare_pins(pin_dir, &shapes)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        for (name, _, size) in sizes.by_map() {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        let endpoints =
            HashMap::try_from(take(maps::ENDPOINTS)?).map_err(map_error(maps::ENDPOINTS))?;
        let ipcache = LpmTrie::try_from(take(maps::IPCACHE)?).map_err(map_error(maps::IPCACHE))?;
        let config = Array::try_from(take(maps::CONFIG)?).map_err(map_error(maps::CONFIG))?;
        let policy = PolicyMaps {
            exact: HashMap::try_from(take(maps::POLICY_EXACT)?)
                .map_err(map_error(maps::POLICY_EXACT))?,
            ranges: LpmTrie::try_from(take(maps::POLICY_RANGES)?)
                .map_err(map_error(maps::POLICY_RANGES))?,
            isolation: HashMap::try_from(take(maps::ISOLATION)?)
                .map_err(map_error(maps::ISOLATION))?,
            cidr: LpmTrie::try_from(take(maps::CIDR_IDENTITY)?)
                .map_err(map_error(maps::CIDR_IDENTITY))?,
            wanted: Default::default(),
        };
        let mut dataplane = Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            endpoints,
            remote: Some(RemoteMaps { ipcache, config }),
            policy: Some(policy),
            map_names: shapes.into_keys().collect(),
            upgrade_pending,
        };
        for (name, _) in PROGRAMS {
            dataplane
                .program(name)?
                .load()
                .map_err(program_error(name))?;
        }
        // New programs on new, still empty maps would see no endpoints, no
        // isolation, no rules: fail open (or drop everything). Then the
        // running programs, if any, keep their old, consistent maps until
        // `complete_upgrade`.
        if !upgrade_pending {
            dataplane.switch_links()?;
        }
        Ok(dataplane)
    }

    /// Whether [`Self::complete_upgrade`] has links to upgrade.
    pub fn upgrade_pending(&self) -> bool {
        self.upgrade_pending
    }

    /// Swaps this agent's programs into the links a previous agent left,
    /// once the agent has filled the maps created or replaced at load
    /// (endpoints restored, cluster state applied). When every map was
    /// pinned already, that happened at load.
    pub fn complete_upgrade(&mut self) -> Result<(), DataplaneError> {
        if !self.upgrade_pending {
            return Ok(());
        }
        self.switch_links()?;
        let marker = self.pin_dir.join(UPGRADE_PENDING);
        std::fs::remove_dir(&marker).map_err(|source| DataplaneError::Io {
            path: marker,
            source,
        })?;
        self.upgrade_pending = false;
        info!("links upgraded to the new programs and maps");
        Ok(())
    }

    /// The policy maps, handed to the policy syncer (once).
    pub fn take_policy_maps(&mut self) -> Option<PolicyMaps> {
        self.policy.take()
    }

    /// The maps about other nodes, handed to the node syncer (once).
    pub fn take_remote_maps(&mut self) -> Option<RemoteMaps> {
        self.remote.take()
    }

    fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DataplaneError> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing(name))?;
        prog.try_into().map_err(program_error(name))
    }

    fn link_pin(&self, program: &str, ifname: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(link_pin_name(program, ifname))
    }

    /// Moves every link to this agent's programs, then drops the maps only
    /// earlier programs used.
    fn switch_links(&mut self) -> Result<(), DataplaneError> {
        self.upgrade_links();
        remove_foreign_pins(&self.pin_dir, &self.map_names)
    }

    /// Swaps this agent's programs into every link a previous agent pinned,
    /// so an upgrade takes effect without a moment of detachment.
    fn upgrade_links(&mut self) {
        let dir = self.pin_dir.join("links");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Err(e) = self.replace_link_program(&path) {
                // The veth went away while no agent ran: the link is defunct.
                warn!(path = %path.display(), error = %e, "dropping stale link pin");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn replace_link_program(&mut self, path: &Path) -> Result<(), DataplaneError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let (program, _) = pin_program(name).ok_or_else(|| DataplaneError::Io {
            path: path.to_owned(),
            source: io::Error::other("pinned link of an unknown program"),
        })?;
        let pinned = PinnedLink::from_pin(path).map_err(|source| DataplaneError::Link {
            path: path.to_owned(),
            source,
        })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| {
            DataplaneError::Link {
                path: path.to_owned(),
                source,
            }
        })?;
        let prog = self.program(program)?;
        let id = prog.attach_to_link(link).map_err(program_error(program))?;
        let link = prog.take_link(id).map_err(program_error(program))?;
        // The pin still refers to the same link object, now running the new
        // program; dropping our fd leaves it in place.
        drop(link);
        info!(path = %path.display(), "link upgraded to the new program");
        Ok(())
    }

    /// Attaches the pod programs to the host side of a pod's veth:
    /// `from_container` on TCX ingress, `to_container` on TCX egress, and
    /// pins the links. Idempotent: a live link already pinned for this
    /// interface is kept (after a restart it already runs this agent's
    /// program, see `upgrade_links`); a pin left from an earlier veth of the
    /// same name is replaced.
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<(), DataplaneError> {
        // Ingress policy first: nothing reaches the pod unchecked once it
        // can send.
        self.attach_program(programs::TO_CONTAINER, ifname, ifindex)?;
        self.attach_program(programs::FROM_CONTAINER, ifname, ifindex)
    }

    /// Attaches one of the programs (TCX, the direction it is written
    /// for) to a device and pins the link; idempotent as [`Self::attach`].
    pub fn attach_program(
        &mut self,
        program: &'static str,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(), DataplaneError> {
        let (_, attach_type) =
            pin_program(&link_pin_name(program, ifname)).ok_or(DataplaneError::Missing(program))?;
        let pin = self.link_pin(program, ifname);
        match pinned_tcx_ifindex(&pin) {
            Ok(attached_to) if attached_to == ifindex => return Ok(()),
            Ok(_) => std::fs::remove_file(&pin).map_err(|source| DataplaneError::Io {
                path: pin.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Io { path: pin, source }),
        }
        let prog = self.program(program)?;
        let id = prog
            .attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(program_error(program))?;
        let link = prog.take_link(id).map_err(program_error(program))?;
        let link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
            path: pin.clone(),
            source,
        })?;
        link.pin(&pin)
            .map_err(|source| DataplaneError::Pin { path: pin, source })?;
        Ok(())
    }

    /// Detaches the pod programs by dropping their pins (the last
    /// references to the links).
    pub fn detach(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        self.detach_program(programs::FROM_CONTAINER, ifname)?;
        self.detach_program(programs::TO_CONTAINER, ifname)
    }

    pub fn detach_program(&mut self, program: &str, ifname: &str) -> Result<(), DataplaneError> {
        let pin = self.link_pin(program, ifname);
        match std::fs::remove_file(&pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DataplaneError::Io { path: pin, source }),
        }
    }

    pub fn set_endpoint(&mut self, key: IpKey, info: EndpointInfo) -> Result<(), DataplaneError> {
        self.endpoints
            .insert(key, info, 0)
            .map_err(map_error(maps::ENDPOINTS))
    }

    pub fn remove_endpoint(&mut self, key: &IpKey) -> Result<(), DataplaneError> {
        remove_ok(self.endpoints.remove(key), maps::ENDPOINTS)
    }

    pub fn endpoint(&self, key: &IpKey) -> Option<EndpointInfo> {
        self.endpoints.get(key, 0).ok()
    }
}

impl RemoteMaps {
    /// Writes the node settings, keeping the policy revision already
    /// there (conntrack entries are stamped with it).
    pub fn set_config(&mut self, mut config: DataplaneConfig) -> Result<(), DataplaneError> {
        config.policy_revision = self.config().policy_revision;
        self.config
            .set(0, config, 0)
            .map_err(map_error(maps::CONFIG))
    }

    fn config(&self) -> DataplaneConfig {
        self.config.get(&0, 0).unwrap_or_default()
    }

    /// Marks every conntrack entry as checked against outdated policy.
    pub fn bump_policy_revision(&mut self) -> Result<u32, DataplaneError> {
        let mut config = self.config();
        config.policy_revision = config.policy_revision.wrapping_add(1);
        self.config
            .set(0, config, 0)
            .map_err(map_error(maps::CONFIG))?;
        Ok(config.policy_revision)
    }

    /// Makes the ipcache hold exactly `desired`, writing only what differs:
    /// entries in use are never removed and re-added, and stale ones go
    /// only after the new ones are in, so lookups never miss while the
    /// agent syncs (also right after a restart).
    pub fn sync_ipcache(
        &mut self,
        desired: &BTreeMap<Ipv4Net, RemoteInfo>,
    ) -> Result<SyncStats, DataplaneError> {
        Ok(SyncStats {
            written: write_prefixes(&mut self.ipcache, desired, maps::IPCACHE)?,
            removed: remove_stale_prefixes(&mut self.ipcache, desired, maps::IPCACHE)?,
        })
    }
}

impl PolicyMaps {
    /// Entries the last [`Self::sync`] wanted in each map (rules held back
    /// for a full ipBlock map not counted), to compare with capacities.
    pub fn wanted_entries(&self) -> [(&'static str, usize); 4] {
        self.wanted
    }

    /// Makes the maps hold exactly the compiled rules (key, prefix length),
    /// isolation and ipBlock regions, writing only differences and in an
    /// order that never opens more than either state allows: new regions
    /// and rules first, then isolation, then stale rules and regions.
    /// Rules on one port or all ports go to the exact hash, port ranges
    /// to the trie.
    pub fn sync(
        &mut self,
        cidrs: &BTreeMap<Ipv4Net, u32>,
        rules: &BTreeMap<(PolicyKey, u32), PolicyEntry>,
        isolation: &BTreeMap<u32, Isolation>,
    ) -> Result<SyncStats, DataplaneError> {
        let mut stats = SyncStats::default();
        // A map that is full (or any failed write) must not stop the rest
        // of the sync: isolation still applies and stale entries still go,
        // so what is missing denies (fails closed). The first error is
        // reported after.
        let mut first_error = None;
        // If not every ipBlock region fits, an address of a missing region
        // would fall into a wider one, perhaps allowed where the missing
        // one is an `except`: then no rule may name a CIDR identity.
        let cidrs_complete = match write_prefixes(&mut self.cidr, cidrs, maps::CIDR_IDENTITY) {
            Ok(written) => {
                stats.written += written;
                true
            }
            Err(e) => {
                first_error.get_or_insert(e);
                false
            }
        };
        let usable = |rule: &PolicyKey| cidrs_complete || rule.identity < identity::FIRST_CIDR;
        let placed = place_rules(rules.iter().filter(|((r, _), _)| usable(r)), isolation);
        self.wanted = [
            (maps::POLICY_EXACT, placed.exact.len()),
            (maps::POLICY_RANGES, placed.ranges.len()),
            (maps::ISOLATION, placed.isolation.len()),
            (maps::CIDR_IDENTITY, cidrs.len()),
        ];
        // Marks first: if the map fills up, the rules that made it in are
        // reachable (a rule without its mark is never looked up).
        let (marks, exact_rules): (Vec<_>, Vec<_>) = placed
            .exact
            .iter()
            .partition(|(k, _)| k.direction & PEER_MARK != 0);
        for (key, entry) in marks.into_iter().chain(exact_rules) {
            if self.exact.get(key, 0).ok().as_ref() != Some(entry) {
                match self.exact.insert(key, entry, 0) {
                    Ok(()) => stats.written += 1,
                    Err(e) => {
                        first_error.get_or_insert(map_error(maps::POLICY_EXACT)(e));
                    }
                }
            }
        }
        for ((rule, prefix), entry) in &placed.ranges {
            let key = Key::new(*prefix, *rule);
            if self.ranges.get(&key, 0).ok().as_ref() != Some(entry) {
                match self.ranges.insert(&key, entry, 0) {
                    Ok(()) => stats.written += 1,
                    Err(e) => {
                        first_error.get_or_insert(map_error(maps::POLICY_RANGES)(e));
                    }
                }
            }
        }
        for (endpoint, iso) in &placed.isolation {
            if self.isolation.get(endpoint, 0).ok().as_ref() != Some(iso) {
                // Sized like the endpoint map, so it cannot be full.
                match self.isolation.insert(endpoint, iso, 0) {
                    Ok(()) => stats.written += 1,
                    Err(e) => {
                        first_error.get_or_insert(map_error(maps::ISOLATION)(e));
                    }
                }
            }
        }
        let stale: Vec<u32> = self
            .isolation
            .keys()
            .filter_map(Result::ok)
            .filter(|e| !isolation.contains_key(e))
            .collect();
        for endpoint in stale {
            remove_ok(self.isolation.remove(&endpoint), maps::ISOLATION)?;
            stats.removed += 1;
        }
        let stale: Vec<PolicyKey> = self
            .exact
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !placed.exact.contains_key(k))
            .collect();
        for key in stale {
            remove_ok(self.exact.remove(&key), maps::POLICY_EXACT)?;
            stats.removed += 1;
        }
        let stale: Vec<Key<PolicyKey>> = self
            .ranges
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !placed.ranges.contains_key(&(k.data(), k.prefix_len())))
            .collect();
        for key in stale {
            remove_ok(self.ranges.remove(&key), maps::POLICY_RANGES)?;
            stats.removed += 1;
        }
        stats.removed += remove_stale_prefixes(&mut self.cidr, cidrs, maps::CIDR_IDENTITY)?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

/// Compiled rules as the maps hold them.
#[derive(Debug, Default, PartialEq, Eq)]
struct PlacedRules {
    /// Rules on one port, or on all ports (`ALL_PORTS`), and the marks of
    /// the identities any rule names: the hash.
    exact: BTreeMap<PolicyKey, PolicyEntry>,
    /// Port ranges: the LPM trie.
    ranges: BTreeMap<(PolicyKey, u32), PolicyEntry>,
    /// Isolation, with the `ranges` bits of the endpoints that have some.
    isolation: BTreeMap<u32, Isolation>,
}

/// Splits compiled rules (key, prefix length) between the exact-port hash
/// and the port-range trie, marks every identity a rule names, and marks
/// which endpoints need the trie.
fn place_rules<'a>(
    rules: impl Iterator<Item = (&'a (PolicyKey, u32), &'a PolicyEntry)>,
    isolation: &BTreeMap<u32, Isolation>,
) -> PlacedRules {
    let mut placed = PlacedRules {
        isolation: isolation.clone(),
        ..PlacedRules::default()
    };
    for (&(rule, prefix), entry) in rules {
        placed.exact.insert(
            peer_mark(rule.endpoint, rule.identity, rule.direction),
            *entry,
        );
        match prefix {
            KEY_FULL_BITS => {
                placed.exact.insert(rule, *entry);
            }
            // No port bits matched: the port field means nothing.
            KEY_FIXED_BITS => {
                let all_ports = PolicyKey {
                    dport: ALL_PORTS,
                    ..rule
                };
                placed.exact.insert(all_ports, *entry);
            }
            _ => {
                placed.ranges.insert((rule, prefix), *entry);
                // Rules exist only for endpoints isolated in their
                // direction; without isolation the bit would not matter.
                if let Some(iso) = placed.isolation.get_mut(&rule.endpoint) {
                    iso.ranges |= 1 << rule.direction;
                }
            }
        }
    }
    placed
}

fn prefix_key(net: &Ipv4Net) -> Key<Ipv4Prefix> {
    Key::new(
        u32::from(net.prefix_len()),
        Ipv4Prefix {
            addr: net.addr().octets(),
        },
    )
}

/// Writes the entries of `desired` that the map lacks or holds otherwise;
/// returns how many.
fn write_prefixes<V: aya::Pod + PartialEq>(
    map: &mut LpmTrie<MapData, Ipv4Prefix, V>,
    desired: &BTreeMap<Ipv4Net, V>,
    name: &'static str,
) -> Result<usize, DataplaneError> {
    let mut written = 0;
    for (net, value) in desired {
        let key = prefix_key(net);
        if map.get(&key, 0).ok().as_ref() != Some(value) {
            map.insert(&key, value, 0).map_err(map_error(name))?;
            written += 1;
        }
    }
    Ok(written)
}

/// Removes the entries whose prefix `desired` does not have; returns how
/// many.
fn remove_stale_prefixes<V: aya::Pod>(
    map: &mut LpmTrie<MapData, Ipv4Prefix, V>,
    desired: &BTreeMap<Ipv4Net, V>,
    name: &'static str,
) -> Result<usize, DataplaneError> {
    let stale: Vec<Key<Ipv4Prefix>> = map
        .keys()
        // Errors pass the filter so the collect reports them.
        .filter(|k| {
            k.as_ref().map_or(true, |k| {
                Ipv4Net::new(k.data().addr.into(), k.prefix_len() as u8)
                    .map_or(true, |n| !desired.contains_key(&n))
            })
        })
        .collect::<Result<_, _>>()
        .map_err(map_error(name))?;
    for key in &stale {
        remove_ok(map.remove(key), name)?;
    }
    Ok(stale.len())
}

fn remove_ok(
    result: Result<(), aya::maps::MapError>,
    name: &'static str,
) -> Result<(), DataplaneError> {
    match result {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_error(name)(e)),
    }
}

/// What a sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub written: usize,
    pub removed: usize,
}

/// The ifindex the TCX link pinned at `pin` is attached to; 0 once its
/// device is gone.
///
/// aya's `LinkInfo` does not expose the TCX part of `bpf_link_info`, so this
/// asks the kernel directly (BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD).
fn pinned_tcx_ifindex(pin: &Path) -> io::Result<u32> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // struct bpf_link_info: type, id, prog_id, then an 8-byte aligned
    // union whose tcx member starts with the ifindex.
    const TCX_IFINDEX_OFFSET: usize = 16;

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a live, correctly sized bpf_attr variant.
        let ret =
            unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    #[repr(C, align(8))]
    struct Info([u8; 128]);

    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fd = bpf(
        BPF_OBJ_GET,
        &mut ObjGet {
            pathname: path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        },
    )?;
    // SAFETY: BPF_OBJ_GET returned a new fd that we own.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let mut info = Info([0; 128]);
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        &mut GetInfo {
            bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
            info_len: std::mem::size_of::<Info>() as u32,
            info: info.0.as_mut_ptr() as u64,
        },
    )?;
    let mut ifindex = [0u8; 4];
    ifindex.copy_from_slice(&info.0[TCX_IFINDEX_OFFSET..TCX_IFINDEX_OFFSET + 4]);
    Ok(u32::from_ne_bytes(ifindex))
}

/// Removes everything pinned for a node: links (detaching the programs)
/// and maps. For `sluice-agent --uninstall` and test teardown.
pub fn remove_pins(pin_dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use sluice_common::policy::{direction, entry, ANY_PROTOCOL, PEER_MARK};

    use super::*;

    fn rule(endpoint: u32, dir: u8, protocol: u8, port: u16, prefix: u32) -> (PolicyKey, u32) {
        let key = PolicyKey {
            endpoint,
            identity: 300,
            direction: dir,
            protocol,
            dport: port.to_be_bytes(),
        };
        (key, prefix)
    }

    #[test]
    fn exact_and_all_port_rules_go_to_the_hash_ranges_to_the_trie() {
        let allow = PolicyEntry {
            flags: entry::ALLOW,
            _pad: 0,
        };
        let ingress = direction::INGRESS;
        let rules = BTreeMap::from([
            (rule(1, ingress, 6, 80, KEY_FULL_BITS), allow),
            // A rule without ports, as the compiler writes it (port bits
            // unmatched, whatever they hold).
            (rule(1, ingress, ANY_PROTOCOL, 0, KEY_FIXED_BITS), allow),
            (rule(1, ingress, 17, 53, KEY_FIXED_BITS), allow),
            // 1024-2047 for endpoint 2's egress.
            (
                rule(2, direction::EGRESS, 6, 1024, KEY_FULL_BITS - 10),
                allow,
            ),
        ]);
        let isolation = BTreeMap::from([
            (
                1,
                Isolation {
                    ingress: 1,
                    ..Isolation::default()
                },
            ),
            (
                2,
                Isolation {
                    egress: 1,
                    ..Isolation::default()
                },
            ),
        ]);
        let placed = place_rules(rules.iter(), &isolation);
        let exact: Vec<_> = placed
            .exact
            .keys()
            .filter(|k| k.direction & PEER_MARK == 0)
            .map(|k| (k.endpoint, k.protocol, u16::from_be_bytes(k.dport)))
            .collect();
        assert_eq!(exact, vec![(1, ANY_PROTOCOL, 0), (1, 6, 80), (1, 17, 0)]);
        // Identity 300 is marked for both endpoints, ranges included.
        assert!(placed.exact.contains_key(&peer_mark(1, 300, ingress)));
        assert!(placed
            .exact
            .contains_key(&peer_mark(2, 300, direction::EGRESS)));
        assert_eq!(placed.exact.len(), 5);
        assert_eq!(
            placed
                .ranges
                .keys()
                .map(|(k, p)| (k.endpoint, *p))
                .collect::<Vec<_>>(),
            vec![(2, KEY_FULL_BITS - 10)]
        );
        assert!(!placed.isolation[&1].has_ranges(ingress));
        assert!(placed.isolation[&2].has_ranges(direction::EGRESS));
        assert!(!placed.isolation[&2].has_ranges(direction::INGRESS));
        assert_eq!(placed.isolation[&2].egress, 1, "isolation itself kept");
    }
}
