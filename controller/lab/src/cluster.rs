//! A multi-node cluster on one host: node namespaces running the real
//! agent, pods wired by the real CNI plugin, a fabric between the nodes and
//! a directory of Kubernetes YAML every agent watches. The `sluice lab` CLI,
//! the end-to-end tests, the conformance runner and the benchmarks all drive
//! it through [`Lab`].
//!
//! One directory holds everything a lab has on disk (`lab.json`, the
//! manifests, agent state and logs, its private bpffs); its namespaces are
//! all named `{name}-*`. [`down`](super::teardown::down) relies on that to
//! clean up after crashes.

use std::{
    fs::File,
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use sluice_common::api::{self, Request, Response};
use tracing::{info, warn};

use super::{
    agent_proc::{AgentOptions, AgentProcess},
    error::io_err,
    fabric,
    inventory::{self, LabState, NodeState, PodState},
    kube_proxy,
    manifests::{self, ManifestDir},
    matrix::Peer,
    netns::{self, Netns},
    procs::{self, netns_id},
    teardown,
    topology::{self, plan_nodes, NodePlan, PodName},
};
pub use super::{error::LabError, pods::PodSpec};
use sluice_agent::{
    config::{FlowRecord, PodAttachment, PrefilterMode, Routing},
    kernel::bpffs,
};

pub const DEFAULT_DIR: &str = "/var/run/sluice-lab";
pub const DEFAULT_NAME: &str = "sluice-lab";
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
/// What pods serve unless told otherwise: the upstream e2e model's ports.
pub const DEFAULT_PORTS: [u16; 2] = [80, 81];
pub const AGENT_BINARY: &str = "sluice-agent";
pub const CNI_BINARY: &str = "sluice-cni";
/// The CLI itself, which also serves pods' ports (`sluice lab serve`).
pub const CLI_BINARY: &str = "sluice";

const LOCK_FILE: &str = "lab.lock";
const AGENT_READY: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where a lab lives and what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// Holds everything the lab keeps on disk.
    pub dir: PathBuf,
    /// Prefix of every namespace of the lab.
    pub name: String,
    /// Holds sluice, sluice-agent and sluice-cni.
    pub bin_dir: PathBuf,
}

impl LabConfig {
    pub fn new(
        dir: impl Into<PathBuf>,
        name: &str,
        bin_dir: impl Into<PathBuf>,
    ) -> Result<Self, LabError> {
        topology::validate_lab_name(name)?;
        let dir = dir.into();
        // Agents and sluice-cni run elsewhere (other namespaces, other
        // working directories): every path handed to them must be absolute.
        let dir =
            std::path::absolute(&dir).map_err(io_err(format!("resolving {}", dir.display())))?;
        Ok(Self {
            dir,
            name: name.to_owned(),
            bin_dir: bin_dir.into(),
        })
    }

    pub fn manifests(&self) -> ManifestDir {
        ManifestDir::new(self.dir.join("manifests"))
    }

    /// The lab's private bpffs: pins of different labs never collide, and
    /// unmounting it frees them all.
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    pub fn agent_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.sock")
    }

    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }

    pub fn pod_log(&self, pod: &PodName) -> PathBuf {
        self.dir
            .join("pods")
            .join(format!("{}-{}.log", pod.namespace, pod.name))
    }

    /// A binary of `bin_dir`, which must exist.
    pub fn binary(&self, name: &str) -> Result<PathBuf, LabError> {
        let path = self.bin_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(LabError::Binary(path))
        }
    }

    /// Serialises commands that change the lab, across processes.
    pub(crate) fn lock(&self) -> Result<Flock<File>, LabError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io_err(format!("creating {}", self.dir.display())))?;
        let path = self.dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| LabError::Io {
            what: format!("locking {}", path.display()),
            source: io::Error::from_raw_os_error(errno as i32),
        })
    }

    /// The lab's state, checking it is this lab's.
    pub fn load_state(&self) -> Result<Option<LabState>, LabError> {
        match inventory::load(&self.dir)? {
            Some(state) if state.name != self.name => Err(LabError::OtherLab {
                dir: self.dir.clone(),
                found: state.name,
                wanted: self.name.clone(),
            }),
            other => Ok(other),
        }
    }
}

