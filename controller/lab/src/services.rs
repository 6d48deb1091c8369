//! Services in the lab, the way a cluster runs them: the API server's part
//! (a ClusterIP from the service CIDR and NodePorts for a Service that has
//! none) and the EndpointSlice controller's (slices of the lab's pods that
//! a Service's selector picks, written as pods come and go). The agents
//! then read both from the manifest directory like any other object.
//!
//! The functions deciding what to write are pure; [`Lab`] applies them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tracing::debug;

use super::{
    cluster::{write_manifest, Lab, ServiceStatus},
    error::{io_err, LabError},
    inventory::{NodeState, PodState},
    kube_proxy,
    manifests::port_name,
    netns::Netns,
    objects,
};

/// Where ClusterIPs come from (the API server's `--service-cluster-ip-range`).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Where NodePorts come from (`--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// The label the EndpointSlice controller puts on a Service's slices.
pub use sluice_agent::services::SERVICE_NAME_LABEL;
/// Marks the slices the lab writes, so it never touches a user's own.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "sluice-lab";

/// Gives `service` what the API server would when it has none: a ClusterIP
/// (unless headless or ExternalName) and NodePorts (types NodePort and
/// LoadBalancer). What `stored` (its version already applied) has is kept,
/// as an update keeps it; what another Service has is never given twice.
pub fn allocate(
    service: &mut Service,
    stored: Option<&Service>,
    others: &[&Service],
) -> Result<(), String> {
    let spec = service.spec.get_or_insert_with(Default::default);
    let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".to_owned());
    if kind == "ExternalName" {
        return Ok(());
    }
    let stored_spec = stored.and_then(|s| s.spec.as_ref());
    let taken_ips: BTreeSet<Ipv4Addr> = others
        .iter()
        .filter_map(|s| s.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok())
        .collect();
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
    if cluster_ip.is_empty() {
        let ip = match stored_spec.and_then(|s| s.cluster_ip.clone()) {
            Some(ip) => ip,
            None => free_cluster_ip(&taken_ips)?.to_string(),
        };
        spec.cluster_ip = Some(ip.clone());
        spec.cluster_ips = Some(vec![ip]);
    } else if cluster_ip != "None" {
        let ip: Ipv4Addr = cluster_ip
            .parse()
            .map_err(|_| format!("spec.clusterIP {cluster_ip:?} is not an IPv4 address"))?;
        let cidr: Ipv4Net = SERVICE_CIDR.parse().expect("literal CIDR");
        if !cidr.contains(&ip) {
            return Err(format!(
                "spec.clusterIP {ip} is outside the service CIDR {SERVICE_CIDR}"
            ));
        }
        if taken_ips.contains(&ip) {
            return Err(format!(
                "spec.clusterIP {ip} is already allocated to another Service"
            ));
        }
        spec.cluster_ips = Some(vec![ip.to_string()]);
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        let mut taken: BTreeSet<u16> = others
            .iter()
            .filter_map(|s| s.spec.as_ref()?.ports.as_ref())
            .flatten()
            .filter_map(|p| p.node_port.and_then(|n| u16::try_from(n).ok()))
            .collect();
        let stored_ports = stored_spec
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        for port in spec.ports.iter_mut().flatten() {
            if port.node_port.is_none() {
                // An update keeps the NodePort its port had.
                port.node_port = stored_ports
                    .iter()
                    .find(|p| p.port == port.port && p.protocol == port.protocol)
                    .and_then(|p| p.node_port);
            }
            match port.node_port {
                Some(n) => {
                    let n = u16::try_from(n)
                        .ok()
                        .filter(|n| NODE_PORTS.contains(n))
                        .ok_or_else(|| format!("nodePort {n} is outside {NODE_PORTS:?}"))?;
                    if !taken.insert(n) {
                        return Err(format!("nodePort {n} is already allocated"));
                    }
                }
                None => {
                    let n = NODE_PORTS
                        .clone()
                        .find(|n| !taken.contains(n))
                        .ok_or("no free NodePort left")?;
                    taken.insert(n);
                    port.node_port = Some(i32::from(n));
                }
            }
        }
    }
    Ok(())
}

