//! The pod programs on a pod's host veth, `from_container` on ingress and
//! `to_container` on egress, attached one of two ways ([`PodAttachment`]):
//! as TCX links pinned in `links/` like the node's own devices, or as
//! clsact filters (cls_bpf, direct action).
//!
//! Why two: a TCX attach publishes a new program array and then waits a
//! full RCU grace period (`synchronize_rcu`, not the expedited kind) while
//! holding RTNL. Two of those per pod are about 26 ms of a CNI ADD on the
//! lab's VMs, and stall every other netlink user of the node meanwhile. A
//! filter on a fresh clsact qdisc needs no such wait (about 80 µs for
//! both). But the clsact qdisc takes the slot the bandwidth plugin's
//! `ingress` qdisc needs, so that plugin cannot chain after sluice, and
//! any `tc qdisc del` removes the filters where TCX links are the agent's
//! own. TCX stays the default; `docs/benchmarks.md` compares both.
//!
//! A filter is no bpffs object, so a directory `pod-filters/<ifname>` in
//! the pin directory records each veth that carries them: an upgrade swaps
//! the new programs into those, an uninstall removes them. Switching the
//! mode moves a veth over when the agent next attaches it: the new kind
//! first, then the old kind goes (TCX runs before clsact and gives every
//! packet a verdict, so the overlap changes nothing).

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
};

use aya::programs::{
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    ProgramError, TcAttachType,
};
use sluice_common::programs;
use tracing::{info, warn};

use super::{program_error, Dataplane, DataplaneError};

/// The config's `podAttachment` (`--pod-attachment`): how the pod
/// programs attach to a pod's host veth.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PodAttachment {
    /// TCX links pinned by the agent: no `tc` command removes them, the
    /// veth's qdiscs stay free (the bandwidth plugin chains), but each of
    /// the two attaches waits an RCU grace period holding RTNL.
    #[default]
    Tcx,
    /// clsact filters: a CNI ADD some 26 ms faster here; the bandwidth
    /// plugin cannot chain (its `ingress` qdisc needs clsact's slot).
    Tc,
}

impl std::fmt::Display for PodAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PodAttachment::Tcx => "tcx",
            PodAttachment::Tc => "tc",
        })
    }
}

/// Where the pod programs sit in their clsact hooks: first, and at a fixed
/// handle so that a restarted or upgraded agent finds them again.
const PRIORITY: u16 = 1;
const HANDLE: TcHandle = TcHandle::new(0, 1);

/// The pod programs in the order they attach: ingress policy first, so
/// nothing reaches the pod unchecked once it can send.
const POD_PROGRAMS: [(&str, TcAttachType); 2] = [
    (programs::TO_CONTAINER, TcAttachType::Egress),
    (programs::FROM_CONTAINER, TcAttachType::Ingress),
];

const MARKERS: &str = "pod-filters";

fn markers(pin_dir: &Path) -> PathBuf {
    pin_dir.join(MARKERS)
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The veths recorded as carrying pod filters.
fn marked(pin_dir: &Path) -> Result<BTreeSet<String>, DataplaneError> {
    let dir = markers(pin_dir);
    match std::fs::read_dir(&dir) {
        Ok(entries) => Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(source) => Err(DataplaneError::Io { path: dir, source }),
    }
}

fn remove_marker(pin_dir: &Path, ifname: &str) -> Result<(), DataplaneError> {
    let path = markers(pin_dir).join(ifname);
    match std::fs::remove_dir(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&path)(e)),
        _ => Ok(()),
    }
}

fn os_error(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(e)) | ProgramError::NetlinkError(e) => {
            e.raw_os_error()
        }
        ProgramError::TcError(TcError::IoError(e)) => e.raw_os_error(),
        _ => None,
    }
}

/// Removes both pod filters of `ifname`; a filter or a device already gone
/// is no error.
fn remove_filters(ifname: &str) -> Result<(), DataplaneError> {
    for (program, attach_type) in POD_PROGRAMS {
        match tc::qdisc_detach_program(ifname, attach_type, program) {
            Ok(()) => {}
            Err(TcError::IoError(e))
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(TcError::NetlinkError(e))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENODEV | libc::EINVAL | libc::ENOENT)
                ) => {}
            Err(e) => return Err(program_error(program)(e.into())),
        }
    }
    Ok(())
}