/// The shape of a lab, fixed at `up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpOptions {
    pub nodes: usize,
    pub routing: Routing,
    pub pod_cidr: Ipv4Net,
    /// Services by an emulation of kube-proxy's iptables mode in every
    /// node, with the agents beside it (`kubeProxyReplacement: false`),
    /// instead of by the agents in eBPF.
    pub kube_proxy: bool,
    /// Where the agents run the XDP prefilter on their veth underlay
    /// (`auto`: generic there).
    pub prefilter_mode: PrefilterMode,
    /// How the agents attach the pod programs (TCX links or clsact
    /// filters).
    pub pod_attachment: PodAttachment,
    /// When the agents record flows: by default always, so that `lab
    /// observe` has history; the bench's labs record on demand, as a
    /// cluster does, so that they measure the datapath as it runs there.
    pub flows_record: FlowRecord,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            routing: Routing::Tunnel,
            pod_cidr: DEFAULT_POD_CIDR.parse().expect("literal CIDR"),
            kube_proxy: false,
            prefilter_mode: PrefilterMode::Auto,
            pod_attachment: PodAttachment::Tcx,
            flows_record: FlowRecord::Always,
        }
    }
}

/// Who serves Services in a lab.
pub fn services_by(kube_proxy: bool) -> &'static str {
    if kube_proxy {
        "the kube-proxy emulation (iptables)"
    } else {
        "sluice (eBPF)"
    }
}

impl std::fmt::Display for UpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} node(s), {} routing, pod CIDR {}, services by {}",
            self.nodes,
            self.routing,
            self.pod_cidr,
            services_by(self.kube_proxy)
        )
    }
}

/// A node as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub agent_pid: Option<u32>,
    pub agent_running: bool,
    /// From the agent's API; `None` when it does not answer.
    pub endpoints: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStatus {
    pub pod: PodState,
    pub server_running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabStatus {
    pub name: String,
    pub routing: Routing,
    pub pod_cidr: Ipv4Net,
    pub kube_proxy: bool,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
    pub services: Vec<ServiceStatus>,
}

/// A Service as `kubectl get services` shows it, with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// `namespace/name`.
    pub name: String,
    pub kind: String,
    pub cluster_ip: String,
    /// `port[:nodePort]/protocol`, in spec order.
    pub ports: Vec<String>,
    /// Ready endpoint addresses of its slices.
    pub endpoints: Vec<String>,
}

/// A lab that is up.
#[derive(Debug)]
pub struct Lab {
    pub(super) config: LabConfig,
    pub(super) state: LabState,
}

impl Lab {
    /// Brings a lab up, or checks the one that is up: with the same shape it
    /// only restarts agents and servers that died; with another shape it
    /// fails. A failed `up` removes what it made.
    pub fn up(config: LabConfig, options: &UpOptions) -> Result<Self, LabError> {
        let plan = plan_nodes(&config.name, options.nodes, options.pod_cidr)?;
        for binary in [AGENT_BINARY, CNI_BINARY, CLI_BINARY] {
            config.binary(binary)?;
        }
        let _lock = config.lock()?;
        if let Some(state) = config.load_state()? {
            let running = UpOptions {
                nodes: state.nodes.len(),
                routing: state.routing,
                pod_cidr: state.pod_cidr,
                kube_proxy: state.kube_proxy,
                prefilter_mode: state.prefilter_mode,
                pod_attachment: state.pod_attachment,
                flows_record: state.flows_record,
            };
            if running != *options {
                return Err(LabError::Mismatch {
                    name: config.name.clone(),
                    running: running.to_string(),
                    wanted: options.to_string(),
                });
            }
            let mut lab = Self { config, state };
            lab.heal()?;
            return Ok(lab);
        }
        let leftovers = leftovers(&config);
        if !leftovers.is_empty() {
            return Err(LabError::Leftovers {
                name: config.name.clone(),
                what: leftovers,
            });
        }
        match Self::create(&config, options, &plan) {
            Ok(state) => {
                info!(lab = %config.name, %options, "lab up");
                Ok(Self { config, state })
            }
            Err(e) => {
                if let Err(cleanup) = teardown::remove_all(&config) {
                    warn!(lab = %config.name, error = %cleanup, "cleaning up after a failed up");
                }
                Err(e)
            }
        }
    }

