//! An emulation of kube-proxy's iptables mode, for labs brought up with
//! `sluice lab up --kube-proxy` (the real kube-proxy needs an API server,
//! which does not run here). Each node gets the chain structure kube-proxy
//! writes, from the same Services and EndpointSlices the agents read:
//!
//! - nat `KUBE-SERVICES` (from PREROUTING and OUTPUT) matches a frontend
//!   (ClusterIP, externalIP, LoadBalancer ingress IP) and jumps to its
//!   `KUBE-SVC-*` chain, which picks one `KUBE-SEP-*` per connection with
//!   `statistic --mode random` probabilities 1/n, 1/(n-1), …, 1 and DNATs
//!   to that endpoint; `KUBE-NODEPORTS` (the last rule of `KUBE-SERVICES`,
//!   for local destinations) does the same for NodePorts through
//!   `KUBE-EXT-*`;
//! - traffic that must leave with the node's address is marked by
//!   `KUBE-MARK-MASQ` (0x4000) and masqueraded by `KUBE-POSTROUTING`:
//!   ClusterIP traffic from outside the cluster CIDR, a pod reaching itself
//!   (hairpin), and external traffic under `externalTrafficPolicy: Cluster`;
//!   under `Local` the external client's address is kept and only this
//!   node's endpoints (`KUBE-SVL-*`) are used;
//! - filter `KUBE-SERVICES` / `KUBE-EXTERNAL-SERVICES` reject frontends
//!   without endpoints and drop `Local` external traffic on a node without
//!   local ones;
//! - `sessionAffinity: ClientIP` uses the `recent` match per endpoint.
//!
//! Chain names hash the service port as kube-proxy does (SHA-256), printed
//! in hex rather than base32. Rules are applied with `iptables-restore
//! --noflush`, which replaces the chains named in the input and leaves
//! everything else in the node alone; chains of Services that went away
//! are deleted.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sha2::{Digest as _, Sha256};

use sluice_agent::{policy::ports::parse_protocol, services};

use super::netns::Netns;

const MASQ_MARK: &str = "0x4000";
/// Chains this emulation owns per Service port; any of them that the
/// current Services do not need is deleted.
const PER_SERVICE: [&str; 4] = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-SEP-"];

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    ip: Ipv4Addr,
    port: u16,
    local: bool,
}

/// What one node's `iptables-restore` needs to know about itself.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    pub name: &'a str,
    /// kube-proxy's `--cluster-cidr`: ClusterIP traffic from outside it is
    /// masqueraded.
    pub cluster_cidr: Ipv4Net,
}

/// The jumps from the built-in chains into kube-proxy's, `(table, chain,
/// rule)`; installed once per node (`iptables-restore --noflush` appends,
/// it cannot replace a rule in a built-in chain).
pub const JUMPS: &[(&str, &str, &str)] = &[
    (
        "nat",
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
];

/// The `iptables-restore --noflush` input for `node`: both tables with
/// every chain this emulation owns, rebuilt from `services` and `slices`.
/// `existing` holds the chains the node has now; the per-Service ones no
/// longer wanted are deleted. With `jumps`, the jumps from the built-in
/// chains are appended too (the first time only).
pub fn restore_input(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeView<'_>,
    existing: &BTreeSet<String>,
    jumps: bool,
) -> String {
    let mut rules = Rules::default();
    let mut services: Vec<&Service> = services.iter().collect();
    services.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for service in services {
        for port in service.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            rules.service_port(service, port, slices, node);
        }
    }
    rules.finish(existing, jumps)
}

#[derive(Default)]
struct Rules {
    nat_chains: BTreeSet<String>,
    nat: Vec<String>,
    /// Appended after `nat`'s per-Service rules: `KUBE-SERVICES` must end
    /// with the NodePort jump.
    filter: Vec<String>,
    filter_external: Vec<String>,
}

