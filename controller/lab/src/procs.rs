//! Processes of a lab, found by the network namespace they live in rather
//! than by pid files, so a crashed run's agents and servers are found too
//! and a reused pid is never mistaken for one of ours.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// A network namespace's identity: the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

/// The namespace a `/run/netns/NAME` bind mount (or any nsfs path) refers to.
pub fn netns_id(path: &Path) -> std::io::Result<NetnsId> {
    let meta = std::fs::metadata(path)?;
    Ok(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The network namespace of a process's main thread; `None` when it is gone
/// or a zombie (which holds no namespace).
pub fn process_netns(pid: u32) -> Option<NetnsId> {
    netns_id(Path::new(&format!("/proc/{pid}/ns/net"))).ok()
}

/// Alive and not a zombie: a zombie has exited, only its parent has not
/// reaped it yet.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself
    // contain spaces and parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// Whether `pid` is alive and inside the namespace `ns`.
pub fn runs_in(pid: u32, ns: NetnsId) -> bool {
    is_alive(pid) && process_netns(pid) == Some(ns)
}

/// Pids of live processes whose network namespace is one of `namespaces`.
pub fn in_namespaces(namespaces: &HashSet<NetnsId>) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&pid| process_netns(pid).is_some_and(|ns| namespaces.contains(&ns)))
        .filter(|&pid| is_alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// SIGTERM, then SIGKILL for whatever still runs after `grace`; waits until
/// all are gone (or a last short timeout passes). Returns the pids that
/// needed SIGKILL.
pub fn terminate(pids: &[u32], grace: Duration) -> Vec<u32> {
    signal_all(pids, Signal::SIGTERM);
    let survivors = wait_gone(pids, grace);
    signal_all(&survivors, Signal::SIGKILL);
    wait_gone(&survivors, Duration::from_secs(5));
    survivors
}

/// SIGKILL and wait: what a crash looks like.
pub fn kill_now(pids: &[u32]) {
    signal_all(pids, Signal::SIGKILL);
    wait_gone(pids, Duration::from_secs(5));
}

fn signal_all(pids: &[u32], signal: Signal) {
    for &pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// Waits until none of `pids` is alive; returns those still alive at the
/// deadline.
fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| is_alive(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_itself_in_its_own_namespace() {
        let me = std::process::id();
        assert!(is_alive(me));
        let ns = process_netns(me).expect("own netns");
        assert!(runs_in(me, ns));
        assert!(in_namespaces(&HashSet::from([ns])).contains(&me));
        assert!(!is_alive(u32::MAX));
        assert_eq!(process_netns(u32::MAX), None);
    }

    #[test]
    fn terminate_stops_a_child_and_zombies_count_as_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        assert!(is_alive(pid));
        // Not reaped until wait() below: a zombie in between.
        assert_eq!(terminate(&[pid], Duration::from_secs(5)), Vec::<u32>::new());
        assert!(!is_alive(pid));
        let _ = child.wait();
    }
}
