//! Issue 12's attacks on the manifest datastore, through the real lab: a
//! server under a policy that admits one client, and a denied client on
//! the other node. Each way of breaking the policy (or of lying about an
//! address) must leave the denied client out on every port probed.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use sluice_tests::{probe, require_root, Netns, TestLab, TIMEOUT};

const CONVERGE: Duration = Duration::from_secs(20);
/// What the lab's pods serve, on TCP and UDP.
const PORTS: [u16; 2] = [80, 81];

/// x/server admits x/client on TCP 80, nothing else.
fn policy(selector: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server, namespace: x}}
spec:
  podSelector: {selector}
{extra}  ingress:
  - from:
    - podSelector: {{matchLabels: {{role: client}}}}
    ports:
    - port: 80
"
    )
}

const SERVER: &str = "{matchLabels: {app: server}}";

struct Attack {
    lab: TestLab,
    server: IpAddr,
    client: Netns,
    denied: Netns,
    denied_ip: IpAddr,
}

impl Attack {
    fn up() -> Self {
        // Native routing: node1 takes the source identity from its own ipcache,
        // which is what a lying Pod object would poison.
        let lab = TestLab::up("fc", 2, "native");
        for (pod, node, labels) in [
            ("x/server", "node1", "app=server"),
            ("x/client", "node2", "role=client"),
            ("x/denied", "node2", "role=denied"),
        ] {
            lab.sluice_ok(&["pod", "add", pod, "--node", node, "--labels", labels]);
        }
        let ip = |pod: &str| {
            let name = pod.parse().expect("pod name");
            lab.lab().state().pod(&name).expect("pod recorded").ip
        };
        let (server, denied_ip) = (ip("x/server"), ip("x/denied"));
        let client = lab.pod_netns("x/client");
        let denied = lab.pod_netns("x/denied");
        Attack {
            lab,
            server,
            client,
            denied,
            denied_ip,
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.lab.config.dir.join(format!("input-{name}.yaml"));
        std::fs::write(&path, text).expect("writing an input manifest");
        path
    }

    fn apply(&self, name: &str, text: &str) {
        let path = self.file(name, text);
        self.lab
            .sluice_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    }

    fn client_in(&self) -> bool {
        probe::tcp(&self.client, SocketAddr::new(self.server, 80), TIMEOUT)
    }

    /// Whether the denied client gets through on any port and protocol.
    fn denied_in(&self) -> Vec<String> {
        let mut open = Vec::new();
        for port in PORTS {
            let dst = SocketAddr::new(self.server, port);
            if probe::tcp(&self.denied, dst, TIMEOUT) {
                open.push(format!("TCP {port}"));
            }
            if probe::udp(&self.denied, dst, TIMEOUT) {
                open.push(format!("UDP {port}"));
            }
        }
        open
    }

    fn wait(&self, what: &str, check: impl FnMut() -> bool) {
        assert!(
            self.lab.eventually(CONVERGE, check),
            "{what}\n{}",
            self.lab.agent_logs()
        );
    }

    fn assert_denied_out(&self, case: &str) {
        let open = self.denied_in();
        assert!(
            open.is_empty(),
            "{case}: the denied client reaches the server on {open:?}\n{}",
            self.lab.agent_logs()
        );
    }

    /// The good policy in force: the client in, the denied one out.
    fn restore(&self) {
        self.apply("good", &policy(SERVER, ""));
        self.wait(
            "the good policy does not let the client in, or lets the denied one in",
            || self.client_in() && self.denied_in().is_empty(),
        );
    }

    fn manifests(&self) -> PathBuf {
        self.lab.config.manifests().objects_dir()
    }

    /// A counter or gauge of node1's agent.
    fn metric(&self, series: &str) -> u64 {
        let page = self.lab.scrape("node1");
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Written as a user would into the watched directory, atomically.
fn write_atomically(path: &Path, text: &str) {
    let temp = path.with_file_name(".tmp-attack");
    std::fs::write(&temp, text).expect("writing the temporary file");
    std::fs::rename(&temp, path).expect("renaming into place");
}

#[test]
fn broken_policies_and_lying_pods_never_let_the_denied_client_in() {
    require_root!();
    let attack = Attack::up();
    attack.wait(
        "the denied client cannot reach the server before any policy",
        || probe::tcp(&attack.denied, SocketAddr::new(attack.server, 80), TIMEOUT),
    );
    attack.restore();

    // Policies the API server would reject, or that do not decode. Each
    // allows nothing (the client is cut off: the agent has taken it) and
    // keeps the server isolated.
    let variants = [
        (
            "operator Equals",
            policy(
                "{matchExpressions: [{key: app, operator: Equals, values: [server]}]}",
                "",
            ),
        ),
        (
            "In without values",
            policy("{matchExpressions: [{key: app, operator: In}]}", ""),
        ),
        (
            "an invalid label value",
            policy("{matchLabels: {app: -server}}", ""),
        ),
        (
            "an unknown policyTypes entry",
            policy(SERVER, "  policyTypes: [Ingress, Sideways]\n"),
        ),
        (
            "policyTypes that do not decode",
            policy(SERVER, "  policyTypes: 7\n"),
        ),
    ];
    for (case, text) in &variants {
        attack.apply("broken", text);
        attack.wait(
            &format!("{case}: the agent still lets the client in"),
            || !attack.client_in(),
        );
        attack.assert_denied_out(case);
        attack.restore();
    }

    // A second definition of the policy that admits everyone, in a file
    // that sorts first: neither definition is taken.
    let duplicate = attack.manifests().join("aaa-duplicate.yaml");
    let open = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: x}\nspec: {podSelector: {matchLabels: {app: server}}, ingress: [{}]}\n";
    write_atomically(&duplicate, open);
    attack.wait(
        "a duplicate definition: the agent still lets the client in",
        || !attack.client_in(),
    );
    attack.assert_denied_out("a duplicate definition");
    std::fs::remove_file(&duplicate).expect("removing the duplicate");
    attack.wait("the duplicate gone, the client is not let in again", || {
        attack.client_in()
    });

    // The policy's file emptied in place, as a truncating writer leaves
    // it: malformed, not a delete; the last good version stays in force.
    let file = attack.manifests().join("networkpolicy-x-server.yaml");
    assert!(
        file.exists(),
        "the lab stores the policy at {}",
        file.display()
    );
    let malformed = "sluice_datastore_errors_total{reason=\"malformed\"}";
    let before = attack.metric(malformed);
    std::fs::write(&file, "").expect("emptying the policy file");
    attack.wait("the emptied file is not counted as malformed", || {
        attack.metric(malformed) > before
    });
    assert!(
        attack.client_in(),
        "the last good version no longer admits the client"
    );
    attack.assert_denied_out("an emptied policy file");
    attack.restore();

    // A second Pod object claiming the denied client's address with the
    // client's labels, named to sort first: the address is neither's.
    let impostor = attack.manifests().join("pod-x-aaa-impostor.yaml");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: aaa-impostor, namespace: x, labels: {{role: client}}}}\nspec: {{nodeName: node2, containers: [{{name: c, image: none}}]}}\nstatus: {{phase: Running, podIP: {}}}\n",
        attack.denied_ip
    );
    write_atomically(&impostor, &pod);
    attack.wait("node1 does not count the IP conflict", || {
        attack.metric("sluice_pod_ip_conflicts") == 1
    });
    attack.assert_denied_out("a Pod object claiming the denied client's address");
    assert!(
        attack.client_in(),
        "the real client is cut off by the impostor"
    );
    std::fs::remove_file(&impostor).expect("removing the impostor");
    attack.wait(
        "the conflict is still counted after the impostor went",
        || attack.metric("sluice_pod_ip_conflicts") == 0,
    );
}
