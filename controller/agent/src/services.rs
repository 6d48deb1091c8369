//! Services and EndpointSlices → the service maps' contents (kube-proxy
//! replacement). Pure: the result depends only on the cluster state, the
//! node's name and the id allocator's state.
//!
//! Each ClusterIP port of a Service is a frontend (address, port,
//! protocol); its backends are the ready endpoints of the Service's
//! EndpointSlices, each with the port the slice gives the Service port's
//! name (the EndpointSlice controller resolves `targetPort`, by number or
//! by name, per pod, and groups endpoints by the result). Headless and
//! ExternalName Services have no frontend; with `internalTrafficPolicy:
//! Local` only this node's endpoints are backends.
//!
//! External frontends are frontends of their own, with their own backend
//! slots: a NodePort on this node's InternalIP, each externalIP and each
//! LoadBalancer ingress IP with the Service port. With
//! `externalTrafficPolicy: Local` only this node's endpoints serve clients
//! from outside the cluster and the client's address is kept; with
//! `Cluster` (the default) every ready endpoint serves and the connection
//! is masqueraded to the node. Clients inside the cluster get every ready
//! endpoint either way. Slots hold this node's endpoints first, so both
//! sets are a prefix of one slot range.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_common::services::{service_flags, Backend, BackendSlot, ServiceInfo, ServiceKey};

use crate::datastore::ClusterState;
use crate::policy::ports::{parse_protocol, SCTP};

/// The label the EndpointSlice controller puts on a Service's slices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the service maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredServices {
    pub frontends: BTreeMap<ServiceKey, ServiceInfo>,
    /// Slots `0..backends` of every frontend.
    pub backends: BTreeMap<BackendSlot, Backend>,
    /// Frontends without a ready backend: refused (the host stack rejects
    /// their connections), never blackholed.
    pub without_backends: BTreeSet<ServiceKey>,
    /// Frontend id → (`namespace/name`, `port/PROTOCOL`), for metrics.
    pub names: BTreeMap<u32, (String, String)>,
    pub problems: Vec<ServiceProblem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceProblem {
    /// `namespace/name`.
    pub service: String,
    pub reason: String,
}

impl fmt::Display for ServiceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service {}: {}", self.service, self.reason)
    }
}

/// Frontend ids, stable while a frontend exists (its backend slots are
/// keyed by it); ids of frontends that went are given out again.
#[derive(Clone, Debug, Default)]
pub struct ServiceIds {
    ids: BTreeMap<ServiceKey, u32>,
}

impl ServiceIds {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the ids of `frontends`, forgets the others, numbers the new
    /// ones with the smallest free ids (from 0, so `n` frontends have ids
    /// below `n`: the per-frontend counter array, sized like the frontend
    /// map, holds every one).
    fn sync(&mut self, frontends: &BTreeSet<ServiceKey>) {
        self.ids.retain(|k, _| frontends.contains(k));
        let mut used: BTreeSet<u32> = self.ids.values().copied().collect();
        let mut next = 0;
        for frontend in frontends {
            if self.ids.contains_key(frontend) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            used.insert(next);
            self.ids.insert(*frontend, next);
        }
    }

    fn get(&self, frontend: &ServiceKey) -> Option<u32> {
        self.ids.get(frontend).copied()
    }
}

/// One Service port's frontend and where its backends come from.
struct Port {
    key: ServiceKey,
    /// The Service port's name, which its slices' ports carry.
    name: String,
    protocol: u8,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 without.
    affinity_timeout: u32,
    /// Only this node's endpoints are its backends
    /// (`internalTrafficPolicy: Local`).
    local_only: bool,
    /// [`service_flags`].
    flags: u32,
}

