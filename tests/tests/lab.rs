//! `sluice lab`: several nodes (namespaces running the real agent) on a
//! fabric, pods wired by the real sluice-cni, driven through the real
//! `sluice` binary; probes through the library.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{RwLock, RwLockReadGuard},
    time::Duration,
};

use sluice_tests::{probe, require_root, Check, Netns, Reason, TestLab, TruthTable, TIMEOUT};

/// How long agents may take to learn about pods on other nodes.
const CONVERGE: Duration = Duration::from_secs(15);
const PORT: u16 = 80;

/// Tests share the host; the one that compares the host before and after
/// runs alone.
static HOST: RwLock<()> = RwLock::new(());

fn shared_host() -> RwLockReadGuard<'static, ()> {
    HOST.read().unwrap_or_else(|e| e.into_inner())
}

fn assert_all_reachable(lab: &TestLab, checks: &[Check], tables: &[TruthTable]) {
    let failures: Vec<String> = checks
        .iter()
        .zip(tables)
        .filter(|(_, t)| !t.unreachable().is_empty())
        .map(|(c, t)| format!("{c}:\n{t}"))
        .collect();
    assert!(
        failures.is_empty(),
        "pods that must talk do not:\n{}\n{}",
        failures.join("\n"),
        lab.agent_logs()
    );
}

fn cross_node_matrix(routing: &str) {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up(&format!("m{}", &routing[..1]), 2, routing);
    for (pod, node) in [
        ("x/a", "node1"),
        ("x/b", "node1"),
        ("y/a", "node2"),
        ("y/b", "node2"),
    ] {
        lab.pod_add(pod, node);
    }
    let checks = [Check::tcp(PORT), Check::udp(PORT), Check::icmp()];
    let tables = lab.converge(&checks, CONVERGE);
    assert_all_reachable(&lab, &checks, &tables);
}

#[test]
fn cross_node_matrix_tunnel() {
    cross_node_matrix("tunnel");
}

#[test]
fn cross_node_matrix_native() {
    cross_node_matrix("native");
}

/// A deterministic byte stream and a checksum over it, cheap enough for
/// 200 MB in a debug build.
struct Stream {
    state: u64,
}

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            // xorshift64
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Digest {
    bytes: u64,
    sum: u64,
}

impl Digest {
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            // Position-dependent, so reordered or duplicated data shows.
            self.sum = self
                .sum
                .rotate_left(5)
                .wrapping_add(u64::from(b) ^ self.bytes);
            self.bytes += 1;
        }
    }
}

#[test]
fn large_transfer_across_nodes_tunnel() {
    require_root!();
    let _host = shared_host();
    const TOTAL: u64 = 200 * 1024 * 1024;
    const DATA_PORT: u16 = 9000;
    let lab = TestLab::up("lt", 2, "tunnel");
    let sender = lab.pod_add("x/a", "node1");
    let receiver = lab.pod_add("y/a", "node2");
    let tables = lab.converge(&[Check::tcp(PORT)], CONVERGE);
    assert_all_reachable(&lab, &[Check::tcp(PORT)], &tables);

    // Routes off the node leave room for the VXLAN header on a 1500-byte
    // underlay; the node's own pods are reached at the device's 1500.
    let sender_ns = lab.pod_netns("x/a");
    assert_eq!(pod_mtu(&sender_ns), 1500);
    let across = route_mtu(&sender_ns, receiver.ip);
    assert!(
        across.is_some_and(|m| m + 50 <= 1500),
        "route to {} has MTU {across:?}: no room for VXLAN",
        receiver.ip
    );
    let neighbour = lab.pod_add("x/b", "node1");
    assert_eq!(
        route_mtu(&sender_ns, neighbour.ip),
        None,
        "same node: the device's MTU"
    );

    let dst = SocketAddr::new(receiver.ip, DATA_PORT);
    let listener = lab
        .pod_netns("y/a")
        .run(move || TcpListener::bind(dst))
        .expect("entering y/a")
        .expect("binding the receiver");
    let sink = std::thread::spawn(move || -> std::io::Result<Digest> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut digest = Digest::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(digest);
            }
            digest.update(&buf[..n]);
        }
    });
    let mut conn = lab
        .pod_netns("x/a")
        .run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(5)))
        .expect("entering x/a")
        .unwrap_or_else(|e| panic!("{} -> {dst}: {e}", sender.ip));
    conn.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut stream = Stream {
        state: 0x9e37_79b9_7f4a_7c15,
    };
    let mut sent = Digest::default();
    let mut buf = vec![0u8; 256 * 1024];
    while sent.bytes < TOTAL {
        stream.fill(&mut buf);
        sent.update(&buf);
        conn.write_all(&buf).unwrap_or_else(|e| {
            panic!(
                "sending after {} bytes (black-holed?): {e}\n{}",
                sent.bytes,
                lab.agent_logs()
            )
        });
    }
    conn.shutdown(Shutdown::Write).expect("shutdown");
    let received = sink
        .join()
        .expect("receiver thread")
        .unwrap_or_else(|e| panic!("receiving: {e}\n{}", lab.agent_logs()));
    assert_eq!(received, sent, "bytes and checksum at the receiver");
}

