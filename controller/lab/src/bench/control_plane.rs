//! The control plane: how fast pods are wired (CNI ADD/DEL, next to
//! Debian's `bridge` + `host-local` in the same run), how fast a policy
//! change reaches the datapath, how fast the agent takes in many
//! policies or rules, and how much memory it holds for endpoints and
//! policies (and gives back when they go).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use nix::sys::socket::{setsockopt, sockopt};
use serde_json::json;
use sluice_agent::config::PodAttachment;
use sluice_common::api::AgentStatus;
use sluice_common::maps;
use tracing::warn;

use super::{
    agent_probe::{self, MIB},
    report::{Better, Section, Table},
    setups::{self, LabDown},
    solo::SoloNode,
    stats::percentile,
    throughput::{BenchError, BenchOptions},
    turns,
};
use crate::{
    cluster::{write_manifest, Lab, UpOptions},
    cni::CniCall,
    inventory::{NodeState, PodState},
    manifests,
    netns::Netns,
    pods::PodSpec,
    topology::{self, PodName},
};

/// How long the agent may take to take in a burst before the run fails.
const CONVERGE: Duration = Duration::from_secs(60);
/// Debian's reference plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

fn name(pod: &str, namespace: &str) -> Result<PodName, BenchError> {
    PodName::new(namespace, pod).map_err(|e| BenchError::Failed(e.to_string()))
}

pub fn section(options: &BenchOptions) -> Result<Section, BenchError> {
    let mut tables = cni_latency(options)?;
    tables.extend(propagation(options)?);
    tables.extend(ingest(options)?);
    tables.extend(memory(options)?);
    let _ = std::fs::remove_dir(&options.dir);
    Ok(Section {
        heading: "Control plane".into(),
        text:
            "CNI ADD/DEL timed around the plugin process alone, sluice and bridge in turns, each \
               pod its own fresh namespace; sluice's Pod object is in the agent before ADD, as a \
               kubelet's pod is. Policy changes through the lab's apply (the manifest directory \
               datastore: inotify, then a file is taken once two reads 30 ms apart agree), seen by \
               new TCP connections from a pod on the other node. Ingest: from the apply to the \
               agent saying every object is in the maps (its status: objects known, nothing \
               waiting), with the agent's CPU time from /proc. Memory: the agent's VmRSS."
                .into(),
        tables,
    })
}

