//! Harness for the end-to-end tests: a node (network namespace + the real
//! agent) and pods wired by the real `sluice-cni`, all with per-test unique
//! names, all removed on drop, also when a test fails.
//!
//! These tests need root, the built binaries (`SLUICE_BIN_DIR`, set by
//! `cargo xtask test`) and a kernel with BPF/TCX; they run through
//! `cargo xtask test`.

pub mod fake_api;
pub mod leftovers;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::Value;
use sluice_common::api::{self, AgentStatus, Request, Response};
pub use sluice_common::reason::Reason;
pub use sluice_lab::{
    agent_proc::{AgentOptions, AgentProcess},
    cni::{sluice_netconf, CniCall, CniOutput},
    netns::Netns,
    probe,
};
pub use sluice_lab::{
    cluster::{Lab, LabConfig},
    inventory::PodState,
    matrix::{probe_matrix, Check, TruthTable},
    teardown,
    topology::PodName,
};

pub const TIMEOUT: Duration = Duration::from_secs(2);

pub fn bin_dir() -> PathBuf {
    std::env::var_os("SLUICE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build first (cargo xtask test does)",
        path.display()
    );
    path
}

/// A short name unique to this process and call, for namespaces, nodes
/// and containers: `<tag><pid36><n>`.
/// Panics, naming `what` with the exit status, stdout and stderr, unless
/// the process succeeded.
pub fn assert_success(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` to its end and returns its stdout; panics (see
/// [`assert_success`]) unless it succeeds.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_success(&out, what);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}{n}", std::process::id())
}

/// A node: its netns and its agent. Dropping it removes pods' leftovers,
/// the agent's pins and host device, its state and the netns.
pub struct Node {
    pub name: String,
    pub pod_cidr: String,
    pub ns: Netns,
    pub agent: AgentProcess,
    pub dir: PathBuf,
    pub netconf_name: String,
}

impl Node {
    pub fn start(tag: &str, pod_cidr: &str) -> Self {
        Self::start_with(tag, pod_cidr, &[])
    }

    /// [`Self::start`] with more agent flags.
    pub fn start_with(tag: &str, pod_cidr: &str, agent_args: &[&str]) -> Self {
        let name = unique(tag);
        let ns = Netns::create(&format!("{name}-node"))
            .unwrap_or_else(|e| panic!("creating netns for {name}: {e}"));
        let dir = std::env::temp_dir().join(format!("sluice-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let options = AgentOptions {
            binary: bin("sluice-agent"),
            node_name: name.clone(),
            pod_cidr: Some(pod_cidr.to_owned()),
            state_dir: dir.join("state"),
            socket: dir.join("agent.sock"),
            netns: Some(ns.path().to_owned()),
            log: dir.join("agent.log"),
            extra_args: agent_args.iter().map(|a| a.to_string()).collect(),
        };
        let agent =
            AgentProcess::spawn(options).unwrap_or_else(|e| panic!("spawning sluice-agent: {e}"));
        let mut node = Self {
            name,
            pod_cidr: pod_cidr.to_owned(),
            ns,
            agent,
            dir,
            netconf_name: String::new(),
        };
        node.netconf_name = format!("net-{}", node.name);
        // On failure the panic drops `node`, which cleans up.
        if let Err(log) = node.agent.wait_ready(Duration::from_secs(20)) {
            panic!("agent did not start: {log}");
        }
        node
    }

    /// SIGKILL the agent: what a crash looks like.
    pub fn crash_agent(&mut self) {
        self.agent.kill();
    }

    /// Starts the agent again with the same options and waits for it.
    pub fn restart_agent(&mut self) {
        self.agent.stop();
        self.agent = AgentProcess::spawn(self.agent.options.clone())
            .unwrap_or_else(|e| panic!("respawning sluice-agent: {e}"));
        if let Err(log) = self.agent.wait_ready(Duration::from_secs(20)) {
            panic!("agent did not restart: {log}");
        }
    }

    /// Open file descriptors of the agent process.
    pub fn agent_fds(&self) -> usize {
        let pid = self.agent.pid().expect("agent running");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/sluice").join(&self.name)
    }

    pub fn netconf(&self, cni_version: &str) -> Value {
        sluice_netconf(&self.netconf_name, cni_version, &self.socket())
    }

    /// A CNI call as the runtime on this node would make it.
    pub fn cni(&self, command: &str) -> CniCall {
        CniCall::new(&bin("sluice-cni"), command, self.netconf("1.1.0")).run_in(self.ns.path())
    }

    pub fn status(&self) -> AgentStatus {
        match api::call(&self.socket(), &Request::Status, TIMEOUT) {
            Ok(Response::Status { status }) => status,
            other => panic!("agent status: {other:?}"),
        }
    }

    /// Wires a pod through `sluice-cni ADD`; panics with the plugin's answer
    /// on failure.
    pub fn add_pod(&self, tag: &str) -> Pod {
        let container_id = unique(tag);
        let ns = Netns::create(&format!("{}-{container_id}", self.name))
            .unwrap_or_else(|e| panic!("creating pod netns: {e}"));
        let out = self
            .cni("ADD")
            .container(&container_id, &ns.path().display().to_string(), "eth0")
            .invoke()
            .expect("running sluice-cni");
        assert!(
            out.success,
            "ADD failed: {}\nstderr: {}\nagent log:\n{}",
            out.stdout,
            out.stderr,
            self.agent.log()
        );
        let result = out.json().expect("ADD printed no JSON");
        let ip: IpAddr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {result}"));
        let host_if = result["interfaces"][0]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("no host interface in {result}"))
            .to_owned();
        Pod {
            container_id,
            ns,
            ip,
            host_if,
            result,
            cni: self.cni("DEL"),
            deleted: false,
        }
    }

    /// Names of the links in the node's netns.
    pub fn links(&self) -> Vec<String> {
        let out = self
            .ns
            .command("ip")
            .and_then(|mut c| c.args(["-o", "link", "show"]).output())
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect()
    }

    /// Packets counted by the dataplane for a reason.
    pub fn counter(&self, reason: Reason) -> u64 {
        let rows = sluice_agent::kernel::counters::read(&self.pin_dir()).expect("reading counters");
        sluice_agent::kernel::counters::packets(&rows, reason)
    }

    /// Entries of the pinned endpoint map.
    pub fn endpoint_entries(&self) -> usize {
        let data =
            aya::maps::MapData::from_pin(self.pin_dir().join(sluice_common::maps::ENDPOINTS.name))
                .expect("opening the endpoint map");
        let map: aya::maps::HashMap<
            _,
            sluice_common::endpoint::IpKey,
            sluice_common::endpoint::EndpointInfo,
        > = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("endpoint map");
        map.keys().count()
    }

    pub fn link_pins(&self) -> Vec<String> {
        std::fs::read_dir(self.pin_dir().join("links"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pod veths recorded as carrying the pod programs' filters.
    pub fn pod_filter_records(&self) -> Vec<String> {
        std::fs::read_dir(self.pin_dir().join("pod-filters"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The BPF filters on the node's links, as `<link> <ingress|egress>
    /// <program>`, sorted.
    pub fn bpf_filters(&self) -> Vec<String> {
        let mut found = Vec::new();
        for link in self.links() {
            for hook in ["ingress", "egress"] {
                let out = self
                    .ns
                    .command("tc")
                    .and_then(|mut c| {
                        c.args(["-j", "filter", "show", "dev", &link, hook])
                            .output()
                    })
                    .expect("tc filter show");
                // A link without clsact has no filters and tc says so on
                // stderr.
                let filters: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
                found.extend(filters.iter().filter_map(|f| {
                    let program = f["options"]["bpf_name"].as_str()?;
                    Some(format!("{link} {hook} {program}"))
                }));
            }
        }
        found.sort();
        found
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Pods' netns are removed by their own guards; their host veths live
        // in this netns and vanish with it.
        if let Err(e) = self.agent.uninstall() {
            eprintln!("uninstalling agent of {}: {e}", self.name);
        }
        let _ = sluice_agent::kernel::bpf::remove_pins(&self.pin_dir());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A pod wired by sluice-cni; CNI DEL (best effort) and netns removal on
/// drop.
pub struct Pod {
    pub container_id: String,
    pub ns: Netns,
    pub ip: IpAddr,
    pub host_if: String,
    pub result: Value,
    cni: CniCall,
    deleted: bool,
}

impl Pod {
    pub fn del_call(&self) -> CniCall {
        self.cni.clone().container(
            &self.container_id,
            &self.ns.path().display().to_string(),
            "eth0",
        )
    }

    /// CNI DEL now; panics if it fails.
    pub fn delete(mut self) {
        let out = self.del_call().invoke().expect("running sluice-cni DEL");
        assert!(out.success, "DEL failed: {} {}", out.stdout, out.stderr);
        self.deleted = true;
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = self.del_call().invoke();
        }
    }
}

/// Set by `cargo xtask test`: the privileged suite was asked for, so a
/// test that cannot run must fail, not pass by skipping.
pub const PRIVILEGED_ENV: &str = "SLUICE_PRIVILEGED";

/// Returns whether the calling test can run: as root it can; otherwise it
/// panics when the privileged suite was requested ([`PRIVILEGED_ENV`]) and
/// says it skips when not.
pub fn can_run_privileged() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os(PRIVILEGED_ENV).is_some() {
        panic!("this test needs root (network namespaces, BPF), and {PRIVILEGED_ENV} says the privileged suite must run");
    }
    eprintln!("skipped: needs root (network namespaces, BPF)");
    false
}

