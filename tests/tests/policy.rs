//! NetworkPolicy enforced by the dataplane, through the real lab: policies
//! applied with `sluice lab apply`, connections made from pod namespaces.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use sluice_tests::{probe, require_root, Reason, TestLab, TIMEOUT};

const PORT: u16 = 80;
/// A port no lab pod listens on.
const CLOSED_PORT: u16 = 9999;
const CONVERGE: Duration = Duration::from_secs(15);

/// Sends a line and expects it echoed within `timeout`.
fn echo(conn: &mut TcpStream, msg: &[u8], timeout: Duration) -> std::io::Result<()> {
    conn.set_read_timeout(Some(timeout))?;
    conn.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    conn.read_exact(&mut buf)?;
    Ok(())
}

fn write_policy(lab: &TestLab, name: &str, yaml: &str) -> std::path::PathBuf {
    let path = lab.config.dir.with_extension(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("writing the policy file");
    path
}

const DENY_INGRESS_X: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: []
";

/// Revoked access stops established connections (here: across nodes, from
/// y/a on node2 to x/a on node1), not just new ones; and deleting the
/// policy lets new connections in again.
#[test]
fn policy_change_cuts_established_connections() {
    require_root!();
    let lab = TestLab::up("pr", 2, "tunnel");
    let server = lab.pod_add("x/a", "node1");
    lab.pod_add("y/a", "node2");
    let dst = SocketAddr::new(server.ip, PORT);
    let client = lab.pod_netns("y/a");
    assert!(
        lab.eventually(CONVERGE, || probe::tcp(&client, dst, TIMEOUT)),
        "y/a cannot reach {dst} before any policy\n{}",
        lab.agent_logs()
    );
    let mut conn = client
        .run(move || TcpStream::connect_timeout(&dst, TIMEOUT))
        .expect("entering y/a")
        .unwrap_or_else(|e| panic!("connecting to {dst}: {e}"));
    echo(&mut conn, b"before\n", Duration::from_secs(5)).expect("echo before the policy");

    let file = write_policy(&lab, "deny", DENY_INGRESS_X);
    let applied = Instant::now();
    lab.sluice_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    // Keep talking on the established connection until it stops.
    let mut cut_after = None;
    while applied.elapsed() < Duration::from_secs(10) {
        if echo(&mut conn, b"still there?\n", Duration::from_millis(200)).is_err() {
            cut_after = Some(applied.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cut_after = cut_after.unwrap_or_else(|| {
        panic!(
            "the established connection still works 10 s after the deny policy\n{}",
            lab.agent_logs()
        )
    });
    eprintln!("established connection cut {cut_after:?} after `lab apply`");
    assert!(
        !probe::tcp(&client, dst, TIMEOUT),
        "new connections still pass the deny policy"
    );
    assert!(
        lab.counter("node1", Reason::DropPolicyIngress) > 0,
        "node1 counted no drop_policy_ingress"
    );
    // The agent exports the same through /metrics.
    let page = lab.scrape("node1");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    for series in [
        "sluice_policy_verdicts_total{direction=\"ingress\",verdict=\"denied\"}",
        "sluice_datapath_packets_total{direction=\"ingress\",reason=\"drop_policy_ingress\"}",
    ] {
        let value: u64 = page
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{page}"));
        assert!(value > 0, "{series} is 0");
    }

    lab.sluice_ok(&["delete", "-f", file.to_str().expect("utf-8 path")]);
    assert!(
        lab.eventually(CONVERGE, || probe::tcp(&client, dst, TIMEOUT)),
        "y/a cannot reach {dst} after the policy was deleted\n{}",
        lab.agent_logs()
    );
    let _ = std::fs::remove_file(file);
}

/// Replies of an allowed connection pass even when the client is isolated
/// for ingress, and the client's own node always reaches it (kubelet
/// probes).
#[test]
fn replies_and_own_node_pass_isolation() {
    require_root!();
    let lab = TestLab::up("rp", 2, "tunnel");
    let client = lab.pod_add("x/a", "node1");
    let server = lab.pod_add("y/a", "node2");
    let file = write_policy(&lab, "deny", DENY_INGRESS_X);
    lab.sluice_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    let client_ns = lab.pod_netns("x/a");
    let other_ns = lab.pod_netns("y/a");
    let to_client = SocketAddr::new(client.ip, PORT);
    // Wait for the policy to take effect: y/a can no longer reach x/a.
    assert!(
        lab.eventually(CONVERGE, || !probe::tcp(&other_ns, to_client, TIMEOUT)),
        "the deny-ingress policy never took effect\n{}",
        lab.agent_logs()
    );
    // x/a's own connections out still work: their replies come back in.
    let to_server = SocketAddr::new(server.ip, PORT);
    assert!(
        probe::tcp(&client_ns, to_server, TIMEOUT),
        "TCP reply blocked"
    );
    assert!(
        probe::udp(&client_ns, to_server, TIMEOUT),
        "UDP reply blocked"
    );
    assert!(
        probe::icmp(&client_ns, server.ip, TIMEOUT),
        "ICMP reply blocked"
    );
    // The port unreachable y/a answers x/a's datagram with is an ICMP error
    // about x/a's own flow: it comes in, and the socket sees the refusal.
    let closed = SocketAddr::new(server.ip, CLOSED_PORT);
    let answer = client_ns
        .run(move || -> std::io::Result<()> {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.connect(closed)?;
            sock.set_read_timeout(Some(TIMEOUT))?;
            sock.send(b"anyone?")?;
            sock.recv(&mut [0u8; 16]).map(drop)
        })
        .expect("entering x/a");
    assert!(
        matches!(&answer, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "port unreachable for x/a's own datagram did not arrive: {answer:?}\n{}",
        lab.agent_logs()
    );
    // node1 (x/a's node) still reaches it.
    assert!(
        probe::tcp(&lab.node_netns("node1"), to_client, TIMEOUT),
        "x/a's own node is blocked"
    );
    let _ = std::fs::remove_file(file);
}

const ALLOW_EXT_TO_X: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ext, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from:
    - ipBlock: {cidr: 203.0.113.0/24}
    ports:
    - {protocol: TCP, port: 80}
";

/// Ingress policy also holds for what the node's stack routes into a pod:
/// here a host outside the cluster, reaching x/a through node1 in tunnel
/// mode (no program sees the underlay there). ipBlock rules decide it.
#[test]
fn ingress_from_outside_the_cluster_is_enforced() {
    require_root!();
    let lab = TestLab::up("ex", 2, "tunnel");
    let pod = lab.pod_add("x/a", "node1");
    let node1 = lab.lab().state().node("node1").expect("node1").clone();
    // The external host's router learns where node1's pods are.
    let fabric =
        sluice_tests::Netns::existing(&sluice_lab::topology::fabric_netns(&lab.config.name));
    fabric
        .ip(&format!("route add {} via {}", node1.pod_cidr, node1.ip))
        .expect("route to node1's pods");
    let ext = lab.lab().ext_netns();
    let dst = SocketAddr::new(pod.ip, PORT);
    assert!(
        lab.eventually(CONVERGE, || probe::tcp(&ext, dst, TIMEOUT)),
        "the external host cannot reach {dst} before any policy\n{}",
        lab.agent_logs()
    );

    let deny = write_policy(&lab, "deny", DENY_INGRESS_X);
    lab.sluice_ok(&["apply", "-f", deny.to_str().expect("utf-8 path")]);
    assert!(
        lab.eventually(CONVERGE, || !probe::tcp(&ext, dst, TIMEOUT)),
        "the external host still reaches {dst} through a deny-all ingress policy\n{}",
        lab.agent_logs()
    );
    assert!(
        probe::tcp(&lab.node_netns("node1"), dst, TIMEOUT),
        "x/a's own node is blocked"
    );

    let allow = write_policy(&lab, "allow", ALLOW_EXT_TO_X);
    lab.sluice_ok(&["apply", "-f", allow.to_str().expect("utf-8 path")]);
    assert!(
        lab.eventually(CONVERGE, || probe::tcp(&ext, dst, TIMEOUT)),
        "the ipBlock rule does not let the external host in\n{}",
        lab.agent_logs()
    );
    let other_port = SocketAddr::new(pod.ip, 81);
    assert!(
        !probe::tcp(&ext, other_port, TIMEOUT),
        "the external host reaches a port its rule does not allow"
    );
    let _ = std::fs::remove_file(deny);
    let _ = std::fs::remove_file(allow);
}

/// A pod is isolated from its first packet: pods added one after another
/// to a namespace under default-deny ingress accept no connection at any
/// moment, while a pod of the other node scans the addresses they get.
/// A pod no policy selects, added among them, shows the scan would have
/// seen an open one.
#[test]
fn new_pods_are_isolated_from_their_first_packet() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    };
    require_root!();
    let lab = TestLab::up("np", 2, "tunnel");
    let file = write_policy(&lab, "deny-np", DENY_INGRESS_X);
    lab.sluice_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    let first = lab.pod_add("x/first", "node1");
    lab.pod_add("y/scanner", "node2");
    let std::net::IpAddr::V4(first_ip) = first.ip else {
        panic!("IPv4 pod");
    };
    // IPAM hands out the next addresses of node1's range.
    let targets: Vec<SocketAddr> = (1..=10u32)
        .map(|i| {
            SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from(first_ip) + i).into(),
                PORT,
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let scanners: Vec<_> = targets
        .iter()
        .map(|&dst| {
            let ns = lab.pod_netns("y/scanner");
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                ns.run(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if TcpStream::connect_timeout(&dst, Duration::from_millis(25)).is_ok() {
                            accepted.lock().expect("lock").insert(dst.ip());
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
                .expect("entering y/scanner")
            })
        })
        .collect();
    let mut isolated = Vec::new();
    let mut open = None;
    for i in 0..7 {
        if i == 3 {
            open = Some(lab.pod_add("z/open", "node1").ip);
        } else {
            isolated.push(lab.pod_add(&format!("x/new{i}"), "node1").ip);
        }
    }
    let open = open.expect("z/open added");
    // The scan must have been able to see an open pod.
    let saw_open = lab.eventually(CONVERGE, || accepted.lock().expect("lock").contains(&open));
    stop.store(true, Ordering::Relaxed);
    for scanner in scanners {
        scanner.join().expect("scanner thread");
    }
    let _ = std::fs::remove_file(file);
    assert!(
        saw_open,
        "the scan never reached z/open at {open}: it proves nothing"
    );
    let accepted = accepted.lock().expect("lock").clone();
    for ip in &isolated {
        assert!(
            !accepted.contains(ip),
            "a new pod at {ip} accepted a connection despite default-deny ingress (accepted: {accepted:?})\n{}",
            lab.agent_logs()
        );
        assert!(
            targets.iter().any(|t| t.ip() == *ip),
            "{ip} was not among the scanned addresses {targets:?}"
        );
    }
    // The wait is measured.
    let page = lab.scrape("node1");
    assert!(
        page.contains("sluice_endpoint_policy_wait_seconds_count{result=\"ready\"} 8"),
        "8 ADDs on node1 waited for their policy:\n{page}"
    );
}

/// The label identities in node1's pinned ipcache, by pod address.
fn pinned_identities(lab: &TestLab) -> std::collections::BTreeMap<std::net::Ipv4Addr, u32> {
    use sluice_common::ipcache::{Ipv4Prefix, RemoteInfo};
    let pins = sluice_agent::kernel::bpf::pin_dir(&lab.config.bpffs().join("sluice"), "node1");
    let data = aya::maps::MapData::from_pin(pins.join(sluice_common::maps::IPCACHE.name))
        .expect("opening the ipcache");
    let trie: aya::maps::LpmTrie<_, Ipv4Prefix, RemoteInfo> =
        aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(data)).expect("ipcache");
    trie.iter()
        .filter_map(Result::ok)
        .filter(|(key, info)| {
            key.prefix_len() == 32
                && (sluice_common::identity::FIRST_CLUSTER..sluice_common::identity::FIRST_CIDR)
                    .contains(&info.identity)
        })
        .map(|(key, info)| (std::net::Ipv4Addr::from(key.data().addr), info.identity))
        .collect()
}

/// A restarted agent numbers label sets as the pinned maps do, so no rule
/// it writes can meet an ipcache entry that still gives its number to
/// another pod: while the agent restarts under policy, a denied client
/// probing all along never gets through, and the identities stay as they
/// were. (The pods are added so that a fresh count would number them the
/// other way round.)
#[test]
fn identities_survive_an_agent_restart_under_policy() {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    };
    require_root!();
    let lab = TestLab::up("ir", 1, "tunnel");
    let server = lab.pod_add("x/srv", "node1");
    for pod in ["zz", "aa"] {
        let label = format!("pod={pod}");
        lab.sluice_ok(&[
            "pod",
            "add",
            &format!("y/{pod}"),
            "--node",
            "node1",
            "--labels",
            &label,
        ]);
    }
    let policy = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-zz, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {pod: zz}}
";
    let file = write_policy(&lab, "only-zz", policy);
    lab.sluice_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    let dst = SocketAddr::new(server.ip, PORT);
    let (allowed, denied) = (lab.pod_netns("y/zz"), lab.pod_netns("y/aa"));
    assert!(
        lab.eventually(CONVERGE, || probe::tcp(&allowed, dst, TIMEOUT)
            && !probe::tcp(&denied, dst, TIMEOUT)),
        "the policy never took effect\n{}",
        lab.agent_logs()
    );
    let before = pinned_identities(&lab);
    assert_eq!(before.len(), 3, "{before:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let crossed = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let prober = {
        let (stop, crossed, probes) = (stop.clone(), crossed.clone(), probes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if probe::tcp(&denied, dst, Duration::from_millis(100)) {
                    crossed.fetch_add(1, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for _ in 0..3 {
        lab.lab().restart_agent("node1").expect("restart");
        // Past the restarted agent's first sync.
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("prober");
    let _ = std::fs::remove_file(file);
    assert_eq!(
        crossed.load(Ordering::Relaxed),
        0,
        "the denied client got through during restarts ({} probes)",
        probes.load(Ordering::Relaxed)
    );
    assert_eq!(
        pinned_identities(&lab),
        before,
        "a restart renumbered identities"
    );
    assert!(
        probe::tcp(&allowed, dst, TIMEOUT),
        "the allowed client lost access"
    );
}
