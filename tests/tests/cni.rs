//! sluice-cni as a runtime calls it: results, error codes, idempotent DEL,
//! rollback of a failed ADD, GC, CHECK, and no leaks over many cycles.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::{bin, require_root, unique, CniCall, Netns, Node};

fn lxc_links(node: &Node) -> Vec<String> {
    node.links()
        .into_iter()
        .filter(|l| l.starts_with("lxc"))
        .collect()
}

/// Everything a removed pod could leave behind is gone.
fn assert_clean(node: &Node, capacity: u64) {
    assert_eq!(lxc_links(node), Vec::<String>::new(), "host veths left");
    let status = node.status();
    assert_eq!(status.endpoints, 0, "endpoints left");
    assert_eq!(status.free_addresses, capacity, "addresses left allocated");
    assert_eq!(node.endpoint_entries(), 0, "endpoint map entries left");
    assert_eq!(node.link_pins(), Vec::<String>::new(), "link pins left");
    assert_eq!(node.bpf_filters(), Vec::<String>::new(), "filters left");
    assert_eq!(
        node.pod_filter_records(),
        Vec::<String>::new(),
        "filter records left"
    );
}

#[test]
fn version_reports_supported_versions_without_an_agent() {
    require_root!();
    let out = CniCall::new(
        &bin("sluice-cni"),
        "VERSION",
        json!({"cniVersion": "1.0.0"}),
    )
    .invoke()
    .expect("run");
    assert!(out.success, "{}", out.stdout);
    let v = out.json().expect("json");
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(&version), "{version} in {supported:?}");
    }
}

#[test]
fn error_codes_follow_the_spec() {
    require_root!();
    let node = Node::start("ec", "10.95.0.0/24");
    let pod_ns = Netns::create(&unique("ecpod")).expect("pod netns");
    let netns = pod_ns.path().display().to_string();
    let add = || node.cni("ADD").container(&unique("c"), &netns, "eth0");
    let conf = node.netconf("1.1.0").to_string();
    let capacity = node.status().free_addresses;

    let code = |out: sluice_tests::CniOutput| {
        assert!(!out.success, "must fail: {}", out.stdout);
        let v = out
            .json()
            .unwrap_or_else(|| panic!("error is not JSON: {:?}", out.stdout));
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "msg in {v}"
        );
        v["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {v}"))
    };
    let run = |call: CniCall, stdin: &str, env: &[(&str, Option<&str>)]| {
        call.invoke_raw(stdin.as_bytes(), env)
            .expect("run sluice-cni")
    };

    assert_eq!(
        code(run(add(), &conf, &[("CNI_COMMAND", None)])),
        4,
        "no CNI_COMMAND"
    );
    assert_eq!(
        code(run(add(), &conf, &[("CNI_COMMAND", Some("BOGUS"))])),
        4,
        "unknown command"
    );
    assert_eq!(
        code(run(add(), &conf, &[("CNI_CONTAINERID", None)])),
        4,
        "no container id"
    );
    assert_eq!(
        code(run(add(), &conf, &[("CNI_NETNS", None)])),
        4,
        "no netns on ADD"
    );
    assert_eq!(
        code(run(add(), &conf, &[("CNI_IFNAME", None)])),
        4,
        "no ifname on ADD"
    );
    assert_eq!(
        code(run(add(), &conf, &[("CNI_IFNAME", Some("eth%d"))])),
        4,
        "an ifname pattern the kernel would replace"
    );
    assert_eq!(code(run(add(), "{not json", &[])), 6, "undecodable config");
    let huge = format!("{conf}{}", " ".repeat(2 << 20));
    assert_eq!(code(run(add(), &huge, &[])), 7, "a config of 2 MiB");
    assert_eq!(
        code(run(
            add(),
            r#"{"cniVersion":"1.1.0","type":"sluice-cni"}"#,
            &[]
        )),
        7,
        "no name"
    );
    let old = json!({"cniVersion": "0.3.1", "name": "n", "type": "sluice-cni"}).to_string();
    assert_eq!(code(run(add(), &old, &[])), 1, "unsupported version");
    let bad_path = format!("{}-missing", netns);
    assert!(
        [3, 4].contains(&code(run(
            node.cni("ADD").container(&unique("c"), &bad_path, "eth0"),
            &conf,
            &[]
        ))),
        "netns that does not exist"
    );

    // Agent unreachable: ADD tries again later, and nothing is left behind.
    let unreachable = json!({
        "cniVersion": "1.1.0", "name": "n", "type": "sluice-cni",
        "agentSocket": node.dir.join("nobody-listens.sock").display().to_string(),
    })
    .to_string();
    assert_eq!(
        code(run(add(), &unreachable, &[])),
        11,
        "agent unreachable on ADD"
    );
    // DEL succeeds: nothing of the plugin's is left, the address is the
    // agent's to reclaim.
    let del = run(
        node.cni("DEL").container("x", "", "eth0"),
        &unreachable,
        &[],
    );
    assert!(
        del.success,
        "DEL without an agent: {} {}",
        del.stdout, del.stderr
    );
    assert_eq!(
        code(run(node.cni("STATUS"), &unreachable, &[])),
        50,
        "STATUS without agent"
    );
    let status = run(node.cni("STATUS"), &conf, &[]);
    assert!(status.success, "STATUS with agent: {}", status.stdout);
    assert_clean(&node, capacity);
}

