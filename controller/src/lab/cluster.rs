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
    collections::{BTreeMap, HashSet},
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use sluice_common::api::{self, Request, Response};
use tracing::{info, warn};

use super::{
    agent_proc::{new_session_on_exec, reap_in_background, AgentOptions, AgentProcess},
    cni::{sluice_netconf, CniCall},
    fabric::{self, FabricError},
    manifests::{self, ManifestDir},
    matrix::Peer,
    netns::{self, command_in, Netns},
    objects::{self, ObjectError, ObjectKey},
    probe,
    procs::{self, netns_id},
    state::{self, LabState, NodeState, PodState, StateError},
    teardown,
    topology::{self, plan_nodes, NodePlan, PodName, TopologyError},
};
use crate::{bpffs, config::Routing};

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
const SERVER_READY: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);
const CNI_VERSION: &str = "1.1.0";
const POD_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("wiring the fabric: {0}")]
    Fabric(#[from] FabricError),
    #[error(transparent)]
    Objects(#[from] ObjectError),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} not found: build it (cargo xtask build) or point --bin-dir at it")]
    Binary(PathBuf),
    #[error("no lab {name} in {dir}: start one with `sluice lab up`")]
    NotUp { name: String, dir: PathBuf },
    #[error("{dir} holds lab {found}, not {wanted}: pass --name {found}, or another --dir")]
    OtherLab {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("lab {name} is up with {running}; run `sluice lab down` first to start it with {wanted}")]
    Mismatch {
        name: String,
        running: String,
        wanted: String,
    },
    #[error("an earlier lab {name} left namespaces behind ({}): run `sluice lab down` first", netns.join(", "))]
    Leftovers { name: String, netns: Vec<String> },
    #[error("lab {name} is broken: {reason}; run `sluice lab down`, then `up` again")]
    Broken { name: String, reason: String },
    #[error("the agent of {node} did not come up: {detail}")]
    Agent { node: String, detail: String },
    #[error("no node {node} in lab {lab} (nodes: {})", nodes.join(", "))]
    UnknownNode {
        lab: String,
        node: String,
        nodes: Vec<String>,
    },
    #[error("no pod {0} in the lab")]
    UnknownPod(PodName),
    #[error("pod {0} already exists")]
    PodExists(PodName),
    #[error("pod {pod} would share netns {netns} with pod {other}: choose another name")]
    NetnsClash {
        pod: PodName,
        other: PodName,
        netns: String,
    },
    #[error("invalid ports {0:?}: want 1 to 16 distinct ports in 1-65535")]
    Ports(Vec<u16>),
    #[error("sluice-cni {command} for pod {pod} failed: {output}")]
    Cni {
        pod: PodName,
        command: &'static str,
        output: String,
    },
    #[error("the server of pod {pod} did not come up: {detail}")]
    Server { pod: PodName, detail: String },
    #[error("namespace {namespace} still has pods ({}): delete them first with `sluice lab pod del`", pods.join(", "))]
    NamespaceInUse {
        namespace: String,
        pods: Vec<String>,
    },
    #[error("{path} holds {existing}, which {new} would replace (their file names collide): rename one of them")]
    Conflict {
        path: PathBuf,
        existing: String,
        new: String,
    },
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("removing namespaces failed: {}", .0.join("; "))]
    Netns(Vec<String>),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

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
        Ok(Self {
            dir: dir.into(),
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
        match state::load(&self.dir)? {
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
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            routing: Routing::Tunnel,
            pod_cidr: DEFAULT_POD_CIDR.parse().expect("literal CIDR"),
        }
    }
}

impl std::fmt::Display for UpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} node(s), {} routing, pod CIDR {}",
            self.nodes, self.routing, self.pod_cidr
        )
    }
}

/// A pod to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub pod: PodName,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// Served on TCP and UDP each.
    pub ports: Vec<u16>,
}

