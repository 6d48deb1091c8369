//! sluice-agent: the node daemon.
use std::path::PathBuf;

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sluice_agent::{
    cni_api,
    config::{Config, ConfigError, Datastore, FlagConfig, Routing},
    datastore::{kube_source, ClusterState, DirSource, DirTiming, Event, Kind, KubeSource},
    endpoints::state_file::StateFile,
    endpoints::{Agent, AgentConfig},
    flows::{self, FlowHub},
    kernel::bpf::{self, socket_hooks, Dataplane, SyncMaps},
    kernel::bpffs,
    kernel::datapath::KernelDatapath,
    kernel::flow_events,
    kernel::netlink::{Netlink, HOST_DEVICE},
    kernel::node_sync::{self, NodeSync, NodeSyncConfig},
    kernel::underlay::{self, VXLAN_DEVICE},
    kernel::{masquerade, nft, service_nft},
    metrics::http,
    metrics::Metrics,
    prefilter::Prefilter,
    reconcile::{self, Reconciler, ReconcilerMaps, ServicesConfig},
    registration::Registrations,
    topology,
};
use sluice_common::{
    api::{Request, Response},
    counters, maps,
};
use tracing::{info, warn};

/// How often a failed sync is retried.
const RETRY: Duration = Duration::from_secs(2);
/// How often endpoints whose pod went without a DEL, and kernel state of
/// no endpoint, are looked for.
const RECLAIM: Duration = Duration::from_secs(30);
/// How long CNI ADD waits for the agent to learn the pod's Pod object
/// (within the plugin's 15 s for an answer).
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Datastore events waiting for the reconciler; everything waiting is
/// applied in one sync, so a deeper queue means fewer syncs in a burst.
const EVENT_QUEUE: usize = 1024;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-agent",
    version,
    about = "sluice node agent: IPAM, endpoints and the eBPF dataplane"
)]
struct Args {
    /// This node's name (names the pin directory).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's pod CIDR, e.g. 10.244.1.0/24.
    #[arg(long)]
    pod_cidr: Option<ipnet::Ipv4Net>,
    /// Where IPAM and endpoint state persist.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The local API socket for the CNI plugin [default: /var/run/sluice/sluice.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where bpffs is mounted (mounted there if it is not) [default: /sys/fs/bpf].
    #[arg(long)]
    bpffs: Option<PathBuf>,
    /// Pod interface MTU [default: the underlay's MTU minus the tunnel
    /// overhead; 1500 without a datastore].
    #[arg(long)]
    mtu: Option<u32>,
    /// Where cluster objects come from: `dir:PATH`, a directory of
    /// Kubernetes YAML watched like the API server (the lab); `kubernetes`
    /// (in-cluster service account) or `kubernetes:KUBECONFIG`, the API.
    #[arg(long)]
    datastore: Option<Datastore>,
    /// How pods reach other nodes [default: tunnel].
    #[arg(long, value_enum)]
    routing: Option<Routing>,
    /// Do not masquerade pod traffic leaving the cluster.
    #[arg(long)]
    no_masquerade: bool,
    /// Serve ClusterIP Services in eBPF (`true`, the default), or leave
    /// them to kube-proxy in the host stack (`false`).
    #[arg(long)]
    kube_proxy_replacement: Option<bool>,
    /// Where the XDP prefilter runs on the underlay: `auto` (native, but
    /// generic on a veth underlay), `native` or `generic` [default: auto].
    #[arg(long, value_enum)]
    prefilter_mode: Option<sluice_agent::config::PrefilterMode>,
    /// How the pod programs attach to a pod's host veth: `tcx` (pinned
    /// links; the bandwidth plugin can chain) or `tc` (clsact filters; a
    /// CNI ADD some 26 ms faster) [default: tcx].
    #[arg(long, value_enum)]
    pod_attachment: Option<sluice_agent::config::PodAttachment>,
    /// Policy audit mode for every pod of this node that no
    /// `policy.sluice.io/audit-mode` annotation decides: what policy would
    /// deny passes, reported as would-deny [default: false].
    #[arg(long)]
    policy_audit_mode: Option<bool>,
    /// Where to serve Prometheus `/metrics` and `/healthz` [default: 0.0.0.0:9965].
    #[arg(long)]
    metrics_address: Option<std::net::SocketAddr>,
    /// Log filter, e.g. `info` or `sluice_agent=debug,info` [default: info;
    /// `RUST_LOG` wins].
    #[arg(long)]
    log_level: Option<String>,
    /// When the datapath emits flow events for `sluice observe`:
    /// `on-demand` (while a client follows) or `always` [default: on-demand].
    #[arg(long, value_enum)]
    flows_record: Option<sluice_agent::config::FlowRecord>,
    /// Flows kept for `sluice observe` [default: 4096].
    #[arg(long)]
    flows_history: Option<usize>,
    /// Flow events per second each CPU may emit [default: 1000].
    #[arg(long)]
    flows_rate: Option<u32>,
    /// YAML config file; flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Remove everything the agent installed for this node (links, maps,
    /// host device, socket) and exit. Pods' veths are left to CNI DEL.
    #[arg(long)]
    uninstall: bool,
}