/// A lab of the bench's own, removed on drop (by the guard it holds).
struct LabGuard(Lab, #[allow(dead_code)] LabDown);

impl LabGuard {
    fn up(options: &BenchOptions, tag: &str, nodes: usize) -> Result<Self, BenchError> {
        Self::up_with(
            options,
            tag,
            &UpOptions {
                nodes,
                ..UpOptions::default()
            },
        )
    }

    fn up_with(options: &BenchOptions, tag: &str, up: &UpOptions) -> Result<Self, BenchError> {
        let (lab, down) = setups::fresh_lab(options, tag, up)?;
        Ok(LabGuard(lab, down))
    }

    fn node(&self, i: usize) -> NodeState {
        self.0.state().nodes[i].clone()
    }

    fn socket(&self, node: &str) -> PathBuf {
        self.0.config().agent_socket(node)
    }

    fn agent_pid(&self, i: usize) -> Result<u32, BenchError> {
        self.node(i)
            .agent_pid
            .ok_or_else(|| BenchError::Failed("the lab's agent has no pid".into()))
    }

    /// Writes `yaml` to a file of the bench's and applies it.
    fn apply_yaml(&mut self, file: &str, yaml: &str) -> Result<(), BenchError> {
        let path = self.0.config().dir.join(file);
        std::fs::write(&path, yaml).map_err(io(format!("writing {}", path.display())))?;
        self.0.apply(std::slice::from_ref(&path))?;
        Ok(())
    }

    fn delete_yaml(&mut self, file: &str) -> Result<(), BenchError> {
        let path = self.0.config().dir.join(file);
        self.0.delete(std::slice::from_ref(&path))?;
        Ok(())
    }
}

// ---------------------------------------------------------------- CNI

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plugin {
    /// sluice, with the pod programs attached this way.
    Sluice(PodAttachment),
    Bridge,
}

/// A one-node sluice lab of the CNI measurement.
struct CniNode {
    lab: LabGuard,
    node: NodeState,
    socket: PathBuf,
    manifests: manifests::ManifestDir,
    pods: usize,
}

impl CniNode {
    fn up(options: &BenchOptions, pod_attachment: PodAttachment) -> Result<Self, BenchError> {
        let lab = LabGuard::up_with(
            options,
            &format!("cni-{pod_attachment}"),
            &UpOptions {
                nodes: 1,
                pod_attachment,
                ..UpOptions::default()
            },
        )?;
        let node = lab.node(0);
        let socket = lab.socket(&node.name);
        let manifests = lab.0.config().manifests();
        write_manifest(
            &manifests,
            &manifests.namespace_path("cni"),
            &manifests::namespace_object("cni", &BTreeMap::new()),
        )?;
        Ok(Self {
            lab,
            node,
            socket,
            manifests,
            pods: 0,
        })
    }

    /// The next pod's namespace and its ADD and DEL, its Pod object known
    /// to the agent first, as a kubelet's pod is.
    fn next_pod(&mut self) -> Result<(Netns, (CniCall, CniCall)), BenchError> {
        let lab_name = self.lab.0.config().name.clone();
        let pod = name(&format!("s{}", self.pods), "cni")?;
        self.pods += 1;
        let state = PodState {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node: self.node.name.clone(),
            netns: topology::pod_netns(&lab_name, &pod),
            ip: std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            container_id: pod.container_id(),
            server_pid: None,
            labels: [("app".to_owned(), pod.name.clone())].into(),
            ports: vec![80],
        };
        write_manifest(
            &self.manifests,
            &self.manifests.pod_path(&pod),
            &manifests::pod_object(&state, Some(self.node.ip)),
        )?;
        let pods = self.pods;
        agent_probe::wait_until(
            &self.socket,
            Instant::now(),
            CONVERGE,
            "the Pod known",
            |s| agent_probe::objects(s, "pod") >= pods,
        )?;
        let ns = Netns::create(&state.netns).map_err(io("creating a pod netns"))?;
        let add = self.lab.0.cni(&self.node, "ADD", &state)?;
        let del = self.lab.0.cni(&self.node, "DEL", &state)?;
        Ok((ns, (add, del)))
    }
}

/// A pod wired for the CNI measurement: its namespace and its DEL.
struct Wired {
    netns: Netns,
    del: CniCall,
}

fn cni_latency(options: &BenchOptions) -> Result<Vec<Table>, BenchError> {
    let pods = if options.quick { 20 } else { 100 };
    let mut tcx = CniNode::up(options, PodAttachment::Tcx)?;
    let mut tc = CniNode::up(options, PodAttachment::Tc)?;
    let lab_name = tcx.lab.0.config().name.clone();
    // bridge's "node": the bridge device and host-local's leases live in
    // a namespace and a directory of the bench's (named as the first
    // lab's second node, so `down` removes it too).
    let bridge_host = Netns::create(&topology::node_netns(&lab_name, 2))
        .map_err(io("creating the bridge plugin's node namespace"))?;
    bridge_host
        .ip("link set lo up")
        .map_err(io("bridge node"))?;
    let ipam_dir = tcx.lab.0.config().dir.join("bridge-ipam");
    let bridge_conf = json!({
        "cniVersion": "1.0.0",
        "name": "bench-bridge",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.99.0.0/24"}]],
            "dataDir": ipam_dir.display().to_string(),
        },
    });
    let bridge_plugin = Path::new(REFERENCE_PLUGINS).join("bridge");
    if !bridge_plugin.is_file() {
        return Err(BenchError::Failed(format!(
            "{} is missing (Debian's containernetworking-plugins)",
            bridge_plugin.display()
        )));
    }

    let mut wired: Vec<Wired> = Vec::new();
    let mut bridge_pods = 0usize;
    let plugins = [
        Plugin::Sluice(PodAttachment::Tcx),
        Plugin::Sluice(PodAttachment::Tc),
        Plugin::Bridge,
    ];
    let add = turns::in_turns(pods, &plugins, |plugin| {
        let (pod, call) = match plugin {
            Plugin::Sluice(PodAttachment::Tcx) => tcx.next_pod()?,
            Plugin::Sluice(PodAttachment::Tc) => tc.next_pod()?,
            Plugin::Bridge => {
                let pod = name(&format!("b{bridge_pods}"), "bridge")?;
                bridge_pods += 1;
                let ns = Netns::create(&topology::pod_netns(&lab_name, &pod))
                    .map_err(io("creating a pod netns"))?;
                let netns_path = ns.path().display().to_string();
                let call = |command| {
                    CniCall::new(&bridge_plugin, command, bridge_conf.clone())
                        .run_in(bridge_host.path())
                        .container(&pod.container_id(), &netns_path, "eth0")
                };
                let calls = (call("ADD"), call("DEL"));
                (ns, calls)
            }
        };
        let (add, del) = call;
        let start = Instant::now();
        let out = add.invoke().map_err(io("running a CNI ADD"))?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        wired.push(Wired { netns: pod, del });
        if out.success {
            Ok::<f64, BenchError>(ms)
        } else {
            warn!(output = %out.stdout, "CNI ADD failed");
            Ok(f64::NAN)
        }
    })?;
    // DEL in the order of the ADDs, so the plugins still take turns.
    let mut dels: Vec<Vec<f64>> = vec![Vec::new(); plugins.len()];
    for (i, pod) in wired.drain(..).enumerate() {
        let start = Instant::now();
        let out = pod.del.invoke().map_err(io("running a CNI DEL"))?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        dels[i % plugins.len()].push(if out.success { ms } else { f64::NAN });
        drop(pod.netns);
    }
    drop(bridge_host);
    drop(tc);
    drop(tcx);

    let names = [
        "sluice (podAttachment tcx, default)",
        "sluice (podAttachment tc)",
        "bridge + host-local",
    ];
    let mut tables = Vec::new();
    for (what, samples) in [("ADD", &add[..]), ("DEL", &dels[..])] {
        for (p, label) in [(50.0, "p50"), (99.0, "p99")] {
            let mut t = Table::new(
                &format!("cni-{}-{label}", what.to_lowercase()),
                &format!("CNI {what} latency, {label} of {pods} pods"),
                "ms",
                Better::Lower,
            )
            .floor(names[2]);
            if what == "ADD" {
                t = t.target("ADD p50 ≤ bridge in the same run, p99 < 30 ms");
            }
            for (name, runs) in names.iter().zip(samples) {
                // One figure per table row: the percentile over the pods.
                t.push(*name, vec![percentile(runs, p)]);
            }
            let failed = samples.iter().flatten().filter(|v| v.is_nan()).count();
            if failed > 0 {
                t = t.note(format!("{failed} invocation(s) failed and are left out."));
            }
            tables.push(t);
        }
    }
    Ok(tables)
}

