//! Flow events end to end, in the real lab: connections made from pod
//! namespaces, read back with `sluice lab observe` (which asks every
//! node's agent), and a flood that the datapath's bounds and the agent's
//! history must absorb.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use sluice_common::observe::{Flow, FlowVerdict};
use sluice_tests::{probe, require_root, Netns, TestLab};

const CONVERGE: Duration = Duration::from_secs(15);

/// x's pods take connections from x's pods only.
const ONLY_FROM_X: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-from-x, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {}
";

/// The fields the README documents for `-o json`.
const DOCUMENTED: [&str; 9] = [
    "time",
    "time_unix_ns",
    "node",
    "verdict",
    "direction",
    "protocol",
    "source",
    "destination",
    "reason",
];

/// `sluice lab observe ARGS -o json`, each line parsed.
fn observe(lab: &TestLab, args: &[&str]) -> Vec<Flow> {
    let mut all = vec!["observe", "-o", "json"];
    all.extend_from_slice(args);
    lab.sluice_ok(&all)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a flow: {line:?}: {e}"))
        })
        .collect()
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// Whether `stranger`'s new connection to `dst` is refused.
fn refused(stranger: &Netns, dst: SocketAddr) -> bool {
    !probe::tcp(stranger, dst, Duration::from_millis(300))
}

/// x/a on `server_node` and y/a on `client_node` under `x/only-from-x`,
/// once the policy refuses y/a: x/a's port 80, and y/a's namespace.
fn only_from_x_refusing_y(
    lab: &TestLab,
    server_node: &str,
    client_node: &str,
) -> (SocketAddr, Netns) {
    let server = lab.pod_add("x/a", server_node);
    lab.pod_add("y/a", client_node);
    lab.apply_yaml("only-from-x", ONLY_FROM_X);
    let dst = SocketAddr::new(server.ip, 80);
    let stranger = lab.pod_netns("y/a");
    assert!(
        lab.eventually(CONVERGE, || refused(&stranger, dst)),
        "the policy never took effect\n{}",
        lab.agent_logs()
    );
    (dst, stranger)
}

