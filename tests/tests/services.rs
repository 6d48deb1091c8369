//! Kubernetes Services through the real lab.
//!
//! Beside kube-proxy: a node's host stack translates a Service address to a
//! backend pod (here with the kind of rule kube-proxy's iptables mode
//! writes, a nat PREROUTING DNAT), and the dataplane must send the
//! backend's replies back through that stack, whose conntrack translates
//! them back, for backends on the client's node and on the other node, in
//! both routing modes; NetworkPolicy still applies at the backend.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use sluice_tests::{probe, require_root, Netns, TestLab, TIMEOUT};

const PORT: u16 = 80;
const CONVERGE: Duration = Duration::from_secs(15);
/// Service addresses the test's DNAT rules translate.
const VIP_SAME_NODE: &str = "10.96.0.10";
const VIP_OTHER_NODE: &str = "10.96.0.11";

fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("address"), PORT)
}

/// Adds pods `(NS/NAME, node, app label)` to the lab.
fn add_pods(lab: &TestLab, pods: &[(&str, &str, &str)]) {
    for (pod, node, app) in pods {
        lab.sluice_ok(&[
            "pod",
            "add",
            pod,
            "--node",
            node,
            "--labels",
            &format!("app={app}"),
        ]);
    }
}

/// The address of the lab's pod `NS/NAME`.
fn pod_ip(lab: &TestLab, name: &str) -> String {
    lab.lab()
        .state()
        .pods
        .iter()
        .find(|p| format!("{}/{}", p.namespace, p.name) == name)
        .map(|p| p.ip.to_string())
        .unwrap_or_else(|| panic!("{name} not in the lab"))
}

/// kube-proxy's translation for one Service port, as a nat PREROUTING DNAT
/// in `node`: `vip`:80 to `backend`:80, TCP and UDP.
fn dnat(node: &Netns, vip: &str, backend: &str) {
    for proto in ["tcp", "udp"] {
        let status = node
            .command("iptables")
            .and_then(|mut c| {
                c.args(["-t", "nat", "-A", "PREROUTING", "-d"])
                    .arg(format!("{vip}/32"))
                    .args(["-p", proto, "--dport", "80", "-j", "DNAT"])
                    .arg("--to-destination")
                    .arg(format!("{backend}:80"))
                    .status()
            })
            .expect("iptables");
        assert!(
            status.success(),
            "iptables DNAT {vip} -> {backend} ({proto})"
        );
    }
}

const DENY_A_AT_C: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-b-only, namespace: x}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: b}}}]
";

fn beside_kube_proxy(routing: &str) {
    require_root!();
    let lab = TestLab::up(&format!("kp{}", &routing[..1]), 2, routing);
    add_pods(
        &lab,
        &[
            ("x/a", "node1", "a"),
            ("x/b", "node1", "b"),
            ("x/c", "node2", "c"),
        ],
    );
    let ip = |name: &str| pod_ip(&lab, name);
    let node1 = lab.node_netns("node1");
    dnat(&node1, VIP_SAME_NODE, &ip("x/b"));
    dnat(&node1, VIP_OTHER_NODE, &ip("x/c"));
    let client = lab.pod_netns("x/a");

    for (what, target) in [
        ("backend on the client's node", VIP_SAME_NODE),
        ("backend on the other node", VIP_OTHER_NODE),
    ] {
        let dst = addr(target);
        assert!(
            lab.eventually(CONVERGE, || probe::tcp(&client, dst, TIMEOUT)),
            "{routing}: TCP to the Service, {what}\n{}",
            lab.agent_logs()
        );
        // The reply must come from the Service address, which the probe
        // checks: a reply straight from the pod would not match.
        assert!(
            probe::udp(&client, dst, TIMEOUT),
            "{routing}: UDP to the Service, {what}"
        );
    }
    // Pod to pod, untranslated, keeps working (and keeps the direct path,
    // which the eBPF unit tests check).
    assert!(probe::tcp(&client, addr(&ip("x/c")), TIMEOUT));

    // Policy applies to the backend: x/c admits only x/b, so x/a is
    // refused through the Service as well as directly.
    let path = lab.config.dir.with_extension("deny.yaml");
    std::fs::write(&path, DENY_A_AT_C).expect("policy file");
    lab.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert!(
        lab.eventually(CONVERGE, || !probe::tcp(
            &client,
            addr(VIP_OTHER_NODE),
            TIMEOUT
        )),
        "{routing}: the backend's policy refuses the client through the Service"
    );
    assert!(!probe::tcp(&client, addr(&ip("x/c")), TIMEOUT));
    assert!(
        probe::tcp(&client, addr(VIP_SAME_NODE), TIMEOUT),
        "{routing}: the other Service is unaffected"
    );
}