fn main() -> anyhow::Result<()> {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    // `RUST_LOG` wins; else the config's `logLevel`, known only once the
    // config is read, so the filter can be replaced then.
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let has_env_filter = from_env.is_some();
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(
        from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info")),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let args = Args::parse();
    let flags = FlagConfig {
        node_name: args.node_name,
        pod_cidr: args.pod_cidr,
        state_dir: args.state_dir,
        socket: args.socket,
        bpffs: args.bpffs,
        mtu: args.mtu,
        datastore: args.datastore,
        routing: args.routing,
        masquerade: args.no_masquerade.then_some(false),
        metrics_address: args.metrics_address,
        kube_proxy_replacement: args.kube_proxy_replacement,
        log_level: args.log_level,
        prefilter_mode: args.prefilter_mode,
        pod_attachment: args.pod_attachment,
        policy_audit_mode: args.policy_audit_mode,
        flows_record: args.flows_record,
        flows_history: args.flows_history,
        flows_rate: args.flows_rate,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    if args.uninstall {
        return runtime.block_on(uninstall(flags, args.config));
    }
    let config = Config::resolve(flags, args.config.as_deref())?;
    if let (false, Some(level)) = (has_env_filter, &config.log_level) {
        // Validated with the config.
        filter_handle
            .reload(tracing_subscriber::EnvFilter::new(level))
            .context("setting the log level")?;
    }
    runtime.block_on(run(config))
}

async fn uninstall(mut flags: FlagConfig, file: Option<PathBuf>) -> anyhow::Result<()> {
    // Uninstall needs no pod CIDR; any placeholder passes validation.
    flags
        .pod_cidr
        .get_or_insert_with(|| "0.0.0.0/24".parse().expect("literal CIDR"));
    let config = Config::resolve(flags, file.as_deref())?;
    // Filters are no pins: they go first, while their records are there.
    if let Err(e) = bpf::pod_filters::remove_pod_filters(&config.pin_dir()) {
        warn!(error = %e, "removing the pod programs from pod veths");
    }
    bpf::remove_pins(&config.pin_dir())
        .with_context(|| format!("removing {}", config.pin_dir().display()))?;
    let netlink = Netlink::new()?;
    netlink.delete_link(HOST_DEVICE).await?;
    netlink.delete_link(VXLAN_DEVICE).await?;
    netlink
        .sync_node_routes(&Default::default(), 0, None)
        .await
        .context("removing routes to other nodes")?;
    if let Err(e) = nft::apply(&masquerade::ruleset(None, &Default::default())) {
        warn!(error = %e, "removing the masquerade rules");
    }
    if let Err(e) = nft::apply(&service_nft::ruleset(&Default::default(), false)) {
        warn!(error = %e, "removing the Services' nftables table");
    }
    match std::fs::remove_file(&config.socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", config.socket.display()))
        }
        _ => {}
    }
    info!(node = %config.node_name, "uninstalled");
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    bpffs::ensure_mounted(&config.bpffs)?;
    let mut dataplane = Dataplane::load(&config.pin_dir(), config.map_sizes)
        .context("loading the eBPF dataplane")?;
    dataplane.set_pod_attachment(config.pod_attachment);
    let SyncMaps {
        policy,
        revision,
        ipcache,
        config: mut config_map,
        services,
    } = dataplane
        .take_sync_maps()
        .context("eBPF maps to sync missing")?;
    let flows = FlowHub::new(&config.node_name, config.flows, metrics.clone());
    let flow_reader = tokio::spawn(flow_events::run(
        dataplane
            .take_flow_maps()
            .context("flow event maps missing")?,
        flows.clone(),
    ));
    // Filled before the prefilter is attached, so nothing denied slips in.
    let mut prefilter = Prefilter::start(
        dataplane.take_deny_list()?,
        &config.state_dir,
        &config.prefilter_deny,
    )
    .context("loading the prefilter deny list")?;
    for (map, _, size) in config.map_sizes.by_map() {
        metrics
            .map_capacity
            .with_label_values(&[map])
            .set(size.into());
    }
    metrics
        .register_dataplane(&config.pin_dir())
        .context("exporting the dataplane counters")?;
    let metrics_listener = http::bind(config.metrics_address)
        .await
        .with_context(|| format!("serving metrics on {}", config.metrics_address))?;
    let readiness = http::Readiness::default();
    tokio::spawn(http::serve(
        metrics_listener,
        metrics.clone(),
        readiness.clone(),
    ));
    let netlink = Netlink::new()?;

    let mut state = ClusterState::default();
    let (events_tx, mut events) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let has_source = match &config.datastore {
        Some(Datastore::Dir(dir)) => {
            let source = DirSource::new(dir.clone(), metrics.clone())
                .with_context(|| format!("opening the manifest directory {}", dir.display()))?;
            tokio::spawn(source.run(events_tx, DirTiming::default()));
            true
        }
        Some(Datastore::Kubernetes { kubeconfig }) => {
            let client = kube_source::client(kubeconfig.clone())
                .await
                .context("connecting to the Kubernetes API")?;
            tokio::spawn(KubeSource::new(client, metrics.clone()).run(events_tx));
            true
        }
        None => false,
    };
    let mut listed = std::collections::BTreeSet::new();
    let (pod_cidr, node_ip) = if has_source {
        let (pod_cidr, node_ip) = wait_for_own_node(
            &config.node_name,
            config.pod_cidr,
            &mut events,
            &mut state,
            &mut listed,
        )
        .await?;
        (pod_cidr, Some(node_ip))
    } else {
        listed.extend(Kind::ALL);
        (config.pod_cidr.ok_or(ConfigError::PodCidr)?, None)
    };
    let gateway = sluice_agent::endpoints::ipam::Ipam::new(pod_cidr)?.gateway();
    netlink
        .ensure_host_device(gateway)
        .await
        .context("setting up the host device")?;
    underlay::enable_ip_forwarding().context("enabling IPv4 forwarding")?;
    let setup = match node_ip {
        Some(node_ip) => Some(
            node_sync::setup(
                &mut dataplane,
                &mut config_map,
                &netlink,
                config.routing,
                node_ip,
                config.prefilter_mode,
            )
            .await
            .context("setting up cross-node routing")?,
        ),
        None => None,
    };
    if let Some(setup) = &setup {
        prefilter.set_attached(&setup.underlay.name, setup.prefilter);
    }
    let mtu = config
        .mtu
        .or(setup.as_ref().map(|s| s.pod_mtu()))
        .unwrap_or(sluice_agent::config::DEFAULT_MTU);
    // Same-node traffic is never encapsulated: pods may use the underlay's
    // full MTU towards each other (unless the operator set one MTU).
    let local_mtu = match (&config.mtu, &setup) {
        (None, Some(setup)) => Some(setup.underlay.mtu).filter(|m| *m > mtu),
        _ => None,
    };
    let node_sync = NodeSync::new(
        netlink.clone(),
        NodeSyncConfig {
            node_name: config.node_name.clone(),
            pod_cidr,
            gateway,
            masquerade: config.masquerade,
        },
        setup,
    );
    let maps = ReconcilerMaps {
        policy,
        revision,
        ipcache,
        services,
    };
    let services = ServicesConfig {
        enabled: config.kube_proxy_replacement,
        node_name: config.node_name.clone(),
    };
    let mut reconciler = Reconciler::new(state, node_sync, maps, services, metrics.clone(), listed)
        .identifying_endpoints(has_source)
        .auditing_policy(config.policy_audit_mode);
    socket_hooks(
        &mut dataplane,
        config.kube_proxy_replacement,
        config.cgroup_root.as_deref(),
    );

    let datapath = KernelDatapath {
        dataplane,
        netlink,
        gateway,
    };
    let mut agent = Agent::start(
        AgentConfig {
            node_name: config.node_name.clone(),
            pod_cidr,
            mtu,
            local_mtu,
        },
        StateFile::new(&config.state_dir),
        datapath,
    )
    .await?;
    // Pods that went while the agent was down, their DEL unanswered; and
    // what a crash between the steps of an ADD or DEL left in the kernel.
    agent.reclaim().await;
    count_swept(&metrics, agent.sweep().await);
    count_occupancy(&metrics, &agent);
    // Policy needs the registered pods (restored from state) to name them.
    reconciler
        .set_local_endpoints(agent.local_endpoints(), agent.local_pods())
        .await;
    reconciler.sync().await;
    let ready = complete_upgrade(&mut agent, &reconciler);
    let listener = cni_api::bind(&config.socket).await?;
    readiness.set(ready);
    info!(node = %config.node_name, %pod_cidr, routing = %config.routing, mtu, ?local_mtu, socket = %config.socket.display(), metrics = %config.metrics_address, pins = %config.pin_dir().display(), "agent ready");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut retry = tokio::time::interval(RETRY);
    let mut reclaim = tokio::time::interval(RECLAIM);
    reclaim.tick().await;
    let mut registrations = Registrations::new(IDENTIFY_TIMEOUT, metrics.clone());
    loop {
        let give_up = registrations.next_deadline();
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match cni_api::read_request(stream).await {
                    Some((Ok(Request::Register { endpoint }), responder)) => {
                        registrations.register(endpoint, responder, &mut agent, &mut reconciler).await;
                    }
                    Some((Ok(Request::Prefilter { prefilter: op }), responder)) => {
                        responder.send(&prefilter.handle(&op)).await;
                    }
                    Some((Ok(Request::Explain { query }), responder)) => {
                        responder.send(&reconciler.explain(&query)).await;
                    }
                    Some((Ok(Request::Flows { filter, follow }), responder)) => {
                        flows::serve::spawn(&flows, filter, follow, responder);
                        // A follower starts emission: name what it will see.
                        refresh_directory(&flows, &reconciler);
                    }
                    Some((Ok(request), responder)) => {
                        let mut response = agent.handle(request).await;
                        if let Response::Status { status } = &mut response {
                            status.node = sluice_common::api::NodeReport {
                                ready: readiness.get(),
                                routing: config.routing.to_string(),
                                kube_proxy_replacement: config.kube_proxy_replacement,
                                datastore: match &config.datastore {
                                    Some(Datastore::Dir(dir)) => format!("dir:{}", dir.display()),
                                    Some(Datastore::Kubernetes { .. }) => "kubernetes".into(),
                                    None => "none".into(),
                                },
                                ..reconciler.report()
                            };
                        }
                        reconciler.set_local_endpoints(agent.local_endpoints(), agent.local_pods()).await;
                        responder.send(&response).await;
                    }
                    Some((Err(refused), responder)) => responder.send(&refused).await,
                    None => {}
                },
                Err(e) => warn!(error = %e, "accepting an API connection"),
            },
            _ = sleep_until(give_up), if give_up.is_some() => {}
            Some(event) = events.recv() => {
                // What queued up meanwhile goes in the same sync.
                let mut batch = vec![event];
                while let Ok(event) = events.try_recv() {
                    batch.push(event);
                }
                reconciler.handle(batch).await;
                flows.mark_stale();
            }
            _ = retry.tick() => reconciler.sync().await,
            _ = reclaim.tick() => {
                if !agent.reclaim().await.is_empty() {
                    reconciler.set_local_endpoints(agent.local_endpoints(), agent.local_pods()).await;
                }
                count_swept(&metrics, agent.sweep().await);
                count_occupancy(&metrics, &agent);
            }
        }
        registrations
            .answer_ready(&mut agent, &mut reconciler)
            .await;
        refresh_directory(&flows, &reconciler);
        // Maps created or replaced at load (resized, new layout) are filled.
        readiness.set(complete_upgrade(&mut agent, &reconciler));
    }
    readiness.set(false);
    // Emission off before the agent goes: nobody reads the ring then.
    flows.stop();
    if tokio::time::timeout(Duration::from_secs(1), flow_reader)
        .await
        .is_err()
    {
        warn!("the flow event reader did not stop; emission may stay on");
    }
    let _ = std::fs::remove_file(&config.socket);
    info!("agent stopped; dataplane stays pinned");
    Ok(())
}

