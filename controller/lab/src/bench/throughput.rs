//! Cross-node throughput: sluice's pod-to-pod paths next to the kernel's
//! own paths over the same kind of fabric, measured in the same run so the
//! numbers compare (this machine's speed varies from run to run; ratios
//! within one run do not).
//!
//! Baselines, on a fabric built like the lab's (two node namespaces with
//! veths into a bridge in a third):
//! - `veth`: node to node over the fabric, no pods, no encapsulation: the
//!   ceiling for native routing;
//! - `vxlan`: node to node through a plain kernel VXLAN device (static
//!   remote) over that fabric: the ceiling for the tunnel.
//!
//! sluice: a 2-node lab per routing mode, one pod per node, pod to pod.
//! All traffic is iperf3 (one TCP stream) between namespaces made here.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use sluice_agent::config::Routing;

use super::{
    report::{Better, Section, Table},
    setups::{fresh_lab, LabDown},
};
use crate::{cluster::UpOptions, netns::Netns, pods::PodSpec, topology::PodName};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    #[error("lab: {0}")]
    Lab(#[from] crate::error::LabError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Runs per path; the median is reported.
    pub runs: u32,
    /// Where the labs keep their state.
    pub dir: PathBuf,
    /// Prefix of every namespace made.
    pub name: String,
    pub bin_dir: PathBuf,
    /// Smaller sizes and shorter runs (`--quick`): a smoke run of every
    /// comparison, not figures to quote.
    pub quick: bool,
}

/// One path's results, in Gbit/s.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub path: &'static str,
    pub gbits: Vec<f64>,
}

pub const VETH: &str = "kernel: node to node, routed";
pub const VXLAN: &str = "kernel: node to node, VXLAN";
pub const NATIVE: &str = "sluice native routing: pod to pod";
pub const TUNNEL: &str = "sluice tunnel: pod to pod";

/// The report's section: each sluice mode next to the kernel path it rides.
pub fn section(options: &BenchOptions) -> Result<Section, BenchError> {
    let results = run(options)?;
    let table = |id: &str, title: &str, floor: &str, path: &str| {
        let mut t = Table::new(id, title, "Gbit/s", Better::Higher)
            .floor(floor)
            .target("≥ 0.95 of the kernel's own path");
        for m in results.iter().filter(|m| m.path == floor || m.path == path) {
            t.push(m.path, m.gbits.clone());
        }
        t
    };
    Ok(Section {
        heading: "Cross node".into(),
        text: format!(
            "iperf3, one TCP stream, {} s a run, {} runs a path: pod to pod across two lab \
             nodes, next to node to node over the same kind of fabric (veth into a bridge) \
             plainly routed and through a kernel VXLAN device.",
            options.seconds, options.runs
        ),
        tables: vec![
            table(
                "cross-node-native",
                "Cross node, native routing",
                VETH,
                NATIVE,
            ),
            table(
                "cross-node-tunnel",
                "Cross node, VXLAN tunnel",
                VXLAN,
                TUNNEL,
            ),
        ],
    })
}

/// Runs every path; everything made is removed again, also on failure.
pub fn run(options: &BenchOptions) -> Result<Vec<Measurement>, BenchError> {
    let results = run_paths(options);
    // The labs removed their own directories; this one held them.
    let _ = std::fs::remove_dir(&options.dir);
    results
}