#[test]
fn services_beside_kube_proxy_tunnel() {
    beside_kube_proxy("tunnel");
}

#[test]
fn services_beside_kube_proxy_native() {
    beside_kube_proxy("native");
}

// kube-proxy replacement: the agents translate ClusterIPs in eBPF; no
// kube-proxy (nor any DNAT rule) runs in the nodes. The same scenario runs
// in labs with the kube-proxy emulation (`sluice lab up --kube-proxy`),
// with the agents beside it.

/// A server in `ns` on `port` that answers every connection with `name`
/// and the address the connection came from, and closes it, until the
/// returned guard is dropped.
struct NameServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NameServer {
    fn start(ns: &Netns, port: u16, name: &str) -> Self {
        use std::io::Write as _;
        use std::sync::atomic::Ordering;
        let listener = ns
            .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
            .expect("entering the pod netns")
            .expect("binding the name server");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(format!("{name} {}", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from `ns` to `dst` and reads what the server says, if it
/// does: its name and the client address it saw.
fn answer_at(ns: &Netns, dst: SocketAddr) -> Option<(String, String)> {
    use std::io::Read as _;
    ns.run(move || {
        let mut conn = std::net::TcpStream::connect_timeout(&dst, TIMEOUT).ok()?;
        conn.set_read_timeout(Some(TIMEOUT)).ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        let (name, peer) = answer.split_once(' ')?;
        Some((name.to_owned(), peer.to_owned()))
    })
    .ok()
    .flatten()
}

/// The name of the server that answers at `dst`, if one does.
fn name_at(ns: &Netns, dst: SocketAddr) -> Option<String> {
    answer_at(ns, dst).map(|(name, _)| name)
}

/// The answers of `tries` connections from `ns` to `dst`.
fn answers(ns: &Netns, dst: SocketAddr, tries: usize) -> BTreeSet<(String, String)> {
    (0..tries).filter_map(|_| answer_at(ns, dst)).collect()
}

/// Whether a datagram from a connected UDP socket in `ns` to `dst` is
/// answered by a port unreachable the socket takes as its own
/// (ECONNREFUSED): one that quotes `dst`.
fn udp_refused(ns: &Netns, dst: SocketAddr) -> bool {
    ns.run(move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(dst)?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.send(b"anyone?")?;
        sock.recv(&mut [0u8; 16]).map(drop)
    })
    .is_ok_and(
        |answer| matches!(answer, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
    )
}

/// Whether a TCP connect from `ns` to `dst` is refused (not timed out).
fn refused(ns: &Netns, dst: SocketAddr) -> bool {
    ns.run(move || {
        matches!(
            std::net::TcpStream::connect_timeout(&dst, TIMEOUT),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    })
    .unwrap_or(false)
}

const NAME_PORT: u16 = 8080;

fn services_yaml(a: &str, b: &str, c: &str) -> String {
    format!(
        "\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: x}}
spec:
  clusterIP: 10.96.1.10
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: echo-udp, port: 53, protocol: UDP, targetPort: 80}}
  - {{name: closed-udp, port: 54, protocol: UDP, targetPort: 9999}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports:
- {{name: http, port: {NAME_PORT}, protocol: TCP}}
- {{name: echo-udp, port: 80, protocol: UDP}}
- {{name: closed-udp, port: 9999, protocol: UDP}}
endpoints:
- {{addresses: [{b}], nodeName: node1, conditions: {{ready: true}}}}
- {{addresses: [{c}], nodeName: node2, conditions: {{ready: true}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: only-c, namespace: x}}
spec:
  clusterIP: 10.96.1.11
  ports: [{{port: 80, targetPort: {NAME_PORT}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: only-c-1, namespace: x, labels: {{kubernetes.io/service-name: only-c}}}}
addressType: IPv4
ports: [{{port: {NAME_PORT}, protocol: TCP}}]
endpoints: [{{addresses: [{c}], nodeName: node2}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: x}}
spec:
  clusterIP: 10.96.1.12
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: only-a, namespace: x}}
spec:
  clusterIP: 10.96.1.13
  ports: [{{port: 80, targetPort: {NAME_PORT}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: only-a-1, namespace: x, labels: {{kubernetes.io/service-name: only-a}}}}
addressType: IPv4
ports: [{{port: {NAME_PORT}, protocol: TCP}}]
endpoints: [{{addresses: [{a}], nodeName: node1}}]
"
    )
}

const DENY_C: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-c, namespace: x}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
";

/// Which part of the lab serves Services.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ServedBy {
    /// The agents, in eBPF (kubeProxyReplacement, the default).
    Sluice,
    /// The lab's kube-proxy emulation, the agents beside it.
    KubeProxy,
}

fn cluster_ips(routing: &str, served_by: ServedBy) {
    let tag = match served_by {
        ServedBy::Sluice => "kr",
        ServedBy::KubeProxy => "ke",
    };
    let lab = TestLab::new(&format!("{tag}{}", &routing[..1]));
    let mut up = vec!["up", "--nodes", "2", "--routing", routing];
    if served_by == ServedBy::KubeProxy {
        up.push("--kube-proxy");
    }
    lab.sluice_ok(&up);
    add_pods(
        &lab,
        &[
            ("x/a", "node1", "a"),
            ("x/b", "node1", "b"),
            ("x/c", "node2", "c"),
            ("x/d", "node2", "d"),
        ],
    );
    let ip = |name: &str| pod_ip(&lab, name);
    let _a = NameServer::start(&lab.pod_netns("x/a"), NAME_PORT, "x/a");
    let _b = NameServer::start(&lab.pod_netns("x/b"), NAME_PORT, "x/b");
    let _c = NameServer::start(&lab.pod_netns("x/c"), NAME_PORT, "x/c");
    let path = lab.config.dir.with_extension("services.yaml");
    std::fs::write(&path, services_yaml(&ip("x/a"), &ip("x/b"), &ip("x/c"))).expect("manifest");
    lab.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);

    let web: SocketAddr = "10.96.1.10:80".parse().expect("addr");
    for client in ["x/a", "x/d"] {
        let ns = lab.pod_netns(client);
        assert!(
            lab.eventually(CONVERGE, || name_at(&ns, web).is_some()),
            "{routing}: {client} reaches the ClusterIP\n{}",
            lab.agent_logs()
        );
        // Every backend gets new connections, the one on the client's node
        // and the one on the other.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            if let Some(name) = name_at(&ns, web) {
                seen.insert(name);
            }
        }
        assert_eq!(
            seen,
            ["x/b".to_owned(), "x/c".to_owned()].into(),
            "{routing}: backends reached from {client}"
        );
        // UDP through the ClusterIP; the probe checks that the reply comes
        // from the ClusterIP.
        assert!(
            probe::udp(&ns, "10.96.1.10:53".parse().expect("addr"), TIMEOUT),
            "{routing}: UDP from {client} through the ClusterIP"
        );
        // A backend's port unreachable reaches the client as the
        // ClusterIP's, from either backend.
        let closed: SocketAddr = "10.96.1.10:54".parse().expect("addr");
        for _ in 0..6 {
            assert!(
                udp_refused(&ns, closed),
                "{routing}: {client} gets the backend's port unreachable through the ClusterIP"
            );
        }
        // No ready backend: refused at once, never blackholed.
        assert!(
            lab.eventually(CONVERGE, || refused(
                &ns,
                "10.96.1.12:80".parse().expect("addr")
            )),
            "{routing}: a Service without endpoints refuses {client}"
        );
    }