fn count_swept(metrics: &Metrics, swept: sluice_agent::endpoints::Swept) {
    for (what, n) in [
        ("map_entry", swept.map_entries),
        ("link", swept.links),
        ("route", swept.routes),
    ] {
        metrics
            .leftovers_removed
            .with_label_values(&[what])
            .inc_by(n as u64);
    }
}

fn count_occupancy(metrics: &Metrics, agent: &Agent<KernelDatapath>) {
    let dataplane = &agent.datapath().dataplane;
    // Read before the walk: a flow added during it then counts as held,
    // never as evicted.
    let inserted = dataplane.inserted(counters::inserts::CONNTRACK);
    for (map, entries) in dataplane.occupancy() {
        metrics
            .map_occupancy
            .with_label_values(&[map])
            .set(entries as i64);
        if let (true, Some(inserted)) = (map == maps::CONNTRACK.name, inserted) {
            metrics.count_evictions(inserted, entries as u64);
        }
    }
}

/// Rebuilds the names flows are given from the cluster state, when it
/// changed and flows are being recorded: at most once per pass of the
/// main loop, and never while nobody records.
fn refresh_directory(hub: &FlowHub, reconciler: &Reconciler) {
    if hub.needs_directory() {
        hub.set_directory(flows::Directory::build(
            reconciler.state(),
            reconciler.pod_identities(),
            reconciler.identities(),
        ));
    }
}