impl PodSpec {
    pub fn new(pod: PodName, node: &str) -> Self {
        Self {
            pod,
            node: node.to_owned(),
            labels: BTreeMap::new(),
            ports: DEFAULT_PORTS.to_vec(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    fn validate(&self) -> Result<(), LabError> {
        for (k, v) in &self.labels {
            topology::validate_label(k, v)?;
        }
        let distinct: HashSet<u16> = self.ports.iter().copied().collect();
        if self.ports.is_empty()
            || self.ports.len() > 16
            || distinct.len() != self.ports.len()
            || distinct.contains(&0)
        {
            return Err(LabError::Ports(self.ports.clone()));
        }
        Ok(())
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
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
}

/// A lab that is up.
#[derive(Debug)]
pub struct Lab {
    config: LabConfig,
    state: LabState,
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
        let leftovers = lab_namespaces(&config.name);
        if !leftovers.is_empty() {
            return Err(LabError::Leftovers {
                name: config.name.clone(),
                netns: leftovers,
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
        };
        state::save(&config.dir, &state)?;

        // Start all, then wait for each: agents come up in parallel.
        let mut agents = Vec::new();
        for node in &state.nodes {
            let options = agent_options(config, &state, node)?;
            let agent = AgentProcess::spawn_in_session(options)
                .map_err(io_err(format!("starting the agent of {}", node.name)))?;
            agents.push(agent);
        }
        for (node, agent) in state.nodes.iter_mut().zip(&mut agents) {
            agent.wait_ready(AGENT_READY).map_err(|detail| LabError::Agent {
                node: node.name.clone(),
                detail,
            })?;
            node.agent_pid = agent.pid();
        }
        for agent in agents {
            agent.detach();
        }
        state::save(&config.dir, &state)?;
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
            let state = self.pod_state(&pod)?.clone();
            let pod_ns = Netns::existing(&state.netns);
            let mut child = self.start_server(&pod, &pod_ns, &state.ports)?;
            wait_server(&mut child, &pod, &pod_ns, state.ip, &state.ports)?;
            self.pod_state_mut(&pod)?.server_pid = Some(child.id());
            reap_in_background(child);
        }
        state::save(&self.config.dir, &self.state)?;
        Ok(())
    }

    /// Re-reads `lab.json`: another process may have changed it.
    fn reload(&mut self) -> Result<(), LabError> {
        self.state = Self::open(self.config.clone())?.state;
        Ok(())
    }

    fn node_state(&self, node: &str) -> Result<&NodeState, LabError> {
        self.state.node(node).ok_or_else(|| LabError::UnknownNode {
            lab: self.config.name.clone(),
            node: node.to_owned(),
            nodes: self.state.nodes.iter().map(|n| n.name.clone()).collect(),
        })
    }

    fn pod_state(&self, pod: &PodName) -> Result<&PodState, LabError> {
        self.state
            .pod(pod)
            .ok_or_else(|| LabError::UnknownPod(pod.clone()))
    }

    fn pod_state_mut(&mut self, pod: &PodName) -> Result<&mut PodState, LabError> {
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

    fn agent_running(&self, node: &NodeState) -> bool {
        let Ok(ns) = netns_id(Netns::existing(&node.netns).path()) else {
            return false;
        };
        node.agent_pid.is_some_and(|pid| procs::runs_in(pid, ns))
    }

    fn server_running(&self, pod: &PodState) -> bool {
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

    /// Stops the agent of `node` if it runs and starts it again; returns the
    /// new pid once it answers.
    pub fn restart_agent(&mut self, node: &str) -> Result<u32, LabError> {
        let _lock = self.config.lock()?;
        self.reload()?;
        let pid = self.start_agent(node)?;
        state::save(&self.config.dir, &self.state)?;
        Ok(pid)
    }

    fn start_agent(&mut self, node: &str) -> Result<u32, LabError> {
        let state = self.node_state(node)?;
        if self.agent_running(state) {
            procs::terminate(
                &state.agent_pid.into_iter().collect::<Vec<_>>(),
                STOP_GRACE,
            );
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

    fn cni(&self, node: &NodeState, command: &str, pod: &PodState) -> Result<CniCall, LabError> {
        let netconf = sluice_netconf(
            &self.config.name,
            CNI_VERSION,
            &self.config.agent_socket(&node.name),
        );
        Ok(CniCall::new(&self.config.binary(CNI_BINARY)?, command, netconf)
            .run_in(Netns::existing(&node.netns).path())
            .container(
                &pod.container_id,
                &Netns::existing(&pod.netns).path().display().to_string(),
                POD_IFNAME,
            ))
    }

    /// Creates a pod: its netns, wiring by `sluice-cni ADD` on its node, a
    /// server on its ports, and its Pod object as a kubelet would report it.
    /// On any failure nothing of it is left.
    pub fn pod_add(&mut self, spec: &PodSpec) -> Result<PodState, LabError> {
        spec.validate()?;
        let _lock = self.config.lock()?;
        self.reload()?;
        let pod = &spec.pod;
        let node = self.node_state(&spec.node)?.clone();
        if self.state.pod(pod).is_some() {
            return Err(LabError::PodExists(pod.clone()));
        }
        let netns_name = topology::pod_netns(&self.config.name, pod);
        if let Some(other) = self.state.pods.iter().find(|p| p.netns == netns_name) {
            return Err(LabError::NetnsClash {
                pod: pod.clone(),
                other: other.pod_name(),
                netns: netns_name,
            });
        }
        let started = Instant::now();
        // Dropped last: the rollback below runs CNI DEL while it exists.
        let pod_ns = Netns::create(&netns_name)
            .map_err(io_err(format!("creating netns {netns_name}")))?;
        let mut rollback = Rollback::default();
        let mut state = PodState {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node: node.name.clone(),
            netns: netns_name,
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            container_id: pod.container_id(),
            server_pid: None,
            labels: spec.labels.clone(),
            ports: spec.ports.clone(),
        };

        let add = self.cni(&node, "ADD", &state)?;
        // DEL is idempotent, so it is the rollback even if ADD failed halfway.
        rollback.cni_del = Some(self.cni(&node, "DEL", &state)?);
        let out = add
            .invoke()
            .map_err(io_err(format!("running sluice-cni ADD for {pod}")))?;
        if !out.success {
            return Err(LabError::Cni {
                pod: pod.clone(),
                command: "ADD",
                output: format!("{}{}", out.stdout.trim(), out.stderr.trim()),
            });
        }
        state.ip = out
            .json()
            .as_ref()
            .and_then(result_ip)
            .ok_or_else(|| LabError::Cni {
                pod: pod.clone(),
                command: "ADD",
                output: format!("no IPv4 address in its result: {}", out.stdout.trim()),
            })?;

        let mut server = self.start_server(pod, &pod_ns, &spec.ports)?;
        let waited = wait_server(&mut server, pod, &pod_ns, state.ip, &spec.ports);
        state.server_pid = Some(server.id());
        rollback.server = Some(server);
        waited?;

        let manifests = self.config.manifests();
        let ns_path = manifests.namespace_path(&pod.namespace);
        if !ns_path.exists() {
            write_manifest(
                &manifests,
                &ns_path,
                &manifests::namespace_object(&pod.namespace, &BTreeMap::new()),
            )?;
            rollback.files.push(ns_path);
        }
        let pod_path = manifests.pod_path(pod);
        write_manifest(
            &manifests,
            &pod_path,
            &manifests::pod_object(&state, Some(node.ip)),
        )?;
        rollback.files.push(pod_path);

        self.state.pods.push(state.clone());
        if let Err(e) = state::save(&self.config.dir, &self.state) {
            self.state.pods.retain(|p| !p.is(pod));
            return Err(e.into());
        }
        if let Some(server) = rollback.server.take() {
            reap_in_background(server);
        }
        rollback.disarm();
        let _ = pod_ns.keep();
        info!(%pod, node = %node.name, ip = %state.ip, ms = started.elapsed().as_millis() as u64, "pod added");
        Ok(state)
    }

    fn start_server(&self, pod: &PodName, pod_ns: &Netns, ports: &[u16]) -> Result<Child, LabError> {
        let log_path = self.config.pod_log(pod);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        let stderr = log
            .try_clone()
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut command = command_in(pod_ns.path(), self.config.binary(CLI_BINARY)?)
            .map_err(io_err(format!("entering netns {}", pod_ns.name())))?;
        new_session_on_exec(&mut command);
        command
            .args(["lab", "serve", "--ports", &ports])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(io_err(format!("starting the server of {pod}")))
    }

    /// Stops a pod's processes, `sluice-cni DEL`, removes its netns and its
    /// Pod object.
    pub fn pod_del(&mut self, pod: &PodName) -> Result<(), LabError> {
        let _lock = self.config.lock()?;
        self.reload()?;
        let state = self.pod_state(pod)?.clone();
        let node = self.node_state(&state.node)?.clone();
        let pod_ns = Netns::existing(&state.netns);
        if let Ok(id) = netns_id(pod_ns.path()) {
            procs::terminate(&procs::in_namespaces(&HashSet::from([id])), STOP_GRACE);
        }
        let out = self
            .cni(&node, "DEL", &state)?
            .invoke()
            .map_err(io_err(format!("running sluice-cni DEL for {pod}")))?;
        if !out.success {
            return Err(LabError::Cni {
                pod: pod.clone(),
                command: "DEL",
                output: format!("{}{}", out.stdout.trim(), out.stderr.trim()),
            });
        }
        netns::delete(pod_ns.path()).map_err(io_err(format!("deleting netns {}", state.netns)))?;
        let manifests = self.config.manifests();
        let path = manifests.pod_path(pod);
        manifests
            .remove(&path)
            .map_err(io_err(format!("removing {}", path.display())))?;
        let _ = std::fs::remove_file(self.config.pod_log(pod));
        self.state.pods.retain(|p| !p.is(pod));
        state::save(&self.config.dir, &self.state)?;
        info!(%pod, "pod deleted");
        Ok(())
    }

    /// Merges `labels` into a pod's labels and rewrites its Pod object.
    pub fn label_pod(
        &mut self,
        pod: &PodName,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), LabError> {
        for (k, v) in labels {
            topology::validate_label(k, v)?;
        }
        let _lock = self.config.lock()?;
        self.reload()?;
        let host_ip = self.node_state(&self.pod_state(pod)?.node)?.ip;
        let state = self.pod_state_mut(pod)?;
        state.labels.extend(labels.clone());
        let object = manifests::pod_object(state, Some(host_ip));
        let manifests = self.config.manifests();
        write_manifest(&manifests, &manifests.pod_path(pod), &object)?;
        state::save(&self.config.dir, &self.state)?;
        Ok(())
    }

    /// Creates a namespace, or merges `labels` into an existing one's.
    pub fn label_namespace(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), LabError> {
        topology::validate_dns_label("namespace", namespace)?;
        for (k, v) in labels {
            topology::validate_label(k, v)?;
        }
        let _lock = self.config.lock()?;
        let manifests = self.config.manifests();
        let path = manifests.namespace_path(namespace);
        let mut merged = existing_labels(&path);
        merged.extend(labels.clone());
        write_manifest(
            &manifests,
            &path,
            &manifests::namespace_object(namespace, &merged),
        )
    }

    /// `kubectl apply -f`: every object of every path, each into its own
    /// file; nothing is written unless all of them are valid.
    pub fn apply(&self, paths: &[PathBuf]) -> Result<Vec<ObjectKey>, LabError> {
        let objects = read_all(paths)?;
        let _lock = self.config.lock()?;
        let manifests = self.config.manifests();
        for object in &objects {
            let path = object.key.path(&manifests);
            if let Some(existing) = objects::stored_key(&path) {
                if existing != object.key {
                    return Err(LabError::Conflict {
                        path,
                        existing: existing.to_string(),
                        new: object.key.to_string(),
                    });
                }
            }
        }
        for object in &objects {
            write_manifest(&manifests, &object.key.path(&manifests), &object.value)?;
        }
        Ok(objects.into_iter().map(|o| o.key).collect())
    }

    /// `kubectl delete -f`: removes the objects the paths describe; each
    /// with whether it existed.
    pub fn delete(&mut self, paths: &[PathBuf]) -> Result<Vec<(ObjectKey, bool)>, LabError> {
        let objects = read_all(paths)?;
        let _lock = self.config.lock()?;
        self.reload()?;
        for object in objects.iter().filter(|o| o.key.kind == "Namespace") {
            let pods: Vec<String> = self
                .state
                .pods
                .iter()
                .filter(|p| p.namespace == object.key.name)
                .map(|p| p.pod_name().to_string())
                .collect();
            if !pods.is_empty() {
                return Err(LabError::NamespaceInUse {
                    namespace: object.key.name.clone(),
                    pods,
                });
            }
        }
        let manifests = self.config.manifests();
        objects
            .into_iter()
            .map(|object| {
                let path = object.key.path(&manifests);
                let removed = manifests
                    .remove(&path)
                    .map_err(io_err(format!("removing {}", path.display())))?;
                Ok((object.key, removed))
            })
            .collect()
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
        pods.sort_by(|a, b| a.pod.pod_name().cmp(&b.pod.pod_name()));
        LabStatus {
            name: self.state.name.clone(),
            routing: self.state.routing,
            pod_cidr: self.state.pod_cidr,
            nodes,
            pods,
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
        pod_cidr: node.pod_cidr.to_string(),
        state_dir: dir.join("state"),
        socket: config.agent_socket(&node.name),
        netns: Some(Netns::existing(&node.netns).path().to_owned()),
        log: config.agent_log(&node.name),
        extra_args: vec![
            "--bpffs".into(),
            config.bpffs().display().to_string(),
            "--datastore".into(),
            format!("dir:{}", config.manifests().root().display()),
            "--routing".into(),
            state.routing.to_string(),
        ],
    })
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

fn write_manifest(
    manifests: &ManifestDir,
    path: &Path,
    object: &impl serde::Serialize,
) -> Result<(), LabError> {
    manifests
        .write(path, object)
        .map_err(io_err(format!("writing {}", path.display())))
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<objects::Object>, LabError> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(objects::read_path(path)?);
    }
    Ok(all)
}

fn existing_labels(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_yaml::from_str::<serde_yaml::Value>(&text).ok())
        .and_then(|v| {
            serde_yaml::from_value(v.get("metadata")?.get("labels")?.clone()).ok()
        })
        .unwrap_or_default()
}

/// The pod's IPv4 address in a CNI ADD result.
fn result_ip(result: &serde_json::Value) -> Option<IpAddr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .find(IpAddr::is_ipv4)
}

/// Waits until the pod's server answers on its last port (it binds them
/// all before serving), from inside the pod, so the dataplane plays no part.
fn wait_server(
    child: &mut Child,
    pod: &PodName,
    pod_ns: &Netns,
    ip: IpAddr,
    ports: &[u16],
) -> Result<(), LabError> {
    let port = ports.last().copied().unwrap_or(DEFAULT_PORTS[0]);
    let deadline = Instant::now() + SERVER_READY;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Server {
                pod: pod.clone(),
                detail: format!("it exited with {status}"),
            });
        }
        if probe::tcp(pod_ns, SocketAddr::new(ip, port), Duration::from_millis(500)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Server {
                pod: pod.clone(),
                detail: format!("not serving on {ip}:{port} after {SERVER_READY:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Undoes a half-made pod on drop, unless disarmed.
#[derive(Default)]
struct Rollback {
    cni_del: Option<CniCall>,
    server: Option<Child>,
    files: Vec<PathBuf>,
}

impl Rollback {
    fn disarm(&mut self) {
        self.cni_del = None;
        self.server = None;
        self.files.clear();
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Some(del) = self.cni_del.take() {
            match del.invoke() {
                Ok(out) if out.success => {}
                Ok(out) => warn!(stdout = %out.stdout, "rollback: sluice-cni DEL failed"),
                Err(e) => warn!(error = %e, "rollback: running sluice-cni DEL"),
            }
        }
        for file in self.files.drain(..) {
            let _ = std::fs::remove_file(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn result_ip_takes_the_first_ipv4_address() {
        let result = json!({"ips": [
            {"address": "fd00::5/64"},
            {"address": "10.244.1.7/24", "gateway": "10.244.1.1"},
        ]});
        assert_eq!(result_ip(&result), "10.244.1.7".parse().ok());
        assert_eq!(result_ip(&json!({"ips": []})), None);
        assert_eq!(result_ip(&json!({})), None);
    }

    #[test]
    fn pod_specs_are_checked() {
        let pod: PodName = "x/a".parse().expect("pod");
        let spec = PodSpec::new(pod, "node1").label("pod", "a");
        assert!(spec.validate().is_ok());
        for ports in [vec![], vec![80, 80], vec![0], (1..=17).collect()] {
            let bad = PodSpec {
                ports: ports.clone(),
                ..spec.clone()
            };
            assert!(matches!(bad.validate(), Err(LabError::Ports(_))), "{ports:?}");
        }
        assert!(spec.clone().label("bad key", "v").validate().is_err());
    }

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
        assert_eq!(options.pod_cidr, "10.244.2.0/24");
        assert_eq!(options.netns.as_deref(), Some(Path::new("/run/netns/t-node2")));
        assert_eq!(
            options.extra_args,
            [
                "--bpffs",
                "/lab/bpf",
                "--datastore",
                "dir:/lab/manifests",
                "--routing",
                "native"
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
            "2 node(s), tunnel routing, pod CIDR 10.244.0.0/16"
        );
    }
}