    // The node's own processes (kubelet, hostNetwork pods) reach the
    // ClusterIP too: sluice's socket hooks give their sockets a backend
    // (the kube-proxy emulation's OUTPUT rules translate their packets),
    // and the ClusterIP is what they see as the peer and as the source of
    // answers.
    let node = lab.node_netns("node1");
    assert!(
        lab.eventually(CONVERGE, || name_at(&node, web).is_some()),
        "{routing}: node1 itself reaches the ClusterIP\n{}",
        lab.agent_logs()
    );
    let seen: BTreeSet<String> = (0..40).filter_map(|_| name_at(&node, web)).collect();
    assert_eq!(
        seen,
        ["x/b".to_owned(), "x/c".to_owned()].into(),
        "{routing}: backends reached from node1 itself"
    );
    assert!(
        probe::udp(&node, "10.96.1.10:53".parse().expect("addr"), TIMEOUT),
        "{routing}: UDP from node1 itself through the ClusterIP, answered from it"
    );
    let peer = node
        .run(move || {
            std::net::TcpStream::connect_timeout(&web, TIMEOUT).and_then(|c| c.peer_addr())
        })
        .expect("entering node1");
    assert_eq!(peer.ok(), Some(web), "{routing}: node1's socket's peer");
    if served_by == ServedBy::Sluice {
        // The socket hooks stay while the agent restarts (their links are
        // pinned), and the restarted agent's take their place.
        lab.lab()
            .restart_agent("node1")
            .unwrap_or_else(|e| panic!("restarting node1's agent: {e}\n{}", lab.agent_logs()));
        let seen: BTreeSet<String> = (0..20).filter_map(|_| name_at(&node, web)).collect();
        assert_eq!(
            seen,
            ["x/b".to_owned(), "x/c".to_owned()].into(),
            "{routing}: node1 itself through the ClusterIP after its agent restarted\n{}",
            lab.agent_logs()
        );
        let peer = node
            .run(move || {
                std::net::TcpStream::connect_timeout(&web, TIMEOUT).and_then(|c| c.peer_addr())
            })
            .expect("entering node1");
        assert_eq!(
            peer.ok(),
            Some(web),
            "{routing}: the peer after the restart"
        );
    }