impl Rules {
    fn service_port(
        &mut self,
        service: &Service,
        port: &ServicePort,
        slices: &[EndpointSlice],
        node: &NodeView<'_>,
    ) {
        let Some(spec) = &service.spec else { return };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            return;
        }
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            // Headless (`None`) or not allocated: kube-proxy ignores it.
            return;
        };
        let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let port_name = port.name.as_deref().unwrap_or_default();
        let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
        let Ok(protocol_number) = parse_protocol(protocol_name) else {
            return;
        };
        let protocol = protocol_name.to_lowercase();
        let Ok(service_port) = u16::try_from(port.port) else {
            return;
        };
        let id = format!("{namespace}/{name}:{port_name}");
        let key = format!("{id}{protocol}");
        let svc = chain("KUBE-SVC-", &key);
        let svl = chain("KUBE-SVL-", &key);
        let ext = chain("KUBE-EXT-", &key);
        let match_port = |dst: Option<Ipv4Addr>, dport: u16| {
            let dst = dst.map(|ip| format!(" -d {ip}/32")).unwrap_or_default();
            format!("-m {protocol} -p {protocol}{dst} --dport {dport}")
        };

        let endpoints = endpoints_of(
            slices,
            namespace,
            name,
            port_name,
            protocol_number,
            node.name,
        );
        let local: Vec<Endpoint> = endpoints.iter().filter(|e| e.local).cloned().collect();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
                .unwrap_or(10_800)
        });
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");

        // The ClusterIP.
        let cluster_endpoints = if internal_local { &local } else { &endpoints };
        if cluster_endpoints.is_empty() {
            self.filter.push(format!(
                "-A KUBE-SERVICES -m comment --comment \"{id} has no endpoints\" {} -j REJECT",
                match_port(Some(vip), service_port)
            ));
        } else {
            self.nat.push(format!(
                "-A KUBE-SERVICES -m comment --comment \"{id} cluster IP\" {} -j {}",
                match_port(Some(vip), service_port),
                if internal_local { &svl } else { &svc }
            ));
        }
        if !endpoints.is_empty() {
            self.declare(&svc);
            self.nat.push(format!(
                "-A {svc} ! -s {} {} -j KUBE-MARK-MASQ",
                node.cluster_cidr,
                match_port(Some(vip), service_port)
            ));
            self.balance(&svc, &key, &endpoints, &protocol, affinity);
        }
        if !local.is_empty() && (internal_local || external_local) {
            self.declare(&svl);
            self.balance(&svl, &key, &local, &protocol, affinity);
        }

        // External frontends: the NodePort on every local address, and
        // externalIPs and LoadBalancer ingress IPs on their own address.
        let node_port = port
            .node_port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|_| kind == "NodePort" || kind == "LoadBalancer");
        let external_ips: BTreeSet<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(
                service
                    .status
                    .iter()
                    .filter_map(|s| s.load_balancer.as_ref()?.ingress.as_ref())
                    .flatten()
                    .filter_map(|i| i.ip.as_deref()),
            )
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if node_port.is_none() && external_ips.is_empty() {
            return;
        }
        let external: Vec<String> = node_port
            .map(|np| format!("-m addrtype --dst-type LOCAL {}", match_port(None, np)))
            .into_iter()
            .chain(
                external_ips
                    .iter()
                    .map(|ip| match_port(Some(*ip), service_port)),
            )
            .collect();
        if endpoints.is_empty() {
            for m in &external {
                self.filter_external.push(format!(
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{id} has no endpoints\" {m} -j REJECT"
                ));
            }
            return;
        }
        if external_local && local.is_empty() {
            // kube-proxy drops what it cannot serve locally, rather than
            // sending it elsewhere without the client's address.
            for m in &external {
                self.filter_external.push(format!(
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{id} has no local endpoints\" {m} -j DROP"
                ));
            }
        }
        self.declare(&ext);
        if external_local {
            self.nat.push(format!(
                "-A {ext} -s {} -m comment --comment \"pod traffic for {id} external destinations\" -j {svc}",
                node.cluster_cidr
            ));
            self.nat.push(format!(
                "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {id} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
            ));
            self.nat.push(format!(
                "-A {ext} -m comment --comment \"route LOCAL traffic for {id} external destinations\" -m addrtype --src-type LOCAL -j {svc}"
            ));
            if !local.is_empty() {
                self.nat.push(format!("-A {ext} -j {svl}"));
            }
        } else {
            self.nat.push(format!(
                "-A {ext} -m comment --comment \"masquerade traffic for {id} external destinations\" -j KUBE-MARK-MASQ"
            ));
            self.nat.push(format!("-A {ext} -j {svc}"));
        }
        if let Some(np) = node_port {
            self.nat.push(format!(
                "-A KUBE-NODEPORTS -m comment --comment \"{id}\" {} -j {ext}",
                match_port(None, np)
            ));
        }
        for ip in &external_ips {
            self.nat.push(format!(
                "-A KUBE-SERVICES -m comment --comment \"{id} external IP\" {} -j {ext}",
                match_port(Some(*ip), service_port)
            ));
        }
    }

    /// `chain` picks one of `endpoints` per new connection, each with equal
    /// chance (a client with affinity returns to its last one first).
    fn balance(
        &mut self,
        chain_name: &str,
        key: &str,
        endpoints: &[Endpoint],
        protocol: &str,
        affinity: Option<i32>,
    ) {
        let seps: Vec<String> = endpoints
            .iter()
            .map(|e| chain("KUBE-SEP-", &format!("{key}{}:{}", e.ip, e.port)))
            .collect();
        if let Some(seconds) = affinity {
            for sep in &seps {
                self.nat.push(format!(
                    "-A {chain_name} -m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck --seconds {seconds} --reap -j {sep}"
                ));
            }
        }
        let n = seps.len();
        for (i, sep) in seps.iter().enumerate() {
            let statistic = if i + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            self.nat
                .push(format!("-A {chain_name} {statistic}-j {sep}"));
        }
        for (endpoint, sep) in endpoints.iter().zip(&seps) {
            if !self.declare(sep) {
                // The SVC and SVL chains of one port share endpoints.
                continue;
            }
            let recent = if affinity.is_some() {
                format!("-m recent --name {sep} --mask 255.255.255.255 --rsource --set ")
            } else {
                String::new()
            };
            self.nat
                .push(format!("-A {sep} -s {}/32 -j KUBE-MARK-MASQ", endpoint.ip));
            self.nat.push(format!(
                "-A {sep} -m {protocol} -p {protocol} {recent}-j DNAT --to-destination {}:{}",
                endpoint.ip, endpoint.port
            ));
        }
    }

    /// Declares a per-Service chain; false when it already was.
    fn declare(&mut self, chain_name: &str) -> bool {
        self.nat_chains.insert(chain_name.to_owned())
    }

    fn finish(self, existing: &BTreeSet<String>, jumps: bool) -> String {
        let stale: Vec<&String> = existing
            .iter()
            .filter(|c| PER_SERVICE.iter().any(|p| c.starts_with(p)))
            .filter(|c| !self.nat_chains.contains(*c))
            .collect();
        let mut out = String::from("*filter\n");
        for c in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"] {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for rule in self.filter.iter().chain(&self.filter_external) {
            out.push_str(rule);
            out.push('\n');
        }
        push_jumps(&mut out, "filter", jumps);
        out.push_str("COMMIT\n*nat\n");
        let fixed = [
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
        ];
        for c in fixed
            .iter()
            .map(|c| (*c).to_owned())
            .chain(self.nat_chains.iter().cloned())
            .chain(stale.iter().map(|c| (*c).clone()))
        {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        out.push_str(&format!(
            "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
             -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
             -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n"
        ));
        for rule in &self.nat {
            out.push_str(rule);
            out.push('\n');
        }
        out.push_str(
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
        );
        for c in stale {
            out.push_str(&format!("-X {c}\n"));
        }
        push_jumps(&mut out, "nat", jumps);
        out.push_str("COMMIT\n");
        out
    }
}