/// Sleeps until `at`; forever without one (the branch is then disabled).
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// With kube-proxy replacement the node's own processes reach ClusterIPs
/// through the socket hooks; without a cgroup v2 hierarchy they cannot
/// (pods still do), which is logged, not fatal.
fn socket_hooks(dataplane: &mut Dataplane, enabled: bool, configured: Option<&std::path::Path>) {
    let root = match configured {
        Some(root) => Ok(Some(root.to_owned())),
        None => socket_hooks::cgroup2_root(),
    };
    let result = if !enabled {
        dataplane.detach_socket_hooks()
    } else {
        match root {
            Ok(Some(root)) => dataplane.attach_socket_hooks(&root).map(|()| {
                info!(cgroup = %root.display(), "socket hooks attached: the node's own processes reach ClusterIPs");
            }),
            Ok(None) => {
                warn!("no cgroup v2 hierarchy is mounted: the node's own processes cannot reach ClusterIPs");
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "reading /proc/self/mountinfo: the node's own processes cannot reach ClusterIPs");
                Ok(())
            }
        }
    };
    if let Err(e) = result {
        warn!(error = ?e, "socket hooks: the node's own processes may not reach ClusterIPs");
    }
}

/// Once the cluster state is in the maps created or replaced at load,
/// moves the links over to this agent's programs (retried on failure).
/// Returns whether the agent is ready: the cluster state applied to the
/// maps, and this agent's programs attached.
fn complete_upgrade(agent: &mut Agent<KernelDatapath>, reconciler: &Reconciler) -> bool {
    let dataplane = &mut agent.datapath_mut().dataplane;
    if dataplane.upgrade_pending() && reconciler.applied() {
        if let Err(error) = dataplane.complete_upgrade() {
            warn!(%error, "completing the dataplane upgrade; retrying");
        }
    }
    reconciler.applied() && !dataplane.upgrade_pending()
}