/// kube-proxy's default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// `node_ip`: this node's InternalIP, where its NodePorts are (none until
/// the Node object gives it).
pub fn compile(
    state: &ClusterState,
    node_name: &str,
    node_ip: Option<Ipv4Addr>,
    ids: &mut ServiceIds,
) -> DesiredServices {
    let mut out = DesiredServices::default();
    let mut ports_of: Vec<((&str, &str), Vec<Port>)> = Vec::new();
    for ((namespace, name), service) in &state.services {
        let mut problem = |reason: String| {
            out.problems.push(ServiceProblem {
                service: format!("{namespace}/{name}"),
                reason,
            })
        };
        let ports = frontends(service, node_ip, &mut problem);
        ports_of.push(((namespace.as_str(), name.as_str()), ports));
    }
    let keys: BTreeSet<ServiceKey> = ports_of
        .iter()
        .flat_map(|(_, ports)| ports.iter().map(|p| p.key))
        .collect();
    ids.sync(&keys);

    for ((namespace, name), ports) in &ports_of {
        let slices: Vec<&EndpointSlice> = state
            .endpoint_slices
            .iter()
            .filter(|((ns, _), slice)| ns == namespace && serves(slice, name))
            .map(|(_, slice)| slice)
            .collect();
        for port in ports {
            let Some(id) = ids.get(&port.key) else {
                continue;
            };
            let protocol = match port.protocol {
                6 => "TCP",
                17 => "UDP",
                _ => "SCTP",
            };
            out.names.insert(
                id,
                (
                    format!("{namespace}/{name}"),
                    format!("{}/{protocol}", u16::from_be_bytes(port.key.port)),
                ),
            );
            let (backends, local_backends) = backends(&slices, port, node_name);
            if port.protocol == SCTP {
                // The programs cannot redo SCTP's checksum, so they never
                // change an SCTP port: a backend on another port could not
                // be reached.
                if backends.iter().any(|b| b.port != port.key.port) {
                    out.problems.push(ServiceProblem {
                        service: format!("{namespace}/{name}"),
                        reason: format!(
                            "SCTP port {}: a targetPort other than the port is not supported; the port refuses connections",
                            u16::from_be_bytes(port.key.port)
                        ),
                    });
                    out.frontends.insert(
                        port.key,
                        ServiceInfo {
                            id,
                            affinity_timeout: port.affinity_timeout,
                            flags: port.flags,
                            ..ServiceInfo::default()
                        },
                    );
                    out.without_backends.insert(port.key);
                    continue;
                }
            }
            for (slot, backend) in backends.iter().enumerate() {
                out.backends.insert(
                    BackendSlot {
                        service: id,
                        slot: slot as u32,
                    },
                    *backend,
                );
            }
            out.frontends.insert(
                port.key,
                ServiceInfo {
                    id,
                    backends: backends.len() as u32,
                    local_backends,
                    affinity_timeout: port.affinity_timeout,
                    flags: port.flags,
                    _pad: 0,
                },
            );
            if backends.is_empty() {
                out.without_backends.insert(port.key);
            }
        }
    }
    out
}

/// The frontends of a Service: one per ClusterIP port, and the external
/// ones (see the module's documentation).
fn frontends(
    service: &Service,
    node_ip: Option<Ipv4Addr>,
    problem: &mut impl FnMut(String),
) -> Vec<Port> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Vec::new();
    }
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let external_flags = if external_local {
        service_flags::EXTERNAL
    } else {
        service_flags::EXTERNAL | service_flags::MASQUERADE
    };
    let mut external_ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for ip in spec.external_ips.iter().flatten() {
        match ip.parse() {
            Ok(ip) => {
                external_ips.insert(ip);
            }
            Err(_) => problem(format!(
                "spec.externalIPs: {ip:?} is not an IPv4 address; ignored"
            )),
        }
    }
    if kind == "LoadBalancer" {
        let ingress = service
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref()?.ingress.as_ref())
            .flatten();
        external_ips.extend(ingress.filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()));
    }
    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    } else {
        0
    };
    let ips: Vec<Ipv4Addr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        // "None" is a headless Service: DNS only, nothing to translate.
        .filter(|ip| ip.as_str() != "None" && !ip.is_empty())
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let protocol = match parse_protocol(port.protocol.as_deref().unwrap_or("TCP")) {
            Ok(protocol) => protocol,
            Err(e) => {
                problem(format!("spec.ports[{i}]: {e}; port ignored"));
                continue;
            }
        };
        let Some(number) = u16::try_from(port.port).ok().filter(|p| *p > 0) else {
            problem(format!(
                "spec.ports[{i}]: port {} out of range; port ignored",
                port.port
            ));
            continue;
        };
        let frontend = |addr: Ipv4Addr, number: u16, local_only: bool, flags: u32| Port {
            key: ServiceKey {
                addr: addr.octets(),
                port: number.to_be_bytes(),
                protocol,
                _pad: 0,
            },
            name: port.name.clone().unwrap_or_default(),
            protocol,
            affinity_timeout,
            local_only,
            flags,
        };
        for ip in &ips {
            ports.push(frontend(*ip, number, internal_local, 0));
        }
        for ip in &external_ips {
            ports.push(frontend(*ip, number, false, external_flags));
        }
        let node_port = port
            .node_port
            .filter(|_| kind == "NodePort" || kind == "LoadBalancer");
        if let (Some(node_port), Some(node_ip)) = (node_port, node_ip) {
            match u16::try_from(node_port).ok().filter(|p| *p > 0) {
                Some(n) => ports.push(frontend(node_ip, n, false, external_flags)),
                None => problem(format!(
                    "spec.ports[{i}]: nodePort {node_port} out of range; ignored"
                )),
            }
        }
    }
    ports
}