    // The clients' node counts the connections and refusals per Service.
    if served_by == ServedBy::Sluice {
        let metrics = lab.scrape("node1");
        let value = |series: &str| -> u64 {
            metrics
                .lines()
                .find(|l| l.starts_with(series))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
        };
        assert!(
            value("sluice_service_connections_total{port=\"80/TCP\",service=\"x/web\"}") >= 40,
            "{routing}: connections counted"
        );
        assert!(value("sluice_service_refused_total{port=\"80/TCP\",service=\"x/empty\"}") >= 1);
        assert_eq!(value("sluice_service_frontends{state=\"refused\"}"), 1);
        assert_eq!(value("sluice_service_frontends{state=\"ready\"}"), 5);
    }

    // Hairpin: x/a reaches itself through a Service it backs.
    let client = lab.pod_netns("x/a");
    assert_eq!(
        name_at(&client, "10.96.1.13:80".parse().expect("addr")).as_deref(),
        Some("x/a"),
        "{routing}: x/a through its own Service"
    );

    node_ports(&lab, routing, served_by, &ip("x/b"), &ip("x/c"));

    // Policy judges the backend: x/c refuses everyone, through the
    // ClusterIP as directly.
    let only_c: SocketAddr = "10.96.1.11:80".parse().expect("addr");
    assert_eq!(name_at(&client, only_c).as_deref(), Some("x/c"));
    let path = lab.config.dir.with_extension("deny.yaml");
    std::fs::write(&path, DENY_C).expect("policy file");
    lab.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert!(
        lab.eventually(CONVERGE, || name_at(&client, only_c).is_none()),
        "{routing}: x/c's policy refuses x/a through the ClusterIP"
    );
}

#[test]
fn kube_proxy_replacement_tunnel() {
    require_root!();
    cluster_ips("tunnel", ServedBy::Sluice);
}

#[test]
fn kube_proxy_replacement_native() {
    require_root!();
    cluster_ips("native", ServedBy::Sluice);
}

#[test]
fn kube_proxy_emulation_tunnel() {
    require_root!();
    cluster_ips("tunnel", ServedBy::KubeProxy);
}

