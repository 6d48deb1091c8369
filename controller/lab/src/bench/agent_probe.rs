//! What the control-plane benchmarks read off a running agent: its status
//! over the local API (when the maps hold a burst of changes), and its
//! process's CPU time and resident memory from `/proc`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use sluice_common::api::{self, AgentStatus, Request, Response};

use super::throughput::BenchError;

/// How often a waiting benchmark asks the agent: often enough for
/// millisecond figures, rarely enough not to load it (each answer is a
/// turn of its event loop).
const POLL: Duration = Duration::from_millis(5);

/// The agent's status, or why there is none.
pub fn status(socket: &Path) -> Result<AgentStatus, BenchError> {
    match api::call(socket, &Request::Status, Duration::from_secs(5)) {
        Ok(Response::Status { status }) => Ok(status),
        Ok(other) => Err(BenchError::Failed(format!(
            "the agent at {} answered {other:?} to Status",
            socket.display()
        ))),
        Err(e) => Err(BenchError::Failed(format!(
            "asking the agent at {}: {e}",
            socket.display()
        ))),
    }
}

/// Asks the agent until `done` holds; returns how long that took from
/// `since` and the status that satisfied it.
pub fn wait_until(
    socket: &Path,
    since: Instant,
    timeout: Duration,
    what: &str,
    done: impl Fn(&AgentStatus) -> bool,
) -> Result<(Duration, AgentStatus), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        // A status the agent cannot give right now (busy past the call's
        // timeout) is a reason to ask again, not to fail.
        if let Ok(status) = status(socket) {
            if done(&status) {
                return Ok((since.elapsed(), status));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "the agent did not reach \"{what}\" within {timeout:?}: {:?} objects, in sync {}",
                    status.node.objects, status.node.in_sync
                )));
            }
        } else if Instant::now() > deadline {
            status(socket)?;
        }
        std::thread::sleep(POLL);
    }
}

/// Objects of `kind` the agent knows.
pub fn objects(status: &AgentStatus, kind: &str) -> usize {
    status.node.objects.get(kind).copied().unwrap_or(0)
}

/// Entries the agent wants in `map` (and has written, when in sync).
pub fn map_entries(status: &AgentStatus, map: &str) -> u64 {
    status
        .node
        .maps
        .iter()
        .find(|m| m.name == map)
        .map_or(0, |m| m.entries)
}

/// User plus system CPU seconds the process has used.
pub fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
        what: format!("reading {path}"),
        source,
    })?;
    let ticks =
        cpu_ticks(&text).ok_or_else(|| BenchError::Failed(format!("{path} does not parse")))?;
    // SAFETY: sysconf only reads a constant of the running system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / per_second.max(1) as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The process's resident memory in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
        what: format!("reading {path}"),
        source,
    })?;
    vm_rss(&text).ok_or_else(|| BenchError::Failed(format!("no VmRSS in {path}")))
}

fn vm_rss(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub const MIB: f64 = 1024.0 * 1024.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_from_the_command_names_end() {
        // A command name with a space and a parenthesis in it.
        let stat = "4242 (sluice (a)gent) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 25 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(175));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn vm_rss_is_in_bytes() {
        let status = "Name:\tsluice-agent\nVmPeak:\t  90000 kB\nVmRSS:\t   20480 kB\nThreads:\t3\n";
        assert_eq!(vm_rss(status), Some(20 * 1024 * 1024));
        assert_eq!(vm_rss("Name:\tx\n"), None);
    }
}