// -------------------------------------------------------- propagation

/// New TCP connections from a client on several threads, each recorded
/// with when it started and whether it connected. Each thread starts its
/// attempts on a grid of its own (every [`PROBE_TIMEOUT`] +
/// [`PROBE_PAUSE`], offset by its share of that period), so an attempt
/// starts every few milliseconds also while they time out: threads that
/// simply went again after each attempt fell into step when a change made
/// them all time out at once, and saw an allow only a whole timeout late.
struct Prober {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<(Instant, bool)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const PROBERS: usize = 16;
/// A connection attempt not answered within this counts as refused
/// (denied SYNs are dropped, not answered).
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Added to a thread's period, to keep the machine for the agent.
const PROBE_PAUSE: Duration = Duration::from_millis(5);

impl Prober {
    fn start(client: &Netns, dst: SocketAddr) -> Result<Self, BenchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let epoch = Instant::now();
        for i in 0..PROBERS {
            let (stop, records) = (stop.clone(), records.clone());
            let file =
                std::fs::File::open(client.path()).map_err(io("opening the client's netns"))?;
            threads.push(std::thread::spawn(move || {
                if nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                    return;
                }
                let period = PROBE_TIMEOUT + PROBE_PAUSE;
                let mut next = epoch + period / PROBERS as u32 * i as u32;
                while !stop.load(Ordering::Relaxed) {
                    // The next slot of this thread's grid (slots missed
                    // while an attempt waited are skipped).
                    let now = Instant::now();
                    while next < now {
                        next += period;
                    }
                    std::thread::sleep(next - now);
                    let start = Instant::now();
                    let ok = match TcpStream::connect_timeout(&dst, PROBE_TIMEOUT) {
                        Ok(conn) => {
                            // Reset, not closed: no TIME_WAIT piles up.
                            let _ = setsockopt(
                                &conn.as_fd(),
                                sockopt::Linger,
                                &nix::libc::linger {
                                    l_onoff: 1,
                                    l_linger: 0,
                                },
                            );
                            true
                        }
                        Err(_) => false,
                    };
                    records.lock().expect("probe records").push((start, ok));
                }
            }));
        }
        Ok(Prober {
            stop,
            records,
            threads,
        })
    }

    /// Milliseconds from `since` to the start of the first attempt that
    /// started after it and saw `reachable`.
    fn first_seeing(&self, since: Instant, reachable: bool, timeout: Duration) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .records
                .lock()
                .expect("probe records")
                .iter()
                .any(|(start, ok)| *start >= since && *ok == reachable);
            if found {
                // Attempts started earlier may still be waiting out their
                // timeout: let them finish before taking the earliest.
                std::thread::sleep(PROBE_TIMEOUT + PROBE_PAUSE);
                let records = self.records.lock().expect("probe records");
                return records
                    .iter()
                    .filter(|(start, ok)| *start >= since && *ok == reachable)
                    .map(|(start, _)| start.duration_since(since).as_secs_f64() * 1e3)
                    .min_by(f64::total_cmp);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn toggled_policy(allow: bool) -> String {
    let from = if allow { "client" } else { "nobody" };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: server-ingress\n  namespace: prop\nspec:\n  podSelector:\n    matchLabels:\n      app: server\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: {from}\n    ports:\n    - protocol: TCP\n      port: 80\n"
    )
}