#[test]
fn kube_proxy_emulation_native() {
    require_root!();
    cluster_ips("native", ServedBy::KubeProxy);
}

fn node_ports_yaml(b: &str, c: &str) -> String {
    let service = |name: &str, ip: &str, policy: &str, ports: &str, endpoints: &[&str]| {
        let endpoints: String = endpoints
            .iter()
            .map(|e| {
                let node = if *e == b { "node1" } else { "node2" };
                format!("- {{addresses: [{e}], nodeName: {node}}}\n")
            })
            .collect();
        format!(
            "\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: x}}
spec:
  type: NodePort
  clusterIP: {ip}
  externalTrafficPolicy: {policy}
  ports:
{ports}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: x, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports:
- {{name: http, port: {NAME_PORT}, protocol: TCP}}
- {{name: closed, port: 9999, protocol: UDP}}
endpoints:
{endpoints}---
"
        )
    };
    let http = |node_port: u16| {
        format!("  - {{name: http, port: 80, targetPort: {NAME_PORT}, nodePort: {node_port}}}")
    };
    let cluster_ports = format!(
        "{}\n  - {{name: closed, port: 54, protocol: UDP, targetPort: 9999, nodePort: {NODE_PORT_CLOSED}}}",
        http(NODE_PORT_CLUSTER)
    );
    service(
        "np-cluster",
        "10.96.1.20",
        "Cluster",
        &cluster_ports,
        &[b, c],
    ) + &service(
        "np-local",
        "10.96.1.21",
        "Local",
        &http(NODE_PORT_LOCAL),
        &[b, c],
    ) + &service(
        "np-local-c",
        "10.96.1.22",
        "Local",
        &http(NODE_PORT_LOCAL_C),
        &[c],
    )
}

const NODE_PORT_CLUSTER: u16 = 30080;
const NODE_PORT_LOCAL: u16 = 30081;
/// UDP, to a port nobody listens on.
const NODE_PORT_CLOSED: u16 = 30082;
/// `Local`, with its only endpoint on node2.
const NODE_PORT_LOCAL_C: u16 = 30083;
/// The lab's external host.
const EXTERNAL: &str = "203.0.113.10";