fn push_jumps(out: &mut String, table: &str, jumps: bool) {
    if !jumps {
        return;
    }
    for (t, chain_name, rule) in JUMPS {
        if *t == table {
            out.push_str(&format!("-A {chain_name} {rule}\n"));
        }
    }
}

/// kube-proxy's chain name: a prefix and the first 16 characters of a
/// hash of what the chain is for (iptables allows 28 characters).
fn chain(prefix: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02X}")).collect();
    format!("{prefix}{hex}")
}

/// The ready endpoints of a Service port across its slices, read as the
/// agent reads them, with the port each resolves it to; sorted
/// (kube-proxy's order is stable too).
fn endpoints_of(
    slices: &[EndpointSlice],
    namespace: &str,
    service: &str,
    port_name: &str,
    protocol: u8,
    node: &str,
) -> Vec<Endpoint> {
    let owned: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace) && services::serves(s, service)
        })
        .collect();
    let endpoints: BTreeSet<Endpoint> = services::ready_endpoints(&owned, port_name, protocol)
        .into_iter()
        .map(|e| Endpoint {
            ip: e.addr,
            port: e.port,
            local: e.node == Some(node),
        })
        .collect();
    endpoints.into_iter().collect()
}

/// The chains of both tables a node has now (`iptables-save`).
pub fn existing_chains(node: &Netns) -> std::io::Result<BTreeSet<String>> {
    let output = node.command("iptables-save")?.output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "iptables-save: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("KUBE-"))
        .map(str::to_owned)
        .collect())
}

