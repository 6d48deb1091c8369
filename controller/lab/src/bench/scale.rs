//! A simulated large cluster fed to one agent through the manifest
//! directory: its memory, its first full sync, and the churn it keeps up
//! with. No pod is wired; the node is the bench's own (its maps sized for
//! the cluster), and the 5,000 Nodes' routes go into its namespace.

use std::time::{Duration, Instant};

use super::{
    agent_probe::{self, MIB},
    report::{Better, Section, Table},
    sim_cluster::{namespace_name, SimSizes},
    solo::SoloNode,
    throughput::{BenchError, BenchOptions},
};

/// How long the first sync of the whole cluster may take.
const FIRST_SYNC: Duration = Duration::from_secs(240);

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// The agent has caught up once nothing arrived for this long (longer
/// than one of its scans of the directory takes).
const QUIET_MS: u64 = 1000;

/// Room for every pod and node address in the ipcache.
const AGENT_CONFIG: &str = "mapSizes:\n  ipcache: 262144\n";

pub fn section(options: &BenchOptions) -> Result<Section, BenchError> {
    let sizes = if options.quick {
        SimSizes::FULL.tenth()
    } else {
        SimSizes::FULL
    };
    let churn_for = Duration::from_secs(if options.quick { 5 } else { 10 });
    let mut node = SoloNode::create(
        options,
        "scale",
        "10.244.1.0/24".parse().expect("literal CIDR"),
        AGENT_CONFIG,
    )?;
    // The agent alone first: what it holds without the cluster.
    let pid = node.start_agent()?;
    let socket = node.socket();
    agent_probe::wait_until(
        &socket,
        Instant::now(),
        Duration::from_secs(30),
        "in sync",
        |s| s.node.in_sync,
    )?;
    let idle = agent_probe::rss_bytes(pid)?;
    node.stop_agent();

    let root = node.manifests.root().to_owned();
    let write = |rel: &str, text: &str| {
        let path = root.join(rel);
        sluice_sys::fs::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(io(format!("writing {}", path.display())))
    };
    let generated = Instant::now();
    write("sim/nodes.yaml", &sizes.nodes_yaml())?;
    write("sim/namespaces.yaml", &sizes.namespaces_yaml())?;
    write("sim/policies.yaml", &sizes.policies_yaml())?;
    for n in 0..sizes.namespaces {
        write(
            &format!("sim/pods/{}.yaml", namespace_name(n)),
            &sizes.pods_yaml(n, 0),
        )?;
    }
    let generated = generated.elapsed();

    // The agent starts on the whole cluster, as on a node joining one.
    let started = Instant::now();
    let pid = node.start_agent()?;
    let everything = |s: &sluice_common::api::AgentStatus| {
        s.node.in_sync
            && agent_probe::objects(s, "node") == sizes.nodes + 1
            && agent_probe::objects(s, "pod") == sizes.pods
            && agent_probe::objects(s, "namespace") == sizes.namespaces
            && agent_probe::objects(s, "networkpolicy") == sizes.policies
    };
    let (first_sync, synced) = agent_probe::wait_until(
        &socket,
        started,
        FIRST_SYNC,
        "the whole cluster in the maps",
        everything,
    )?;
    // All of a fresh process's CPU time: most of the first sync happens
    // before it answers at all.
    let first_cpu = agent_probe::cpu_seconds(pid)?;
    // Settled: what it keeps, not what the first sync's peak left.
    std::thread::sleep(Duration::from_secs(2));
    let loaded = agent_probe::rss_bytes(pid)?;
    let ipcache = agent_probe::map_entries(&synced, sluice_common::maps::IPCACHE.name);
    let routes = node
        .netns()
        .command("ip")
        .and_then(|mut c| {
            c.args(["-4", "route", "show", "dev", "sluice_vxlan"])
                .output()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);

    // Churn: rewrite namespaces' pod files as fast as we can for the
    // period, then wait until the agent has caught up.
    let changes0 = synced.node.changes;
    let cpu1 = agent_probe::cpu_seconds(pid)?;
    let churn_start = Instant::now();
    let mut generation = 0u64;
    let mut rewrites = 0u64;
    let mut offered = 0u64;
    while churn_start.elapsed() < churn_for {
        generation += 1;
        // A handful of namespaces a round, a different one each time.
        for k in 0..8 {
            let n = (generation as usize * 8 + k) % sizes.namespaces;
            // Generation g of one namespace relabels a tenth of its pods
            // and adds or removes its extra pod.
            write(
                &format!("sim/pods/{}.yaml", namespace_name(n)),
                &sizes.pods_yaml(n, generation),
            )?;
            rewrites += 1;
            offered += (sizes.pods / sizes.namespaces).div_ceil(10) as u64 + 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let writing = churn_start.elapsed();
    let (caught_up, end) =
        agent_probe::wait_until(&socket, churn_start, FIRST_SYNC, "caught up", |s| {
            // Caught up: nothing waits and a scan since the last write found
            // nothing newer (the counter stops moving).
            s.node.in_sync && s.node.last_event_ms_ago.is_some_and(|ms| ms > QUIET_MS)
        })?;
    let churn_cpu = agent_probe::cpu_seconds(pid)? - cpu1;
    let taken = end.node.changes - changes0;
    // Without the quiet time the end condition waited for.
    let busy = caught_up.saturating_sub(Duration::from_millis(QUIET_MS));
    let rate = taken as f64 / busy.as_secs_f64();
    let after_churn = agent_probe::rss_bytes(pid)?;
    drop(node);
    // The node removed its own directory; this one held it.
    let _ = std::fs::remove_dir(&options.dir);

    let objects = format!(
        "{} Nodes, {} Pods, {} Namespaces, {} NetworkPolicies",
        sizes.nodes, sizes.pods, sizes.namespaces, sizes.policies
    );
    let per_pod = (loaded.saturating_sub(idle)) as f64 / sizes.pods as f64;
    Ok(Section {
        heading: "Simulated large cluster".into(),
        text: format!(
            "One agent on a node of the bench's own (tunnel routing, ipcache sized 262,144), fed \
             {objects} through the manifest directory: one file each for the Nodes, Namespaces \
             and policies, one per namespace for its pods ({} files; written in {:.1} s). No pod \
             is wired, so the policies place no rules here; the pods' addresses and the nodes' \
             pod CIDRs fill the ipcache ({ipcache} entries) and each other node gets a route \
             into the tunnel ({routes} routes). Churn: namespaces' pod files rewritten (a tenth \
             of their pods relabelled, one pod added or removed) for {:.0} s, {rewrites} \
             rewrites offering ~{offered} changes; the rate is object changes the agent took in \
             (its `sluice_datastore_changes_total`) over the time until it had caught up.",
            sizes.namespaces + 3,
            generated.as_secs_f64(),
            writing.as_secs_f64(),
        ),
        tables: vec![
            Table::new(
                "scale-rss",
                &format!("Agent RSS, {objects}"),
                "MiB",
                Better::Lower,
            )
            .row("idle (its own Node only)", vec![idle as f64 / MIB])
            .row("whole cluster, synced", vec![loaded as f64 / MIB])
            .row("after the churn", vec![after_churn as f64 / MIB]),
            Table::new(
                "scale-rss-per-pod",
                "Agent RSS per pod",
                "bytes",
                Better::Lower,
            )
            .target("< 2 KiB per pod; Cilium publishes 10.5 KiB")
            .row("(synced − idle) / pods", vec![per_pod])
            .row("synced / pods", vec![loaded as f64 / sizes.pods as f64]),
            Table::new(
                "scale-first-sync",
                "First full sync of the simulated cluster",
                "s",
                Better::Lower,
            )
            .row(
                "agent start → everything in the maps",
                vec![first_sync.as_secs_f64()],
            )
            .row("agent CPU during it (user + system)", vec![first_cpu]),
            Table::new(
                "scale-churn",
                "Churn the agent keeps up with",
                "changes/s",
                Better::Higher,
            )
            .row("object changes taken in", vec![rate])
            .note(format!(
                "{taken} changes in {:.1} s (writing {:.1} s, then catching up); agent CPU \
                     {churn_cpu:.1} s.",
                busy.as_secs_f64(),
                writing.as_secs_f64()
            )),
        ],
    })
}
