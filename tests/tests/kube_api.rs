//! The agents' Kubernetes wiring end to end: the lab's agents run with
//! `--datastore kubernetes:KUBECONFIG` against a fake API server (test
//! code, `sluice_tests::fake_api`: list and watch with resource versions,
//! bookmarks, 410 Gone, dropped watches) that serves what the lab writes,
//! and changes made there reach the datapath as with the manifest
//! directory: a Service, a pod that comes, a Namespace's labels, and probes
//! between real pods following a policy's coming and going, also across
//! dropped watches and an expired resource version.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sluice_tests::{
    fake_api::{FakeApi, Mirror},
    probe, require_root, TestLab, TIMEOUT,
};

const WEB: u16 = 80;
const WITHIN: Duration = Duration::from_secs(30);
const API_PORT: u16 = 16443;
const CLUSTER_IP: &str = "10.96.7.10";

const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n";
const FROM_BLUE: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]\n";
const ALLOW: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: [{}]\n";

fn apply(lab: &TestLab, yaml: &str) {
    let path = lab.config.dir.with_extension("policy.yaml");
    std::fs::write(&path, yaml).expect("manifest");
    lab.sluice_ok(&["apply", "-f", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn agents_follow_a_kubernetes_api_server_across_dropped_and_expired_watches() {
    require_root!();
    let lab = TestLab::up("ka", 2, "tunnel");
    lab.pod_add("x/a", "node1");
    let server = lab.pod_add("x/b", "node2");
    let state = lab.lab().state().clone();
    let node1 = state
        .nodes
        .iter()
        .find(|n| n.name == "node1")
        .expect("node1");
    // The API server listens in node1's namespace, on its address: both
    // agents reach it over the lab's network.
    let address = SocketAddr::new(node1.ip.into(), API_PORT);
    let listener = lab
        .node_netns("node1")
        .run(move || std::net::TcpListener::bind(address))
        .expect("entering node1")
        .expect("binding the fake API server");
    let api = Arc::new(FakeApi::serve(listener).expect("fake API server"));
    let _mirror = Mirror::start(api.clone(), lab.config.manifests().root().to_owned());
    // Inside the lab's directory: it goes with the lab, also on failure.
    let kubeconfig = lab.config.dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");
    let mut handle = lab.lab();
    handle
        .use_kubeconfig(Some(kubeconfig.clone()))
        .unwrap_or_else(|e| panic!("agents on the fake API server: {e}\n{}", lab.agent_logs()));

    let client = lab.pod_netns("x/a");
    let web = SocketAddr::new(server.ip, WEB);
    let reaches = || probe::tcp(&client, web, TIMEOUT);
    assert!(
        lab.eventually(WITHIN, reaches),
        "x/a reaches x/b with the cluster from the API server\n{}",
        lab.agent_logs()
    );
    // A Service and its EndpointSlice from the API server.
    apply(
        &lab,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec:\n  clusterIP: {CLUSTER_IP}\n  ports: [{{port: {WEB}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{port: {WEB}, protocol: TCP}}]\nendpoints: [{{addresses: [{}], nodeName: node2}}]\n",
            server.ip
        ),
    );
    let service = SocketAddr::new(CLUSTER_IP.parse().expect("ip"), WEB);
    assert!(
        lab.eventually(WITHIN, || probe::tcp(&client, service, TIMEOUT)),
        "x/a reaches x/b through a Service from the API server\n{}",
        lab.agent_logs()
    );
    // A pod that comes while the agents watch the API server.
    lab.pod_add("x/c", "node1");
    let newcomer = lab.pod_netns("x/c");
    assert!(
        lab.eventually(WITHIN, || probe::tcp(&newcomer, web, TIMEOUT)),
        "a new pod reaches x/b\n{}",
        lab.agent_logs()
    );
    apply(&lab, DENY);
    assert!(
        lab.eventually(WITHIN, || !reaches()),
        "a policy from the API server denies\n{}",
        lab.agent_logs()
    );

    // The watches break; the agents watch again from where they were.
    api.drop_watches();
    apply(&lab, ALLOW);
    assert!(
        lab.eventually(WITHIN, reaches),
        "a change after dropped watches arrives\n{}",
        lab.agent_logs()
    );

    // Their resource version expires (410 Gone): they list again.
    api.compact();
    api.drop_watches();
    apply(&lab, DENY);
    assert!(
        lab.eventually(WITHIN, || !reaches()),
        "a change after an expired resource version arrives\n{}",
        lab.agent_logs()
    );
    let metrics = lab.scrape("node2");
    assert!(
        metrics.contains("sluice_datastore_objects{kind=\"networkpolicy\"} 1"),
        "{metrics}"
    );
    // Each agent listed twice: at its start, and after the 410.
    for node in ["node1", "node2"] {
        let log = std::fs::read_to_string(lab.config.agent_log(node)).expect("agent log");
        let lists = log
            .matches("listed from the Kubernetes API kind=Node")
            .count();
        assert!(lists >= 2, "{node} listed Nodes {lists} times:\n{log}");
    }

    // A Namespace's labels from the API server decide a peer.
    apply(&lab, FROM_BLUE);
    assert!(
        !lab.eventually(Duration::from_secs(3), reaches),
        "x is not blue yet"
    );
    apply(
        &lab,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: blue}}\n",
    );
    assert!(
        lab.eventually(WITHIN, reaches),
        "a Namespace's new label from the API server admits x/a\n{}",
        lab.agent_logs()
    );

    // Back to the manifest directory before the fake server goes.
    handle
        .use_kubeconfig(None)
        .unwrap_or_else(|e| panic!("agents back on the manifests: {e}"));
}