/// Skips the calling test (by returning early) unless running as root;
/// under `cargo xtask test` not running as root fails the test instead.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::can_run_privileged() {
            return;
        }
    };
}

/// A `sluice lab` with a per-test name and directory, driven through the
/// real `sluice` binary; `sluice lab down` on drop, also when the test
/// fails.
pub struct TestLab {
    pub config: LabConfig,
}

impl TestLab {
    /// `sluice lab up --nodes N --routing R`; panics with the CLI's output
    /// on failure (having cleaned up).
    pub fn up(tag: &str, nodes: usize, routing: &str) -> Self {
        let lab = Self::new(tag);
        lab.sluice_ok(&["up", "--nodes", &nodes.to_string(), "--routing", routing]);
        lab
    }

    /// A unique name and directory; nothing is up yet.
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        let dir = std::env::temp_dir().join(format!("sluice-lab-{name}"));
        let config = LabConfig::new(dir, &name, bin_dir())
            .unwrap_or_else(|e| panic!("lab config for {name}: {e}"));
        Self { config }
    }

    /// Packets a node's dataplane counted for a reason.
    pub fn counter(&self, node: &str, reason: Reason) -> u64 {
        let pins = sluice_agent::kernel::bpf::pin_dir(&self.config.bpffs().join("sluice"), node);
        let rows = sluice_agent::kernel::counters::read(&pins)
            .unwrap_or_else(|e| panic!("reading {node}'s counters: {e}"));
        sluice_agent::kernel::counters::packets(&rows, reason)
    }

    /// A node agent's Prometheus page, fetched over HTTP inside the node's
    /// netns as a scraper would.
    pub fn scrape(&self, node: &str) -> String {
        use std::io::{Read as _, Write as _};
        let address: std::net::SocketAddr = sluice_agent::config::DEFAULT_METRICS_ADDRESS
            .parse::<std::net::SocketAddr>()
            .map(|a| std::net::SocketAddr::new([127, 0, 0, 1].into(), a.port()))
            .expect("metrics address");
        self.node_netns(node)
            .run(move || -> std::io::Result<String> {
                let mut conn = std::net::TcpStream::connect_timeout(&address, TIMEOUT)?;
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                conn.write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n",
                )?;
                let mut page = String::new();
                conn.read_to_string(&mut page)?;
                Ok(page)
            })
            .expect("entering the node netns")
            .unwrap_or_else(|e| panic!("scraping {node}'s agent: {e}"))
    }

    /// `sluice lab --dir D --name N --bin-dir B ARGS...`.
    pub fn sluice(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin("sluice"))
            .arg("lab")
            .arg("--dir")
            .arg(&self.config.dir)
            .arg("--name")
            .arg(&self.config.name)
            .arg("--bin-dir")
            .arg(&self.config.bin_dir)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running sluice lab {args:?}: {e}"))
    }

    /// Like [`sluice`](Self::sluice), panicking unless it succeeds;
    /// returns stdout.
    pub fn sluice_ok(&self, args: &[&str]) -> String {
        let out = self.sluice(args);
        assert!(
            out.status.success(),
            "sluice lab {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.agent_logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sluice lab apply -f` of `yaml`, through a file beside the lab's
    /// directory (named `name`, removed again).
    pub fn apply_yaml(&self, name: &str, yaml: &str) {
        let path = self.config.dir.with_extension(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        self.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&path);
    }

    /// The lab through the library (probes, agent restarts, state).
    pub fn lab(&self) -> Lab {
        Lab::open(self.config.clone()).unwrap_or_else(|e| panic!("opening the lab: {e}"))
    }

    /// `sluice lab pod add NS/NAME --node NODE`; the pod as recorded.
    pub fn pod_add(&self, pod: &str, node: &str) -> PodState {
        self.sluice_ok(&["pod", "add", pod, "--node", node]);
        let name: PodName = pod.parse().expect("pod name");
        self.lab()
            .state()
            .pod(&name)
            .cloned()
            .unwrap_or_else(|| panic!("{pod} not in lab.json after pod add"))
    }

    pub fn pod_netns(&self, pod: &str) -> Netns {
        self.lab()
            .pod_netns(&pod.parse().expect("pod name"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn node_netns(&self, node: &str) -> Netns {
        self.lab()
            .node_netns(node)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every node's agent log, for failure messages.
    pub fn agent_logs(&self) -> String {
        let mut logs = String::new();
        for i in 1..=8 {
            let node = format!("node{i}");
            if let Ok(log) = std::fs::read_to_string(self.config.agent_log(&node)) {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                logs.push_str(&format!("--- {node} agent log (last lines) ---\n"));
                for line in tail.into_iter().rev() {
                    logs.push_str(line);
                    logs.push('\n');
                }
            }
        }
        logs
    }

    /// Probes every check between all pods until every pair of different
    /// pods reaches each other or `within` passes (agents learn remote pods
    /// asynchronously); returns the last tables.
    pub fn converge(&self, checks: &[Check], within: Duration) -> Vec<TruthTable> {
        let peers = self.lab().peers();
        let deadline = std::time::Instant::now() + within;
        loop {
            let tables = probe_matrix(&peers, checks, TIMEOUT);
            if tables.iter().all(|t| t.unreachable().is_empty())
                || std::time::Instant::now() > deadline
            {
                return tables;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Retries `probe` until it succeeds or `within` passes.
    pub fn eventually(&self, within: Duration, mut probe: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if probe() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn down(&self) {
        self.sluice_ok(&["down"]);
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let out = self.sluice(&["down"]);
        if !out.status.success() {
            eprintln!(
                "sluice lab down failed: {}; falling back to the library",
                String::from_utf8_lossy(&out.stderr)
            );
            if let Err(e) = teardown::down(&self.config) {
                eprintln!("lab down: {e}");
            }
        }
    }
}