/// NodePorts from the lab's external host through either node: with
/// `externalTrafficPolicy: Cluster` every backend answers and sees the
/// node's address; with `Local` only the node's own backend answers and
/// sees the client's address, and a node without one drops the
/// connection; a backend's port unreachable reaches the client. Pods and
/// nodes of the cluster get every backend through any node's NodePort,
/// whatever the traffic policy.
fn node_ports(lab: &TestLab, routing: &str, served_by: ServedBy, b: &str, c: &str) {
    let path = lab.config.dir.with_extension("nodeports.yaml");
    std::fs::write(&path, node_ports_yaml(b, c)).expect("manifest");
    lab.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);
    let state = lab.lab().state().clone();
    let external = lab.lab().ext_netns();
    let every_backend: BTreeSet<String> = ["x/b".to_owned(), "x/c".to_owned()].into();
    for (node, own) in [("node1", "x/b"), ("node2", "x/c")] {
        let node_ip = state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.ip.to_string())
            .expect("node in the lab");
        let at = |port: u16| SocketAddr::new(node_ip.parse().expect("ip"), port);
        assert!(
            lab.eventually(CONVERGE, || answer_at(&external, at(NODE_PORT_CLUSTER))
                .is_some()),
            "{routing}: NodePort through {node}"
        );
        let seen = answers(&external, at(NODE_PORT_CLUSTER), 40);
        let expected: BTreeSet<(String, String)> = ["x/b", "x/c"]
            .into_iter()
            .map(|backend| (backend.to_owned(), node_ip.clone()))
            .collect();
        assert_eq!(
            seen, expected,
            "{routing}: externalTrafficPolicy Cluster through {node}: every backend, from the node's address"
        );
        let seen = answers(&external, at(NODE_PORT_LOCAL), 20);
        assert_eq!(
            seen,
            [(own.to_owned(), EXTERNAL.to_owned())].into(),
            "{routing}: externalTrafficPolicy Local through {node}: its own backend, from the client's address"
        );
        for _ in 0..4 {
            assert!(
                udp_refused(&external, at(NODE_PORT_CLOSED)),
                "{routing}: the backend's port unreachable through {node}'s NodePort"
            );
        }
        let only_c = answer_at(&external, at(NODE_PORT_LOCAL_C));
        if node == "node2" {
            assert_eq!(
                only_c,
                Some(("x/c".to_owned(), EXTERNAL.to_owned())),
                "{routing}: Local through the node of its only endpoint"
            );
        } else {
            assert_eq!(
                only_c, None,
                "{routing}: Local through a node without endpoint"
            );
            assert!(
                !refused(&external, at(NODE_PORT_LOCAL_C)),
                "{routing}: dropped there, not refused (a load balancer moves on)"
            );
        }

        // Clients inside the cluster: a pod of each node, and node1 itself.
        let mut clients = vec![
            ("x/a", lab.pod_netns("x/a")),
            ("x/d", lab.pod_netns("x/d")),
            ("node1", lab.node_netns("node1")),
        ];
        if node == "node2" {
            // A node reaching another's NodePort is a client from outside.
            clients.pop();
        }
        for (client, ns) in clients {
            let mut ports = vec![NODE_PORT_CLUSTER, NODE_PORT_LOCAL];
            let own_node = (client == "x/a" || client == "node1") == (node == "node1");
            if served_by == ServedBy::KubeProxy && !own_node {
                // kube-proxy sends a pod of another node to any endpoint
                // of a Local NodePort without masquerading it: a backend
                // on the client's node answers it directly, from the
                // wrong address. sluice masquerades such clients.
                ports.pop();
            }
            for port in ports {
                let seen: BTreeSet<String> =
                    (0..40).filter_map(|_| name_at(&ns, at(port))).collect();
                assert_eq!(
                    seen, every_backend,
                    "{routing}: {client} through {node}'s NodePort {port}"
                );
            }
        }
    }
}

