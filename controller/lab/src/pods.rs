//! Pods of a lab: a netns wired by the real `sluice-cni` on its node, a
//! TCP/UDP server on its ports (`sluice lab serve`), and its Pod object as a
//! kubelet would report it.

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    agent_proc::{new_session_on_exec, reap_in_background},
    cluster::{write_manifest, Lab, CLI_BINARY, CNI_BINARY, DEFAULT_PORTS},
    cni::{sluice_netconf, CniCall},
    error::{io_err, LabError},
    inventory::{self, NodeState, PodState},
    manifests,
    netns::{self, command_in, Netns},
    probe,
    procs::{self, netns_id},
    topology::{self, PodName},
};

const SERVER_READY: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);
const CNI_VERSION: &str = "1.1.0";
const POD_IFNAME: &str = "eth0";

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

impl Lab {
    pub(crate) fn cni(
        &self,
        node: &NodeState,
        command: &str,
        pod: &PodState,
    ) -> Result<CniCall, LabError> {
        let netconf = sluice_netconf(
            &self.config.name,
            CNI_VERSION,
            &self.config.agent_socket(&node.name),
        );
        let mut call = CniCall::new(&self.config.binary(CNI_BINARY)?, command, netconf)
            .run_in(Netns::existing(&node.netns).path())
            .container(
                &pod.container_id,
                &Netns::existing(&pod.netns).path().display().to_string(),
                POD_IFNAME,
            );
        // What kubelet passes: the plugin tells the agent which Pod it is.
        call.args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.container_id, pod.container_id
        );
        Ok(call)
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
        let pod_ns =
            Netns::create(&netns_name).map_err(io_err(format!("creating netns {netns_name}")))?;
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

        // As in a cluster, the Pod object (labels, no address yet) exists
        // before kubelet asks for its network; the agent answers ADD once
        // the Pod's policy is in place.
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
        rollback.files.push(pod_path.clone());
        write_manifest(
            &manifests,
            &pod_path,
            &manifests::pod_object(&state, Some(node.ip)),
        )?;

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
        let waited = wait_server(&mut server, pod, &pod_ns, &spec.ports);
        state.server_pid = Some(server.id());
        rollback.server = Some(server);
        waited?;

        // Running, with the address: what kubelet reports after ADD.
        write_manifest(
            &manifests,
            &pod_path,
            &manifests::pod_object(&state, Some(node.ip)),
        )?;

        self.state.pods.push(state.clone());
        if let Err(e) = inventory::save(&self.config.dir, &self.state) {
            self.state.pods.retain(|p| !p.is(pod));
            return Err(e.into());
        }
        if let Some(server) = rollback.server.take() {
            reap_in_background(server);
        }
        rollback.disarm();
        let _ = pod_ns.keep();
        // A Service selecting it gets it as an endpoint; a failure here
        // leaves the pod in place and is reported.
        self.sync_services()?;
        info!(%pod, node = %node.name, ip = %state.ip, ms = started.elapsed().as_millis() as u64, "pod added");
        Ok(state)
    }

    pub(super) fn start_server(
        &self,
        pod: &PodName,
        pod_ns: &Netns,
        ports: &[u16],
    ) -> Result<Child, LabError> {
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
            // The lab's name on the command line tells whose server it is.
            .args([
                "lab",
                "--name",
                &self.config.name,
                "serve",
                "--ports",
                &ports,
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(io_err(format!("starting the server of {pod}")))
    }

    /// Starts a pod's server again (after it died) and waits for it.
    pub(super) fn restart_server(&mut self, pod: &PodName) -> Result<(), LabError> {
        let state = self.pod_state(pod)?.clone();
        let pod_ns = Netns::existing(&state.netns);
        let mut child = self.start_server(pod, &pod_ns, &state.ports)?;
        if let Err(e) = wait_server(&mut child, pod, &pod_ns, &state.ports) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.pod_state_mut(pod)?.server_pid = Some(child.id());
        reap_in_background(child);
        Ok(())
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
        inventory::save(&self.config.dir, &self.state)?;
        self.sync_services()?;
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
        inventory::save(&self.config.dir, &self.state)?;
        self.sync_services()
    }
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
/// all before serving), over the pod's loopback: no policy or dataplane
/// state can get in the way of the check.
fn wait_server(
    child: &mut Child,
    pod: &PodName,
    pod_ns: &Netns,
    ports: &[u16],
) -> Result<(), LabError> {
    let port = ports.last().copied().unwrap_or(DEFAULT_PORTS[0]);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + SERVER_READY;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Server {
                pod: pod.clone(),
                detail: format!("it exited with {status}"),
            });
        }
        if probe::tcp(pod_ns, addr, Duration::from_millis(500)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Server {
                pod: pod.clone(),
                detail: format!("not serving on port {port} after {SERVER_READY:?}"),
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
    use serde_json::json;

    use super::*;

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
            assert!(
                matches!(bad.validate(), Err(LabError::Ports(_))),
                "{ports:?}"
            );
        }
        assert!(spec.clone().label("bad key", "v").validate().is_err());
    }
}
