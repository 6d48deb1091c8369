//! What the pod programs cost per packet under real traffic, as the kernel
//! counts it: with `kernel.bpf_stats_enabled` on, every program's run time
//! and run count grow with each run, so the difference over a measurement
//! divided by the runs in it is the average cost of one run, helpers and
//! map lookups included, on live sockets and caches (BPF_PROG_TEST_RUN,
//! `policy_cost`, reruns one crafted packet).
//!
//! One one-node lab: a client pod and two server pods, one that no policy
//! selects and one isolated for ingress by a policy that allows the client
//! (a third pod, refused, shows the policy in force). Request/response on
//! one connection (RR: the established path, in both directions, through
//! `from_container`) and connection, one transaction, close (CRR: the new
//! flow path) to each server, in turns. Pod-to-pod packets on one node are
//! redirected straight into the peer, skipping `to_container` (which sees
//! only what the host stack delivers); its rows show that.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    maps::MapInfo,
    programs::{loaded_programs, ProgramInfo},
};
use sluice_common::{maps, programs};

use super::{
    report::{Better, Section, Table},
    rr::{self, EchoServers, Pinning, Proto, PORT},
    setups::{apply_yaml, fresh_lab, LabDown},
    throughput::{BenchError, BenchOptions},
};
use crate::{
    cluster::{Lab, UpOptions},
    netns::Netns,
    pods::PodSpec,
    topology::PodName,
};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// How long a new policy may take to be enforced.
const CONVERGE: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "bench";

const OPEN: &str = "no policy isolates either pod";
const ISOLATED: &str = "server isolated, policy allows the client";
const TARGET: &str = "≤ 150 ns established, pods no policy isolates";

/// The report's section: ns per run of each pod program, per path.
pub fn section(options: &BenchOptions) -> Result<Section, BenchError> {
    let results = run(options)?;
    let table = |id: &str, title: &str, mode: &str| {
        let mut t = Table::new(id, title, "ns per run", Better::Lower)
            .floor(&row(OPEN, programs::FROM_CONTAINER))
            .target(TARGET);
        // A program that ran in no run of a path has no figure for it.
        for m in results
            .iter()
            .filter(|m| m.mode == mode && m.ns.iter().any(|ns| ns.is_finite()))
        {
            t.push(row(m.server, m.program), m.ns.clone());
        }
        t.note(format!(
            "`{}` runs only for what the host stack delivers to a pod (here: little besides \
             neighbour discovery); pod-to-pod packets on one node are redirected past it. A \
             path where it did not run has no row.",
            programs::TO_CONTAINER
        ))
    };
    Ok(Section {
        heading: "Per-packet cost under real traffic (kernel BPF stats)".into(),
        text: format!(
            "`kernel.bpf_stats_enabled` on; a one-node lab, a client pod and two servers, one \
             isolated by a policy allowing the client. Each run: {} s of request/response on \
             one connection (RR, established flows) or of connect, one transaction, close (CRR, \
             new flows, each also opened and closed), {} runs a path in turns; the figure is the \
             program's run time over its runs in that time.",
            options.seconds, options.runs
        ),
        tables: vec![
            table(
                "runtime-cost-established",
                "Program run time per packet, established flows (TCP RR)",
                RR,
            ),
            table(
                "runtime-cost-new-flow",
                "Program run time per packet, new flows (TCP CRR)",
                CRR,
            ),
        ],
    })
}

const RR: &str = "RR";
const CRR: &str = "CRR";

fn row(server: &str, program: &str) -> String {
    format!("{server}: {program}")
}

/// The traffic a path carries: transactions on one connection, or a
/// new connection each.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Rr,
    Crr,
}

/// One program's cost on one path over the runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub mode: &'static str,
    pub server: &'static str,
    pub program: &'static str,
    /// ns per run, one per measurement (NaN: the program did not run).
    pub ns: Vec<f64>,
}

