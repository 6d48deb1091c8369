//! One node of the bench's own, shaped like a lab's node (named and laid
//! out as lab `name` with one node, so `teardown::down` removes it also
//! after a crash) but with what a lab does not offer: a pod CIDR larger
//! than a /24 (1,000 endpoints on one node) and an agent config file
//! (map sizes for a simulated large cluster). Its underlay is a veth
//! pair inside it, one end holding the node's address: nothing leaves the namespace.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::Ipv4Net;

use super::throughput::{BenchError, BenchOptions};
use crate::{
    agent_proc::{AgentOptions, AgentProcess},
    cluster::{LabConfig, AGENT_BINARY, CNI_BINARY},
    cni::{sluice_netconf, CniCall},
    manifests::{self, ManifestDir},
    netns::Netns,
    teardown,
    topology::{self, PodName},
};
use sluice_agent::kernel::bpffs;

pub const NODE: &str = "node1";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const AGENT_READY: Duration = Duration::from_secs(60);

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// The node; everything of it removed on drop.
pub struct SoloNode {
    pub config: LabConfig,
    pub manifests: ManifestDir,
    netns: PathBuf,
    agent: Option<AgentProcess>,
    config_file: PathBuf,
}

impl SoloNode {
    /// Creates the node (no agent yet): its namespace with the underlay,
    /// its bpffs, its Node object and the agent's config (`agent_yaml`).
    pub fn create(
        options: &BenchOptions,
        tag: &str,
        pod_cidr: Ipv4Net,
        agent_yaml: &str,
    ) -> Result<Self, BenchError> {
        let name = format!("{}-{tag}", options.name);
        let config = LabConfig::new(options.dir.join(&name), &name, &options.bin_dir)?;
        // What a crashed earlier run left.
        teardown::down(&config)?;
        let manifests = config.manifests();
        std::fs::create_dir_all(manifests.root())
            .map_err(io(format!("creating {}", manifests.root().display())))?;
        let node = SoloNode {
            netns: Netns::existing(&topology::node_netns(&name, 1))
                .path()
                .to_owned(),
            config_file: config.dir.join("agent.yaml"),
            config,
            manifests,
            agent: None,
        };
        bpffs::ensure_mounted(&node.config.bpffs())
            .map_err(|e| BenchError::Failed(format!("mounting the bench's bpffs: {e}")))?;
        let ns = Netns::create(&topology::node_netns(&name, 1))
            .map_err(io("creating the node's netns"))?
            .keep();
        for args in [
            "link set lo up".to_owned(),
            // A veth pair wholly inside (this kernel has no dummy driver).
            "link add eth0 type veth peer name eth0-peer".to_owned(),
            format!("addr add {NODE_IP}/24 dev eth0"),
            "link set eth0-peer up".to_owned(),
            "link set eth0 up".to_owned(),
        ] {
            ns.ip(&args).map_err(io("setting up the node's underlay"))?;
        }
        let path = node.manifests.node_path(NODE);
        node.manifests
            .write(&path, &manifests::node_object(NODE, NODE_IP, pod_cidr))
            .map_err(io(format!("writing {}", path.display())))?;
        std::fs::write(&node.config_file, agent_yaml)
            .map_err(io(format!("writing {}", node.config_file.display())))?;
        Ok(node)
    }

    pub fn netns(&self) -> Netns {
        Netns::existing(
            self.netns
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default(),
        )
    }

    pub fn socket(&self) -> PathBuf {
        self.config.agent_socket(NODE)
    }

    /// Starts the agent (stopping a running one first); returns its pid
    /// once it answers.
    pub fn start_agent(&mut self) -> Result<u32, BenchError> {
        self.stop_agent();
        let dir = self.config.node_dir(NODE);
        let options = AgentOptions {
            binary: self.config.binary(AGENT_BINARY)?,
            node_name: NODE.into(),
            pod_cidr: None,
            state_dir: dir.join("state"),
            socket: self.socket(),
            netns: Some(self.netns.clone()),
            log: self.config.agent_log(NODE),
            extra_args: vec![
                "--config".into(),
                self.config_file.display().to_string(),
                "--bpffs".into(),
                self.config.bpffs().display().to_string(),
                "--datastore".into(),
                format!("dir:{}", self.manifests.root().display()),
                "--routing".into(),
                "tunnel".into(),
            ],
        };
        let mut agent = AgentProcess::spawn(options).map_err(io("starting the agent"))?;
        let ready = agent.wait_ready(AGENT_READY);
        let pid = agent.pid();
        self.agent = Some(agent);
        ready.map_err(BenchError::Failed)?;
        pid.ok_or_else(|| BenchError::Failed("the agent has no pid".into()))
    }

    /// SIGTERM and wait.
    pub fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(AgentProcess::pid)
    }

    /// `sluice-cni COMMAND` for `pod` in `pod_netns`, run in the node's
    /// namespace with what kubelet passes, as the lab calls it.
    pub fn cni(
        &self,
        command: &str,
        pod: &PodName,
        pod_netns: &Path,
    ) -> Result<CniCall, BenchError> {
        let netconf = sluice_netconf(&self.config.name, "1.1.0", &self.socket());
        let mut call = CniCall::new(&self.config.binary(CNI_BINARY)?, command, netconf)
            .run_in(&self.netns)
            .container(
                &pod.container_id(),
                &pod_netns.display().to_string(),
                "eth0",
            );
        call.args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace,
            pod.name,
            pod.container_id(),
            pod.container_id()
        );
        Ok(call)
    }
}

impl Drop for SoloNode {
    fn drop(&mut self) {
        self.stop_agent();
        if let Err(e) = teardown::down(&self.config) {
            tracing::warn!(error = %e, node = %self.config.name, "removing the bench node");
        }
    }
}