/// The MTU `ip route get` reports towards `dst`, if the route sets one.
fn route_mtu(ns: &Netns, dst: std::net::IpAddr) -> Option<u32> {
    let out = ns
        .command("ip")
        .and_then(|mut c| c.args(["-o", "route", "get"]).arg(dst.to_string()).output())
        .expect("ip route get");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ip route get {dst}: {text}");
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .map(|m| m.parse().unwrap_or_else(|_| panic!("MTU in {text:?}")))
}

fn pod_mtu(ns: &Netns) -> u32 {
    let out = ns
        .command("ip")
        .and_then(|mut c| c.args(["-o", "link", "show", "eth0"]).output())
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MTU in {text:?}"))
}

#[test]
fn masquerade_to_external() {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up("mq", 2, "tunnel");
    let pod = lab.pod_add("x/a", "node1");
    let node_ip = lab.lab().state().node("node1").expect("node1").ip;
    let server = SocketAddr::from(([203, 0, 113, 10], 8080));
    let listener = lab
        .lab()
        .ext_netns()
        .run(move || TcpListener::bind(server))
        .expect("entering the external netns")
        .expect("binding the external server");
    listener.set_nonblocking(true).expect("nonblocking");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<SocketAddr>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server_thread = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        seen.lock().expect("seen").push(peer);
                        let _ = conn.write_all(b"hello from outside\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };
    let pod_ns = lab.pod_netns("x/a");
    let got_reply = lab.eventually(CONVERGE, || {
        pod_ns
            .run(move || {
                let mut conn = TcpStream::connect_timeout(&server, TIMEOUT).ok()?;
                conn.set_read_timeout(Some(TIMEOUT)).ok()?;
                let mut reply = String::new();
                conn.read_to_string(&mut reply).ok()?;
                Some(reply)
            })
            .ok()
            .flatten()
            .is_some_and(|r| r == "hello from outside\n")
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server_thread.join().expect("server thread");
    let seen = seen.lock().expect("seen").clone();
    assert!(
        got_reply,
        "pod {} got no reply from {server}; the server saw {seen:?}\n{}",
        pod.ip,
        lab.agent_logs()
    );
    let sources: BTreeSet<IpAddr> = seen.iter().map(SocketAddr::ip).collect();
    assert_eq!(
        sources,
        BTreeSet::from([IpAddr::V4(node_ip)]),
        "the external server must see the node's address, not the pod's"
    );
    assert_eq!(node_ip, Ipv4Addr::new(172, 30, 0, 11));
}

#[test]
fn node_to_remote_pod() {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up("nr", 2, "tunnel");
    let pod = lab.pod_add("y/a", "node2");
    let node1 = lab.node_netns("node1");
    let dst = SocketAddr::new(pod.ip, PORT);
    assert!(
        lab.eventually(CONVERGE, || probe::tcp(&node1, dst, TIMEOUT)),
        "node1 cannot reach {dst} on node2\n{}",
        lab.agent_logs()
    );
    assert!(
        probe::icmp(&node1, pod.ip, TIMEOUT),
        "node1 -> {} ICMP",
        pod.ip
    );
}

/// A node sends VXLAN to node1 carrying a source it does not own (an
/// address of no node's pod range): the overlay program drops it (the
/// inner source must belong to the node the packet came from) and counts
/// it. (A host that is not a node does not get this far: the prefilter
/// drops its VXLAN, see tests/prefilter.rs.) The ping fails either way;
/// the counter is the proof.
#[test]
fn tunnel_rejects_sources_not_owned_by_the_sender() {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up("ts", 2, "tunnel");
    let victim = lab.pod_add("x/a", "node1");
    lab.pod_add("y/a", "node2");
    let tables = lab.converge(&[Check::icmp()], CONVERGE);
    assert_all_reachable(&lab, &[Check::icmp()], &tables);

    // node2 sends, from an ordinary UDP socket (the agent's VXLAN device
    // holds the port), a VXLAN packet carrying an echo request from an
    // address outside its pod range.
    let node2 = lab.node_netns("node2");
    let node1_ip = lab
        .lab()
        .state()
        .nodes
        .iter()
        .find(|n| n.name == "node1")
        .map(|n| n.ip)
        .expect("node1 in the lab");
    let IpAddr::V4(victim_ip) = victim.ip else {
        panic!("an IPv4 pod address")
    };
    let inner = sluice_lab::bench::frame::ipv4(
        Ipv4Addr::new(10, 244, 200, 250),
        victim_ip,
        1,
        64,
        0,
        &[8, 0, 0xf7, 0xfe, 0, 1, 0, 0],
    );
    let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 0, 0];
    vxlan.extend_from_slice(&inner);
    let before = lab.counter("node1", Reason::DropTunnelSource);
    node2
        .run(move || -> std::io::Result<()> {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for _ in 0..5 {
                sock.send_to(&vxlan, (node1_ip, 4789))?;
            }
            Ok(())
        })
        .expect("entering node2's netns")
        .expect("sending VXLAN from node2");
    let counted = lab.eventually(TIMEOUT, || {
        lab.counter("node1", Reason::DropTunnelSource) > before
    });
    assert!(
        counted,
        "node1 did not count the spoofed packet as drop_tunnel_source\n{}",
        lab.agent_logs()
    );
}

/// Sends a line on `conn` and expects the echo server to send it back.
fn echo(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    conn.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    conn.read_exact(&mut buf)?;
    if buf != msg {
        return Err(std::io::Error::other(format!(
            "echo mismatch: {:?}",
            String::from_utf8_lossy(&buf)
        )));
    }
    Ok(())
}

#[test]
fn agent_restart_keeps_cross_node_connections() {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up("ar", 2, "tunnel");
    lab.pod_add("x/a", "node1");
    let remote = lab.pod_add("y/a", "node2");
    let tables = lab.converge(&[Check::tcp(PORT)], CONVERGE);
    assert_all_reachable(&lab, &[Check::tcp(PORT)], &tables);

    let dst = SocketAddr::new(remote.ip, PORT);
    let mut conn = lab
        .pod_netns("x/a")
        .run(move || TcpStream::connect_timeout(&dst, TIMEOUT))
        .expect("entering x/a")
        .unwrap_or_else(|e| panic!("connecting to {dst}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    echo(&mut conn, b"before\n").expect("echo before the crash");

    let mut handle = lab.lab();
    handle.kill_agent("node1").expect("killing node1's agent");
    echo(&mut conn, b"while the agent is down\n").unwrap_or_else(|e| {
        panic!(
            "the connection broke with the agent down: {e}\n{}",
            lab.agent_logs()
        )
    });
    handle
        .restart_agent("node1")
        .unwrap_or_else(|e| panic!("restarting node1's agent: {e}\n{}", lab.agent_logs()));
    echo(&mut conn, b"after the restart\n").unwrap_or_else(|e| {
        panic!(
            "the connection broke across the restart: {e}\n{}",
            lab.agent_logs()
        )
    });

    lab.pod_add("x/new", "node1");
    let new_ns = lab.pod_netns("x/new");
    assert!(
        lab.eventually(CONVERGE, || probe::tcp(&new_ns, dst, TIMEOUT)),
        "a pod created after the restart cannot reach {dst}\n{}",
        lab.agent_logs()
    );
}

/// What a lab could leave on the host. Everything a lab makes carries its
/// name (namespaces, its directory and the mounts in it, its processes'
/// command lines), so other labs running meanwhile do not disturb the
/// comparison; host links are compared whole, as a lab makes none.
#[derive(Debug, PartialEq, Eq)]
struct HostSnapshot {
    netns: Vec<String>,
    links: Vec<String>,
    mounts: Vec<String>,
    processes: Vec<String>,
    lab_dir: bool,
}

fn snapshot(lab: &TestLab) -> HostSnapshot {
    let name = &lab.config.name;
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let mut links: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(str::to_owned)
        .collect();
    links.sort();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(name.as_str()))
        .map(str::to_owned)
        .collect();
    mounts.sort();
    HostSnapshot {
        netns: sluice_lab::netns::list(name),
        links,
        mounts,
        processes: processes_of(name),
        lab_dir: lab.config.dir.exists(),
    }
}

/// Command lines of live (not zombie) processes that mention `name`.
fn processes_of(name: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(name) && sluice_lab::procs::is_alive(pid)).then_some(cmdline)
        })
        .collect();
    found.sort();
    found
}