fn propagation(options: &BenchOptions) -> Result<Vec<Table>, BenchError> {
    let changes = if options.quick { 6 } else { 20 };
    let mut lab = LabGuard::up(options, "prop", 2)?;
    let server = lab
        .0
        .pod_add(&PodSpec::new(name("server", "prop")?, "node1").label("app", "server"))?;
    lab.0
        .pod_add(&PodSpec::new(name("client", "prop")?, "node2").label("app", "client"))?;
    let client = lab.0.pod_netns(&name("client", "prop")?)?;
    let std::net::IpAddr::V4(server_ip) = server.ip else {
        return Err(BenchError::Failed("the server has no IPv4".into()));
    };
    let prober = Prober::start(&client, SocketAddr::from((server_ip, 80)))?;
    let mut allow = true;
    lab.apply_yaml("prop-policy.yaml", &toggled_policy(allow))?;
    if prober
        .first_seeing(Instant::now(), true, CONVERGE)
        .is_none()
    {
        return Err(BenchError::Failed(
            "the client never reached the server under the allowing policy".into(),
        ));
    }
    let mut to_deny = Vec::new();
    let mut to_allow = Vec::new();
    for _ in 0..changes {
        allow = !allow;
        lab.apply_yaml("prop-policy.yaml", &toggled_policy(allow))?;
        let applied = Instant::now();
        let ms = prober
            .first_seeing(applied, allow, Duration::from_secs(10))
            .unwrap_or(f64::NAN);
        if allow {
            to_allow.push(ms);
        } else {
            to_deny.push(ms);
        }
        // Let the probes settle in the new state before the next change.
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(prober);
    drop(lab);
    let mut tables = Vec::new();
    for (label, p) in [("p50", 50.0), ("p99", 99.0)] {
        tables.push(
            Table::new(
                &format!("policy-propagation-{label}"),
                &format!("Policy propagation, {label} of {changes} changes (apply → first probe seeing it)"),
                "ms",
                Better::Lower,
            )
            .target("p99 < 100 ms")
            .row("allow → deny", vec![percentile(&to_deny, p)])
            .row("deny → allow", vec![percentile(&to_allow, p)])
            .note(format!(
                "2-node lab, tunnel routing; client on node2, server on node1. Probes: new TCP \
                 connections on {PROBERS} threads, {} ms timeout, each timed from its start; \
                 one starts every ~{} ms.",
                PROBE_TIMEOUT.as_millis(),
                (PROBE_TIMEOUT + PROBE_PAUSE).as_millis() / PROBERS as u128
            )),
        );
    }
    Ok(tables)
}

// ------------------------------------------------------------- ingest

/// Pods to be named by policies: not wired (no node here runs them), an
/// identity each.
fn peer_pods(namespace: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + i as u32 + 1);
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: peer-{i}\n  namespace: {namespace}\n  labels:\n    app: peer-{i}\nspec:\n  nodeName: elsewhere\n  containers:\n  - name: main\n    image: busybox\nstatus:\n  phase: Running\n  podIP: {ip}\n"
            )
        })
        .collect()
}