/// Whether `slice` is one of Service `service`'s (same namespace assumed),
/// with addresses the programs can use.
pub fn serves(slice: &EndpointSlice, service: &str) -> bool {
    slice.address_type == "IPv4"
        && slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .is_some_and(|s| s == service)
}

/// A ready endpoint of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyEndpoint<'a> {
    pub addr: Ipv4Addr,
    /// The port its slice gives the Service port's name.
    pub port: u16,
    pub node: Option<&'a str>,
}

/// The ready endpoints of `slices` (a Service's) for the Service port
/// named `port_name` with `protocol`, in slice order. An unset condition
/// means ready (the API's definition); a terminating endpoint is not ready
/// and gets no new connections, while its existing ones keep their
/// backend. Of an endpoint's addresses the first counts, as the API lets
/// consumers choose.
pub fn ready_endpoints<'a>(
    slices: &[&'a EndpointSlice],
    port_name: &str,
    protocol: u8,
) -> Vec<ReadyEndpoint<'a>> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(target) = slice.ports.iter().flatten().find_map(|p| {
            let p_protocol = parse_protocol(p.protocol.as_deref().unwrap_or("TCP")).ok()?;
            let same_name = p.name.as_deref().unwrap_or_default() == port_name;
            (same_name && p_protocol == protocol)
                .then_some(p.port)
                .flatten()
                .and_then(|n| u16::try_from(n).ok())
        }) else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            let addr = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok());
            if let (true, Some(addr)) = (ready, addr) {
                out.push(ReadyEndpoint {
                    addr,
                    port: target,
                    node: endpoint.node_name.as_deref(),
                });
            }
        }
    }
    out
}