#[test]
fn down_leaves_host_as_it_was() {
    require_root!();
    let _alone = HOST.write().unwrap_or_else(|e| e.into_inner());
    let lab = TestLab::new("dn");
    let before = snapshot(&lab);
    lab.sluice_ok(&["up", "--nodes", "2"]);
    lab.pod_add("x/a", "node1");
    lab.pod_add("y/a", "node2");
    let during = snapshot(&lab);
    assert!(
        during.netns.len() == 6 && during.processes.len() == 4 && !during.mounts.is_empty(),
        "the snapshot must see the lab at all: {during:?}"
    );
    lab.down();
    assert_eq!(snapshot(&lab), before, "after down");

    // A crash: agents SIGKILLed, lab.json gone. down still finds it all.
    lab.sluice_ok(&["up", "--nodes", "2"]);
    lab.pod_add("x/a", "node1");
    let pids: Vec<u32> = lab
        .lab()
        .state()
        .nodes
        .iter()
        .filter_map(|n| n.agent_pid)
        .collect();
    assert_eq!(pids.len(), 2);
    sluice_lab::procs::kill_now(&pids);
    std::fs::remove_file(lab.config.dir.join("lab.json")).expect("removing lab.json");
    let out = lab.sluice(&["up", "--nodes", "2"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("lab down"),
        "up over leftovers must refuse and point at down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.down();
    assert_eq!(snapshot(&lab), before, "after down following a crash");
    let again = lab.sluice_ok(&["down"]);
    assert!(again.contains("nothing to remove"), "{again}");
}

#[test]
fn up_is_idempotent_and_refuses_another_shape() {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up("id", 1, "tunnel");
    let pod = lab.pod_add("x/a", "node1");
    let agent = lab.lab().state().nodes[0].agent_pid;
    lab.sluice_ok(&["up", "--nodes", "1", "--routing", "tunnel"]);
    assert_eq!(lab.lab().state().nodes[0].agent_pid, agent, "a no-op");

    let out = lab.sluice(&["up", "--nodes", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another shape must be refused");
    assert!(err.contains("lab down"), "{err}");

    // A dead agent is restarted, and its pods keep their wiring.
    lab.lab().kill_agent("node1").expect("kill");
    lab.sluice_ok(&["up", "--nodes", "1", "--routing", "tunnel"]);
    let status = lab.lab().status();
    assert!(status.nodes[0].agent_running, "{status:?}");
    assert_eq!(status.nodes[0].endpoints, Some(1), "{status:?}");
    let ns = lab.node_netns("node1");
    assert!(probe::tcp(&ns, SocketAddr::new(pod.ip, PORT), TIMEOUT));
}

#[test]
fn failed_pod_add_leaves_nothing() {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up("fp", 1, "tunnel");
    lab.lab().kill_agent("node1").expect("kill");
    let out = lab.sluice(&["pod", "add", "x/a", "--node", "node1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ADD without an agent must fail");
    assert!(err.contains("sluice-cni ADD"), "{err}");
    let netns = format!("{}-pod-x-a", lab.config.name);
    assert!(
        !sluice_lab::netns::list(&lab.config.name).contains(&netns),
        "the pod's netns is left"
    );
    assert!(!lab
        .config
        .manifests()
        .pod_path(&"x/a".parse().expect("pod"))
        .exists());
    assert!(lab.lab().state().pods.is_empty());

    for bad in ["x", "X/a", "x/a_b", "x/-a"] {
        let out = lab.sluice(&["pod", "add", bad, "--node", "node1"]);
        assert!(!out.status.success(), "{bad} must be refused");
    }
}

#[test]
fn malformed_manifest_is_skipped() {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up("mf", 1, "tunnel");
    lab.pod_add("x/a", "node1");

    let input = lab.config.dir.join("input.yaml");
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: ok\n  namespace: x\nspec:\n  podSelector: {}\n";
    std::fs::write(&input, format!("{policy}---\nkind: [broken\n")).expect("write");
    let out = lab.sluice(&["apply", "-f", &input.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an invalid document must be refused");
    assert!(
        err.contains("input.yaml") && err.contains("document 2") && err.contains("not valid YAML"),
        "the error must name the file, the document and the problem: {err}"
    );
    let objects = lab.config.manifests().root().join("objects");
    assert!(
        std::fs::read_dir(&objects).map_or(true, |mut d| d.next().is_none()),
        "nothing of a rejected input may be written"
    );

    // Broken files that reach the directory behind the CLI's back.
    std::fs::create_dir_all(&objects).expect("mkdir");
    std::fs::write(objects.join("garbage.yaml"), "kind: [\n\t{{{").expect("write");
    std::fs::write(
        objects.join("networkpolicy-x-bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec: 7\n",
    )
    .expect("write");
    lab.pod_add("x/b", "node1");
    // The garbage is skipped; the policy that does not decode fails
    // closed: with no good version to go by, it isolates its namespace.
    let a = lab.pod_netns("x/a");
    let b_ip = lab
        .lab()
        .state()
        .pod(&"x/b".parse().expect("pod"))
        .expect("x/b")
        .ip;
    assert!(
        lab.eventually(CONVERGE, || !probe::tcp(
            &a,
            SocketAddr::new(b_ip, PORT),
            TIMEOUT
        )),
        "a NetworkPolicy that does not decode left its namespace open\n{}",
        lab.agent_logs()
    );
    let status = lab.lab().status();
    assert!(status.nodes[0].agent_running, "the agent died: {status:?}");
    assert_eq!(status.nodes[0].endpoints, Some(2), "{status:?}");
    // Deleted, it isolates nothing any more.
    std::fs::remove_file(objects.join("networkpolicy-x-bad.yaml")).expect("rm");
    let tables = lab.converge(&[Check::tcp(PORT)], CONVERGE);
    assert_all_reachable(&lab, &[Check::tcp(PORT)], &tables);
}

/// sluice-cni ADD for `pod` (NS/NAME) in a netns of the test's own, on
/// node1 of `lab`, as kubelet would call it.
fn add_call(lab: &TestLab, netns: &Netns, pod: &str, command: &str) -> sluice_tests::CniCall {
    let (namespace, name) = pod.split_once('/').expect("NS/NAME");
    let conf =
        sluice_tests::sluice_netconf(&lab.config.name, "1.1.0", &lab.config.agent_socket("node1"));
    let mut call = sluice_tests::CniCall::new(&sluice_tests::bin("sluice-cni"), command, conf)
        .run_in(lab.node_netns("node1").path())
        .container(netns.name(), &netns.path().display().to_string(), "eth0");
    call.args = format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
    call
}

fn node_links(lab: &TestLab) -> String {
    let out = lab
        .node_netns("node1")
        .command("ip")
        .expect("ip in node1")
        .args(["-o", "link"])
        .output()
        .expect("ip -o link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn endpoint_map_entries(lab: &TestLab) -> usize {
    let pins = sluice_agent::kernel::bpf::pin_dir(&lab.config.bpffs().join("sluice"), "node1");
    let data = aya::maps::MapData::from_pin(pins.join(sluice_common::maps::ENDPOINTS.name))
        .expect("opening the endpoint map");
    let map: aya::maps::HashMap<
        _,
        sluice_common::endpoint::IpKey,
        sluice_common::endpoint::EndpointInfo,
    > = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("endpoint map");
    map.keys().count()
}

/// A Pod the agent never learns of is not wired: its ADD fails within the
/// agent's bound with "try again later" and a message saying why, and
/// leaves no veth and no endpoint behind.
#[test]
fn an_add_for_a_pod_the_agent_cannot_name_fails_and_leaves_nothing() {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up("gh", 1, "tunnel");
    lab.pod_add("x/a", "node1");
    let links = node_links(&lab);
    let netns = Netns::create(&sluice_tests::unique("ghost")).expect("netns");
    let started = std::time::Instant::now();
    let out = add_call(&lab, &netns, "x/ghost", "ADD")
        .invoke()
        .expect("ADD");
    let waited = started.elapsed();
    assert!(
        !out.success,
        "ADD of an unknown Pod must fail: {}",
        out.stdout
    );
    assert_eq!(out.error_code(), Some(11), "{}", out.stdout);
    assert!(
        out.stdout.contains("x/ghost unknown to the agent"),
        "the error must say why: {}",
        out.stdout
    );
    eprintln!("ADD of an unknown Pod failed after {waited:?}");
    assert_eq!(node_links(&lab), links, "the failed ADD left a link");
    assert_eq!(endpoint_map_entries(&lab), 1, "only x/a is an endpoint");
    let page = lab.scrape("node1");
    for series in [
        "sluice_endpoint_policy_wait_seconds_count{result=\"unidentified\"} 1",
        "sluice_endpoints 1",
    ] {
        assert!(page.contains(series), "no {series} in\n{page}");
    }
    // kubelet's DEL after the failed ADD.
    let del = add_call(&lab, &netns, "x/ghost", "DEL")
        .invoke()
        .expect("DEL");
    assert!(del.success, "{} {}", del.stdout, del.stderr);
}

/// The agent killed while an ADD is under way (here: while it waits for
/// the Pod), and kernel state of no endpoint (a stray map entry and pod
/// route, as a crash between the steps of an ADD or DEL leaves): the next
/// agent removes them, keeps the pods it knows, and DEL still succeeds.
#[test]
fn a_crash_during_add_leaves_nothing_behind() {
    require_root!();
    let _host = shared_host();
    let lab = TestLab::up("cr", 1, "tunnel");
    let pod = lab.pod_add("x/a", "node1");
    let links = node_links(&lab);
    let netns = Netns::create(&sluice_tests::unique("crash")).expect("netns");
    let add = add_call(&lab, &netns, "x/unnamed", "ADD");
    let adding = std::thread::spawn(move || add.invoke().expect("ADD"));
    assert!(
        lab.eventually(Duration::from_secs(5), || endpoint_map_entries(&lab) == 2),
        "the ADD never reached the endpoint map\n{}",
        lab.agent_logs()
    );
    lab.lab().kill_agent("node1").expect("kill");
    let out = adding.join().expect("ADD thread");
    assert!(
        !out.success,
        "an ADD whose agent died must fail: {}",
        out.stdout
    );

    // What an agent killed between two steps leaves.
    let IpAddr::V4(a) = pod.ip else {
        panic!("IPv4")
    };
    let stray = Ipv4Addr::from(u32::from(a) + 100);
    let pins = sluice_agent::kernel::bpf::pin_dir(&lab.config.bpffs().join("sluice"), "node1");
    let data = aya::maps::MapData::from_pin(pins.join(sluice_common::maps::ENDPOINTS.name))
        .expect("opening the endpoint map");
    let mut map: aya::maps::HashMap<
        _,
        sluice_common::endpoint::IpKey,
        sluice_common::endpoint::EndpointInfo,
    > = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("endpoint map");
    let info = sluice_common::endpoint::EndpointInfo {
        id: 102,
        ifindex: 1,
        pod_mac: [2, 0, 0, 0, 0, 1],
        host_mac: [2, 0, 0, 0, 0, 2],
    };
    map.insert(sluice_common::endpoint::IpKey::v4(stray.octets()), info, 0)
        .expect("stray entry");
    drop(map);
    let node = lab.node_netns("node1");
    node.ip(&format!(
        "route add {stray}/32 dev sluice_host proto static scope link"
    ))
    .expect("stray route");

    lab.lab().restart_agent("node1").expect("restart");
    assert!(
        lab.eventually(Duration::from_secs(5), || endpoint_map_entries(&lab) == 1),
        "the new agent kept {} endpoint map entries, not x/a's alone",
        endpoint_map_entries(&lab)
    );
    let routes = node
        .command("ip")
        .expect("ip")
        .args(["route", "show", &format!("{stray}/32")])
        .output()
        .expect("ip route");
    assert!(
        routes.stdout.is_empty(),
        "the stray route is left: {routes:?}"
    );
    assert_eq!(node_links(&lab), links, "a link of the dead ADD is left");
    let page = lab.scrape("node1");
    for series in [
        "sluice_endpoint_leftovers_removed_total{what=\"map_entry\"} 1",
        "sluice_endpoint_leftovers_removed_total{what=\"route\"} 1",
    ] {
        assert!(page.contains(series), "no {series} in\n{page}");
    }
    assert!(
        probe::tcp(&node, SocketAddr::new(pod.ip, PORT), TIMEOUT),
        "x/a lost its wiring"
    );
    let del = add_call(&lab, &netns, "x/unnamed", "DEL")
        .invoke()
        .expect("DEL");
    assert!(del.success, "{} {}", del.stdout, del.stderr);
}
