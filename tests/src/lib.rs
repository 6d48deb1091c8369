//! Harness for the end-to-end tests: a node (network namespace + the real
//! agent) and pods wired by the real `sluice-cni`, all with per-test unique
//! names, all removed on drop, also when a test fails.
//!
//! These tests need root, the built binaries (`SLUICE_BIN_DIR`, set by
//! `cargo xtask test`) and a kernel with BPF/TCX; they run through
//! `cargo xtask test`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::Value;
use sluice_common::api::{self, AgentStatus, Request, Response};
pub use sluice_controller::lab::{
    agent_proc::{AgentOptions, AgentProcess},
    cni::{sluice_netconf, CniCall, CniOutput},
    netns::Netns,
    probe,
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
        let name = unique(tag);
        let ns = Netns::create(&format!("{name}-node"))
            .unwrap_or_else(|e| panic!("creating netns for {name}: {e}"));
        let dir = std::env::temp_dir().join(format!("sluice-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let options = AgentOptions {
            binary: bin("sluice-agent"),
            node_name: name.clone(),
            pod_cidr: pod_cidr.to_owned(),
            state_dir: dir.join("state"),
            socket: dir.join("agent.sock"),
            netns: Some(ns.path().to_owned()),
            log: dir.join("agent.log"),
            extra_args: Vec::new(),
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
    pub fn counter(&self, reason: &str) -> u64 {
        let rows = sluice_controller::counters::read(&self.pin_dir()).expect("reading counters");
        sluice_controller::counters::packets(&rows, reason)
    }

    /// Entries of the pinned endpoint map.
    pub fn endpoint_entries(&self) -> usize {
        let data =
            aya::maps::MapData::from_pin(self.pin_dir().join(sluice_common::maps::ENDPOINTS))
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
}

impl Drop for Node {
    fn drop(&mut self) {
        // Pods' netns are removed by their own guards; their host veths live
        // in this netns and vanish with it.
        if let Err(e) = self.agent.uninstall() {
            eprintln!("uninstalling agent of {}: {e}", self.name);
        }
        let _ = sluice_controller::dataplane::remove_pins(&self.pin_dir());
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

/// Skips the calling test (by returning early) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root (network namespaces, BPF)");
            return;
        }
    };
}
