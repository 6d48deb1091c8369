//! The cgroup socket hooks (`programs/sock.rs` in the eBPF crate): the
//! node's own sockets reaching ClusterIPs without kube-proxy. Attached to
//! the host's root cgroup (v2), which every process is under, next to
//! whatever else is attached there (as links); the programs touch only
//! sockets of the node's network namespace. One link per hook, pinned
//! under `<pins>/sock/` so the hooks stay while the agent restarts.

use std::path::{Path, PathBuf};

use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr};
use sluice_common::programs;

use super::{program_error, remove_pin, Dataplane, DataplaneError};

/// The hooks, each its own program.
pub const HOOKS: [&str; 4] = [
    programs::SOCK_CONNECT4,
    programs::SOCK_SENDMSG4,
    programs::SOCK_RECVMSG4,
    programs::SOCK_GETPEERNAME4,
];

/// The directory of the hooks' link pins, beside `links/`.
const PIN_DIR: &str = "sock";

impl Dataplane {
    fn socket_hook(&mut self, name: &'static str) -> Result<&mut CgroupSockAddr, DataplaneError> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing(name))?;
        prog.try_into().map_err(program_error(name))
    }

    /// Loads the hooks' programs (with the others, at load).
    pub(super) fn load_socket_hooks(&mut self) -> Result<(), DataplaneError> {
        for name in HOOKS {
            self.socket_hook(name)?
                .load()
                .map_err(program_error(name))?;
        }
        Ok(())
    }

    fn socket_pins(&self) -> PathBuf {
        self.pin_dir.join(PIN_DIR)
    }

    /// Attaches every hook to `cgroup` (the root of the cgroup v2
    /// hierarchy) and pins the links, each in place of the one a previous
    /// agent left, which goes only once the new one runs.
    pub fn attach_socket_hooks(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DataplaneError::Io { path, source }
        };
        let dir = self.socket_pins();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let cgroup_dir = std::fs::File::open(cgroup).map_err(io(cgroup))?;
        for name in HOOKS {
            let pin = dir.join(name);
            let hook = self.socket_hook(name)?;
            // A link (bpf_link_create, which aya uses from Linux 5.7) runs
            // beside every other program on the cgroup by itself, and
            // takes no flags: `AllowMultiple` would be refused (EINVAL).
            let id = hook
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(program_error(name))?;
            let link = hook.take_link(id).map_err(program_error(name))?;
            let link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
                path: pin.clone(),
                source,
            })?;
            remove_pin(&pin)?;
            link.pin(&pin)
                .map_err(|source| DataplaneError::Pin { path: pin, source })?;
        }
        Ok(())
    }

    /// Removes the hooks' link pins: the hooks go with them (no process
    /// holds the links).
    pub fn detach_socket_hooks(&mut self) -> Result<(), DataplaneError> {
        for name in HOOKS {
            remove_pin(&self.socket_pins().join(name))?;
        }
        Ok(())
    }
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`
/// (`/sys/fs/cgroup` on most hosts, `/sys/fs/cgroup/unified` on hybrid
/// ones).
pub fn cgroup2_root() -> std::io::Result<Option<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(cgroup2_in(&mountinfo))
}

/// The mount point of the first cgroup2 mount in `mountinfo`'s text.
fn cgroup2_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options... - type ...
        let (fields, rest) = line.split_once(" - ")?;
        let fstype = rest.split_whitespace().next()?;
        let mount_point = fields.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_hybrid_and_unified_hosts() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
35 33 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "26 25 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            cgroup2_in("33 25 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"),
            None
        );
    }
}