/// Policy `i` selects the pod labelled `app: {target(i)}` and admits
/// `app: {peer(i)}` on TCP 80.
fn policies(
    namespace: &str,
    n: usize,
    target: impl Fn(usize) -> String,
    peer: impl Fn(usize) -> String,
) -> String {
    (0..n)
        .map(|i| {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-{i}\n  namespace: {namespace}\nspec:\n  podSelector:\n    matchLabels:\n      app: {}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: {}\n    ports:\n    - protocol: TCP\n      port: 80\n",
                target(i),
                peer(i)
            )
        })
        .collect()
}

/// One policy of `n` ingress rules, each admitting one /32.
fn rules(namespace: &str, n: usize) -> String {
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: many-rules\n  namespace: {namespace}\nspec:\n  podSelector:\n    matchLabels:\n      app: server\n  policyTypes: [Ingress]\n  ingress:\n"
    );
    for i in 0..n {
        let peer = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i as u32);
        out.push_str(&format!(
            "  - from:\n    - ipBlock:\n        cidr: {peer}/32\n    ports:\n    - protocol: TCP\n      port: 80\n"
        ));
    }
    out
}

/// How the objects reach the manifest directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// One file of every object, renamed into the directory: the agent's
    /// own figure.
    OneFile,
    /// The lab's apply, which writes each object to a file of its own
    /// (fsynced, renamed), as `kubectl apply` sends each object alone.
    LabApply,
}

/// One ingest: the objects of `yaml` into the directory, then until the
/// agent has `policies` NetworkPolicies in the maps with at least
/// `entries` exact policy entries; then they are removed again. Returns
/// (ms from the start of the write to in the maps, agent CPU s).
fn ingest_once(
    lab: &mut LabGuard,
    via: Via,
    file: &str,
    yaml: &str,
    policies: usize,
    entries: u64,
) -> Result<(f64, f64), BenchError> {
    let socket = lab.socket("node1");
    let pid = lab.agent_pid(0)?;
    let direct = lab.0.config().manifests().root().join(file);
    let cpu = agent_probe::cpu_seconds(pid)?;
    let start = Instant::now();
    match via {
        Via::OneFile => sluice_sys::fs::write_atomic(&direct, yaml.as_bytes(), 0o644)
            .map_err(io(format!("writing {}", direct.display())))?,
        Via::LabApply => lab.apply_yaml(file, yaml)?,
    }
    let in_maps = |s: &AgentStatus| {
        s.node.in_sync
            && agent_probe::objects(s, "networkpolicy") == policies
            && agent_probe::map_entries(s, maps::POLICY_EXACT.name) >= entries
    };
    let (took, _) =
        agent_probe::wait_until(&socket, start, CONVERGE, "policies in the maps", in_maps)?;
    let cpu = agent_probe::cpu_seconds(pid)? - cpu;
    match via {
        Via::OneFile => {
            std::fs::remove_file(&direct).map_err(io(format!("removing {}", direct.display())))?
        }
        Via::LabApply => lab.delete_yaml(file)?,
    }
    agent_probe::wait_until(&socket, Instant::now(), CONVERGE, "policies gone", |s| {
        s.node.in_sync && agent_probe::objects(s, "networkpolicy") == 0
    })?;
    Ok((took.as_secs_f64() * 1e3, cpu))
}

