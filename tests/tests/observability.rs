//! What operators see of the nodes. Prometheus for real: Debian's
//! Prometheus server, in node1's network namespace with storage of its
//! own, scrapes both lab agents; its HTTP API shows the dataplane's
//! counters move with real traffic (packets forwarded between the nodes, a
//! NetworkPolicy denial). `promtool check metrics` accepts the agent's
//! page, and `docs/metrics.md` lists exactly the metric families the agent
//! exposes. `sluice status` shows the node as its agent knows it.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use sluice_tests::{
    assert_success, bin, probe, require_root, run_ok, unique, Netns, TestLab, PRIVILEGED_ENV,
    TIMEOUT,
};

const WEB: u16 = 80;
/// Where the server listens, inside node1's namespace (loopback).
const API: &str = "127.0.0.1:19090";
const WITHIN: Duration = Duration::from_secs(30);

/// A Prometheus server in `ns`, killed and its files removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    fn start(ns: &Netns, targets: &[String]) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-prometheus-{}", unique("pm")));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: sluice\n    static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ),
        )
        .expect("prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let mut cmd = ns.command("prometheus").expect("prometheus in node1");
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={API}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
        let child = cmd.spawn().expect("starting prometheus");
        Self { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` from inside `ns`; the body of a 200 answer.
fn http_get(ns: &Netns, address: SocketAddr, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n");
    ns.run(move || -> Option<String> {
        let mut conn = std::net::TcpStream::connect_timeout(&address, TIMEOUT).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        conn.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    })
    .ok()
    .flatten()
}

/// The value of a PromQL query returning one number (a `sum`), if the
/// server answers with one.
fn query(ns: &Netns, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(
        ns,
        API.parse().expect("address"),
        &format!("/api/v1/query?query={encoded}"),
    )?;
    let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"]
        .as_array()?
        .first()?
        .get("value")?
        .get(1)?
        .as_str()?
        .parse()
        .ok()
}

fn tool(name: &str) -> Option<PathBuf> {
    let path = Path::new("/usr/bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os(PRIVILEGED_ENV).is_some() {
        panic!("{name} is missing: cargo xtask bootstrap installs Debian's prometheus");
    }
    eprintln!("skipped: no {name} (Debian's prometheus package)");
    None
}

#[test]
fn prometheus_and_sluice_status_see_the_nodes_traffic_and_state() {
    require_root!();
    let (Some(_), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let lab = TestLab::up("pm", 2, "tunnel");
    let client = lab.pod_add("x/a", "node1");
    let server = lab.pod_add("x/b", "node2");
    let state = lab.lab().state().clone();
    let targets: Vec<String> = state
        .nodes
        .iter()
        .map(|n| format!("{}:{}", n.ip, metrics_port()))
        .collect();
    let node1 = lab.node_netns("node1");
    let prometheus = Prometheus::start(&node1, &targets);
    assert!(
        lab.eventually(WITHIN, || query(&node1, "sum(up{job=\"sluice\"})")
            == Some(2.0)),
        "Prometheus scrapes both agents\n{}",
        prometheus.log()
    );

    // Forwarded packets: x/a (node1) to x/b (node2) through the tunnel.
    let web = SocketAddr::new(server.ip, WEB);
    let client_ns = lab.pod_netns(&format!("{}/{}", client.namespace, client.name));
    assert!(
        lab.eventually(WITHIN, || probe::tcp(&client_ns, web, TIMEOUT)),
        "x/a reaches x/b"
    );
    let forwarded = "sum(sluice_datapath_packets_total{reason=\"forward_tunnel\"})";
    let before = wait_for_value(&lab, &node1, forwarded);
    for _ in 0..5 {
        assert!(probe::tcp(&client_ns, web, TIMEOUT));
    }
    assert!(
        lab.eventually(WITHIN, || query(&node1, forwarded)
            .is_some_and(|v| v > before)),
        "{forwarded} grows with traffic (from {before})"
    );

    // A denial: x/b isolated for ingress, x/a's connection refused there.
    let denied = "sum(sluice_policy_verdicts_total{verdict=\"denied\"})";
    let before = wait_for_value(&lab, &node1, denied);
    let path = lab.config.dir.with_extension("deny.yaml");
    std::fs::write(
        &path,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
    )
    .expect("policy");
    lab.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&path);
    assert!(
        lab.eventually(WITHIN, || !probe::tcp(&client_ns, web, TIMEOUT)),
        "the policy denies x/a"
    );
    assert!(
        lab.eventually(WITHIN, || query(&node1, denied).is_some_and(|v| v > before)),
        "{denied} grows with the denial (from {before})"
    );
    assert!(
        query(
            &node1,
            "sum(sluice_policy_implementation_delay_seconds_count)"
        )
        .is_some_and(|n| n >= 1.0),
        "the policy's implementation delay is recorded"
    );

    // The page itself: promtool's lint, and the documentation. The
    // per-Service families have series only once a Service exists.
    let path = lab.config.dir.with_extension("service.yaml");
    std::fs::write(
        &path,
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec:\n  clusterIP: 10.96.5.10\n  ports: [{{port: {WEB}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{port: {WEB}, protocol: TCP}}]\nendpoints: [{{addresses: [{}], nodeName: node2}}]\n", server.ip),
    )
    .expect("service");
    lab.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&path);
    assert!(
        lab.eventually(WITHIN, || lab
            .scrape("node2")
            .contains("sluice_service_connections_total{")),
        "the Service's counters appear"
    );
    let page = lab.scrape("node2");
    let (_, body) = page.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feeding promtool");
    let out = check.wait_with_output().expect("promtool");
    assert_success(&out, "promtool check metrics");
    let exposed: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"))
            .expect("docs/metrics.md");
    let documented: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with("sluice_"))
        .collect();
    assert_eq!(
        exposed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "exposed but not in docs/metrics.md"
    );
    assert_eq!(
        documented.difference(&exposed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in docs/metrics.md but not exposed"
    );

    status_shows_the_node(&lab);
}

/// `sluice status` against node2's agent, as JSON and as text, after the
/// scenario above (x/b wired, a policy, a Service).
fn status_shows_the_node(lab: &TestLab) {
    let socket = lab.config.agent_socket("node2");
    let status = |format: &str| {
        run_ok(
            Command::new(bin("sluice"))
                .arg("status")
                .arg("--socket")
                .arg(&socket)
                .args(["-o", format]),
            "sluice status",
        )
    };
    let json: sluice_common::api::AgentStatus =
        serde_json::from_str(&status("json")).expect("sluice status -o json");
    let node = &json.node;
    assert!(node.ready, "{json:?}");
    assert_eq!(json.endpoints, 1);
    assert_eq!(node.routing, "tunnel");
    assert!(node.datastore.starts_with("dir:"), "{}", node.datastore);
    assert_eq!(node.objects.get("networkpolicy"), Some(&1));
    assert_eq!(node.objects.get("node"), Some(&2));
    assert_eq!(node.service_frontends, 1);
    assert!(node.identities >= 1);
    assert!(node
        .maps
        .iter()
        .any(|m| m.name == "SLUICE_IPCACHE" && m.entries > 0 && m.capacity > 0));
    assert!(node.last_sync_ms_ago.is_some_and(|ms| ms < 10_000));
    assert!(node.problems.is_empty(), "{:?}", node.problems);
    let text = status("text");
    assert!(text.contains("ready:            yes"), "{text}");
    assert!(text.contains("1 frontends"), "{text}");
}

fn metrics_port() -> u16 {
    sluice_agent::config::DEFAULT_METRICS_ADDRESS
        .parse::<SocketAddr>()
        .expect("metrics address")
        .port()
}

/// The query's value once Prometheus has one (the series exist from the
/// agent's start, at 0).
fn wait_for_value(lab: &TestLab, ns: &Netns, promql: &str) -> f64 {
    let mut value = None;
    assert!(
        lab.eventually(WITHIN, || {
            value = query(ns, promql);
            value.is_some()
        }),
        "no value for {promql}"
    );
    value.unwrap_or_default()
}

/// A pod holding every connection it can open to its node's metrics port
/// starves no one: each scrape from the node still gets through. The
/// occupancy of the maps the datapath fills is on the page.
#[test]
fn a_pod_cannot_starve_its_nodes_metrics() {
    require_root!();
    let lab = TestLab::up("st", 1, "tunnel");
    let server = lab.pod_add("x/srv", "node1");
    let hog = lab.pod_add("x/hog", "node1");
    let hog_ns = lab.pod_netns("x/hog");
    assert!(probe::tcp(
        &hog_ns,
        SocketAddr::new(server.ip, WEB),
        TIMEOUT
    ));
    let std::net::IpAddr::V4(pod_ip) = hog.ip else {
        panic!("IPv4 pod");
    };
    // The node's gateway address, first of its pod range.
    let gateway = std::net::Ipv4Addr::from((u32::from(pod_ip) & !0xff) + 1);
    let target = SocketAddr::new(gateway.into(), metrics_port());
    let held = hog_ns
        .run(move || {
            (0..64)
                .filter_map(|_| std::net::TcpStream::connect_timeout(&target, TIMEOUT).ok())
                .collect::<Vec<_>>()
        })
        .expect("entering x/hog");
    assert!(!held.is_empty(), "x/hog could not reach {target} at all");
    let node = lab.node_netns("node1");
    let local = SocketAddr::new([127, 0, 0, 1].into(), metrics_port());
    let served = (0..20)
        .filter(|_| {
            http_get(&node, local, "/metrics").is_some_and(|p| p.contains("sluice_endpoints 2"))
        })
        .count();
    drop(held);
    assert_eq!(served, 20, "scrapes failed while a pod held connections");

    // Counted at start: restart to count the connection above now.
    lab.lab().restart_agent("node1").expect("restart");
    let page = http_get(&node, local, "/metrics").expect("scrape");
    assert!(
        page.contains("sluice_bpf_map_occupancy{map=\"SLUICE_ENDPOINTS\"} 2"),
        "{page}"
    );
    let conntrack: u64 = page
        .lines()
        .find_map(|l| {
            l.strip_prefix("sluice_bpf_map_occupancy{map=\"SLUICE_CONNTRACK\"}")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no conntrack occupancy in\n{page}"));
    assert!(conntrack > 0, "the probe's flow is not counted");
}
