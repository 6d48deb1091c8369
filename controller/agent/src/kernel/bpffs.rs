//! bpffs: the agent mounts it when the host has not (it is not mounted by
//! default on every distribution), so maps and links can be pinned.

use std::path::Path;

use nix::{
    mount::{mount, MsFlags},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("creating {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting bpffs on {path}: {source}")]
    Mount {
        path: String,
        #[source]
        source: nix::Error,
    },
}

pub fn is_mounted(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs on `path` unless it already is.
pub fn ensure_mounted(path: &Path) -> Result<(), BpffsError> {
    if is_mounted(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| BpffsError::Create {
        path: path.display().to_string(),
        source,
    })?;
    mount(
        Some("bpffs"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BpffsError::Mount {
        path: path.display().to_string(),
        source,
    })
}