/// Runs every path; the lab, the policy and the sysctl are undone also on
/// failure.
pub fn run(options: &BenchOptions) -> Result<Vec<Measurement>, BenchError> {
    let _stats = StatsEnabled::on()?;
    let lab = RuntimeLab::up(options)?;
    let seconds = Duration::from_secs(u64::from(options.seconds.max(1)));
    let programs = lab.programs()?;
    let paths: Vec<(&'static str, &'static str, Mode, SocketAddr)> =
        [(RR, Mode::Rr), (CRR, Mode::Crr)]
            .into_iter()
            .flat_map(|(name, mode)| {
                [(OPEN, lab.open_ip), (ISOLATED, lab.isolated_ip)]
                    .map(|(server, ip)| (name, server, mode, SocketAddr::from((ip, PORT))))
            })
            .collect();
    let samples = super::turns::in_turns(options.runs, &paths, |(_, server, mode, dst)| {
        let before = programs.snapshot()?;
        let run = match mode {
            Mode::Rr => rr::rr(&lab.client, *dst, seconds, Proto::Tcp, Pinning::Pinned).map(|_| ()),
            Mode::Crr => rr::crr(&lab.client, *dst, seconds, Pinning::Pinned).map(|_| ()),
        };
        run.map_err(|e| BenchError::Failed(format!("to the server ({server}): {e}")))?;
        let after = programs.snapshot()?;
        Ok::<_, BenchError>(per_run(&before, &after))
    })?;
    let mut out = Vec::new();
    for ((mode, server, ..), runs) in paths.iter().zip(samples) {
        for (i, program) in PROGRAMS.iter().enumerate() {
            out.push(Measurement {
                mode,
                server,
                program,
                ns: runs.iter().map(|r| r[i]).collect(),
            });
        }
    }
    drop(lab);
    // The lab removed its own directory; this one held it.
    let _ = std::fs::remove_dir(&options.dir);
    Ok(out)
}

/// The programs measured, in the order of a [`Snapshot`].
const PROGRAMS: [&str; 2] = [programs::FROM_CONTAINER, programs::TO_CONTAINER];

/// (run time in ns, runs) of each of [`PROGRAMS`].
type Snapshot = [(u64, u64); 2];

/// ns per run between two snapshots; NaN for a program that did not run.
fn per_run(before: &Snapshot, after: &Snapshot) -> [f64; 2] {
    let mut out = [f64::NAN; 2];
    for (i, ((t0, n0), (t1, n1))) in before.iter().zip(after).enumerate() {
        let runs = n1.saturating_sub(*n0);
        if runs > 0 {
            out[i] = t1.saturating_sub(*t0) as f64 / runs as f64;
        }
    }
    out
}

/// The lab node's pod programs, by id: several labs (and agents) may run
/// on the machine, each with its own instances of the same names.
struct NodePrograms {
    ids: [u32; 2],
}

impl NodePrograms {
    fn snapshot(&self) -> Result<Snapshot, BenchError> {
        let mut out = [(0, 0); 2];
        for (slot, id) in out.iter_mut().zip(self.ids) {
            let info = loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == id)
                .ok_or_else(|| BenchError::Failed(format!("program {id} is gone")))?;
            *slot = (info.run_time().as_nanos() as u64, info.run_count());
        }
        Ok(out)
    }
}

/// `kernel.bpf_stats_enabled` on while this lives, then as it was.
struct StatsEnabled {
    old: String,
}

