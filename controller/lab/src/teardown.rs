//! `down`: removes everything a lab made, from what exists rather than
//! from what `lab.json` says, so it also cleans up after a crash (of the
//! lab's commands or of the host's tests) and is safe to run twice.

use std::{collections::HashSet, path::Path, time::Duration};

use nix::mount::{umount2, MntFlags};
use tracing::info;

use super::{
    cluster::{lab_namespaces, LabConfig},
    error::{io_err, LabError},
    netns::{self, Netns},
    procs::{self, netns_id},
};
use sluice_agent::kernel::bpffs;

/// Agents get this long to exit on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// A bpffs mounted again and again (a crashed `up` retried) unmounts in as
/// many rounds; more than this means something keeps remounting it.
const MAX_UNMOUNTS: usize = 16;

/// What `down` found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    /// Processes stopped (agents, pod servers, anything else in the lab's
    /// namespaces).
    pub processes: usize,
    /// Of those, how many needed SIGKILL.
    pub killed: usize,
    pub netns: Vec<String>,
    pub unmounted: bool,
    pub removed_dir: bool,
}

impl DownReport {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Removes lab `config.name` and `config.dir`. Refuses only when the
/// directory holds a different lab.
pub fn down(config: &LabConfig) -> Result<DownReport, LabError> {
    // A garbled lab.json must not stop the cleanup; a foreign one must.
    if let Err(e @ LabError::OtherLab { .. }) = config.load_state() {
        return Err(e);
    }
    let _lock = if config.dir.exists() {
        Some(config.lock()?)
    } else {
        None
    };
    remove_all(config)
}

/// [`down`] without the lock, for callers already holding it.
pub(crate) fn remove_all(config: &LabConfig) -> Result<DownReport, LabError> {
    let mut report = DownReport::default();
    let names = lab_namespaces(&config.name);
    let ids: HashSet<_> = names
        .iter()
        .filter_map(|n| netns_id(Netns::existing(n).path()).ok())
        .collect();
    // Processes first: a namespace lives on as long as one runs in it.
    let pids = procs::in_namespaces(&ids);
    report.processes = pids.len();
    report.killed = procs::terminate(&pids, GRACE).len();

    let mut failures = Vec::new();
    for name in names {
        match netns::delete(Netns::existing(&name).path()) {
            Ok(()) => report.netns.push(name),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    if !failures.is_empty() {
        return Err(LabError::Netns(failures));
    }

    report.unmounted = unmount_all(&config.bpffs())?;
    match std::fs::remove_dir_all(&config.dir) {
        Ok(()) => report.removed_dir = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("removing {}", config.dir.display()))(e)),
    }
    if !report.is_empty() {
        info!(lab = %config.name, ?report, "lab down");
    }
    Ok(report)
}

/// Lazily unmounts `path` until nothing is mounted there; lazily, because
/// a process that still holds a pinned object's fd must not block `down`.
fn unmount_all(path: &Path) -> Result<bool, LabError> {
    let mut unmounted = false;
    for _ in 0..MAX_UNMOUNTS {
        if !bpffs::is_mounted(path) {
            return Ok(unmounted);
        }
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => unmounted = true,
            Err(nix::Error::EINVAL | nix::Error::ENOENT) => return Ok(unmounted),
            Err(source) => {
                return Err(LabError::Unmount {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    Err(LabError::Unmount {
        path: path.to_owned(),
        source: nix::Error::EBUSY,
    })
}