/// The backends of `port`, and how many of them are this node's: its
/// ready endpoints (this node's only for a `local_only` one), this node's
/// first, each part sorted and without duplicates, so slots stay put
/// while the set does.
fn backends(slices: &[&EndpointSlice], port: &Port, node_name: &str) -> (Vec<Backend>, u32) {
    let mut local = BTreeSet::new();
    let mut elsewhere = BTreeSet::new();
    for endpoint in ready_endpoints(slices, &port.name, port.protocol) {
        let backend = Backend {
            addr: endpoint.addr.octets(),
            port: endpoint.port.to_be_bytes(),
            _pad: [0; 2],
        };
        if endpoint.node == Some(node_name) {
            local.insert(backend);
        } else if !port.local_only {
            elsewhere.insert(backend);
        }
    }
    let local_count = local.len() as u32;
    let elsewhere = elsewhere.into_iter().filter(|b| !local.contains(b));
    (
        local.iter().copied().chain(elsewhere).collect(),
        local_count,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{parse_documents, Event};

    fn state(yaml: &str) -> ClusterState {
        let mut state = ClusterState::default();
        for resource in parse_documents(yaml) {
            state.apply(Event::Apply(resource.expect("test manifest parses")));
        }
        state
    }

    const WEB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.1.7]
  nodeName: node1
  conditions: {ready: true}
- addresses: [10.244.2.9]
  nodeName: node2
- addresses: [10.244.2.10]
  nodeName: node2
  conditions: {ready: false, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-b
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 9090, protocol: TCP}
endpoints:
- addresses: [10.244.3.4]
  nodeName: node3
";

    fn key(ip: [u8; 4], port: u16, protocol: u8) -> ServiceKey {
        ServiceKey {
            addr: ip,
            port: port.to_be_bytes(),
            protocol,
            _pad: 0,
        }
    }

    fn backends_of(d: &DesiredServices, frontend: &ServiceKey) -> Vec<(Ipv4Addr, u16)> {
        let info = d.frontends[frontend];
        (0..info.backends)
            .map(|slot| {
                let b = d.backends[&BackendSlot {
                    service: info.id,
                    slot,
                }];
                (Ipv4Addr::from(b.addr), u16::from_be_bytes(b.port))
            })
            .collect()
    }

    #[test]
    fn each_port_gets_the_ready_endpoints_on_the_port_its_slice_names() {
        let d = compile(&state(WEB), "node1", None, &mut ServiceIds::new());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let http = key([10, 96, 0, 10], 80, 6);
        let dns = key([10, 96, 0, 10], 53, 17);
        assert_eq!(d.frontends.len(), 2);
        // Named targetPort: each slice's own number; the terminating
        // endpoint gets nothing new; an unset condition is ready.
        assert_eq!(
            backends_of(&d, &http),
            [
                ("10.244.1.7".parse().unwrap(), 8080),
                ("10.244.2.9".parse().unwrap(), 8080),
                ("10.244.3.4".parse().unwrap(), 9090),
            ]
        );
        assert_eq!(
            backends_of(&d, &dns),
            [
                ("10.244.1.7".parse().unwrap(), 5353),
                ("10.244.2.9".parse().unwrap(), 5353),
            ]
        );
        assert_ne!(d.frontends[&http].id, d.frontends[&dns].id);
        assert!(d.without_backends.is_empty());
    }

    #[test]
    fn internal_traffic_policy_local_keeps_only_this_nodes_endpoints() {
        let yaml = WEB.replace(
            "  clusterIP: 10.96.0.10\n",
            "  clusterIP: 10.96.0.10\n  internalTrafficPolicy: Local\n",
        );
        let d = compile(&state(&yaml), "node2", None, &mut ServiceIds::new());
        let http = key([10, 96, 0, 10], 80, 6);
        assert_eq!(
            backends_of(&d, &http),
            [("10.244.2.9".parse().unwrap(), 8080)]
        );
        let d = compile(&state(&yaml), "node4", None, &mut ServiceIds::new());
        assert_eq!(d.frontends[&http].backends, 0);
        assert!(
            d.without_backends.contains(&http),
            "refused, not blackholed"
        );
    }

    #[test]
    fn node_ports_external_ips_and_load_balancer_ips_are_external_frontends() {
        let lb = WEB.replace(
            "spec:\n  clusterIP: 10.96.0.10\n  ports:\n  - {name: http, port: 80, targetPort: http}",
            "status: {loadBalancer: {ingress: [{ip: 198.51.100.1}]}}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  externalIPs: [192.0.2.7, not-an-ip]\n  clusterIP: 10.96.0.10\n  ports:\n  - {name: http, port: 80, targetPort: http, nodePort: 30080}",
        );
        let mut st = state(&lb);
        let node_ip = Ipv4Addr::new(172, 30, 0, 11);
        let d = compile(&st, "node1", Some(node_ip), &mut ServiceIds::new());
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        assert!(d.problems[0].reason.contains("not-an-ip"));
        let cluster = key([10, 96, 0, 10], 80, 6);
        assert_eq!(d.frontends[&cluster].flags, 0);
        assert_eq!(
            backends_of(&d, &cluster).len(),
            3,
            "the ClusterIP is cluster-wide"
        );
        for external in [
            key(node_ip.octets(), 30080, 6),
            key([192, 0, 2, 7], 80, 6),
            key([198, 51, 100, 1], 80, 6),
        ] {
            let info = d.frontends[&external];
            assert_eq!(info.flags, service_flags::EXTERNAL);
            // Clients inside the cluster get every endpoint; from outside,
            // under externalTrafficPolicy Local, this node's only: the
            // first slot.
            assert_eq!(backends_of(&d, &external).len(), 3);
            assert_eq!(info.local_backends, 1);
            assert_eq!(
                backends_of(&d, &external)[0],
                (Ipv4Addr::new(10, 244, 1, 7), 8080)
            );
        }
        // A node without an endpoint of its own: clients from outside are
        // dropped there (the programs' part), not refused.
        let d = compile(&st, "node4", Some(node_ip), &mut ServiceIds::new());
        let node_port = key(node_ip.octets(), 30080, 6);
        assert_eq!(
            (
                d.frontends[&node_port].backends,
                d.frontends[&node_port].local_backends
            ),
            (3, 0)
        );
        assert!(!d.without_backends.contains(&node_port));
        assert!(d.frontends.contains_key(&key([192, 0, 2, 7], 53, 17)));
        assert!(
            !d.frontends.contains_key(&key(node_ip.octets(), 53, 17)),
            "no nodePort on that port"
        );

        // Cluster: every endpoint, masqueraded; no node address, no NodePort.
        let mut cluster_wide = st.services[&("shop".to_owned(), "web".to_owned())].clone();
        cluster_wide
            .spec
            .as_mut()
            .expect("spec")
            .external_traffic_policy = None;
        st.services
            .insert(("shop".into(), "web".into()), cluster_wide);
        let d = compile(&st, "node1", None, &mut ServiceIds::new());
        let external = key([192, 0, 2, 7], 80, 6);
        assert_eq!(
            d.frontends[&external].flags,
            service_flags::EXTERNAL | service_flags::MASQUERADE
        );
        assert_eq!(backends_of(&d, &external).len(), 3);
        assert!(!d
            .frontends
            .keys()
            .any(|k| u16::from_be_bytes(k.port) == 30080));
    }

    #[test]
    fn headless_and_external_name_services_have_no_frontend() {
        let headless = WEB.replace("clusterIP: 10.96.0.10", "clusterIP: None");
        assert!(
            compile(&state(&headless), "node1", None, &mut ServiceIds::new())
                .frontends
                .is_empty()
        );
        let external = "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: shop}\nspec: {type: ExternalName, externalName: example.com}\n";
        assert!(
            compile(&state(external), "node1", None, &mut ServiceIds::new())
                .frontends
                .is_empty()
        );
    }

    #[test]
    fn ids_stay_put_while_their_frontends_exist() {
        let mut ids = ServiceIds::new();
        let first = compile(&state(WEB), "node1", None, &mut ids);
        let other = "---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec:\n  clusterIP: 10.96.0.5\n  ports: [{port: 443}]\n";
        let second = compile(&state(&format!("{WEB}{other}")), "node1", None, &mut ids);
        for (frontend, info) in &first.frontends {
            assert_eq!(second.frontends[frontend].id, info.id);
        }
        let api = key([10, 96, 0, 5], 443, 6);
        assert!(second.without_backends.contains(&api), "no slices: refused");
        assert!(first
            .frontends
            .values()
            .all(|i| i.id != second.frontends[&api].id));
    }

    #[test]
    fn session_affinity_carries_its_timeout() {
        let http = key([10, 96, 0, 10], 80, 6);
        let d = compile(&state(WEB), "node1", None, &mut ServiceIds::new());
        assert_eq!(d.frontends[&http].affinity_timeout, 0);
        let sticky = WEB.replace(
            "  clusterIP: 10.96.0.10\n",
            "  clusterIP: 10.96.0.10\n  sessionAffinity: ClientIP\n",
        );
        let d = compile(&state(&sticky), "node1", None, &mut ServiceIds::new());
        assert_eq!(
            d.frontends[&http].affinity_timeout,
            DEFAULT_AFFINITY_TIMEOUT
        );
        let short = sticky.replace(
            "  sessionAffinity: ClientIP\n",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        );
        let d = compile(&state(&short), "node1", None, &mut ServiceIds::new());
        assert_eq!(d.frontends[&http].affinity_timeout, 60);
    }

    #[test]
    fn sctp_ports_must_not_be_translated() {
        let yaml = "\
apiVersion: v1
kind: Service
metadata: {name: s, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: a, port: 80, protocol: SCTP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: shop, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: a, port: 8080, protocol: SCTP}]
endpoints: [{addresses: [10.244.1.7]}]
";
        let d = compile(&state(yaml), "node1", None, &mut ServiceIds::new());
        let frontend = key([10, 96, 0, 20], 80, SCTP);
        assert_eq!(d.frontends[&frontend].backends, 0);
        assert!(d.without_backends.contains(&frontend));
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        let same_port = yaml.replace("port: 8080, protocol: SCTP", "port: 80, protocol: SCTP");
        let d = compile(&state(&same_port), "node1", None, &mut ServiceIds::new());
        assert_eq!(d.frontends[&frontend].backends, 1);
        assert!(d.problems.is_empty());
    }
}
