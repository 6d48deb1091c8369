//! IPv4 fragments through the real lab: a 3,000-byte UDP datagram, which
//! the sender's kernel cuts at the pod MTU, to an isolated pod whose
//! policy allows its port arrives whole (and its echo comes back, cut the
//! same way), from a pod of the same node and from a pod of another node;
//! to a port the policy denies, none of its fragments does. The same
//! through a ClusterIP: every fragment goes to the first one's backend,
//! and every fragment of the reply comes back from the ClusterIP.

use std::{net::SocketAddr, time::Duration};

use sluice_tests::{probe, require_root, Reason, TestLab, TIMEOUT};

/// Larger than any pod MTU: three fragments.
const LARGE: usize = 3000;
const ALLOWED: u16 = 80;
/// The lab's pods serve it too: only policy stops it.
const DENIED: u16 = 81;
const CONVERGE: Duration = Duration::from_secs(15);

const ALLOW_UDP_80_TO_X: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-udp-80, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - ports: [{protocol: UDP, port: 80}]
";

const CLUSTER_IP: &str = "10.96.1.20";

/// ClusterIP ports 53 and 54 (UDP) to the server's allowed and denied
/// ports.
fn service_yaml(server: &str) -> String {
    format!(
        "\
apiVersion: v1
kind: Service
metadata: {{name: big, namespace: x}}
spec:
  clusterIP: {CLUSTER_IP}
  ports:
  - {{name: allowed, port: 53, protocol: UDP, targetPort: {ALLOWED}}}
  - {{name: denied, port: 54, protocol: UDP, targetPort: {DENIED}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: big-1, namespace: x, labels: {{kubernetes.io/service-name: big}}}}
addressType: IPv4
ports:
- {{name: allowed, port: {ALLOWED}, protocol: UDP}}
- {{name: denied, port: {DENIED}, protocol: UDP}}
endpoints: [{{addresses: [{server}], nodeName: node1, conditions: {{ready: true}}}}]
"
    )
}

fn large_datagrams_reach_allowed_ports_only(tag: &str, routing: &str) {
    let lab = TestLab::up(tag, 2, routing);
    let server = lab.pod_add("x/a", "node1");
    lab.pod_add("y/a", "node1");
    lab.pod_add("y/b", "node2");
    lab.apply_yaml("allow-udp-80", ALLOW_UDP_80_TO_X);
    let (allowed, denied) = (
        SocketAddr::new(server.ip, ALLOWED),
        SocketAddr::new(server.ip, DENIED),
    );
    for (client, node) in [("y/a", "the same node"), ("y/b", "another node")] {
        let ns = lab.pod_netns(client);
        assert!(
            lab.eventually(CONVERGE, || probe::udp(&ns, allowed, TIMEOUT)
                && !probe::udp(&ns, denied, TIMEOUT)),
            "{routing}: the policy is not in force for {client} ({node})\n{}",
            lab.agent_logs()
        );
        assert!(
            probe::udp_sized(&ns, allowed, LARGE, TIMEOUT),
            "{routing}: a {LARGE}-byte datagram from {client} ({node}) to the allowed port did not arrive whole\n{}",
            lab.agent_logs()
        );
        let before = lab.counter("node1", Reason::DropPolicyIngress);
        assert!(
            !probe::udp_sized(&ns, denied, LARGE, TIMEOUT),
            "{routing}: a {LARGE}-byte datagram from {client} ({node}) reached the denied port"
        );
        let dropped = lab.counter("node1", Reason::DropPolicyIngress) - before;
        assert!(
            dropped >= 3,
            "{routing}: {dropped} fragments of the datagram from {client} to the denied port dropped by policy, not all three"
        );
    }

    lab.apply_yaml("big-service", &service_yaml(&server.ip.to_string()));
    let via_service = |port: u16| SocketAddr::new(CLUSTER_IP.parse().expect("address"), port);
    for (client, node) in [("y/a", "the same node"), ("y/b", "another node")] {
        let ns = lab.pod_netns(client);
        assert!(
            lab.eventually(CONVERGE, || probe::udp(&ns, via_service(53), TIMEOUT)),
            "{routing}: {client} ({node}) does not reach the ClusterIP\n{}",
            lab.agent_logs()
        );
        assert!(
            probe::udp_sized(&ns, via_service(53), LARGE, TIMEOUT),
            "{routing}: a {LARGE}-byte datagram from {client} ({node}) through the ClusterIP did not arrive whole, or its echo did not come back from the ClusterIP\n{}",
            lab.agent_logs()
        );
        assert!(
            !probe::udp_sized(&ns, via_service(54), LARGE, TIMEOUT),
            "{routing}: a {LARGE}-byte datagram from {client} ({node}) reached the denied port through the ClusterIP"
        );
    }
    for node in ["node1", "node2"] {
        assert_eq!(
            lab.counter(node, Reason::DropFragmentUntracked),
            0,
            "{routing}: {node} saw fragments whose first fragment it did not"
        );
    }
}

#[test]
fn large_datagrams_reach_allowed_ports_only_in_tunnel_mode() {
    require_root!();
    large_datagrams_reach_allowed_ports_only("fragt", "tunnel");
}

#[test]
fn large_datagrams_reach_allowed_ports_only_with_native_routing() {
    require_root!();
    large_datagrams_reach_allowed_ports_only("fragn", "native");
}