    /// The lab that is up in `config.dir`.
    pub fn open(config: LabConfig) -> Result<Self, LabError> {
        match config.load_state()? {
            Some(state) => Ok(Self { config, state }),
            None => Err(LabError::NotUp {
                name: config.name.clone(),
                dir: config.dir.clone(),
            }),
        }
    }

    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    fn create(
        config: &LabConfig,
        options: &UpOptions,
        plan: &[NodePlan],
    ) -> Result<LabState, LabError> {
        let manifests = config.manifests();
        for dir in [manifests.root().to_owned(), config.dir.join("pods")] {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        bpffs::ensure_mounted(&config.bpffs())?;

        let fabric = create_netns(&topology::fabric_netns(&config.name))?;
        let ext_name = topology::ext_netns(&config.name);
        create_netns(&ext_name)?;
        for node in plan {
            create_netns(&node.netns)?;
        }
        fabric::build(&fabric, &fabric::uplinks(plan, &ext_name))?;

        // Agents learn their peers (and their own underlay device) from the
        // Node objects, so those exist before any agent starts.
        for node in plan {
            let path = manifests.node_path(&node.name);
            manifests
                .write(
                    &path,
                    &manifests::node_object(&node.name, node.ip, node.pod_cidr),
                )
                .map_err(io_err(format!("writing {}", path.display())))?;
        }
        let mut state = LabState {
            name: config.name.clone(),
            routing: options.routing,
            pod_cidr: options.pod_cidr,
            bin_dir: config.bin_dir.clone(),
            nodes: plan
                .iter()
                .map(|n| NodeState {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    ip: n.ip,
                    pod_cidr: n.pod_cidr,
                    agent_pid: None,
                })
                .collect(),
            pods: Vec::new(),
            kube_proxy: options.kube_proxy,
            prefilter_mode: options.prefilter_mode,
            pod_attachment: options.pod_attachment,
            flows_record: options.flows_record,
            kubeconfig: None,
        };
        inventory::save(&config.dir, &state)?;
        if state.kube_proxy {
            for node in &state.nodes {
                install_kube_proxy(node, state.pod_cidr)?;
            }
        }

        // Start all, then wait for each: agents come up in parallel.
        let mut agents = Vec::new();
        for node in &state.nodes {
            let options = agent_options(config, &state, node)?;
            let agent = AgentProcess::spawn_in_session(options)
                .map_err(io_err(format!("starting the agent of {}", node.name)))?;
            agents.push(agent);
        }
        for (node, agent) in state.nodes.iter_mut().zip(&mut agents) {
            agent
                .wait_ready(AGENT_READY)
                .map_err(|detail| LabError::Agent {
                    node: node.name.clone(),
                    detail,
                })?;
            node.agent_pid = agent.pid();
        }
        for agent in agents {
            agent.detach();
        }
        inventory::save(&config.dir, &state)?;
        Ok(state)
    }

    /// Restarts dead agents and pod servers; fails when something that
    /// cannot simply be restarted is gone.
    fn heal(&mut self) -> Result<(), LabError> {
        let broken = |reason: String| LabError::Broken {
            name: self.config.name.clone(),
            reason,
        };
        if !bpffs::is_mounted(&self.config.bpffs()) {
            return Err(broken(format!(
                "its bpffs {} is not mounted",
                self.config.bpffs().display()
            )));
        }
        let expected = [
            topology::fabric_netns(&self.config.name),
            topology::ext_netns(&self.config.name),
        ]
        .into_iter()
        .chain(self.state.nodes.iter().map(|n| n.netns.clone()))
        .chain(self.state.pods.iter().map(|p| p.netns.clone()));
        for name in expected {
            if netns_id(Netns::existing(&name).path()).is_err() {
                return Err(broken(format!("netns {name} is gone")));
            }
        }
        let dead_agents: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|n| !self.agent_running(n))
            .map(|n| n.name.clone())
            .collect();
        for node in dead_agents {
            warn!(lab = %self.config.name, %node, "agent not running; restarting it");
            self.start_agent(&node)?;
        }
        let dead_servers: Vec<PodName> = self
            .state
            .pods
            .iter()
            .filter(|p| !self.server_running(p))
            .map(PodState::pod_name)
            .collect();
        for pod in dead_servers {
            warn!(lab = %self.config.name, %pod, "pod server not running; restarting it");
            self.restart_server(&pod)?;
        }
        inventory::save(&self.config.dir, &self.state)?;
        Ok(())
    }