impl StatsEnabled {
    fn on() -> Result<Self, BenchError> {
        let io = |what: &str| {
            let what = format!("{what} {STATS_SYSCTL}");
            move |source| BenchError::Io { what, source }
        };
        let old = std::fs::read_to_string(STATS_SYSCTL).map_err(io("reading"))?;
        std::fs::write(STATS_SYSCTL, "1").map_err(io("writing"))?;
        Ok(Self {
            old: old.trim().to_owned(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.old);
    }
}

/// The one-node lab with its pods and echo servers; removed on drop.
struct RuntimeLab {
    lab: Lab,
    client: Netns,
    open_ip: Ipv4Addr,
    isolated_ip: Ipv4Addr,
    /// Stopped before the lab goes (they need the pods' namespaces).
    _servers: Vec<EchoServers>,
    // Last: fields drop in order.
    _down: LabDown,
}

impl RuntimeLab {
    fn up(options: &BenchOptions) -> Result<Self, BenchError> {
        let (mut lab, down) = fresh_lab(
            options,
            "rt",
            &UpOptions {
                nodes: 1,
                ..UpOptions::default()
            },
        )?;
        let mut add = |name: &str, app: &str| -> Result<(Ipv4Addr, Netns), BenchError> {
            let pod =
                PodName::new(NAMESPACE, name).map_err(|e| BenchError::Failed(e.to_string()))?;
            let state = lab.pod_add(&PodSpec::new(pod.clone(), "node1").label("app", app))?;
            let std::net::IpAddr::V4(ip) = state.ip else {
                return Err(BenchError::Failed(format!("pod {name} has no IPv4")));
            };
            Ok((ip, lab.pod_netns(&pod)?))
        };
        let (_, client) = add("client", "client")?;
        let (_, other) = add("other", "other")?;
        let (open_ip, open_ns) = add("server-open", "open")?;
        let (isolated_ip, isolated_ns) = add("server-isolated", "isolated")?;
        let mut servers = vec![EchoServers::start(open_ns)?];
        servers.push(EchoServers::start(isolated_ns)?);
        let mut this = Self {
            lab,
            client,
            open_ip,
            isolated_ip,
            _servers: servers,
            _down: down,
        };
        this.isolate(&options.dir, &other)?;
        Ok(this)
    }

    /// Applies the policy isolating the isolated server (allowing the
    /// client on the bench port) and waits until it holds: `other` is
    /// refused while the client still gets through.
    fn isolate(&mut self, dir: &Path, other: &Netns) -> Result<(), BenchError> {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: isolated, namespace: {NAMESPACE}}}\nspec:\n  podSelector: {{matchLabels: {{app: isolated}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]\n    ports: [{{protocol: TCP, port: {PORT}}}]\n"
        );
        apply_yaml(&mut self.lab, dir, "policy.yaml", &yaml)?;
        let target = SocketAddr::from((self.isolated_ip, PORT));
        let reaches = |ns: &Netns| {
            ns.run(move || TcpStream::connect_timeout(&target, Duration::from_millis(200)))
                .map(|r| r.is_ok())
                .unwrap_or(false)
        };
        let deadline = Instant::now() + CONVERGE;
        while reaches(other) || !reaches(&self.client) {
            if Instant::now() > deadline {
                return Err(BenchError::Failed(
                    "the isolating policy is not in force".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The node's `from_container` and `to_container`: the programs that
    /// use its pinned conntrack map.
    fn programs(&self) -> Result<NodePrograms, BenchError> {
        let pin = self
            .lab
            .config()
            .bpffs()
            .join("sluice")
            .join("node1")
            .join(maps::CONNTRACK.name);
        let map = MapInfo::from_pin(&pin)
            .map_err(|e| BenchError::Failed(format!("{}: {e}", pin.display())))?
            .id();
        let uses_map = |p: &ProgramInfo| {
            p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&map))
        };
        let mut ids = [0; 2];
        for (slot, name) in ids.iter_mut().zip(PROGRAMS) {
            // The kernel keeps the first 15 bytes of a program's name.
            let short = &name[..name.len().min(15)];
            *slot = loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.name_as_str() == Some(short) && uses_map(p))
                .map(|p| p.id())
                .ok_or_else(|| BenchError::Failed(format!("no {name} of the lab's node")))?;
        }
        Ok(NodePrograms { ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_per_run_is_the_time_over_the_runs() {
        let before = [(1_000, 10), (500, 5)];
        let after = [(4_000, 40), (500, 5)];
        let ns = per_run(&before, &after);
        assert_eq!(ns[0], 100.0);
        assert!(ns[1].is_nan(), "no runs: no figure");
    }
}
