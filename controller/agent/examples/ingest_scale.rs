//! How the control plane's pure stages grow with the cluster: generated
//! manifests go through the manifest-directory source (one file of N
//! documents, and N files), the cluster state and the policy compiler,
//! and each stage's wall time is printed for every size. It measures, it
//! asserts nothing: compare the rows of one run with each other.
//!
//! ```text
//! cargo run -p sluice-agent --example ingest_scale [-- [policies|rules] SIZES...]
//! ```
//!
//! Two shapes of load, as the lab benchmarks apply them:
//! - `policies`: N Pods (each its own label set) and N NetworkPolicies,
//!   policy i selecting pod i and admitting pod i+1 on TCP 80;
//! - `rules`: one Pod and one NetworkPolicy with N ingress rules, each
//!   admitting one /32 ipBlock on TCP 80.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_agent::datastore::{parse_documents, ClusterState, DirSource, Event};
use sluice_agent::metrics::Metrics;
use sluice_agent::policy::compile::{compile, LocalEndpoints, LocalPods};
use sluice_agent::policy::IdentityAllocator;

const NAMESPACE: &str = "bench";

fn main() {
    let mut shapes = Vec::new();
    let mut sizes = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "policies" => shapes.push(Shape::Policies),
            "rules" => shapes.push(Shape::Rules),
            n => sizes.push(n.parse().expect("a size or a load (policies, rules)")),
        }
    }
    if shapes.is_empty() {
        shapes = vec![Shape::Policies, Shape::Rules];
    }
    let sizes = if sizes.is_empty() {
        vec![100, 1_000, 10_000]
    } else {
        sizes
    };
    println!(
        "{:<9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "load", "N", "parse", "scan 1 f", "scan N f", "state", "compile", "entries"
    );
    for shape in shapes {
        for &n in &sizes {
            run(shape, n);
        }
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Policies,
    Rules,
}

fn run(shape: Shape, n: usize) {
    let docs = match shape {
        Shape::Policies => policies(n),
        Shape::Rules => rules(n),
    };
    let one_file = docs.join("---\n");

    let (parsed, parse) = timed(|| parse_documents(&one_file));
    let resources: Vec<_> = parsed
        .into_iter()
        .map(|r| r.expect("generated manifests parse"))
        .collect();

    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("all.yaml"), &one_file).expect("writing the manifest");
    let scan_one = scan_until_loaded(dir.path());
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (i, doc) in docs.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i:06}.yaml")), doc).expect("writing a manifest");
    }
    let scan_many = scan_until_loaded(dir.path());

    let (state, apply) = timed(|| {
        let mut state = ClusterState::default();
        state.apply(Event::Resync(resources));
        state
    });

    let (local, local_pods) = local_endpoints(&state);
    let mut ids = IdentityAllocator::new();
    let (desired, compiled) = timed(|| compile(&state, &local, &local_pods, &mut ids, false));
    let entries = desired.placed.exact.len()
        + desired.placed.ranges.len()
        + desired.placed.isolation.len()
        + desired.placed.regions.len();
    let name = match shape {
        Shape::Policies => "policies",
        Shape::Rules => "rules",
    };
    println!(
        "{name:<9} {n:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {entries:>9}",
        ms(parse),
        ms(scan_one),
        ms(scan_many),
        ms(apply),
        ms(compiled),
    );
}

/// Scans until the first resync comes out (files just written settle on
/// the second read); the time of all scans together.
fn scan_until_loaded(dir: &Path) -> Duration {
    let mut source = DirSource::new(dir.to_owned(), Metrics::new()).expect("the directory");
    let start = Instant::now();
    loop {
        let events = source.scan();
        if !events.is_empty() {
            return start.elapsed();
        }
    }
}

/// Every pod is local, as on a one-node lab.
fn local_endpoints(state: &ClusterState) -> (LocalEndpoints, LocalPods) {
    let mut local = BTreeMap::new();
    let mut pods = BTreeMap::new();
    for (endpoint, ((ns, name), pod)) in state.pods.iter().enumerate() {
        let ip: Ipv4Addr = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .expect("generated pods have an address");
        local.insert(ip, endpoint as u32 + 1);
        pods.insert(ip, (ns.clone(), name.clone()));
    }
    (local, pods)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

fn pod_ip(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("a small index") + 2;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i)
}

fn pod(i: usize) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: pod-{i}
  namespace: {NAMESPACE}
  labels:
    app: app-{i}
spec:
  nodeName: node1
  containers:
  - name: main
    image: busybox
    ports:
    - name: http
      containerPort: 80
status:
  phase: Running
  podIP: {}
",
        pod_ip(i)
    )
}

fn namespace() -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n")
}

fn policies(n: usize) -> Vec<String> {
    let mut docs = vec![namespace()];
    docs.extend((0..n).map(pod));
    docs.extend((0..n).map(|i| {
        format!(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-{i}
  namespace: {NAMESPACE}
spec:
  podSelector:
    matchLabels:
      app: app-{i}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: app-{}
    ports:
    - protocol: TCP
      port: 80
",
            (i + 1) % n
        )
    }));
    docs
}

fn rules(n: usize) -> Vec<String> {
    let mut policy = format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: many-rules
  namespace: {NAMESPACE}
spec:
  podSelector:
    matchLabels:
      app: app-0
  policyTypes: [Ingress]
  ingress:
"
    );
    for i in 0..n {
        let peer = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i as u32);
        write!(
            policy,
            "  - from:\n    - ipBlock:\n        cidr: {peer}/32\n    ports:\n    - protocol: TCP\n      port: 80\n"
        )
        .expect("writing to a string");
    }
    vec![namespace(), pod(0), policy]
}