#[test]
fn del_is_idempotent_and_leaves_nothing() {
    require_root!();
    let node = Node::start("dl", "10.96.0.0/24");
    let capacity = node.status().free_addresses;
    let pod = node.add_pod("p");
    assert_eq!(node.status().endpoints, 1);
    // One link each way: from_container (ingress) and to_container (egress).
    let mut pins = node.link_pins();
    pins.sort();
    assert_eq!(pins.len(), 2, "{pins:?}");
    assert_eq!(pins[1], format!("to_container@{}", pins[0]));
    assert_eq!(node.bpf_filters(), Vec::<String>::new());
    assert_eq!(node.endpoint_entries(), 1);
    let del = pod.del_call();
    for round in 0..2 {
        let out = del.invoke().expect("DEL");
        assert!(out.success, "DEL round {round}: {}", out.stdout);
    }
    assert_clean(&node, capacity);

    // DEL after the netns is gone (the runtime may remove it first).
    let gone = node.add_pod("g");
    let call = gone.del_call();
    sluice_lab::netns::delete(gone.ns.path()).expect("deleting the pod netns");
    let out = call.invoke().expect("DEL");
    assert!(out.success, "DEL with the netns gone: {}", out.stdout);
    // DEL with no CNI_NETNS at all, and for a container never added.
    let out = node
        .cni("DEL")
        .container(&unique("never"), "", "eth0")
        .invoke()
        .expect("DEL");
    assert!(out.success, "DEL of an unknown container: {}", out.stdout);
    assert_clean(&node, capacity);
    pod.delete();
}

#[test]
fn failed_add_rolls_back_everything() {
    require_root!();
    let node = Node::start("rb", "10.97.0.0/24");
    let capacity = node.status().free_addresses;
    let pod_ns = Netns::create(&unique("rbpod")).expect("pod netns");
    // An interface named eth0 already exists in the pod: ADD gets as far as
    // allocating and creating the veth, then cannot name the pod's end.
    let status = pod_ns
        .command("ip")
        .and_then(|mut c| {
            c.args([
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
            ])
            .status()
        })
        .expect("ip link add");
    assert!(status.success());
    let out = node
        .cni("ADD")
        .container(&unique("c"), &pod_ns.path().display().to_string(), "eth0")
        .invoke()
        .expect("ADD");
    assert!(!out.success, "ADD must fail: {}", out.stdout);
    let err = out.json().expect("CNI error object");
    assert!(
        err["code"].as_u64().is_some() && err["msg"].is_string(),
        "{err}"
    );
    assert_clean(&node, capacity);
}

