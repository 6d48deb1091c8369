//! Through a ClusterIP vs straight to the pod, with Services served by
//! sluice's eBPF and by the lab's kube-proxy emulation (iptables), at 1
//! Service and at many: the iptables mode walks `KUBE-SERVICES` rule by
//! rule for every new connection, so its connection rate falls as
//! Services are added; a lookup in a hash map should not.
//!
//! Two one-node labs run side by side, one per service mode, each with a
//! client and a server pod. Client and server are pinned to one CPU (on a
//! 2-vCPU VM an unpinned request/response benchmark measures the VM's
//! wake-up latency), and the four paths are measured in turns (A B C D A B
//! C D …) so drift of the machine hits all alike.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use super::{
    report::{Better, Section, Table},
    rr::{self, EchoServers, Pinning, Proto, CPU, MESSAGE, PORT},
    setups,
    throughput::{BenchError, BenchOptions},
};
use crate::{
    cluster::{Lab, LabConfig, UpOptions},
    netns::Netns,
    pods::PodSpec,
    teardown,
    topology::PodName,
};

/// How long a newly applied Service may take to answer.
const CONVERGE: Duration = Duration::from_secs(30);

/// One path's rates over the runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    /// `eBPF` or `kube-proxy (iptables)`.
    pub served_by: &'static str,
    pub services: usize,
    /// `pod IP` or `ClusterIP`.
    pub target: &'static str,
    /// Transactions per second on one connection.
    pub rr: Vec<f64>,
    /// Connect, one transaction, close, per second.
    pub crr: Vec<f64>,
}

/// The report's section: RR and CRR through a ClusterIP next to the pod
/// IP, per Service count and service mode.
pub fn section(options: &BenchOptions, counts: &[usize]) -> Result<Section, BenchError> {
    let rates = run(options, counts)?;
    let mut tables = Vec::new();
    for &count in counts {
        for (what, unit, of) in [
            (
                "rr",
                "transactions/s",
                (|r: &Rates| r.rr.clone()) as fn(&Rates) -> Vec<f64>,
            ),
            ("crr", "connections/s", |r: &Rates| r.crr.clone()),
        ] {
            let floor = format!("eBPF, {POD_IP}");
            let mut t = Table::new(
                &format!("services-{what}-{count}"),
                &format!(
                    "{} through a ClusterIP, {count} Service(s), pinned",
                    what.to_uppercase()
                ),
                unit,
                Better::Higher,
            )
            .floor(&floor);
            for r in rates.iter().filter(|r| r.services == count) {
                t.push(format!("{}, {}", r.served_by, r.target), of(r));
            }
            tables.push(t);
        }
    }
    Ok(Section {
        heading: "Services".into(),
        text: format!(
            "Same node, client and server pinned to CPU {CPU}, {MESSAGE} B request and answer, {} s \
             a run, {} runs a path in turns; RR = transactions on one connection, CRR = connect, \
             one transaction, close. Two one-node labs side by side, Services by sluice's eBPF \
             and by the lab's kube-proxy emulation (iptables); the Service measured is the last \
             of its count in `KUBE-SERVICES`.",
            options.seconds, options.runs
        ),
        tables,
    })
}

const POD_IP: &str = "pod IP";
const CLUSTER_IP: &str = "ClusterIP";

/// A one-node lab with a client and a server pod; removed on drop.
struct BenchLab {
    lab: Lab,
    served_by: &'static str,
    client: Netns,
    server_ip: Ipv4Addr,
    /// Stopped before the lab goes (it needs the pod's namespace to stop).
    server: Option<EchoServers>,
    applied: usize,
}

