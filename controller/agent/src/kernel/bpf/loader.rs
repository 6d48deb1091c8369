//! Loading the eBPF object over the node's pinned maps and attaching its
//! programs. A new agent atomically swaps its freshly loaded programs into
//! the links a previous one pinned; maps of another shape are replaced,
//! and the links keep the previous programs (on the previous maps) until
//! the agent has filled the new ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use sluice_common::{
    endpoint::{EndpointInfo, IpKey},
    maps, programs,
};
use tracing::{info, warn};

use super::{
    map_error, program_error, ConfigMap, DataplaneError, Ipcache, MapSizes, PolicyMaps,
    PolicyRevision, ServiceMaps,
};
use crate::EBPF_OBJECT;

/// The programs and where each attaches.
const PROGRAMS: [(&str, TcAttachType); 6] = [
    (programs::FROM_CONTAINER, TcAttachType::Ingress),
    (programs::TO_CONTAINER, TcAttachType::Egress),
    (programs::FROM_OVERLAY, TcAttachType::Ingress),
    (programs::TO_OVERLAY, TcAttachType::Egress),
    (programs::FROM_NETDEV, TcAttachType::Ingress),
    (programs::TO_NETDEV, TcAttachType::Egress),
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
    // The insert counts describe the table they count: a new conntrack
    // table starts them again, or its evictions would include every flow
    // of the old one.
    let named = |list: &[&String], map: maps::MapDef| list.iter().any(|n| *n == map.name);
    if named(&misshapen, maps::CONNTRACK)
        && !named(&misshapen, maps::TABLE_INSERTS)
        && !named(&missing, maps::TABLE_INSERTS)
    {
        if let Some((name, _)) = shapes.get_key_value(maps::TABLE_INSERTS.name) {
            misshapen.push(name);
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

pub struct Dataplane {
    pub(super) ebpf: Ebpf,
    pub(super) pin_dir: PathBuf,
    endpoints: HashMap<MapData, IpKey, EndpointInfo>,
    sync_maps: Option<SyncMaps>,
    /// The maps of this agent's object; any other pinned map is an earlier
    /// version's.
    map_names: BTreeSet<String>,
    /// Maps were created or replaced at load: the links keep the previous
    /// programs, with the previous maps, until the new maps are filled.
    upgrade_pending: bool,
    pub(super) pod_attachment: super::PodAttachment,
}

/// The maps the agent keeps in line with the cluster, each for one
/// writer: handed out once by [`Dataplane::take_sync_maps`].
pub struct SyncMaps {
    pub policy: PolicyMaps,
    pub revision: PolicyRevision,
    pub ipcache: Ipcache,
    pub config: ConfigMap,
    pub services: ServiceMaps,
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
        let mut take = |map: maps::MapDef| {
            let data = ebpf
                .take_map(map.name)
                .ok_or(DataplaneError::Missing(map.name))?;
            Ok::<_, DataplaneError>((data, map_error(map.name)))
        };
        let (data, err) = take(maps::ENDPOINTS)?;
        let endpoints = HashMap::try_from(data).map_err(err)?;
        let (data, err) = take(maps::IPCACHE)?;
        let ipcache = Ipcache::new(LpmTrie::try_from(data).map_err(err)?);
        let (data, err) = take(maps::CONFIG)?;
        let config = ConfigMap::new(Array::try_from(data).map_err(err)?);
        let (data, err) = take(maps::POLICY_REVISION)?;
        let revision = PolicyRevision::new(Array::try_from(data).map_err(err)?);
        let (data, err) = take(maps::POLICY_EXACT)?;
        let exact = HashMap::try_from(data).map_err(err)?;
        let (data, err) = take(maps::POLICY_RANGES)?;
        let ranges = LpmTrie::try_from(data).map_err(err)?;
        let (data, err) = take(maps::ISOLATION)?;
        let isolation = HashMap::try_from(data).map_err(err)?;
        let (data, err) = take(maps::CIDR_IDENTITY)?;
        let regions = LpmTrie::try_from(data).map_err(err)?;
        let (data, err) = take(maps::SERVICES)?;
        let frontends = HashMap::try_from(data).map_err(err)?;
        let (data, err) = take(maps::SERVICE_BACKENDS)?;
        let backends = HashMap::try_from(data).map_err(err)?;
        let sync_maps = SyncMaps {
            policy: PolicyMaps::new(exact, ranges, isolation, regions),
            revision,
            ipcache,
            config,
            services: ServiceMaps::new(frontends, backends),
        };
        let mut dataplane = Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            endpoints,
            sync_maps: Some(sync_maps),
            map_names: shapes.into_keys().collect(),
            upgrade_pending,
            pod_attachment: Default::default(),
        };
        for (name, _) in PROGRAMS {
            dataplane
                .program(name)?
                .load()
                .map_err(program_error(name))?;
        }
        dataplane.load_socket_hooks()?;
        dataplane.load_prefilter()?;
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

    /// The maps the agent syncs from the cluster (once).
    pub fn take_sync_maps(&mut self) -> Option<SyncMaps> {
        self.sync_maps.take()
    }

    /// One of the object's programs, loaded (for attaching, or for test runs).
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DataplaneError> {
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
        self.upgrade_pod_filters()?;
        self.upgrade_prefilter_links();
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

    /// Attaches one of the programs (TCX, the direction it is written
    /// for) to one of the node's devices and pins the link. Idempotent: a
    /// live link already pinned for this device is kept (after a restart
    /// it already runs this agent's program, see `upgrade_links`); a pin
    /// left from an earlier device of the same name is replaced.
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

    /// Removes the TCX links pinned for a pod's veth.
    pub(super) fn remove_tcx_pins(&mut self, ifname: &str) -> Result<(), DataplaneError> {
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
            .map_err(map_error(maps::ENDPOINTS.name))
    }

    pub fn remove_endpoint(&mut self, key: &IpKey) -> Result<(), DataplaneError> {
        match self.endpoints.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_error(maps::ENDPOINTS.name)(e)),
        }
    }

    pub fn endpoint(&self, key: &IpKey) -> Option<EndpointInfo> {
        self.endpoints.get(key, 0).ok()
    }

    /// Entries held now by the endpoint map and the maps the datapath fills
    /// itself (connection tracking, Service flows, fragments), counted key
    /// by key: a walk of each map, for a periodic gauge, not a scrape.
    pub fn occupancy(&self) -> Vec<(&'static str, usize)> {
        fn count<K: aya::Pod, V: aya::Pod>(
            ebpf: &Ebpf,
            name: &'static str,
        ) -> Option<(&'static str, usize)> {
            let map = aya::maps::HashMap::<_, K, V>::try_from(ebpf.map(name)?).ok()?;
            Some((name, map.keys().filter(Result::is_ok).count()))
        }
        use sluice_common::{conntrack, fragment, services};
        [
            Some((
                maps::ENDPOINTS.name,
                self.endpoints.keys().filter(Result::is_ok).count(),
            )),
            count::<conntrack::CtKey, conntrack::CtEntry>(&self.ebpf, maps::CONNTRACK.name),
            count::<conntrack::CtKey, services::ServiceFlow>(&self.ebpf, maps::SERVICE_FLOWS.name),
            count::<conntrack::CtKey, services::Frontend>(&self.ebpf, maps::SERVICE_REVERSE.name),
            count::<fragment::FragKey, fragment::FragEntry>(&self.ebpf, maps::FRAGMENTS.name),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// New entries the datapath has put into the LRU table of `slot`
    /// ([`sluice_common::counters::inserts`]), every CPU's together.
    pub fn inserted(&self, slot: u32) -> Option<u64> {
        let map = self.ebpf.map(maps::TABLE_INSERTS.name)?;
        let array = aya::maps::PerCpuArray::<_, u64>::try_from(map).ok()?;
        Some(array.get(&slot, 0).ok()?.iter().sum())
    }

    /// Every address in the endpoint map.
    pub fn endpoint_keys(&self) -> Result<Vec<IpKey>, DataplaneError> {
        self.endpoints
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error(maps::ENDPOINTS.name))
    }

    /// The pod veths with pinned TCX links.
    pub(super) fn pod_tcx_pins(&self) -> Result<BTreeSet<String>, DataplaneError> {
        let dir = self.pin_dir.join("links");
        let entries = std::fs::read_dir(&dir).map_err(|source| DataplaneError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                match name.split_once('@') {
                    None => Some(name),
                    Some((program, ifname)) if program == programs::TO_CONTAINER => {
                        Some(ifname.to_owned())
                    }
                    Some(_) => None,
                }
            })
            .collect())
    }
}

/// The ifindex the TCX link pinned at `pin` is attached to; 0 once its
/// device is gone. The XDP part of the info starts with the ifindex at
/// the same offset, so the prefilter's links are read the same way.
///
/// aya's `LinkInfo` does not expose the TCX part of `bpf_link_info`, so this
/// asks the kernel directly (BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD).
pub(super) fn pinned_tcx_ifindex(pin: &Path) -> io::Result<u32> {
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