/// Removes the pod filters of every recorded veth, and the records: what
/// an uninstall leaves of the pods' wiring is plain veths.
pub fn remove_pod_filters(pin_dir: &Path) -> Result<(), DataplaneError> {
    for ifname in marked(pin_dir)? {
        remove_filters(&ifname)?;
        remove_marker(pin_dir, &ifname)?;
    }
    Ok(())
}

impl Dataplane {
    /// How [`Self::attach`] attaches from now on (TCX unless set).
    pub fn set_pod_attachment(&mut self, mode: PodAttachment) {
        self.pod_attachment = mode;
    }

    /// Puts the pod programs on the host side of a pod's veth, the way
    /// [`Self::set_pod_attachment`] chose, and removes the other kind.
    /// Idempotent: programs already attached are kept (after a restart they
    /// run this agent's programs, see `switch_links`).
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<(), DataplaneError> {
        match self.pod_attachment {
            PodAttachment::Tcx => {
                for (program, _) in POD_PROGRAMS {
                    self.attach_program(program, ifname, ifindex)?;
                }
                // Only a recorded veth has filters of ours to move off.
                if markers(&self.pin_dir).join(ifname).exists() {
                    remove_filters(ifname)?;
                    remove_marker(&self.pin_dir, ifname)?;
                }
                Ok(())
            }
            PodAttachment::Tc => {
                self.attach_filters(ifname)?;
                self.remove_tcx_pins(ifname)
            }
        }
    }

    fn attach_filters(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(program_error(programs::FROM_CONTAINER)(e.into())),
        }
        for (program, attach_type) in POD_PROGRAMS {
            let prog = self.program(program)?;
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: PRIORITY,
                handle: HANDLE,
                classid: None,
            });
            match prog.attach_with_options(ifname, attach_type, options) {
                Ok(id) => {
                    let link = prog.take_link(id).map_err(program_error(program))?;
                    // Dropping a netlink link detaches it; the filter is
                    // to stay after this agent.
                    std::mem::forget(link);
                }
                Err(e) if os_error(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(program_error(program)(e)),
            }
        }
        let marker = markers(&self.pin_dir).join(ifname);
        std::fs::create_dir_all(&marker).map_err(io_error(&marker))
    }

    /// Removes the pod programs, of either kind, from a pod's veth.
    pub fn detach(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        remove_filters(ifname)?;
        remove_marker(&self.pin_dir, ifname)?;
        self.remove_tcx_pins(ifname)
    }

    /// The veths that carry pod programs: recorded filters and pinned
    /// links.
    pub fn pod_links(&self) -> Result<BTreeSet<String>, DataplaneError> {
        let mut links = marked(&self.pin_dir)?;
        links.extend(self.pod_tcx_pins()?);
        Ok(links)
    }

    /// Swaps this agent's programs into every recorded veth's filters (one
    /// atomic replacement each); a veth gone while no agent ran loses its
    /// record.
    pub(super) fn upgrade_pod_filters(&mut self) -> Result<(), DataplaneError> {
        for ifname in marked(&self.pin_dir)? {
            if let Err(e) = self.replace_filters(&ifname) {
                warn!(veth = %ifname, error = %e, "dropping the record of a stale pod veth");
                remove_filters(&ifname)?;
                remove_marker(&self.pin_dir, &ifname)?;
            }
        }
        Ok(())
    }

    fn replace_filters(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        for (program, attach_type) in POD_PROGRAMS {
            let link = SchedClassifierLink::attached(ifname, attach_type, PRIORITY, HANDLE, None)
                .map_err(|source| DataplaneError::Io {
                path: PathBuf::from(ifname),
                source,
            })?;
            let prog = self.program(program)?;
            let id = prog.attach_to_link(link).map_err(program_error(program))?;
            let link = prog.take_link(id).map_err(program_error(program))?;
            std::mem::forget(link);
        }
        info!(veth = %ifname, "pod filters upgraded to the new programs");
        Ok(())
    }
}
