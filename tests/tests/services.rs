//! Kubernetes Services through the real lab.
//!
//! Beside kube-proxy: a node's host stack translates a Service address to a
//! backend pod (here with the kind of rule kube-proxy's iptables mode
//! writes, a nat PREROUTING DNAT), and the dataplane must send the
//! backend's replies back through that stack, whose conntrack translates
//! them back, for backends on the client's node and on the other node, in
//! both routing modes; NetworkPolicy still applies at the backend.

use std::{net::SocketAddr, time::Duration};

use sluice_tests::{probe, require_root, Netns, TestLab, TIMEOUT};

const PORT: u16 = 80;
const CONVERGE: Duration = Duration::from_secs(15);
/// Service addresses the test's DNAT rules translate.
const VIP_SAME_NODE: &str = "10.96.0.10";
const VIP_OTHER_NODE: &str = "10.96.0.11";

fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("address"), PORT)
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
    for (pod, node, app) in [
        ("x/a", "node1", "a"),
        ("x/b", "node1", "b"),
        ("x/c", "node2", "c"),
    ] {
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
    let state = lab.lab().state().clone();
    let ip = |name: &str| {
        state
            .pods
            .iter()
            .find(|p| format!("{}/{}", p.namespace, p.name) == name)
            .map(|p| p.ip.to_string())
            .unwrap_or_else(|| panic!("{name} not in the lab"))
    };
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
