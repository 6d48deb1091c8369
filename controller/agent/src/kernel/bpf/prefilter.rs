//! The prefilter in the kernel (`programs/prefilter.rs` in the eBPF
//! crate): XDP on the underlay device, attached in the driver (native
//! mode) where the driver supports it, else in the stack (generic mode),
//! and its deny list. The link is pinned as `<pins>/xdp/<mode>@<device>`,
//! beside `links/`, so the prefilter stays while the agent restarts, and a
//! new agent swaps its program into it like into the TC links.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{LpmTrie, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
};
use ipnet::Ipv4Net;
use sluice_common::{ipcache::Ipv4Prefix, maps, programs};
use tracing::{info, warn};

use super::{
    diff::{self, Trie},
    loader::pinned_tcx_ifindex as pinned_ifindex,
    program_error, remove_pin, Dataplane, DataplaneError, SyncStats,
};

/// The directory of the prefilter's link pins.
const PIN_DIR: &str = "xdp";

/// Where the prefilter runs on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before an skb exists (generic where the driver
    /// refuses).
    Native,
    /// In the stack, on the skb: drivers without XDP support, or where
    /// configured.
    Generic,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

impl Dataplane {
    fn xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let name = programs::PREFILTER;
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing(name))?;
        prog.try_into().map_err(program_error(name))
    }

    /// The prefilter program, loaded (for attaching, or for test runs).
    pub fn prefilter_program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.xdp()
    }

    /// Loads the prefilter's program (with the others, at load).
    pub(super) fn load_prefilter(&mut self) -> Result<(), DataplaneError> {
        self.xdp()?
            .load()
            .map_err(program_error(programs::PREFILTER))
    }

    fn prefilter_pins(&self) -> PathBuf {
        self.pin_dir.join(PIN_DIR)
    }

    /// Attaches the prefilter to the underlay device `ifname` in the mode
    /// `wanted`: native falls back to generic where the driver refuses it.
    /// Pins the link in place of any earlier one; an agent restarting
    /// finds its link (now running its program) and keeps it, unless
    /// another mode is wanted. Returns the mode.
    pub fn attach_prefilter(
        &mut self,
        ifname: &str,
        ifindex: u32,
        wanted: AttachMode,
    ) -> Result<AttachMode, DataplaneError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DataplaneError::Io { path, source }
        };
        let dir = self.prefilter_pins();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        // One device carries it: a live link on it is kept (a native one
        // that fell back stays generic); pins of another device (the
        // underlay changed), of a device gone or of the other mode go,
        // detaching their links (a device runs one mode at a time).
        let mut kept = None;
        let mut released = false;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match pin_mode(&name, ifname) {
                Some(mode)
                    if kept.is_none()
                        && (mode == wanted || wanted == AttachMode::Native)
                        && pinned_ifindex(&entry.path()).ok() == Some(ifindex) =>
                {
                    kept = Some(mode)
                }
                _ => {
                    released |= pinned_ifindex(&entry.path()).ok() == Some(ifindex);
                    remove_pin(&entry.path())?
                }
            }
        }
        if let Some(mode) = kept {
            return Ok(mode);
        }
        let name = programs::PREFILTER;
        let prog = self.xdp()?;
        // An unpinned link leaves its device from a kernel work item, a
        // moment after the unlink; until then the device refuses a link
        // of the other mode. Only then is a refusal worth waiting out.
        let patience = if released { 50 } else { 1 };
        let mut attach = |mode| {
            let mut tries = 0;
            loop {
                match prog.attach_to_if_index(ifindex, mode) {
                    Err(_) if tries + 1 < patience => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    result => return result,
                }
            }
        };
        let native = (wanted == AttachMode::Native).then(|| attach(XdpMode::Driver));
        let (id, mode) = match native {
            Some(Ok(id)) => (id, AttachMode::Native),
            generic => {
                if let Some(Err(native)) = generic {
                    warn!(device = ifname, error = %native, "native XDP refused; the prefilter falls back to generic mode");
                }
                let id = attach(XdpMode::Skb).map_err(program_error(name))?;
                (id, AttachMode::Generic)
            }
        };
        let pin = dir.join(pin_name(mode, ifname));
        let link = prog.take_link(id).map_err(program_error(name))?;
        let link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
            path: pin.clone(),
            source,
        })?;
        link.pin(&pin)
            .map_err(|source| DataplaneError::Pin { path: pin, source })?;
        info!(device = ifname, %mode, "prefilter attached");
        Ok(mode)
    }

    /// The deny list's map (once: its one writer is the agent's
    /// [`crate::prefilter::Prefilter`]).
    pub fn take_deny_list(&mut self) -> Result<DenyList, DataplaneError> {
        let name = maps::PREFILTER_DENY.name;
        let data = self
            .ebpf
            .take_map(name)
            .ok_or(DataplaneError::Missing(name))?;
        Ok(DenyList::new(
            LpmTrie::try_from(data).map_err(super::map_error(name))?,
        ))
    }

    /// Removes the prefilter's link pins: the program leaves the device.
    pub fn detach_prefilter(&mut self) -> Result<(), DataplaneError> {
        let dir = self.prefilter_pins();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            remove_pin(&entry.path())?;
        }
        Ok(())
    }

    /// Swaps this agent's program into the links a previous agent pinned
    /// (with the TC links, once the maps are filled).
    pub(super) fn upgrade_prefilter_links(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.prefilter_pins()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Err(e) = self.replace_prefilter_program(&path) {
                warn!(path = %path.display(), error = %e, "dropping stale prefilter link pin");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn replace_prefilter_program(&mut self, path: &Path) -> Result<(), DataplaneError> {
        let name = programs::PREFILTER;
        let link_error = |source| DataplaneError::Link {
            path: path.to_owned(),
            source,
        };
        let pinned = PinnedLink::from_pin(path).map_err(link_error)?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_error)?;
        let prog = self.xdp()?;
        let id = prog.attach_to_link(link).map_err(program_error(name))?;
        // The pin keeps the link, now running the new program.
        drop(prog.take_link(id).map_err(program_error(name))?);
        info!(path = %path.display(), "prefilter link upgraded to the new program");
        Ok(())
    }
}