/// The lab runs Services as a cluster does: a Service applied without a
/// ClusterIP gets one from the service CIDR, and the lab's EndpointSlice
/// controller keeps its slices in line with the pods its selector picks,
/// as they come and go.
#[test]
fn the_lab_allocates_cluster_ips_and_keeps_endpoint_slices() {
    require_root!();
    let lab = TestLab::up("ks", 2, "tunnel");
    add_pods(&lab, &[("x/a", "node1", "client"), ("x/b", "node1", "web")]);
    let web = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: {NAME_PORT}}}]\n"
    );
    let path = lab.config.dir.with_extension("web.yaml");
    std::fs::write(&path, web).expect("manifest");
    lab.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);
    let status = lab.sluice_ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("x/web"))
        .unwrap_or_else(|| panic!("no x/web in:\n{status}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], "ClusterIP", "{line}");
    let cluster_ip = fields[2];
    assert!(cluster_ip.starts_with("10.96."), "{line}");
    let vip: SocketAddr = format!("{cluster_ip}:80").parse().expect("addr");

    let client = lab.pod_netns("x/a");
    let _b = NameServer::start(&lab.pod_netns("x/b"), NAME_PORT, "x/b");
    assert!(
        lab.eventually(CONVERGE, || name_at(&client, vip).as_deref() == Some("x/b")),
        "the ClusterIP reaches x/b\n{}",
        lab.agent_logs()
    );
    // A new pod the selector picks becomes a backend...
    lab.sluice_ok(&[
        "pod", "add", "x/c", "--node", "node2", "--labels", "app=web",
    ]);
    let _c = NameServer::start(&lab.pod_netns("x/c"), NAME_PORT, "x/c");
    assert!(
        lab.eventually(CONVERGE, || (0..10)
            .any(|_| name_at(&client, vip).as_deref() == Some("x/c"))),
        "the new pod x/c gets connections"
    );
    // ...and a deleted one stops being one.
    lab.sluice_ok(&["pod", "del", "x/b"]);
    assert!(
        lab.eventually(CONVERGE, || (0..10)
            .all(|_| name_at(&client, vip).as_deref() == Some("x/c"))),
        "after x/b is gone only x/c answers"
    );
}

fn drain_yaml(b: &str, c: &str, b_ready: Option<bool>) -> String {
    let b_endpoint = match b_ready {
        Some(ready) => format!(
            "- {{addresses: [{b}], nodeName: node1, conditions: {{ready: {ready}, terminating: {}}}}}\n",
            !ready
        ),
        None => String::new(),
    };
    format!(
        "\
apiVersion: v1
kind: Service
metadata: {{name: drain, namespace: x}}
spec:
  clusterIP: 10.96.1.30
  ports:
  - {{name: echo, port: 80, targetPort: 80}}
  - {{name: name, port: 8080, targetPort: {NAME_PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: drain-1, namespace: x, labels: {{kubernetes.io/service-name: drain}}}}
addressType: IPv4
ports:
- {{name: echo, port: 80, protocol: TCP}}
- {{name: name, port: {NAME_PORT}, protocol: TCP}}
endpoints:
{b_endpoint}- {{addresses: [{c}], nodeName: node2, conditions: {{ready: true}}}}
"
    )
}

/// A backend taken out of a Service under load: while terminating, and
/// once gone from its slice, its established connection goes on
/// (exchanging data all along); new connections go only to the other
/// backend from the moment it is not ready.
#[test]
fn a_backend_taken_out_keeps_its_connections_and_gets_no_new_ones() {
    use std::io::{Read as _, Write as _};
    require_root!();
    let lab = TestLab::up("kd", 2, "tunnel");
    for (pod, node) in [("x/a", "node1"), ("x/b", "node1"), ("x/c", "node2")] {
        lab.sluice_ok(&["pod", "add", pod, "--node", node]);
    }
    let ip = |name: &str| pod_ip(&lab, name);
    let _b = NameServer::start(&lab.pod_netns("x/b"), NAME_PORT, "x/b");
    let _c = NameServer::start(&lab.pod_netns("x/c"), NAME_PORT, "x/c");
    let apply = |b_ready: Option<bool>| {
        let path = lab.config.dir.with_extension("drain.yaml");
        std::fs::write(&path, drain_yaml(&ip("x/b"), &ip("x/c"), b_ready)).expect("manifest");
        lab.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&path);
    };
    apply(Some(true));
    let echo: SocketAddr = "10.96.1.30:80".parse().expect("addr");
    let names: SocketAddr = "10.96.1.30:8080".parse().expect("addr");
    let client = lab.pod_netns("x/a");
    assert!(
        lab.eventually(CONVERGE, || name_at(&client, names).is_some()),
        "the Service answers\n{}",
        lab.agent_logs()
    );
    // Connections to the echo port until one lands on x/b: x/b's socket
    // table then lists the client's port.
    let b_ns = lab.pod_netns("x/b");
    let mut on_b = None;
    for _ in 0..40 {
        let conn = client
            .run(move || std::net::TcpStream::connect_timeout(&echo, TIMEOUT))
            .expect("entering x/a")
            .expect("connecting to the echo port");
        let port = conn.local_addr().expect("local address").port();
        let listed = b_ns
            .command("ss")
            .and_then(|mut c| c.args(["-Htn", "state", "established"]).output())
            .expect("ss in x/b");
        let peer = format!(":{port}");
        if String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .any(|field| field.ends_with(&peer))
        {
            on_b = Some(conn);
            break;
        }
    }
    let mut on_b = on_b.expect("one of 40 connections landed on x/b");
    on_b.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut exchange = |what: &str| {
        let mut buf = [0u8; 5];
        on_b.write_all(b"hello")
            .expect("send on the established connection");
        on_b.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("the established connection broke {what}: {e}"));
        assert_eq!(&buf, b"hello");
    };
    exchange("before anything changed");

    for (step, b_ready) in [
        ("while x/b terminates", Some(false)),
        ("with x/b gone from the slice", None),
    ] {
        apply(b_ready);
        assert!(
            lab.eventually(CONVERGE, || (0..20)
                .all(|_| name_at(&client, names).as_deref() == Some("x/c"))),
            "{step}: new connections go to x/c only"
        );
        exchange(step);
    }
}