impl BenchLab {
    fn up(options: &BenchOptions, tag: &str, kube_proxy: bool) -> Result<Self, BenchError> {
        let name = format!("{}-{tag}", options.name);
        let config = LabConfig::new(options.dir.join(&name), &name, &options.bin_dir)?;
        let _ = teardown::down(&config);
        let mut lab = Lab::up(
            config,
            &setups::bench_up(&UpOptions {
                nodes: 1,
                kube_proxy,
                ..UpOptions::default()
            }),
        )?;
        let pod =
            |name: &str| PodName::new("bench", name).map_err(|e| BenchError::Failed(e.to_string()));
        lab.pod_add(&PodSpec::new(pod("client")?, "node1"))?;
        let server = lab.pod_add(&PodSpec::new(pod("server")?, "node1").label("app", "server"))?;
        let std::net::IpAddr::V4(server_ip) = server.ip else {
            return Err(BenchError::Failed("the server pod has no IPv4".into()));
        };
        let server_ns = lab.pod_netns(&pod("server")?)?;
        let echo = EchoServers::start(server_ns)?;
        let client = lab.pod_netns(&pod("client")?)?;
        Ok(Self {
            lab,
            served_by: if kube_proxy {
                "kube-proxy (iptables)"
            } else {
                "eBPF"
            },
            client,
            server_ip,
            server: Some(echo),
            applied: 0,
        })
    }

    /// Applies Services until there are `count`, each selecting the
    /// server; the last one (by name, so the last in kube-proxy's
    /// `KUBE-SERVICES`) is the one measured. Returns its ClusterIP once it
    /// answers.
    fn services(&mut self, count: usize, dir: &Path) -> Result<SocketAddr, BenchError> {
        if count > self.applied {
            let yaml: String = (self.applied..count)
                .map(|i| {
                    format!(
                        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i:05}, namespace: bench}}\nspec:\n  selector: {{app: server}}\n  ports: [{{port: 80, targetPort: {PORT}}}]\n---\n"
                    )
                })
                .collect();
            setups::apply_yaml(&mut self.lab, dir, "services.yaml", &yaml)?;
            self.applied = count;
        }
        let last = format!("bench/svc-{:05}", count - 1);
        let ip = self
            .lab
            .status()
            .services
            .into_iter()
            .find(|s| s.name == last)
            .and_then(|s| s.cluster_ip.parse::<Ipv4Addr>().ok())
            .ok_or_else(|| BenchError::Failed(format!("{last} has no ClusterIP")))?;
        let target = SocketAddr::from((ip, 80));
        let deadline = Instant::now() + CONVERGE;
        while rr::probe(&self.client, target, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "{last} ({target}) does not answer in the {} lab",
                    self.served_by
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(target)
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = teardown::down(self.lab.config());
    }
}

/// Measures every path at every Service count in `counts`.
pub fn run(options: &BenchOptions, counts: &[usize]) -> Result<Vec<Rates>, BenchError> {
    let mut labs = [
        BenchLab::up(options, "svc-ebpf", false)?,
        BenchLab::up(options, "svc-kp", true)?,
    ];
    let seconds = Duration::from_secs(u64::from(options.seconds.max(1)));
    let mut out = Vec::new();
    for &count in counts {
        let mut paths = Vec::new();
        for (i, lab) in labs.iter_mut().enumerate() {
            let cluster_ip = lab.services(count, &options.dir)?;
            let direct = SocketAddr::from((lab.server_ip, PORT));
            for (target, addr) in [(POD_IP, direct), (CLUSTER_IP, cluster_ip)] {
                paths.push((
                    i,
                    addr,
                    Rates {
                        served_by: lab.served_by,
                        services: count,
                        target,
                        rr: Vec::new(),
                        crr: Vec::new(),
                    },
                ));
            }
        }
        for _ in 0..options.runs.max(1) {
            for (lab, addr, rates) in &mut paths {
                let client = &labs[*lab].client;
                let path = |e| {
                    BenchError::Failed(format!(
                        "{} to the {} with {count} Service(s): {e}",
                        rates.served_by, rates.target
                    ))
                };
                let rr =
                    rr::rr(client, *addr, seconds, Proto::Tcp, Pinning::Pinned).map_err(path)?;
                let crr = rr::crr(client, *addr, seconds, Pinning::Pinned).map_err(path)?;
                rates.rr.push(rr.rate);
                rates.crr.push(crr);
            }
        }
        out.extend(paths.into_iter().map(|(_, _, rates)| rates));
    }
    drop(labs);
    // The labs removed their own directories; this one held them.
    let _ = std::fs::remove_dir(&options.dir);
    Ok(out)
}