fn ingest(options: &BenchOptions) -> Result<Vec<Table>, BenchError> {
    let (n_policies, n_rules) = if options.quick {
        (100, 1_000)
    } else {
        (1_000, 10_000)
    };
    let mut lab = LabGuard::up(options, "ingest", 1)?;
    lab.0
        .pod_add(&PodSpec::new(name("server", "ingest")?, "node1").label("app", "server"))?;
    // Pods are kubelet's to report, not `apply`'s: written straight into
    // the manifest directory.
    let peers = lab.0.config().manifests().root().join("ingest-peers.yaml");
    sluice_sys::fs::write_atomic(&peers, peer_pods("ingest", n_policies).as_bytes(), 0o644)
        .map_err(io(format!("writing {}", peers.display())))?;
    agent_probe::wait_until(
        &lab.socket("node1"),
        Instant::now(),
        CONVERGE,
        "peers known",
        |s| s.node.in_sync && agent_probe::objects(s, "pod") == n_policies + 1,
    )?;
    let many = policies(
        "ingest",
        n_policies,
        |_| "server".into(),
        |i| format!("peer-{i}"),
    );
    let one = rules("ingest", n_rules);
    let loads = [
        ("policies", many.as_str(), n_policies, n_policies as u64),
        // ipBlock rules share identities by region; one entry is enough
        // to know the policy was written, in_sync that all of it was.
        ("rules", one.as_str(), 1, 1),
    ];
    let alternatives: Vec<(usize, Via)> = (0..loads.len())
        .flat_map(|l| [(l, Via::OneFile), (l, Via::LabApply)])
        .collect();
    let results = turns::in_turns(options.runs, &alternatives, |(load, via)| {
        let (tag, yaml, count, entries) = loads[*load];
        ingest_once(
            &mut lab,
            *via,
            &format!("ingest-{tag}.yaml"),
            yaml,
            count,
            entries,
        )
    })?;
    drop(lab);
    let mut tables = Vec::new();
    for (l, (tag, _, _, _)) in loads.iter().enumerate() {
        let (title, target) = if *tag == "policies" {
            (
                format!("Ingest: {n_policies} NetworkPolicies (a Pod each to admit)"),
                "1,000 policies in the maps within 1 s",
            )
        } else {
            (
                format!("Ingest: one NetworkPolicy of {n_rules} rules (a /32 ipBlock each)"),
                "10,000 rules within 2 s",
            )
        };
        let runs = |via: Via| {
            alternatives
                .iter()
                .zip(&results)
                .find(|((load, v), _)| *load == l && *v == via)
                .map(|(_, r)| r.clone())
                .unwrap_or_default()
        };
        let (one, apply) = (runs(Via::OneFile), runs(Via::LabApply));
        let ms = |r: &[(f64, f64)]| r.iter().map(|x| x.0).collect::<Vec<_>>();
        let cpu = |r: &[(f64, f64)]| r.iter().map(|x| x.1).collect::<Vec<_>>();
        tables.push(
            Table::new(
                &format!("ingest-{tag}"),
                &format!("{title}: write → in the maps"),
                "ms",
                Better::Lower,
            )
            .target(target)
            .row("one file into the manifest directory", ms(&one))
            .row("lab apply (a file per object)", ms(&apply)),
        );
        tables.push(
            Table::new(
                &format!("ingest-{tag}-cpu"),
                &format!("{title}: agent CPU until in the maps"),
                "CPU s",
                Better::Lower,
            )
            .row("one file into the manifest directory", cpu(&one))
            .row("lab apply (a file per object)", cpu(&apply)),
        );
    }
    Ok(tables)
}

// ------------------------------------------------------------- memory

/// Time the endpoint part may take before it stops adding pods.
const WIRING_BUDGET: Duration = Duration::from_secs(60);