    /// Re-reads `lab.json`: another process may have changed it.
    pub(super) fn reload(&mut self) -> Result<(), LabError> {
        self.state = Self::open(self.config.clone())?.state;
        Ok(())
    }

    pub(super) fn node_state(&self, node: &str) -> Result<&NodeState, LabError> {
        self.state.node(node).ok_or_else(|| LabError::UnknownNode {
            lab: self.config.name.clone(),
            node: node.to_owned(),
            nodes: self.state.nodes.iter().map(|n| n.name.clone()).collect(),
        })
    }

    pub(super) fn pod_state(&self, pod: &PodName) -> Result<&PodState, LabError> {
        self.state
            .pod(pod)
            .ok_or_else(|| LabError::UnknownPod(pod.clone()))
    }

    pub(super) fn pod_state_mut(&mut self, pod: &PodName) -> Result<&mut PodState, LabError> {
        self.state
            .pods
            .iter_mut()
            .find(|p| p.is(pod))
            .ok_or_else(|| LabError::UnknownPod(pod.clone()))
    }

    /// How the agent of `node` is (re)started.
    pub fn agent_options(&self, node: &str) -> Result<AgentOptions, LabError> {
        agent_options(&self.config, &self.state, self.node_state(node)?)
    }

    pub fn node_netns(&self, node: &str) -> Result<Netns, LabError> {
        Ok(Netns::existing(&self.node_state(node)?.netns))
    }

    pub fn pod_netns(&self, pod: &PodName) -> Result<Netns, LabError> {
        Ok(Netns::existing(&self.pod_state(pod)?.netns))
    }

    /// The external host (`203.0.113.10`, no routes to pods).
    pub fn ext_netns(&self) -> Netns {
        Netns::existing(&topology::ext_netns(&self.config.name))
    }

    pub(super) fn agent_running(&self, node: &NodeState) -> bool {
        let Ok(ns) = netns_id(Netns::existing(&node.netns).path()) else {
            return false;
        };
        node.agent_pid.is_some_and(|pid| procs::runs_in(pid, ns))
    }

    pub(super) fn server_running(&self, pod: &PodState) -> bool {
        let Ok(ns) = netns_id(Netns::existing(&pod.netns).path()) else {
            return false;
        };
        pod.server_pid.is_some_and(|pid| procs::runs_in(pid, ns))
    }

    /// SIGKILLs the agent of `node`, as a crash would; pods keep their
    /// wiring and pinned programs.
    pub fn kill_agent(&mut self, node: &str) -> Result<(), LabError> {
        let _lock = self.config.lock()?;
        self.reload()?;
        let state = self.node_state(node)?;
        if self.agent_running(state) {
            procs::kill_now(&state.agent_pid.into_iter().collect::<Vec<_>>());
        }
        Ok(())
    }

    /// Restarts every agent reading the cluster from the API server of
    /// `kubeconfig` (`None`: from the lab's manifest directory again).
    pub fn use_kubeconfig(&mut self, kubeconfig: Option<PathBuf>) -> Result<(), LabError> {
        let _lock = self.config.lock()?;
        self.reload()?;
        self.state.kubeconfig = kubeconfig;
        inventory::save(&self.config.dir, &self.state)?;
        let nodes: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        for node in nodes {
            self.start_agent(&node)?;
        }
        inventory::save(&self.config.dir, &self.state)?;
        Ok(())
    }

    /// Stops the agent of `node` if it runs and starts it again; returns the
    /// new pid once it answers.
    pub fn restart_agent(&mut self, node: &str) -> Result<u32, LabError> {
        let _lock = self.config.lock()?;
        self.reload()?;
        let pid = self.start_agent(node)?;
        inventory::save(&self.config.dir, &self.state)?;
        Ok(pid)
    }