/// The lowest free address of the service CIDR (its network address and
/// the first one, which clusters keep for the `kubernetes` Service, are
/// never given).
fn free_cluster_ip(taken: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, String> {
    let cidr: Ipv4Net = SERVICE_CIDR.parse().expect("literal CIDR");
    cidr.hosts()
        .skip(1)
        .find(|ip| !taken.contains(ip))
        .ok_or_else(|| format!("the service CIDR {SERVICE_CIDR} is full"))
}

/// The EndpointSlices the controller would write for `service`: the lab's
/// pods in its namespace that its selector picks, grouped by the ports
/// they resolve the Service's `targetPort`s to (a named one by each pod's
/// own container ports), ready, with their node. A Service without a
/// selector gets none: its slices are the user's.
pub fn endpoint_slices(service: &Service, pods: &[PodState]) -> Vec<EndpointSlice> {
    let (Some(namespace), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
    else {
        return Vec::new();
    };
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let mut groups: BTreeMap<Vec<EndpointPortKey>, Vec<&PodState>> = BTreeMap::new();
    for pod in pods {
        let picked = &pod.namespace == namespace
            && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v));
        if !picked {
            continue;
        }
        let ports: Vec<EndpointPortKey> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
                let target = match &port.target_port {
                    None => Some(u16::try_from(port.port).ok()?),
                    Some(IntOrString::Int(n)) => Some(u16::try_from(*n).ok()?),
                    Some(IntOrString::String(named)) => pod
                        .ports
                        .iter()
                        .copied()
                        .find(|p| port_name(*p, &protocol) == *named),
                }?;
                Some(EndpointPortKey {
                    name: port.name.clone().unwrap_or_default(),
                    protocol,
                    port: target,
                })
            })
            .collect();
        groups.entry(ports).or_default().push(pod);
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (ports, pods))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-lab-{i}")),
                namespace: Some(namespace.clone()),
                labels: Some(BTreeMap::from([
                    (SERVICE_NAME_LABEL.to_owned(), name.clone()),
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                ])),
                ..Default::default()
            },
            address_type: "IPv4".to_owned(),
            ports: Some(
                ports
                    .into_iter()
                    .map(|p| EndpointPort {
                        name: Some(p.name),
                        protocol: Some(p.protocol),
                        port: Some(i32::from(p.port)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            endpoints: Some(
                pods.into_iter()
                    .map(|pod| Endpoint {
                        addresses: vec![pod.ip.to_string()],
                        node_name: Some(pod.node.clone()),
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// A resolved port of a slice, ordered so pods resolving alike share one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EndpointPortKey {
    name: String,
    protocol: String,
    port: u16,
}

impl Lab {
    /// The stored Services with their ClusterIPs, ports and the ready
    /// endpoints of their slices.
    pub(crate) fn service_status(&self) -> Result<Vec<ServiceStatus>, LabError> {
        let slices = self.stored_objects::<EndpointSlice>("EndpointSlice")?;
        let mut out: Vec<ServiceStatus> = self
            .stored_services()?
            .into_iter()
            .map(|service| {
                let namespace = service.metadata.namespace.clone().unwrap_or_default();
                let name = service.metadata.name.clone().unwrap_or_default();
                let spec = service.spec.unwrap_or_default();
                let ports = spec
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| {
                        let node_port = p.node_port.map(|n| format!(":{n}")).unwrap_or_default();
                        let protocol = p.protocol.as_deref().unwrap_or("TCP");
                        format!("{}{node_port}/{protocol}", p.port)
                    })
                    .collect();
                let endpoints = slices
                    .iter()
                    .filter(|s| {
                        s.metadata.namespace.as_deref() == Some(namespace.as_str())
                            && s.metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                                == Some(&name)
                    })
                    .flat_map(|s| s.endpoints.iter().flatten())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                    .filter_map(|e| e.addresses.first().cloned())
                    .collect();
                ServiceStatus {
                    name: format!("{namespace}/{name}"),
                    kind: spec.type_.unwrap_or_else(|| "ClusterIP".to_owned()),
                    cluster_ip: spec.cluster_ip.unwrap_or_else(|| "-".to_owned()),
                    ports,
                    endpoints,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The Services stored in the lab's manifest directory.
    pub(crate) fn stored_services(&self) -> Result<Vec<Service>, LabError> {
        self.stored_objects::<Service>("Service")
    }

    /// The stored objects of `kind` that read as `T`. A file or object
    /// that does not (a user's malformed manifest) is skipped: the agents
    /// report it, and it must not stop the lab's controller.
    fn stored_objects<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
    ) -> Result<Vec<T>, LabError> {
        let dir = self.config.manifests().objects_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Nothing applied yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
        };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        let mut out = Vec::new();
        for file in files {
            let Ok(objects) = objects::read_path(&file) else {
                debug!(file = %file.display(), "skipping a manifest that does not read");
                continue;
            };
            for object in objects.into_iter().filter(|o| o.key.kind == kind) {
                match serde_yaml::from_value(object.value) {
                    Ok(typed) => out.push(typed),
                    Err(e) => debug!(object = %object.key, error = %e, "skipping"),
                }
            }
        }
        Ok(out)
    }

    /// Brings what serves Services up to date with the stored Services and
    /// the lab's pods: the EndpointSlices, then, in a lab that runs the
    /// kube-proxy emulation, every node's iptables rules. Called with the
    /// lab's lock held, after anything that changes pods or Services.
    pub(crate) fn sync_services(&self) -> Result<(), LabError> {
        let services = self.stored_services()?;
        self.sync_endpoint_slices(&services)?;
        if self.state.kube_proxy {
            let slices = self.stored_objects::<EndpointSlice>("EndpointSlice")?;
            for node in &self.state.nodes {
                self.sync_kube_proxy(node, &services, &slices)?;
            }
        }
        Ok(())
    }

    /// Rewrites the kube-proxy emulation's rules in `node`.
    fn sync_kube_proxy(
        &self,
        node: &NodeState,
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> Result<(), LabError> {
        let ns = Netns::existing(&node.netns);
        let what = || format!("the kube-proxy emulation in {}", node.name);
        let existing = kube_proxy::existing_chains(&ns).map_err(io_err(what()))?;
        let view = kube_proxy::NodeView {
            name: &node.name,
            cluster_cidr: self.state.pod_cidr,
        };
        let input = kube_proxy::restore_input(services, slices, &view, &existing, false);
        kube_proxy::restore(&ns, &input).map_err(io_err(what()))?;
        debug!(node = %node.name, services = services.len(), "kube-proxy emulation synced");
        Ok(())
    }

    /// Writes the EndpointSlices every Service's selector asks for and
    /// removes the lab's slices no Service asks for any more.
    fn sync_endpoint_slices(&self, services: &[Service]) -> Result<(), LabError> {
        let manifests = self.config.manifests();
        let mut wanted = BTreeSet::new();
        for service in services {
            for slice in endpoint_slices(service, &self.state.pods) {
                let path = manifests.object_path(
                    "EndpointSlice",
                    slice.metadata.namespace.as_deref(),
                    slice.metadata.name.as_deref().unwrap_or_default(),
                );
                let mut value = serde_json::to_value(&slice).map_err(|e| {
                    io_err("encoding an EndpointSlice".to_owned())(std::io::Error::other(e))
                })?;
                value["apiVersion"] = "discovery.k8s.io/v1".into();
                value["kind"] = "EndpointSlice".into();
                write_manifest(&manifests, &path, &value)?;
                wanted.insert(path);
            }
        }
        for slice in self.stored_objects::<EndpointSlice>("EndpointSlice")? {
            let ours = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .is_some_and(|m| m == MANAGED_BY);
            let path = manifests.object_path(
                "EndpointSlice",
                slice.metadata.namespace.as_deref(),
                slice.metadata.name.as_deref().unwrap_or_default(),
            );
            if ours && !wanted.contains(&path) {
                manifests
                    .remove(&path)
                    .map_err(io_err(format!("removing {}", path.display())))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("Service YAML")
    }

    fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: &[(&str, &str)]) -> PodState {
        PodState {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            netns: format!("lab-{name}"),
            ip: ip.parse().expect("ip"),
            container_id: name.into(),
            server_pid: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ports: vec![80, 81],
        }
    }

    const WEB: &str = "metadata: {name: web, namespace: x}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 8080, targetPort: serve-81-tcp}\n  - {name: plain, port: 80}\n";

    #[test]
    fn cluster_ips_and_node_ports_are_given_like_the_api_server_gives_them() {
        let mut first = service(WEB);
        allocate(&mut first, None, &[]).expect("allocate");
        let ip = first.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
        assert_eq!(
            ip, "10.96.0.2",
            "the first address is kept for `kubernetes`"
        );
        let mut second = service(&WEB.replace("name: web,", "name: api,"));
        allocate(&mut second, None, &[&first]).expect("allocate");
        assert_eq!(
            second.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.3")
        );
        // Applied again: it keeps its address.
        let mut again = service(WEB);
        allocate(&mut again, Some(&first), &[&second]).expect("allocate");
        assert_eq!(
            again.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.2")
        );
        // A taken or foreign address is refused.
        let mut clash = service(&WEB.replace("spec:\n", "spec:\n  clusterIP: 10.96.0.3\n"));
        assert!(allocate(&mut clash, None, &[&second]).is_err());
        let mut outside = service(&WEB.replace("spec:\n", "spec:\n  clusterIP: 192.0.2.1\n"));
        assert!(allocate(&mut outside, None, &[]).is_err());

        let mut node_port = service(&WEB.replace("spec:\n", "spec:\n  type: NodePort\n"));
        allocate(&mut node_port, None, &[&first]).expect("allocate");
        let ports: Vec<i32> = node_port
            .spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.node_port)
            .collect();
        assert_eq!(ports, [30000, 30001]);
        let headless = service(&WEB.replace("spec:\n", "spec:\n  clusterIP: None\n"));
        let mut h = headless.clone();
        allocate(&mut h, None, &[]).expect("allocate");
        assert_eq!(h, headless, "headless stays headless");
    }

    #[test]
    fn slices_hold_the_selected_pods_with_their_resolved_ports() {
        let svc = service(WEB);
        let pods = [
            pod("x", "a", "10.244.1.2", "node1", &[("app", "web")]),
            pod(
                "x",
                "b",
                "10.244.2.2",
                "node2",
                &[("app", "web"), ("v", "2")],
            ),
            pod("x", "c", "10.244.1.3", "node1", &[("app", "db")]),
            pod("y", "a", "10.244.2.3", "node2", &[("app", "web")]),
        ];
        let slices = endpoint_slices(&svc, &pods);
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        let ports: Vec<(String, i32)> = slice
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap(), p.port.unwrap()))
            .collect();
        assert_eq!(ports, [("http".into(), 81), ("plain".into(), 80)]);
        let endpoints: Vec<(String, String)> = slice
            .endpoints
            .iter()
            .flatten()
            .map(|e| (e.addresses[0].clone(), e.node_name.clone().unwrap()))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("10.244.1.2".into(), "node1".into()),
                ("10.244.2.2".into(), "node2".into())
            ]
        );
        let without_selector =
            service("metadata: {name: ext, namespace: x}\nspec:\n  ports: [{port: 80}]\n");
        assert!(endpoint_slices(&without_selector, &pods).is_empty());
    }
}