#[test]
fn flows_show_denied_and_allowed_connections_with_pods_port_and_reason() {
    require_root!();
    let lab = TestLab::up("fl", 2, "tunnel");
    let server = lab.pod_add("x/a", "node1");
    lab.pod_add("x/b", "node2");
    lab.pod_add("y/a", "node2");
    lab.apply_yaml("only-from-x", ONLY_FROM_X);
    let dst = SocketAddr::new(server.ip, 80);
    let (friend, stranger) = (lab.pod_netns("x/b"), lab.pod_netns("y/a"));
    assert!(
        lab.eventually(CONVERGE, || probe::tcp(
            &friend,
            dst,
            Duration::from_secs(1)
        ) && refused(&stranger, dst)),
        "the policy never took effect\n{}",
        lab.agent_logs()
    );

    // A denied connection shows up, named, within a second of its SYN.
    let started = Instant::now();
    // The agent's clock conversion may be off by a few ms.
    let since = unix_ns() - 50_000_000;
    let denied_probe = {
        let stranger = lab.pod_netns("y/a");
        std::thread::spawn(move || probe::tcp(&stranger, dst, Duration::from_secs(1)))
    };
    let mut seen = None;
    while seen.is_none() && started.elapsed() < Duration::from_secs(3) {
        seen = observe(&lab, &["--verdict", "denied", "--pod", "y/a"])
            .into_iter()
            .find(|f| f.time_unix_ns >= since)
            .map(|f| (f, started.elapsed()));
    }
    assert!(!denied_probe.join().expect("probe thread"), "y/a got in");
    let (flow, after) = seen.unwrap_or_else(|| {
        panic!(
            "no denied flow from y/a recorded within 3 s\n{}",
            lab.agent_logs()
        )
    });
    assert!(
        after < Duration::from_secs(1),
        "the denial showed up after {after:?}"
    );
    assert_eq!(flow.verdict, FlowVerdict::Denied);
    assert_eq!(flow.source.name(), "y/a", "{flow:?}");
    assert_eq!(flow.destination.name(), "x/a", "{flow:?}");
    assert_eq!(flow.destination.port, 80);
    assert_eq!(flow.protocol, "TCP");
    assert_eq!(flow.reason.as_deref(), Some("drop_policy_ingress"));
    assert_eq!(flow.direction, "ingress");
    assert_eq!(flow.node, "node1", "x/a's node refused it");
    assert_eq!(flow.destination.node.as_deref(), Some("node1"));
    assert_eq!(flow.source.node.as_deref(), Some("node2"));
    let ingress = flow.ingress.as_ref().expect("ingress decided on node1");
    assert_eq!(ingress.decision, "denied");
    assert_eq!(ingress.policies, ["x/only-from-x"]);

    // An allowed one, as allowed.
    assert!(probe::tcp(&friend, dst, Duration::from_secs(1)));
    let allowed = observe(
        &lab,
        &["--verdict", "allowed", "--pod", "x/b", "--port", "80"],
    );
    let flow = allowed
        .iter()
        // x/a's node decided its ingress (x/b's, also isolated by the
        // policy, records it too, its egress open).
        .find(|f| f.destination.name() == "x/a" && f.node == "node1")
        .unwrap_or_else(|| panic!("no allowed flow x/b -> x/a: {allowed:?}"));
    assert_eq!(flow.verdict, FlowVerdict::Allowed);
    assert_eq!(flow.source.name(), "x/b");
    assert_eq!(
        flow.ingress.as_ref().map(|d| d.decision.as_str()),
        Some("allowed")
    );

    // Filters are exact.
    let flows = observe(&lab, &["--verdict", "denied", "--namespace", "x"]);
    assert!(!flows.is_empty());
    for f in &flows {
        assert_eq!(f.verdict, FlowVerdict::Denied, "{f:?}");
        assert!(
            [&f.source, &f.destination]
                .iter()
                .any(|e| e.namespace.as_deref() == Some("x")),
            "{f:?}"
        );
    }
    assert!(observe(&lab, &["--verdict", "denied", "--namespace", "z"]).is_empty());
    assert!(observe(&lab, &["--pod", "y/a", "--port", "81"]).is_empty());
    assert_eq!(observe(&lab, &["--last", "1"]).len(), 1);

    // The JSON keeps its documented field names.
    let out = lab.sluice_ok(&[
        "observe",
        "-o",
        "json",
        "--verdict",
        "denied",
        "--last",
        "1",
    ]);
    let value: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    for field in DOCUMENTED {
        assert!(value.get(field).is_some(), "{field} missing: {value}");
    }
    for field in ["ip", "port", "namespace", "pod", "node"] {
        assert!(
            value["source"].get(field).is_some(),
            "source.{field}: {value}"
        );
    }
    // Following: a live denial arrives on the stream.
    let mut follow = std::process::Command::new(sluice_tests::bin("sluice"))
        .args(["lab", "--dir"])
        .arg(&lab.config.dir)
        .args(["--name", &lab.config.name, "--bin-dir"])
        .arg(&lab.config.bin_dir)
        .args(["observe", "--follow", "-o", "json", "--verdict", "denied"])
        .args(["--port", "81", "--pod", "y/a"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sluice lab observe --follow");
    let stdout = follow.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let dst81 = SocketAddr::new(server.ip, 81);
    assert!(!probe::tcp(&stranger, dst81, Duration::from_millis(500)));
    let live = lines_rx.recv_timeout(Duration::from_secs(3));
    let _ = follow.kill();
    let _ = follow.wait();
    let live: Flow =
        serde_json::from_str(&live.expect("a live flow within 3 s")).expect("a JSON flow");
    assert_eq!(
        (live.source.name(), live.destination.port),
        ("y/a".to_owned(), 81)
    );

    // And people get a line naming both pods.
    let text = lab.sluice_ok(&[
        "observe",
        "--verdict",
        "denied",
        "--pod",
        "y/a",
        "--port",
        "80",
        "--last",
        "1",
    ]);
    assert!(text.contains("y/a") && text.contains("x/a:80"), "{text}");
    assert!(text.contains("drop_policy_ingress"), "{text}");
}

/// x's namespace with the audit mode annotation set to `value`.
fn namespace_x_audit(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  annotations: {{policy.sluice.io/audit-mode: {value}}}\n"
    )
}

/// Audit mode on x's namespace: what x's policy would deny gets through,
/// reported as would-deny (flows, verdict counter, explain); switched off,
/// the policy is enforced again.
#[test]
fn audit_mode_lets_traffic_through_reports_it_and_switching_off_enforces() {
    require_root!();
    let lab = TestLab::up("au", 2, "tunnel");
    let (dst, stranger) = only_from_x_refusing_y(&lab, "node1", "node2");

    lab.apply_yaml("audit-x", &namespace_x_audit("enabled"));
    assert!(
        lab.eventually(CONVERGE, || probe::tcp(
            &stranger,
            dst,
            Duration::from_secs(1)
        )),
        "audit mode never let y/a through\n{}",
        lab.agent_logs()
    );
    let flows = observe(&lab, &["--verdict", "would-deny", "--pod", "y/a"]);
    let flow = flows
        .iter()
        .find(|f| f.destination.name() == "x/a" && f.destination.port == 80)
        .unwrap_or_else(|| panic!("no would-deny flow y/a -> x/a: {flows:?}"));
    assert_eq!(flow.verdict, FlowVerdict::WouldDeny);
    assert_eq!(flow.direction, "ingress");
    assert_eq!(flow.node, "node1");
    assert_eq!(flow.reason, None, "nothing was dropped");
    let ingress = flow.ingress.as_ref().expect("ingress decided on node1");
    assert_eq!(ingress.decision, "would-deny");
    assert_eq!(ingress.policies, ["x/only-from-x"]);
    assert!(observe(&lab, &["--verdict", "denied", "--pod", "y/a"])
        .iter()
        .all(|f| f.time_unix_ns < flow.time_unix_ns));
    let page = lab.scrape("node1");
    assert!(
        page.lines().any(|l| l.starts_with(
            "sluice_policy_verdicts_total{direction=\"ingress\",verdict=\"would-deny\"} "
        ) && !l.ends_with(" 0")),
        "no would-deny verdicts counted:\n{page}"
    );
    let explained = lab.sluice_ok(&[
        "explain", "--from", "y/a", "--to", "x/a", "--port", "80/TCP",
    ]);
    assert!(
        explained.contains("would deny") && explained.contains("Namespace"),
        "{explained}"
    );

    lab.apply_yaml("audit-x", &namespace_x_audit("disabled"));
    assert!(
        lab.eventually(CONVERGE, || refused(&stranger, dst)),
        "switching audit mode off did not enforce the policy again\n{}",
        lab.agent_logs()
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A flood of denied packets: the agent keeps answering, its memory stays
/// bounded (the history keeps its size), and what the datapath did not
/// send is counted.
#[test]
fn flows_flood_of_denied_packets_is_bounded_and_counted() {
    require_root!();
    let lab = TestLab::up("ff", 1, "tunnel");
    let (dst, stranger) = only_from_x_refusing_y(&lab, "node1", "node1");
    let pid = lab
        .lab()
        .status()
        .nodes
        .first()
        .and_then(|n| n.agent_pid)
        .expect("node1's agent runs");
    // Let the agent settle (its first scrapes, syncs) before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kib(pid);
    let sent = stranger
        .run(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
            let started = Instant::now();
            let mut sent = 0u64;
            while started.elapsed() < Duration::from_secs(3) {
                for port in 1000..1100u16 {
                    let _ = sock.send_to(b"flood", SocketAddr::new(dst.ip(), port));
                    sent += 1;
                }
            }
            sent
        })
        .expect("entering y/a");
    let answered = Instant::now();
    let status = lab.sluice_ok(&["status"]);
    assert!(
        answered.elapsed() < Duration::from_secs(2),
        "the agent took {:?} to answer after the flood",
        answered.elapsed()
    );
    assert!(status.contains("node1"), "{status}");
    let recorded = observe(&lab, &["--verdict", "denied"]);
    assert!(
        !recorded.is_empty() && recorded.len() <= 4096,
        "{} flows recorded of {sent} sent",
        recorded.len()
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "the agent grew from {before} KiB to {after} KiB over {sent} denied packets"
    );
    let page = lab.scrape("node1");
    let count = |result: &str| -> u64 {
        let prefix = format!("sluice_flow_events_total{{result=\"{result}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
    };
    assert!(
        count("rate_limited") + count("lost") > 0,
        "{sent} denied packets, nothing rate-limited or lost:\n{page}"
    );
    assert!(count("emitted") > 0);
    assert!(
        page.contains("sluice_flow_verdicts_total{destination_namespace=\"x\",source_namespace=\"y\",verdict=\"denied\"}"),
        "the namespace pair's verdicts are counted"
    );
    eprintln!(
        "flood: {sent} packets in 3 s; {} flows recorded; rss {before} -> {after} KiB; emitted {}, rate-limited {}, lost {}",
        recorded.len(),
        count("emitted"),
        count("rate_limited"),
        count("lost")
    );
}