    fn start_agent(&mut self, node: &str) -> Result<u32, LabError> {
        let state = self.node_state(node)?;
        if self.agent_running(state) {
            procs::terminate(&state.agent_pid.into_iter().collect::<Vec<_>>(), STOP_GRACE);
        }
        let options = self.agent_options(node)?;
        let mut agent = AgentProcess::spawn_in_session(options)
            .map_err(io_err(format!("starting the agent of {node}")))?;
        agent
            .wait_ready(AGENT_READY)
            .map_err(|detail| LabError::Agent {
                node: node.to_owned(),
                detail,
            })?;
        let pid = agent.pid().unwrap_or_default();
        agent.detach();
        if let Some(n) = self.state.nodes.iter_mut().find(|n| n.name == node) {
            n.agent_pid = Some(pid);
        }
        Ok(pid)
    }

    /// Every pod as a matrix peer, in `ns/name` order.
    pub fn peers(&self) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .state
            .pods
            .iter()
            .map(|p| Peer {
                label: p.pod_name().to_string(),
                netns: p.netns.clone(),
                ip: p.ip,
            })
            .collect();
        peers.sort_by(|a, b| a.label.cmp(&b.label));
        peers
    }

    pub fn status(&self) -> LabStatus {
        let nodes = self
            .state
            .nodes
            .iter()
            .map(|n| {
                let endpoints = match api::call(
                    &self.config.agent_socket(&n.name),
                    &Request::Status,
                    Duration::from_secs(2),
                ) {
                    Ok(Response::Status { status }) => Some(status.endpoints),
                    _ => None,
                };
                NodeStatus {
                    name: n.name.clone(),
                    ip: n.ip,
                    pod_cidr: n.pod_cidr,
                    agent_pid: n.agent_pid,
                    agent_running: self.agent_running(n),
                    endpoints,
                }
            })
            .collect();
        let mut pods: Vec<PodStatus> = self
            .state
            .pods
            .iter()
            .map(|p| PodStatus {
                pod: p.clone(),
                server_running: self.server_running(p),
            })
            .collect();
        pods.sort_by_key(|p| p.pod.pod_name());
        LabStatus {
            name: self.state.name.clone(),
            routing: self.state.routing,
            pod_cidr: self.state.pod_cidr,
            kube_proxy: self.state.kube_proxy,
            nodes,
            pods,
            // A manifest that does not read shows as no Service; the
            // agents report it.
            services: self.service_status().unwrap_or_default(),
        }
    }
}

fn agent_options(
    config: &LabConfig,
    state: &LabState,
    node: &NodeState,
) -> Result<AgentOptions, LabError> {
    let dir = config.node_dir(&node.name);
    Ok(AgentOptions {
        binary: config.binary(AGENT_BINARY)?,
        node_name: node.name.clone(),
        // From the node's Node object, as in a cluster.
        pod_cidr: None,
        state_dir: dir.join("state"),
        socket: config.agent_socket(&node.name),
        netns: Some(Netns::existing(&node.netns).path().to_owned()),
        log: config.agent_log(&node.name),
        extra_args: vec![
            "--bpffs".into(),
            config.bpffs().display().to_string(),
            "--datastore".into(),
            match &state.kubeconfig {
                Some(kubeconfig) => format!("kubernetes:{}", kubeconfig.display()),
                None => format!("dir:{}", config.manifests().root().display()),
            },
            "--routing".into(),
            state.routing.to_string(),
            "--kube-proxy-replacement".into(),
            (!state.kube_proxy).to_string(),
            "--prefilter-mode".into(),
            state.prefilter_mode.to_string(),
            "--pod-attachment".into(),
            state.pod_attachment.to_string(),
            // `sluice lab observe` shows what was recorded, so the lab
            // records always unless asked (a cluster's default is on
            // demand).
            "--flows-record".into(),
            state.flows_record.to_string(),
        ],
    })
}