/// Link pins are named `<mode>@<device>`: the kernel's link info names
/// the device but not the mode.
fn pin_name(mode: AttachMode, ifname: &str) -> String {
    format!("{mode}@{ifname}")
}

/// The mode a pin named `name` is for, if it is for `ifname`.
fn pin_mode(name: &str, ifname: &str) -> Option<AttachMode> {
    match name.split_once('@')? {
        ("native", dev) if dev == ifname => Some(AttachMode::Native),
        ("generic", dev) if dev == ifname => Some(AttachMode::Generic),
        _ => None,
    }
}

/// The deny list in the kernel. Each entry's value is its prefix length,
/// so the diff-writer's lookup (a longest-prefix match) never mistakes a
/// covering shorter prefix for the entry itself.
pub struct DenyList(Trie<Ipv4Net, u32>);

impl DenyList {
    pub fn new(map: LpmTrie<MapData, Ipv4Prefix, u32>) -> Self {
        Self(Trie {
            name: maps::PREFILTER_DENY.name,
            map,
        })
    }

    /// Makes the map deny exactly `cidrs`.
    pub fn sync<'a>(
        &mut self,
        cidrs: impl IntoIterator<Item = &'a Ipv4Net>,
    ) -> Result<SyncStats, DataplaneError> {
        let desired: BTreeMap<Ipv4Net, u32> = cidrs
            .into_iter()
            .map(|c| (c.trunc(), u32::from(c.prefix_len())))
            .collect();
        diff::sync(&mut self.0, &desired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_carry_the_mode_and_the_device() {
        for mode in [AttachMode::Native, AttachMode::Generic] {
            let name = pin_name(mode, "eth0");
            assert_eq!(pin_mode(&name, "eth0"), Some(mode), "{name}");
            assert_eq!(pin_mode(&name, "eth1"), None, "{name}");
        }
        assert_eq!(pin_name(AttachMode::Native, "eth0"), "native@eth0");
        assert_eq!(pin_mode("offload@eth0", "eth0"), None);
        assert_eq!(pin_mode("eth0", "eth0"), None);
    }
}