fn memory(options: &BenchOptions) -> Result<Vec<Table>, BenchError> {
    let (endpoints, n_policies) = if options.quick {
        (100, 100)
    } else {
        (1_000, 1_000)
    };
    // A /21 holds 2,000 pods; the lab's nodes have /24s.
    let mut node = SoloNode::create(
        options,
        "mem",
        "10.244.8.0/21".parse().expect("literal CIDR"),
        // clsact filters wire the 1,000 pods in a third of TCX's time; the
        // agent holds nothing more or less for either.
        "podAttachment: tc\n",
    )?;
    let pid = node.start_agent()?;
    let socket = node.socket();
    agent_probe::wait_until(&socket, Instant::now(), CONVERGE, "in sync", |s| {
        s.node.in_sync
    })?;
    let idle = agent_probe::rss_bytes(pid)?;

    // The Pods (labels, no address yet), then each wired by sluice-cni.
    let pods_yaml: String = (0..endpoints)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: mem\n  labels:\n    app: mem-{i}\nspec:\n  nodeName: node1\n  containers:\n  - name: main\n    image: busybox\nstatus:\n  phase: Pending\n"
            )
        })
        .collect();
    let ns_yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mem\n";
    let write = |file: &str, text: &str| {
        let path = node.manifests.root().join(file);
        sluice_sys::fs::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(io(format!("writing {}", path.display())))
    };
    write("mem-namespace.yaml", ns_yaml)?;
    write("mem-pods.yaml", &pods_yaml)?;
    agent_probe::wait_until(&socket, Instant::now(), CONVERGE, "Pods known", |s| {
        s.node.in_sync && agent_probe::objects(s, "pod") == endpoints
    })?;
    let lab_name = node.config.name.clone();
    let mut wired = Vec::new();
    let started = Instant::now();
    for i in 0..endpoints {
        if started.elapsed() > WIRING_BUDGET {
            break;
        }
        let pod = name(&format!("p{i}"), "mem")?;
        let ns = Netns::create(&topology::pod_netns(&lab_name, &pod))
            .map_err(io("creating a pod netns"))?;
        let out = node
            .cni("ADD", &pod, ns.path())?
            .invoke()
            .map_err(io("running sluice-cni ADD"))?;
        if !out.success {
            return Err(BenchError::Failed(format!(
                "sluice-cni ADD of pod {i} failed: {}",
                out.stdout.trim()
            )));
        }
        wired.push((pod, ns));
    }
    let wiring = started.elapsed();
    write(
        "mem-policies.yaml",
        &policies(
            "mem",
            n_policies,
            |i| format!("mem-{}", i % endpoints),
            |i| format!("mem-{}", (i + 1) % endpoints),
        ),
    )?;
    let count = wired.len();
    agent_probe::wait_until(&socket, Instant::now(), CONVERGE, "policies in", |s| {
        s.node.in_sync
            && agent_probe::objects(s, "networkpolicy") == n_policies
            && s.endpoints == count
    })?;
    let loaded = agent_probe::rss_bytes(pid)?;

    // Everything goes again.
    std::fs::remove_file(node.manifests.root().join("mem-policies.yaml"))
        .map_err(io("removing the policies"))?;
    for (pod, ns) in wired.drain(..) {
        let out = node
            .cni("DEL", &pod, ns.path())?
            .invoke()
            .map_err(io("running sluice-cni DEL"))?;
        if !out.success {
            warn!(%pod, output = %out.stdout, "sluice-cni DEL failed");
        }
        drop(ns);
    }
    std::fs::remove_file(node.manifests.root().join("mem-pods.yaml"))
        .map_err(io("removing the pods"))?;
    agent_probe::wait_until(&socket, Instant::now(), CONVERGE, "all gone", |s| {
        s.node.in_sync
            && s.endpoints == 0
            && agent_probe::objects(s, "pod") == 0
            && agent_probe::objects(s, "networkpolicy") == 0
    })?;
    let after = agent_probe::rss_bytes(pid)?;
    drop(node);

    let mib = |b: u64| vec![b as f64 / MIB];
    let mut table = Table::new(
        "agent-rss",
        &format!("Agent RSS, {count} endpoints and {n_policies} policies"),
        "MiB",
        Better::Lower,
    )
    .target("RSS < 60 MiB, returned when they go")
    .row("idle (agent started, nothing in the cluster)", mib(idle))
    .row(
        format!("{count} endpoints + {n_policies} policies"),
        mib(loaded),
    )
    .row("after all were removed", mib(after))
    .note(format!(
        "One node of the bench's own (a /21 pod CIDR, `podAttachment: tc`, which wires pods \
         faster and changes nothing the agent holds), pods wired by sluice-cni ADD into their own \
         namespaces ({count} in {:.1} s), each Pod object with its own labels; policy i selects \
         pod i and admits pod i+1.",
        wiring.as_secs_f64()
    ));
    if count < endpoints {
        table = table.note(format!(
            "Only {count} of {endpoints} endpoints were wired within the {} s budget.",
            WIRING_BUDGET.as_secs()
        ));
    }
    Ok(vec![table])
}
