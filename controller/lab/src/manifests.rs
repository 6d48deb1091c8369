//! The lab's datastore: a directory of ordinary Kubernetes YAML that every
//! agent watches (`--datastore dir:PATH`). The lab writes Nodes, Namespaces
//! and Pods into it the way the control plane and kubelets would report
//! them; users add the rest with `sluice lab apply`.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::json;

use super::{
    inventory::{write_atomic, PodState},
    topology::PodName,
};

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where each kind of object lives under the manifest directory.
#[derive(Debug, Clone)]
pub struct ManifestDir {
    root: PathBuf,
}

impl ManifestDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn node_path(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(format!("{node}.yaml"))
    }

    pub fn namespace_path(&self, namespace: &str) -> PathBuf {
        self.root
            .join("namespaces")
            .join(format!("{namespace}.yaml"))
    }

    pub fn pod_path(&self, pod: &PodName) -> PathBuf {
        self.root
            .join("pods")
            .join(format!("{}-{}.yaml", pod.namespace, pod.name))
    }

    /// Objects users apply (policies and whatever else), one file each.
    pub fn object_path(&self, kind: &str, namespace: Option<&str>, name: &str) -> PathBuf {
        let kind = kind.to_ascii_lowercase();
        let file = match namespace {
            Some(ns) => format!("{kind}-{ns}-{name}.yaml"),
            None => format!("{kind}-{name}.yaml"),
        };
        self.objects_dir().join(file)
    }

    /// Where [`Self::object_path`]s are.
    pub fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    /// Renders `object` as YAML and replaces `path` atomically, so an agent
    /// never reads half a file.
    pub fn write(&self, path: &Path, object: &impl Serialize) -> io::Result<()> {
        let text = serde_yaml::to_string(object).map_err(io::Error::other)?;
        write_atomic(path, text.as_bytes())
    }

    /// Removes `path`; `false` if it was not there.
    pub fn remove(&self, path: &Path) -> io::Result<bool> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A Node as the control plane knows it: its pod CIDR and its address on
/// the underlay, from which agents learn where the other nodes' pods are.
pub fn node_object(name: &str, ip: Ipv4Addr, pod_cidr: Ipv4Net) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name},
        },
        "spec": {
            "podCIDR": pod_cidr.to_string(),
            "podCIDRs": [pod_cidr.to_string()],
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip.to_string()},
                {"type": "Hostname", "address": name},
            ],
        },
    })
}

/// A Namespace with the label the API server adds to every namespace.
pub fn namespace_object(name: &str, labels: &BTreeMap<String, String>) -> serde_json::Value {
    let mut labels = labels.clone();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    })
}

/// The name of a served container port, as the upstream NetworkPolicy e2e
/// model names them (named ports in policies resolve against these).
pub fn port_name(port: u16, protocol: &str) -> String {
    format!("serve-{port}-{}", protocol.to_ascii_lowercase())
}

/// Protocols every served port is declared with, as in the upstream e2e
/// model. The pod server only serves TCP and UDP (SCTP needs kernel
/// support the lab cannot count on), but named ports like `serve-80-sctp`
/// must still resolve when a policy uses them.
pub const DECLARED_PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