#[test]
fn check_and_gc() {
    require_root!();
    let node = Node::start("gc", "10.98.0.0/24");
    let capacity = node.status().free_addresses;
    let keep = node.add_pod("k");
    let stale = node.add_pod("s");

    let mut conf = node.netconf("1.1.0");
    conf["prevResult"] = keep.result.clone();
    let out = CniCall::new(&bin("sluice-cni"), "CHECK", conf.clone())
        .run_in(node.ns.path())
        .container(
            &keep.container_id,
            &keep.ns.path().display().to_string(),
            "eth0",
        )
        .invoke()
        .expect("CHECK");
    assert!(out.success, "CHECK of a healthy pod: {}", out.stdout);
    // CHECK fails once the pod's interface is gone.
    let status = stale
        .ns
        .command("ip")
        .and_then(|mut c| c.args(["addr", "flush", "dev", "eth0"]).status())
        .expect("ip addr flush");
    assert!(status.success());
    conf["prevResult"] = stale.result.clone();
    let out = CniCall::new(&bin("sluice-cni"), "CHECK", conf)
        .run_in(node.ns.path())
        .container(
            &stale.container_id,
            &stale.ns.path().display().to_string(),
            "eth0",
        )
        .invoke()
        .expect("CHECK");
    assert!(
        !out.success,
        "CHECK must notice the missing address: {}",
        out.stdout
    );

    let mut conf = node.netconf("1.1.0");
    conf["cni.dev/valid-attachments"] =
        json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    let out = CniCall::new(&bin("sluice-cni"), "GC", conf)
        .run_in(node.ns.path())
        .invoke()
        .expect("GC");
    assert!(out.success, "GC: {}", out.stdout);
    assert_eq!(node.status().endpoints, 1);
    assert_eq!(
        lxc_links(&node),
        vec![keep.host_if.clone()],
        "GC removed the stale veth only"
    );
    keep.delete();
    drop(stale);
    assert_clean(&node, capacity);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn add_del_cycles_leak_nothing() {
    require_root!();
    const CYCLES: usize = 200;
    let node = Node::start("cy", "10.99.0.0/24");
    let capacity = node.status().free_addresses;
    let pod_ns = Netns::create(&unique("cypod")).expect("pod netns");
    let netns = pod_ns.path().display().to_string();
    // Warm up once so lazily opened agent resources do not count as leaks.
    let id = unique("warm");
    assert!(
        node.cni("ADD")
            .container(&id, &netns, "eth0")
            .invoke()
            .expect("ADD")
            .success
    );
    assert!(
        node.cni("DEL")
            .container(&id, &netns, "eth0")
            .invoke()
            .expect("DEL")
            .success
    );
    let links_before = node.links();
    let fds_before = node.agent_fds();
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for i in 0..CYCLES {
        let id = unique("cy");
        let t = Instant::now();
        let out = node
            .cni("ADD")
            .container(&id, &netns, "eth0")
            .invoke()
            .expect("ADD");
        adds.push(t.elapsed());
        assert!(out.success, "ADD #{i}: {}", out.stdout);
        let t = Instant::now();
        let out = node
            .cni("DEL")
            .container(&id, &netns, "eth0")
            .invoke()
            .expect("DEL");
        dels.push(t.elapsed());
        assert!(out.success, "DEL #{i}: {}", out.stdout);
    }
    adds.sort();
    dels.sort();
    eprintln!(
        "CNI latency over {CYCLES} cycles: ADD p50 {:?} p99 {:?}; DEL p50 {:?} p99 {:?}",
        percentile(&adds, 0.5),
        percentile(&adds, 0.99),
        percentile(&dels, 0.5),
        percentile(&dels, 0.99)
    );
    assert_clean(&node, capacity);
    assert_eq!(node.links(), links_before, "links in the node netns");
    assert_eq!(node.agent_fds(), fds_before, "agent file descriptors");
}

/// A crashed agent loses nothing: pods keep talking while it is down, and
/// after the restart it neither re-issues their addresses nor loses them.
#[test]
fn agent_crash_and_restart_keep_pods_and_addresses() {
    require_root!();
    let mut node = Node::start("rs", "10.100.0.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let port = 7002;
    let _sb = sluice_tests::probe::EchoServer::start(&b.ns, std::net::SocketAddr::new(b.ip, port))
        .expect("server");
    node.crash_agent();
    let dst = std::net::SocketAddr::new(b.ip, port);
    assert!(
        sluice_tests::probe::tcp(&a.ns, dst, sluice_tests::TIMEOUT),
        "traffic while the agent is down"
    );
    node.restart_agent();
    assert_eq!(node.status().endpoints, 2, "endpoints restored from state");
    let c = node.add_pod("c");
    assert!(
        c.ip != a.ip && c.ip != b.ip,
        "address handed out twice: {}",
        c.ip
    );
    assert!(
        sluice_tests::probe::tcp(&c.ns, dst, sluice_tests::TIMEOUT),
        "new pod after restart"
    );
    assert!(
        sluice_tests::probe::tcp(&a.ns, dst, sluice_tests::TIMEOUT),
        "old pod after restart"
    );
}

/// With the agent down (restarting, upgrading), DEL still succeeds once the
/// veth is gone, so the runtime can remove the sandbox; the agent, back,
/// releases the address itself, as it does for a pod whose veth went
/// without any DEL (a runtime that never sends GC).
#[test]
fn del_with_the_agent_down_succeeds_and_the_agent_reclaims_the_address() {
    require_root!();
    let mut node = Node::start("rc", "10.102.0.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let free = node.status().free_addresses;
    node.crash_agent();
    let a_if = a.host_if.clone();
    a.delete();
    assert!(!node.links().contains(&a_if), "DEL removed the veth");
    // b's veth goes with no DEL at all.
    sluice_tests::run_ok(
        node.ns
            .command("ip")
            .expect("ip in the node netns")
            .args(["link", "del", &b.host_if]),
        "ip link del",
    );
    node.restart_agent();
    let status = node.status();
    assert_eq!(status.endpoints, 0, "both endpoints reclaimed at start");
    assert_eq!(status.free_addresses, free + 2, "and their addresses");
}

/// A runtime may retry ADD for the same container: the pod is rewired, keeps
/// its address and works.
#[test]
fn retried_add_rewires_with_the_same_address() {
    require_root!();
    let node = Node::start("ra", "10.101.0.0/24");
    let peer = node.add_pod("p");
    let pod = node.add_pod("r");
    let out = node
        .cni("ADD")
        .container(
            &pod.container_id,
            &pod.ns.path().display().to_string(),
            "eth0",
        )
        .invoke()
        .expect("ADD again");
    assert!(out.success, "retried ADD: {}", out.stdout);
    let again = out.json().expect("result");
    assert_eq!(again["ips"][0]["address"], pod.result["ips"][0]["address"]);
    assert_eq!(node.status().endpoints, 2);
    assert_eq!(node.link_pins().len(), 4, "two links per pod");
    assert!(sluice_tests::probe::icmp(
        &pod.ns,
        peer.ip,
        sluice_tests::TIMEOUT
    ));
    assert!(sluice_tests::probe::icmp(
        &peer.ns,
        pod.ip,
        sluice_tests::TIMEOUT
    ));
}

/// `--pod-attachment tc`: the pod programs are clsact filters on the host
/// veth, recorded in the pin directory, upgraded by a restarted agent,
/// and gone with DEL.
#[test]
fn pods_on_clsact_filters_work_survive_a_restart_and_leave_nothing() {
    require_root!();
    let mut node = Node::start_with("tc", "10.103.0.0/24", &["--pod-attachment", "tc"]);
    let capacity = node.status().free_addresses;
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let mut want = Vec::new();
    for pod in [&a, &b] {
        want.push(format!("{} egress to_container", pod.host_if));
        want.push(format!("{} ingress from_container", pod.host_if));
    }
    want.sort();
    assert_eq!(node.bpf_filters(), want);
    let mut records = node.pod_filter_records();
    records.sort();
    let mut veths = vec![a.host_if.clone(), b.host_if.clone()];
    veths.sort();
    assert_eq!(records, veths);
    assert_eq!(node.link_pins(), Vec::<String>::new(), "no TCX links");
    assert!(sluice_tests::probe::icmp(
        &a.ns,
        b.ip,
        sluice_tests::TIMEOUT
    ));

    node.restart_agent();
    assert_eq!(node.bpf_filters(), want, "filters after a restart");
    assert!(sluice_tests::probe::icmp(
        &b.ns,
        a.ip,
        sluice_tests::TIMEOUT
    ));

    a.delete();
    b.delete();
    assert_clean(&node, capacity);
}
