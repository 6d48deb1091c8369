//! The eBPF object in the kernel: loading it over the node's pinned maps
//! and attaching its programs ([`loader`]), and the writers that make the
//! maps hold what the agent computed: the policy maps ([`policy_maps`]),
//! the ipcache and node settings ([`node_maps`]), the policy revision
//! ([`revision`]), the Service frontends and backends ([`service_maps`]),
//! all through one diff-writer ([`diff`]).
//!
//! Layout under the node's pin directory (`<bpf-root>/<node-name>/`): the
//! maps by name (`sluice_common::maps`), `links/` with one pin per TCX
//! program on the node's devices, `pod-filters/` with a record per pod
//! veth carrying the pod programs as clsact filters ([`pod_filters`]),
//! `sock/` with the socket hooks' links ([`socket_hooks`]), `xdp/` with
//! the underlay prefilter's ([`prefilter`]). Pins and filters outlive the
//! agent, so traffic keeps flowing across agent restarts.

pub mod diff;
pub mod flow_maps;
pub mod loader;
pub mod map_sizes;
pub mod node_maps;
pub mod pod_filters;
pub mod policy_maps;
pub mod prefilter;
pub mod revision;
pub mod service_maps;
pub mod socket_hooks;

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::links::LinkError;

pub use flow_maps::{FlowMaps, FlowSwitch};
pub use loader::{Dataplane, MapShape, SyncMaps};
pub use map_sizes::MapSizes;
pub use node_maps::{ConfigMap, Ipcache};
pub use pod_filters::PodAttachment;
pub use policy_maps::{KernelPolicy, PolicyMaps};
pub use prefilter::{AttachMode, DenyList};
pub use revision::PolicyRevision;
pub use service_maps::ServiceMaps;

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

pub(crate) fn program_error(
    name: &'static str,
) -> impl Fn(aya::programs::ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
}

pub(crate) fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// The node's pin directory.
pub fn pin_dir(bpf_root: &Path, node_name: &str) -> PathBuf {
    bpf_root.join(node_name)
}

/// Removes one pin (a link's: detaching its program); gone already is fine.
pub(super) fn remove_pin(pin: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Io {
            path: pin.to_owned(),
            source,
        }),
    }
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

/// What a sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub written: usize,
    pub removed: usize,
}

impl SyncStats {
    pub fn changed(&self) -> bool {
        self.written + self.removed > 0
    }
}

impl std::ops::AddAssign for SyncStats {
    fn add_assign(&mut self, other: Self) {
        self.written += other.written;
        self.removed += other.removed;
    }
}
