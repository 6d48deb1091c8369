//! `lab.json`: what a lab is made of, so later commands (and `down` after
//! a crash of an earlier one) know what exists.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::topology::PodName;
use sluice_agent::config::{FlowRecord, PodAttachment, PrefilterMode, Routing};

pub const STATE_FILE: &str = "lab.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    #[serde(with = "routing_name")]
    pub routing: Routing,
    /// The cluster's pod CIDR; nodes get /24s of it.
    pub pod_cidr: Ipv4Net,
    /// Where sluice, sluice-agent and sluice-cni were taken from.
    pub bin_dir: PathBuf,
    pub nodes: Vec<NodeState>,
    #[serde(default)]
    pub pods: Vec<PodState>,
    /// Services by the kube-proxy emulation instead of the agents.
    #[serde(default)]
    pub kube_proxy: bool,
    /// The agents' `--prefilter-mode`.
    #[serde(default)]
    pub prefilter_mode: PrefilterMode,
    /// The agents' `--pod-attachment`.
    #[serde(default)]
    pub pod_attachment: PodAttachment,
    /// The agents' `--flows-record` (labs from before it recorded always).
    #[serde(default = "record_always")]
    pub flows_record: FlowRecord,
    /// The agents read the cluster from the API server of this kubeconfig
    /// instead of the lab's manifest directory (the lab still writes its
    /// objects there: something must serve them, as tests' fake API
    /// server does).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub agent_pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: IpAddr,
    pub container_id: String,
    pub server_pid: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<u16>,
}

fn record_always() -> FlowRecord {
    FlowRecord::Always
}

impl PodState {
    pub fn pod_name(&self) -> PodName {
        PodName {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    pub fn is(&self, pod: &PodName) -> bool {
        self.namespace == pod.namespace && self.name == pod.name
    }
}

impl LabState {
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, pod: &PodName) -> Option<&PodState> {
        self.pods.iter().find(|p| p.is(pod))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid lab state file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The state in `dir`, or `None` when there is no lab there.
pub fn load(dir: &Path) -> Result<Option<LabState>, StateError> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| StateError::Parse { path, source })
}

pub fn save(dir: &Path, state: &LabState) -> Result<(), StateError> {
    let path = dir.join(STATE_FILE);
    // Serialising plain data cannot fail.
    let mut text = serde_json::to_vec_pretty(state).unwrap_or_default();
    text.push(b'\n');
    write_atomic(&path, &text).map_err(|source| StateError::Write { path, source })
}

/// Writes through a temporary file and a rename, so readers (other lab
/// commands, agents watching manifests) see the old or the new content,
/// never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    sluice_sys::fs::write_atomic(path, bytes, 0o644)
}

mod routing_name {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use sluice_agent::config::Routing;

    pub fn serialize<S: Serializer>(routing: &Routing, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(routing)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Routing, D::Error> {
        Routing::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabState {
        LabState {
            name: "lab".into(),
            routing: Routing::Native,
            pod_cidr: "10.244.0.0/16".parse().expect("cidr"),
            bin_dir: "/usr/bin".into(),
            nodes: vec![NodeState {
                name: "node1".into(),
                netns: "lab-node1".into(),
                ip: Ipv4Addr::new(172, 30, 0, 11),
                pod_cidr: "10.244.1.0/24".parse().expect("cidr"),
                agent_pid: Some(42),
            }],
            pods: vec![PodState {
                namespace: "x".into(),
                name: "a".into(),
                node: "node1".into(),
                netns: "lab-pod-x-a".into(),
                ip: "10.244.1.2".parse().expect("ip"),
                container_id: "x_a".into(),
                server_pid: None,
                labels: BTreeMap::from([("pod".into(), "a".into())]),
                ports: vec![80, 81],
            }],
            kube_proxy: false,
            prefilter_mode: PrefilterMode::Auto,
            pod_attachment: PodAttachment::Tcx,
            flows_record: FlowRecord::Always,
            kubeconfig: None,
        }
    }

    #[test]
    fn round_trips_and_names_routing_in_lowercase() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), None);
        save(dir.path(), &sample()).expect("save");
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).expect("read");
        assert!(text.contains("\"routing\": \"native\""), "{text}");
        assert_eq!(load(dir.path()).expect("load"), Some(sample()));
        // Only lab.json is left: the temporary file was renamed.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [STATE_FILE]);
    }

    #[test]
    fn garbage_is_a_parse_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(STATE_FILE), "{").expect("write");
        let err = load(dir.path()).expect_err("garbage");
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }

    #[test]
    fn lookups_by_name() {
        let state = sample();
        assert!(state.node("node1").is_some());
        assert!(state.node("node2").is_none());
        let pod: PodName = "x/a".parse().expect("pod");
        assert_eq!(
            state.pod(&pod).map(|p| p.ip.to_string()).as_deref(),
            Some("10.244.1.2")
        );
    }
}