/// A running Pod as its kubelet reports it: labels, node, container ports
/// (TCP, UDP and SCTP on each served port) and its address from CNI.
pub fn pod_object(pod: &PodState, host_ip: Option<Ipv4Addr>) -> serde_json::Value {
    let ports: Vec<_> = pod
        .ports
        .iter()
        .flat_map(|&port| {
            DECLARED_PROTOCOLS.map(|protocol| {
                json!({
                    "name": port_name(port, protocol),
                    "containerPort": port,
                    "protocol": protocol,
                })
            })
        })
        .collect();
    let ip: IpAddr = pod.ip;
    // Unspecified: not wired yet, as kubelet shows a pod before CNI ADD.
    let mut status = if ip.is_unspecified() {
        json!({"phase": "Pending"})
    } else {
        json!({
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
        })
    };
    if let Some(host_ip) = host_ip {
        status["hostIP"] = json!(host_ip.to_string());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            // The container id stands in for the API server's UID; CNI ADD
            // carries it as K8S_POD_UID.
            "uid": pod.container_id,
            "labels": pod.labels,
        },
        "spec": {
            "nodeName": pod.node,
            "containers": [{
                "name": "serve",
                "image": "sluice-lab/serve",
                "ports": ports,
            }],
        },
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(value: &serde_json::Value) -> String {
        serde_yaml::to_string(value).expect("yaml")
    }

    #[test]
    fn node_carries_pod_cidr_and_internal_ip() {
        let node = node_object(
            "node2",
            Ipv4Addr::new(172, 30, 0, 12),
            "10.244.2.0/24".parse().expect("cidr"),
        );
        assert_eq!(node["spec"]["podCIDR"], "10.244.2.0/24");
        assert_eq!(node["spec"]["podCIDRs"][0], "10.244.2.0/24");
        assert_eq!(node["status"]["addresses"][0]["type"], "InternalIP");
        assert_eq!(node["status"]["addresses"][0]["address"], "172.30.0.12");
        assert_eq!(
            node["metadata"]["labels"]["kubernetes.io/hostname"],
            "node2"
        );
        assert!(
            yaml(&node).starts_with("apiVersion: v1\nkind: Node\n"),
            "{}",
            yaml(&node)
        );
    }

    #[test]
    fn namespace_always_has_its_name_label() {
        let labels = BTreeMap::from([("ns".to_owned(), "x".to_owned())]);
        let ns = namespace_object("x", &labels);
        assert_eq!(ns["metadata"]["labels"]["ns"], "x");
        assert_eq!(ns["metadata"]["labels"][NAMESPACE_NAME_LABEL], "x");
    }

    #[test]
    fn pod_lists_named_ports_per_protocol_and_its_ip() {
        let pod = PodState {
            namespace: "x".into(),
            name: "a".into(),
            node: "node1".into(),
            netns: "lab-pod-x-a".into(),
            ip: "10.244.1.5".parse().expect("ip"),
            container_id: "x_a".into(),
            server_pid: Some(1),
            labels: BTreeMap::from([("pod".into(), "a".into())]),
            ports: vec![80, 81],
        };
        let obj = pod_object(&pod, Some(Ipv4Addr::new(172, 30, 0, 11)));
        let ports: Vec<(String, u64, String)> = obj["spec"]["containers"][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["containerPort"].as_u64().unwrap_or_default(),
                    p["protocol"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("serve-80-tcp".into(), 80, "TCP".into()),
                ("serve-80-udp".into(), 80, "UDP".into()),
                ("serve-80-sctp".into(), 80, "SCTP".into()),
                ("serve-81-tcp".into(), 81, "TCP".into()),
                ("serve-81-udp".into(), 81, "UDP".into()),
                ("serve-81-sctp".into(), 81, "SCTP".into()),
            ]
        );
        assert_eq!(obj["spec"]["nodeName"], "node1");
        assert_eq!(obj["metadata"]["namespace"], "x");
        assert_eq!(obj["metadata"]["labels"]["pod"], "a");
        assert_eq!(obj["status"]["phase"], "Running");
        assert_eq!(obj["status"]["podIP"], "10.244.1.5");
        assert_eq!(obj["status"]["podIPs"][0]["ip"], "10.244.1.5");
        assert_eq!(obj["status"]["hostIP"], "172.30.0.11");
    }

    #[test]
    fn layout() {
        let dir = ManifestDir::new("/m");
        let pod: PodName = "x/a".parse().expect("pod");
        assert_eq!(dir.pod_path(&pod), Path::new("/m/pods/x-a.yaml"));
        assert_eq!(dir.node_path("node1"), Path::new("/m/nodes/node1.yaml"));
        assert_eq!(dir.namespace_path("x"), Path::new("/m/namespaces/x.yaml"));
        assert_eq!(
            dir.object_path("NetworkPolicy", Some("x"), "deny"),
            Path::new("/m/objects/networkpolicy-x-deny.yaml")
        );
        assert_eq!(
            dir.object_path("ClusterNetworkPolicy", None, "p"),
            Path::new("/m/objects/clusternetworkpolicy-p.yaml")
        );
    }

    #[test]
    fn writes_replace_atomically() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ManifestDir::new(tmp.path());
        let path = dir.namespace_path("x");
        dir.write(&path, &namespace_object("x", &BTreeMap::new()))
            .expect("write");
        dir.write(
            &path,
            &namespace_object("x", &BTreeMap::from([("a".into(), "b".into())])),
        )
        .expect("rewrite");
        let back: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
        assert_eq!(back["metadata"]["labels"]["a"], "b");
        assert!(dir.remove(&path).expect("remove"));
        assert!(!dir.remove(&path).expect("remove again"));
    }
}