/// The kube-proxy emulation's chains, still empty, and the jumps into
/// them, in a new node.
fn install_kube_proxy(node: &NodeState, cluster_cidr: Ipv4Net) -> Result<(), LabError> {
    let ns = Netns::existing(&node.netns);
    let input = kube_proxy::restore_input(
        &[],
        &[],
        &kube_proxy::NodeView {
            name: &node.name,
            cluster_cidr,
        },
        &Default::default(),
        true,
    );
    kube_proxy::restore(&ns, &input).map_err(io_err(format!(
        "installing the kube-proxy emulation in {}",
        node.name
    )))
}

/// What an earlier lab of this name left (when there is no `lab.json`):
/// namespaces, its bpffs, manifests a new lab's agents would read.
fn leftovers(config: &LabConfig) -> Vec<String> {
    let mut found: Vec<String> = lab_namespaces(&config.name)
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
    if bpffs::is_mounted(&config.bpffs()) {
        found.push(format!("bpffs on {}", config.bpffs().display()));
    }
    let manifests = config.manifests();
    if manifests.root().exists() {
        found.push(format!("manifests in {}", manifests.root().display()));
    }
    found
}

/// Names of the namespaces of lab `name` that exist.
pub fn lab_namespaces(name: &str) -> Vec<String> {
    netns::list(&format!("{name}-"))
        .into_iter()
        .filter(|n| topology::is_lab_netns(name, n))
        .collect()
}

fn create_netns(name: &str) -> Result<Netns, LabError> {
    Netns::create(name)
        .map(Netns::keep)
        .map_err(io_err(format!("creating netns {name}")))
}

pub(super) fn write_manifest(
    manifests: &ManifestDir,
    path: &Path,
    object: &impl serde::Serialize,
) -> Result<(), LabError> {
    manifests
        .write(path, object)
        .map_err(io_err(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_get_the_lab_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(AGENT_BINARY), "").expect("fake binary");
        let config = LabConfig::new("/lab", "t", dir.path()).expect("config");
        let state = LabState {
            name: "t".into(),
            routing: Routing::Native,
            pod_cidr: "10.244.0.0/16".parse().expect("cidr"),
            bin_dir: dir.path().to_owned(),
            nodes: vec![],
            pods: vec![],
            kube_proxy: true,
            prefilter_mode: PrefilterMode::Native,
            pod_attachment: PodAttachment::Tc,
            flows_record: FlowRecord::OnDemand,
            kubeconfig: None,
        };
        let node = NodeState {
            name: "node2".into(),
            netns: "t-node2".into(),
            ip: Ipv4Addr::new(172, 30, 0, 12),
            pod_cidr: "10.244.2.0/24".parse().expect("cidr"),
            agent_pid: None,
        };
        let options = agent_options(&config, &state, &node).expect("options");
        assert_eq!(options.socket, Path::new("/lab/nodes/node2/agent.sock"));
        assert_eq!(options.state_dir, Path::new("/lab/nodes/node2/state"));
        assert_eq!(options.log, Path::new("/lab/nodes/node2/agent.log"));
        assert_eq!(options.pod_cidr, None, "the Node object gives it");
        assert_eq!(
            options.netns.as_deref(),
            Some(Path::new("/run/netns/t-node2"))
        );
        assert_eq!(
            options.extra_args,
            [
                "--bpffs",
                "/lab/bpf",
                "--datastore",
                "dir:/lab/manifests",
                "--routing",
                "native",
                "--kube-proxy-replacement",
                "false",
                "--prefilter-mode",
                "native",
                "--pod-attachment",
                "tc",
                "--flows-record",
                "on-demand"
            ]
        );
        assert!(matches!(
            LabConfig::new("/lab", "t", "/nonexistent").map(|c| c.binary(AGENT_BINARY)),
            Ok(Err(LabError::Binary(_)))
        ));
        assert!(LabConfig::new("/lab", "Bad", "/x").is_err());
    }

    #[test]
    fn up_options_print_for_mismatch_errors() {
        assert_eq!(
            UpOptions::default().to_string(),
            "2 node(s), tunnel routing, pod CIDR 10.244.0.0/16, services by sluice (eBPF)"
        );
        let kube_proxy = UpOptions {
            kube_proxy: true,
            ..UpOptions::default()
        };
        assert!(kube_proxy
            .to_string()
            .ends_with("services by the kube-proxy emulation (iptables)"));
    }
}