fn run_paths(options: &BenchOptions) -> Result<Vec<Measurement>, BenchError> {
    // Everything up first, then the four paths in turns, so the machine's
    // drift over the run hits each alike.
    let fabric = BaselineFabric::create(&options.name)?;
    let native = PodPair::up(options, Routing::Native)?;
    let tunnel = PodPair::up(options, Routing::Tunnel)?;
    let paths: [(&'static str, &Netns, &Netns, &str); 4] = [
        (VETH, &fabric.n1, &fabric.n2, "172.31.255.2"),
        (NATIVE, &native.client, &native.server, &native.server_ip),
        (VXLAN, &fabric.n1, &fabric.n2, "10.255.0.2"),
        (TUNNEL, &tunnel.client, &tunnel.server, &tunnel.server_ip),
    ];
    let gbits = super::turns::in_turns(options.runs, &paths, |(_, client, server, ip)| {
        iperf(client, server, ip, options.seconds)
    })?;
    Ok(paths
        .iter()
        .zip(gbits)
        .map(|((path, ..), gbits)| Measurement { path, gbits })
        .collect())
}

/// A 2-node lab with a client pod on node1 and a server pod on node2;
/// removed on drop, panics included.
struct PodPair {
    client: Netns,
    server: Netns,
    server_ip: String,
    // Last: the pods' namespaces are closed before the lab goes.
    _down: LabDown,
}

impl PodPair {
    fn up(options: &BenchOptions, routing: Routing) -> Result<Self, BenchError> {
        let (mut lab, down) = fresh_lab(
            options,
            &routing.to_string(),
            &UpOptions {
                nodes: 2,
                routing,
                ..UpOptions::default()
            },
        )?;
        let name = |pod| PodName::new("bench", pod).map_err(|e| BenchError::Failed(e.to_string()));
        let (client, server) = (name("client")?, name("server")?);
        lab.pod_add(&PodSpec::new(client.clone(), "node1"))?;
        let server_state = lab.pod_add(&PodSpec::new(server.clone(), "node2"))?;
        Ok(PodPair {
            client: lab.pod_netns(&client)?,
            server: lab.pod_netns(&server)?,
            server_ip: server_state.ip.to_string(),
            _down: down,
        })
    }
}

/// Two node namespaces on a bridge, with a plain VXLAN device each.
struct BaselineFabric {
    _fabric: Netns,
    n1: Netns,
    n2: Netns,
}

impl BaselineFabric {
    fn create(prefix: &str) -> Result<Self, BenchError> {
        let fabric = Netns::create(&format!("{prefix}-bfab")).map_err(io("creating netns"))?;
        let n1 = Netns::create(&format!("{prefix}-bn1")).map_err(io("creating netns"))?;
        let n2 = Netns::create(&format!("{prefix}-bn2")).map_err(io("creating netns"))?;
        ip(&fabric, "link add br0 type bridge")?;
        ip(&fabric, "link set br0 up")?;
        for (i, node) in [(1, &n1), (2, &n2)] {
            let port = format!("n{i}");
            ip(
                &fabric,
                &format!(
                    "link add {port} type veth peer name eth0 netns {}",
                    node.name()
                ),
            )?;
            ip(&fabric, &format!("link set {port} master br0 up"))?;
            ip(node, &format!("addr add 172.31.255.{i}/24 dev eth0"))?;
            ip(node, "link set eth0 up")?;
            ip(node, "link set lo up")?;
            let peer = 3 - i;
            ip(
                node,
                &format!(
                    "link add vx0 type vxlan id 42 local 172.31.255.{i} remote 172.31.255.{peer} dstport 4789 dev eth0"
                ),
            )?;
            ip(node, &format!("addr add 10.255.0.{i}/24 dev vx0"))?;
            ip(node, "link set vx0 up")?;
        }
        Ok(Self {
            _fabric: fabric,
            n1,
            n2,
        })
    }
}

fn ip(ns: &Netns, args: &str) -> Result<(), BenchError> {
    ns.ip(args).map_err(|e| BenchError::Failed(e.to_string()))
}

/// One iperf3 TCP run of one stream; the receiver's rate in Gbit/s.
fn iperf(client: &Netns, server: &Netns, server_ip: &str, seconds: u32) -> Result<f64, BenchError> {
    iperf_streams(client, server, server_ip, seconds, 1)
}

/// One iperf3 TCP run of `streams` parallel streams (`-P`); the receiver's
/// rate over all of them, in Gbit/s.
pub(super) fn iperf_streams(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    seconds: u32,
    streams: u32,
) -> Result<f64, BenchError> {
    struct Server(Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        server
            .command("iperf3")
            .map_err(io("iperf3"))?
            .args(["-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("starting iperf3 -s (is iperf3 installed?)"))?,
    );
    let mut last_error = String::new();
    // The server needs a moment to listen.
    for _ in 0..50 {
        let out = client
            .command("iperf3")
            .map_err(io("iperf3"))?
            .args(["-c", server_ip, "-p", "5201", "-J", "-t"])
            .arg(seconds.to_string())
            .arg("-P")
            .arg(streams.max(1).to_string())
            .output()
            .map_err(io("running iperf3 -c"))?;
        match received_gbits(&out.stdout) {
            Ok(gbits) => return Ok(gbits),
            Err(e) => last_error = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(BenchError::Failed(format!(
        "iperf3 to {server_ip}: {last_error}"
    )))
}

/// The receiver's rate in Gbit/s from iperf3's `-J` report (the sum over
/// all streams), or iperf3's error.
pub(super) fn received_gbits(json: &[u8]) -> Result<f64, String> {
    let json: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    match json["end"]["sum_received"]["bits_per_second"].as_f64() {
        Some(bps) => Ok(bps / 1e9),
        None => Err(json["error"].as_str().unwrap_or("no result").to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_reports_are_read_as_the_receivers_sum() {
        // Trimmed from a real `iperf3 -c -J -P 2` report.
        let report = br#"{"start": {"test_start": {"num_streams": 2}},
            "end": {"sum_sent": {"bits_per_second": 2.51e10},
                    "sum_received": {"bits_per_second": 2.5e10}}}"#;
        assert_eq!(received_gbits(report), Ok(25.0));
        let refused =
            br#"{"start": {}, "error": "unable to connect to server: Connection refused"}"#;
        assert_eq!(
            received_gbits(refused),
            Err("unable to connect to server: Connection refused".into())
        );
        assert_eq!(received_gbits(b""), Err("no result".into()));
    }
}
