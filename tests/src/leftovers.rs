//! What a container runtime started by a test (podman, containerd) may
//! leave behind when the test fails halfway, found by the test's private
//! paths: processes that carry them on their command line or live in the
//! test's cgroups, mounts below its directory, and the cgroups themselves.

use std::path::{Path, PathBuf};

pub struct Leftovers<'a> {
    /// The test's private directory (state, sockets, storage).
    pub dir: &'a Path,
    /// The cgroup parent its containers were put under (`/sluice-test-x`).
    pub cgroup_parent: &'a str,
}

impl Leftovers<'_> {
    /// The cgroup parent's directories in every hierarchy (cgroup v2 and
    /// v1 controllers alike), children before parents.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if !dir.is_dir() {
                return;
            }
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
            out.push(dir.to_owned());
        }
        let root = Path::new("/sys/fs/cgroup");
        let relative = self.cgroup_parent.trim_start_matches('/');
        let mut hierarchies = vec![root.to_owned()];
        hierarchies.extend(
            std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
        let mut dirs = Vec::new();
        for h in hierarchies {
            walk(&h.join(relative), &mut dirs);
        }
        dirs
    }

    /// Processes with the private directory on their command line (shims,
    /// monitors) and whatever lives in the test's cgroups.
    pub fn processes(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let marker = self.dir.display().to_string();
        let mut pids: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
            })
            .collect();
        for dir in self.cgroup_dirs() {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Mounts below the private directory, deepest first.
    pub fn mounts(&self) -> Vec<String> {
        let marker = self.dir.display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&marker))
            .map(str::to_owned)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        mounts
    }

    /// Kills the processes, unmounts the mounts, removes the cgroups; says
    /// what it had to do.
    pub fn clean(&self) {
        for pid in self.processes() {
            eprintln!("killing leftover process {pid}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for mount in self.mounts() {
            eprintln!("unmounting leftover {mount}");
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for dir in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