/// Cross-node routing starts from this node's own Node object (its
/// InternalIP names the underlay), as kubelet registers it, and so does
/// IPAM unless a pod CIDR is configured (the controller manager gives a
/// new Node its `spec.podCIDR` a moment later); until the datastore shows
/// a usable one there is nothing to route or allocate with. Events that
/// arrive meanwhile update `state`; later ones stay queued for the main
/// loop.
async fn wait_for_own_node(
    name: &str,
    configured: Option<ipnet::Ipv4Net>,
    events: &mut tokio::sync::mpsc::Receiver<Event>,
    state: &mut ClusterState,
    listed: &mut std::collections::BTreeSet<Kind>,
) -> anyhow::Result<(ipnet::Ipv4Net, std::net::Ipv4Addr)> {
    let mut waiting_for = None;
    loop {
        let usable = state
            .nodes
            .get(name)
            .ok_or_else(|| "no Node object yet".to_owned())
            .and_then(topology::node_info)
            .and_then(|info| Ok((topology::own_pod_cidr(&info, configured)?, info.ip)));
        match usable {
            Ok((pod_cidr, ip)) => return Ok((pod_cidr, ip)),
            Err(reason) if waiting_for.as_ref() != Some(&reason) => {
                info!(node = name, %reason, "waiting for a usable own Node object");
                waiting_for = Some(reason);
            }
            Err(_) => {}
        }
        let event = events
            .recv()
            .await
            .context("the datastore stopped before this node's Node object was usable")?;
        listed.extend(reconcile::listed_by(&event));
        state.apply(event);
        // What is queued belongs together (one scan, one relist): apply it
        // all before looking again.
        while let Ok(event) = events.try_recv() {
            listed.extend(reconcile::listed_by(&event));
            state.apply(event);
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the agent still serves; it just dies hard.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