/// Applies `input` in `node` with `iptables-restore --noflush`.
pub fn restore(node: &Netns, input: &str) -> std::io::Result<()> {
    let mut child = node
        .command("iptables-restore")?
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<T> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| T::deserialize(d).expect("object"))
            .collect()
    }

    const SERVICES: &str = "\
metadata: {name: web, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  externalIPs: [192.0.2.7]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
---
metadata: {name: empty, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.11
  ports: [{port: 80, nodePort: 30081}]
---
metadata: {name: headless, namespace: x}
spec: {clusterIP: None, ports: [{port: 80}]}
";

    const SLICES: &str = "\
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node1}
- {addresses: [10.244.2.2], nodeName: node2}
- {addresses: [10.244.1.3], nodeName: node1, conditions: {ready: false}}
- {addresses: [10.244.2.3], nodeName: node2}
";

    fn input(existing: &[&str]) -> String {
        let services: Vec<Service> = objects(SERVICES);
        let slices: Vec<EndpointSlice> = objects(SLICES);
        restore_input(
            &services,
            &slices,
            &NodeView {
                name: "node1",
                cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            },
            &existing.iter().map(|c| (*c).to_owned()).collect(),
            false,
        )
    }

    /// The rules of a nat chain.
    fn rules<'a>(input: &'a str, chain_name: &str) -> Vec<&'a str> {
        let prefix = format!("-A {chain_name} ");
        let nat = &input[input.find("*nat").expect("nat table")..];
        nat.lines().filter(|l| l.starts_with(&prefix)).collect()
    }

    #[test]
    fn a_service_port_balances_over_its_ready_endpoints_like_kube_proxy() {
        let input = input(&[]);
        let svc = chain("KUBE-SVC-", "x/web:httptcp");
        let entry = rules(&input, "KUBE-SERVICES");
        assert!(entry[0].contains("-d 10.96.0.10/32 --dport 80") && entry[0].ends_with(&svc));
        let svc_rules = rules(&input, &svc);
        assert!(svc_rules[0].starts_with(&format!("-A {svc} ! -s 10.244.0.0/16 ")));
        assert!(svc_rules[0].ends_with("-j KUBE-MARK-MASQ"));
        // Affinity first, then 1/3, 1/2, the rest: equal chances, and the
        // endpoint that is not ready is left out.
        let seps: Vec<String> = ["10.244.1.2", "10.244.2.2", "10.244.2.3"]
            .iter()
            .map(|ip| chain("KUBE-SEP-", &format!("x/web:httptcp{ip}:8080")))
            .collect();
        assert_eq!(svc_rules.len(), 1 + 3 + 3);
        for (rule, sep) in svc_rules[1..4].iter().zip(&seps) {
            assert!(rule.contains("--rcheck --seconds 60 --reap") && rule.ends_with(sep.as_str()));
        }
        assert!(svc_rules[4].contains("--probability 0.3333333333 -j"));
        assert!(svc_rules[5].contains("--probability 0.5000000000 -j"));
        assert_eq!(svc_rules[6], format!("-A {svc} -j {}", seps[2]));
        let sep = rules(&input, &seps[0]);
        assert_eq!(
            sep,
            [
                format!("-A {} -s 10.244.1.2/32 -j KUBE-MARK-MASQ", seps[0]),
                format!(
                    "-A {} -m tcp -p tcp -m recent --name {} --mask 255.255.255.255 --rsource --set -j DNAT --to-destination 10.244.1.2:8080",
                    seps[0], seps[0]
                ),
            ]
        );
        // The UDP port resolves to its own target port.
        assert!(input.contains("-j DNAT --to-destination 10.244.2.2:5353"));
        // The NodePort jumps come last, for local destinations only.
        assert!(entry
            .last()
            .expect("rules")
            .ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
        assert!(!input.contains("10.96.0.12"), "headless is left alone");
    }

    #[test]
    fn external_traffic_policy_local_keeps_the_client_and_the_node() {
        let input = input(&[]);
        let ext = chain("KUBE-EXT-", "x/web:httptcp");
        let svl = chain("KUBE-SVL-", "x/web:httptcp");
        let node_ports = rules(&input, "KUBE-NODEPORTS");
        assert!(node_ports
            .iter()
            .any(|r| r.contains("--dport 30080") && r.ends_with(&ext)));
        assert!(rules(&input, "KUBE-SERVICES")
            .iter()
            .any(|r| r.contains("-d 192.0.2.7/32 --dport 80") && r.ends_with(&ext)));
        let ext_rules = rules(&input, &ext);
        // Pods and the node itself go cluster-wide; external clients only
        // to this node's endpoint, unmasqueraded.
        assert_eq!(ext_rules.len(), 4);
        assert!(ext_rules[0].contains("-s 10.244.0.0/16"));
        assert!(ext_rules[1].contains("--src-type LOCAL -j KUBE-MARK-MASQ"));
        assert_eq!(
            *ext_rules.last().expect("rules"),
            format!("-A {ext} -j {svl}")
        );
        let local = rules(&input, &svl);
        assert!(local.iter().all(|r| !r.contains("KUBE-MARK-MASQ")));
        let sep = chain("KUBE-SEP-", "x/web:httptcp10.244.1.2:8080");
        assert_eq!(
            local.last().copied(),
            Some(format!("-A {svl} -j {sep}").as_str())
        );
        assert_eq!(local.iter().filter(|r| r.contains("KUBE-SEP-")).count(), 2);
    }

    #[test]
    fn frontends_without_endpoints_are_rejected_and_stale_chains_go() {
        let stale = chain("KUBE-SVC-", "x/gone:tcp");
        let input = input(&[&stale, "KUBE-SERVICES", "KUBE-MARK-MASQ"]);
        let filter = &input[..input.find("*nat").expect("nat table")];
        assert!(filter.contains(
            "-A KUBE-SERVICES -m comment --comment \"x/empty: has no endpoints\" -m tcp -p tcp -d 10.96.0.11/32 --dport 80 -j REJECT"
        ));
        assert!(filter.contains(
            "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"x/empty: has no endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30081 -j REJECT"
        ));
        assert!(!input.contains("-d 10.96.0.11/32 --dport 80 -j KUBE-SVC"));
        assert!(input.contains(&format!(":{stale} - [0:0]\n")));
        assert!(input.contains(&format!("-X {stale}\n")));
        assert!(!input.contains("-X KUBE-SERVICES"), "fixed chains stay");
        assert!(!input.contains("-A PREROUTING"), "jumps only when asked");
    }
}
