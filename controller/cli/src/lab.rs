//! `sluice lab`: a multi-node cluster on this host (see
//! `sluice_lab::cluster`), and its demo.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use ipnet::Ipv4Net;
use sluice_agent::config::{PodAttachment, PrefilterMode, Routing};
use sluice_lab::{
    bench::{self, BenchOptions},
    cluster::{self, Lab, LabConfig, LabStatus, PodSpec, UpOptions},
    conformance,
    inventory::{self, PodState},
    matrix::{self, Check, TruthTable},
    model,
    netns::command_in,
    probe::EchoServer,
    teardown::{self, DownReport},
    topology::{self, PodName},
};

const DIR_ENV: &str = "SLUICE_LAB_DIR";

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// Directory holding all of the lab's state (manifests, agent state and
    /// logs, its bpffs) [default: $SLUICE_LAB_DIR, else /var/run/sluice-lab].
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Name of the lab; prefixes all its network namespaces.
    #[arg(long, global = true, default_value = cluster::DEFAULT_NAME)]
    name: String,
    /// Where sluice-agent and sluice-cni are [default: the lab's, else next
    /// to this binary].
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Bring up nodes (namespaces running sluice-agent) on a fabric.
    /// Idempotent: on a lab that is up it restarts what died.
    Up(UpArgs),
    /// Remove everything the lab made, also after a crash. Idempotent.
    Down,
    /// Show nodes, agents and pods.
    Status,
    /// Create or delete pods.
    #[command(subcommand)]
    Pod(PodCommand),
    /// Add objects (NetworkPolicies, Namespaces, ...) to the cluster, like
    /// kubectl apply.
    Apply {
        /// A YAML/JSON file (multi-document) or a directory of them.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove objects described by files, like kubectl delete.
    Delete {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Succeed even if an object does not exist.
        #[arg(long)]
        ignore_not_found: bool,
    },
    /// A node's prefilter deny list, as `sluice prefilter` on that node.
    Prefilter {
        node: String,
        #[command(subcommand)]
        command: crate::prefilter::PrefilterCommand,
    },
    /// Run a command in a pod's (NS/NAME) or a node's (nodeN) network
    /// namespace.
    Exec {
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Flows every node's agent recorded, merged in time order (and, with
    /// --follow, live ones from all nodes): as `sluice observe`.
    Observe(crate::observe::ObserveArgs),
    /// Probe every pair of pods and print who reaches whom.
    Matrix {
        /// Checks to run: tcp/PORT, udp/PORT, icmp.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "tcp/80,tcp/81,udp/80,udp/81"
        )]
        checks: Vec<Check>,
    },
    /// Why a flow is allowed or denied, as `sluice policy explain`: asks
    /// the source pod's node (egress) and the destination pod's node
    /// (ingress) and prints one answer.
    Explain(crate::explain::ExplainArgs),
    /// Bring up two nodes with the upstream NetworkPolicy model (namespaces
    /// x, y, z; pods a, b, c) and show every pod reaching every other.
    Demo(DemoArgs),
    /// Measure sluice next to its baselines (policy cost, cross-node
    /// throughput, Services, prefilter, same node, policy scale), in fresh
    /// labs of their own; writes a report with plots.
    Bench(BenchArgs),
    /// Run NetworkPolicy conformance cases (DIR/*.yaml, see FORMAT.md
    /// beside them), each on a fresh two-node lab with the upstream model's
    /// pods, in a lab of its own (NAME-conf); exits non-zero if any fails.
    Conformance(ConformanceArgs),
    /// Serve TCP and UDP echo on ports (what lab pods run).
    #[command(hide = true)]
    Serve {
        /// Ports to serve, each on TCP and UDP.
        #[arg(long, value_delimiter = ',', default_value = "80,81")]
        ports: Vec<u16>,
    },
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Seconds per iperf3 run and per request/response run [default: 2,
    /// 1 with --quick].
    #[arg(long)]
    seconds: Option<u32>,
    /// Runs per path, in turns with the path's alternatives (the median and
    /// range are reported) [default: 3, 2 with --quick].
    #[arg(long)]
    runs: Option<u32>,
    /// Every comparison at smaller sizes and in shorter runs: a check that
    /// the bench works, not figures to quote.
    #[arg(long)]
    quick: bool,
    /// Only these benchmarks [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<BenchSuite>,
    /// Service counts for the Services benchmark [default: 1000; 100 with
    /// --quick].
    #[arg(long, value_delimiter = ',')]
    services: Vec<usize>,
    /// Where report.md, report.json and plots/ go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// The benchmarks `sluice lab bench` runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BenchSuite {
    /// Per-packet policy cost (BPF_PROG_TEST_RUN).
    Policy,
    /// Cross-node TCP throughput.
    Throughput,
    /// Through a ClusterIP vs to the pod, eBPF vs the kube-proxy emulation.
    Services,
    /// Drops/s of a denied CIDR: XDP prefilter vs TC vs iptables raw.
    Prefilter,
    /// Pod to pod on one node: sluice vs raw veth vs the bridge CNI.
    SameNode,
    /// Pinned RR/CRR at 0 to 10,000 non-matching rules: sluice vs iptables
    /// vs ipset.
    PolicyScale,
    /// CNI ADD/DEL vs bridge, policy propagation, ingest, agent memory.
    ControlPlane,
    /// One agent fed a simulated large cluster: memory, first sync, churn.
    Scale,
    /// The pod programs' run time per packet under real traffic (kernel
    /// BPF stats), established and new flows, isolated or not.
    RuntimeCost,
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// How many nodes (node1..nodeN).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// How pod traffic crosses nodes.
    #[arg(long, value_enum, default_value_t = Routing::Tunnel)]
    routing: Routing,
    /// The cluster's pod CIDR; node i gets its i-th /24.
    #[arg(long, default_value = cluster::DEFAULT_POD_CIDR)]
    pod_cidr: Ipv4Net,
    /// Serve Services with an emulation of kube-proxy's iptables mode in
    /// every node (the agents run beside it, kubeProxyReplacement false)
    /// instead of sluice's eBPF.
    #[arg(long)]
    kube_proxy: bool,
    /// Where the agents run the XDP prefilter on their veth underlay:
    /// `auto` (generic on veth), `native` or `generic`.
    #[arg(long, value_enum, default_value_t = PrefilterMode::Auto)]
    prefilter_mode: PrefilterMode,
    /// How the agents attach the pod programs: `tcx` (pinned links) or
    /// `tc` (clsact filters; faster CNI ADD).
    #[arg(long, value_enum, default_value_t = PodAttachment::Tcx)]
    pod_attachment: PodAttachment,
}

#[derive(clap::Args, Debug)]
struct ConformanceArgs {
    /// Directory of case files (`cases`, not `dir`: that is the global
    /// --dir of the lab).
    #[arg(value_name = "DIR")]
    cases: PathBuf,
    /// How pod traffic crosses nodes.
    #[arg(long, value_enum, default_value_t = Routing::Tunnel)]
    routing: Routing,
    /// Only cases whose file name or name contains this.
    #[arg(long = "case")]
    filter: Option<String>,
    /// Leave the last case's lab up (policies and labels as the case left
    /// them).
    #[arg(long)]
    keep: bool,
    /// Seconds a step's probes may take to match before they are judged
    /// (agents apply policy asynchronously).
    #[arg(long, default_value_t = conformance::DEFAULT_WAIT.as_secs_f64())]
    wait: f64,
}

#[derive(Subcommand, Debug)]
enum PodCommand {
    /// Create a pod: netns, sluice-cni ADD on its node, a TCP/UDP server on
    /// its ports, and its Pod object.
    Add {
        /// NAMESPACE/NAME
        pod: PodName,
        /// The node to run on (node1..nodeN).
        #[arg(long)]
        node: String,
        /// Pod labels: key=value,key2=value2.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Ports served, each on TCP and UDP.
        #[arg(long, value_delimiter = ',', default_value = "80,81")]
        ports: Vec<u16>,
    },
    /// Delete a pod (server, sluice-cni DEL, netns, Pod object).
    Del {
        /// NAMESPACE/NAME
        pod: PodName,
    },
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// How pod traffic crosses nodes.
    #[arg(long, value_enum, default_value_t = Routing::Tunnel)]
    routing: Routing,
    /// The cluster's pod CIDR; node i gets its i-th /24.
    #[arg(long, default_value = cluster::DEFAULT_POD_CIDR)]
    pod_cidr: Ipv4Net,
    /// Remove the lab at the end instead of leaving it up.
    #[arg(long)]
    down: bool,
}

pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    if let LabCommand::Serve { ports } = &args.command {
        serve(ports)?;
    }
    let config = config(&args)?;
    match args.command {
        LabCommand::Up(up) => {
            let options = UpOptions {
                nodes: up.nodes,
                routing: up.routing,
                pod_cidr: up.pod_cidr,
                kube_proxy: up.kube_proxy,
                prefilter_mode: up.prefilter_mode,
                pod_attachment: up.pod_attachment,
                ..UpOptions::default()
            };
            let lab = Lab::up(config, &options)?;
            print_status(&lab.status());
            print_hints(&lab);
        }
        LabCommand::Down => print_down(&config.name, &teardown::down(&config)?),
        LabCommand::Status => print_status(&Lab::open(config)?.status()),
        LabCommand::Pod(PodCommand::Add {
            pod,
            node,
            labels,
            ports,
        }) => {
            let spec = PodSpec {
                pod,
                node,
                labels: parse_labels(&labels)?,
                ports,
            };
            let state = Lab::open(config)?.pod_add(&spec)?;
            println!("pod {} on {}: {}", spec.pod, state.node, state.ip);
        }
        LabCommand::Pod(PodCommand::Del { pod }) => {
            Lab::open(config)?.pod_del(&pod)?;
            println!("pod {pod} deleted");
        }
        LabCommand::Apply { files } => {
            for key in Lab::open(config)?.apply(&files)? {
                println!("{key} applied");
            }
        }
        LabCommand::Delete {
            files,
            ignore_not_found,
        } => {
            let mut missing = 0;
            for (key, existed) in Lab::open(config)?.delete(&files)? {
                if existed {
                    println!("{key} deleted");
                } else {
                    missing += 1;
                    println!("{key} not found");
                }
            }
            if missing > 0 && !ignore_not_found {
                bail!("{missing} object(s) not found (--ignore-not-found to accept)");
            }
        }
        LabCommand::Prefilter { node, command } => {
            return crate::prefilter::run(&config.agent_socket(&node), command)
        }
        LabCommand::Observe(args) => {
            let status = Lab::open(config.clone())?.status();
            let sockets: Vec<(String, PathBuf)> = status
                .nodes
                .iter()
                .map(|n| (n.name.clone(), config.agent_socket(&n.name)))
                .collect();
            if sockets.is_empty() {
                bail!("the lab has no nodes");
            }
            if !crate::observe::observe(&sockets, &args)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        LabCommand::Exec { target, command } => {
            return exec(&Lab::open(config)?, &target, &command)
        }
        LabCommand::Matrix { checks } => {
            let lab = Lab::open(config)?;
            let tables = matrix::probe_matrix(&lab.peers(), &checks, matrix::DEFAULT_TIMEOUT);
            print_tables(&checks, &tables);
            if tables.iter().any(|t| !t.unreachable().is_empty()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        LabCommand::Explain(args) => {
            let lab = Lab::open(config)?;
            return args.print(&sluice_lab::explain::explain(&lab, &args.query())?);
        }
        LabCommand::Demo(demo_args) => return demo(config, &demo_args),
        LabCommand::Conformance(args) => return run_conformance(&config, &args),
        LabCommand::Bench(args) => bench(&config, &args)?,
        LabCommand::Serve { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Binaries come from `--bin-dir`, else from where the lab that is up got
/// them, else from next to this executable.
fn config(args: &LabArgs) -> anyhow::Result<LabConfig> {
    let dir = args
        .dir
        .clone()
        .or_else(|| std::env::var_os(DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| cluster::DEFAULT_DIR.into());
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => match inventory::load(&dir).ok().flatten() {
            Some(state) if state.name == args.name => state.bin_dir,
            _ => std::env::current_exe()
                .context("locating the sluice binary")?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        },
    };
    Ok(LabConfig::new(dir, &args.name, bin_dir)?)
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("invalid label {l:?}: want key=value"))?;
            topology::validate_label(k, v)?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Runs `command` inside a pod's or node's netns with this terminal, and
/// exits as it did.
fn exec(lab: &Lab, target: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let netns = if target.contains('/') {
        lab.pod_netns(&target.parse()?)?
    } else {
        lab.node_netns(target)?
    };
    let (program, args) = command.split_first().context("no command given")?;
    let status = command_in(netns.path(), program)
        .with_context(|| format!("entering netns {}", netns.name()))?
        .args(args)
        .status()
        .with_context(|| format!("running {program} in {target}"))?;
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The pod server: echo on TCP and UDP on every port until killed.
fn serve(ports: &[u16]) -> anyhow::Result<()> {
    let _servers = ports
        .iter()
        .map(|&port| {
            EchoServer::listen(SocketAddr::from(([0, 0, 0, 0], port)))
                .with_context(|| format!("serving port {port}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!("serving TCP and UDP on {ports:?}");
    loop {
        std::thread::park();
    }
}

/// How often the demo probes before calling a pair unreachable: agents
/// learn remote pods asynchronously, and upstream probes twice too.
const DEMO_ROUNDS: usize = 5;

fn demo(config: LabConfig, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let stale = teardown::down(&config)?;
    if !stale.is_empty() {
        print_down(&config.name, &stale);
    }
    let options = UpOptions {
        nodes: 2,
        routing: args.routing,
        pod_cidr: args.pod_cidr,
        ..UpOptions::default()
    };
    println!("bringing up lab {}: {options}", config.name);
    let result = demo_in(config.clone(), &options);
    if args.down {
        print_down(&config.name, &teardown::down(&config)?);
    } else if let (Ok(_), Ok(lab)) = (&result, Lab::open(config.clone())) {
        print_hints(&lab);
    } else {
        println!(
            "\nthe lab is left up for a look: sluice lab{} status; remove it with sluice lab{} down",
            lab_flags(&config),
            lab_flags(&config)
        );
    }
    result
}

fn demo_in(config: LabConfig, options: &UpOptions) -> anyhow::Result<ExitCode> {
    let mut lab = Lab::up(config, options)?;
    for node in &lab.state().nodes {
        println!(
            "  {}: {} pod CIDR {} (netns {})",
            node.name, node.ip, node.pod_cidr, node.netns
        );
    }
    let mut pods = model::create(&mut lab)?;
    pods.sort_by_key(PodState::pod_name);
    println!("\npods (namespaces x, y, z labelled ns=<name>; pods labelled pod=<name>; serving TCP+UDP 80, 81):");
    println!("  {:<6} {:<8} IP", "POD", "NODE");
    for pod in &pods {
        println!(
            "  {:<6} {:<8} {}",
            pod.pod_name().to_string(),
            pod.node,
            pod.ip
        );
    }

    let peers = lab.peers();
    let mut tables = Vec::new();
    for round in 1..=DEMO_ROUNDS {
        tables = matrix::probe_matrix(&peers, &model::CHECKS, matrix::DEFAULT_TIMEOUT);
        if tables.iter().all(|t| t.unreachable().is_empty()) || round == DEMO_ROUNDS {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    println!();
    print_tables(&model::CHECKS, &tables);
    let unreachable: usize = tables.iter().map(|t| t.unreachable().len()).sum();
    if unreachable > 0 {
        eprintln!(
            "\n{unreachable} pairs of different pods could not talk (no policy exists, so all should); agent logs: {}",
            lab.config().dir.join("nodes/*/agent.log").display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the chosen suites, printing each section as it is done, and writes
/// the report with its plots.
fn bench(config: &LabConfig, args: &BenchArgs) -> anyhow::Result<()> {
    let quick = args.quick;
    let seconds = args.seconds.unwrap_or(if quick { 1 } else { 2 });
    let runs = args.runs.unwrap_or(if quick { 2 } else { 3 });
    let services = if !args.services.is_empty() {
        args.services.clone()
    } else if quick {
        vec![100]
    } else {
        vec![1000]
    };
    // Labs of its own, beside (not inside) the user's lab.
    let options = BenchOptions {
        seconds,
        runs,
        dir: config.dir.with_file_name(format!("{}-bench", config.name)),
        name: format!("{}-bench", config.name),
        bin_dir: config.bin_dir.clone(),
        quick,
    };
    let wanted = |suite| args.only.is_empty() || args.only.contains(&suite);
    let mut report = bench::report::Report {
        header: bench::machine::describe(),
        ..Default::default()
    };
    report.header.push(format!(
        "Command: sluice lab bench --seconds {seconds} --runs {runs}{}{}",
        if quick { " --quick" } else { "" },
        if args.only.is_empty() {
            String::new()
        } else {
            // The names the flag takes (`same-node`), not Rust's.
            let names: Vec<String> = args
                .only
                .iter()
                .filter_map(clap::ValueEnum::to_possible_value)
                .map(|v| v.get_name().to_owned())
                .collect();
            format!(" --only {}", names.join(","))
        }
    ));
    // One suite: its section printed and added, its wall time noted.
    let mut add = |suite: BenchSuite,
                   run: &dyn Fn() -> anyhow::Result<bench::report::Section>|
     -> anyhow::Result<()> {
        if !wanted(suite) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let section = run()?;
        for table in &section.tables {
            println!("{}", table.markdown());
        }
        report.sections.push(section);
        let name = clap::ValueEnum::to_possible_value(&suite)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        report
            .suite_seconds
            .push((name, started.elapsed().as_secs_f64()));
        Ok(())
    };
    add(BenchSuite::Policy, &|| {
        let rules: &[usize] = if quick { &[0, 1_000] } else { &[0, 10_000] };
        let repeat = if quick { 200_000 } else { 1_000_000 };
        Ok(bench::policy_cost::section(rules, runs, repeat)?)
    })?;
    add(BenchSuite::Throughput, &|| {
        Ok(bench::throughput::section(&options)?)
    })?;
    add(BenchSuite::Services, &|| {
        Ok(bench::services::section(&options, &services)?)
    })?;
    add(BenchSuite::Prefilter, &|| {
        Ok(bench::prefilter::section(&options)?)
    })?;
    add(BenchSuite::SameNode, &|| {
        Ok(bench::same_node::section(&options)?)
    })?;
    add(BenchSuite::PolicyScale, &|| {
        Ok(bench::policy_scale::section(&options)?)
    })?;
    add(BenchSuite::ControlPlane, &|| {
        Ok(bench::control_plane::section(&options)?)
    })?;
    add(BenchSuite::Scale, &|| Ok(bench::scale::section(&options)?))?;
    add(BenchSuite::RuntimeCost, &|| {
        Ok(bench::runtime_cost::section(&options)?)
    })?;
    let written = report
        .write(&args.out)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    println!("report: {}", written.display());
    Ok(())
}

fn run_conformance(config: &LabConfig, args: &ConformanceArgs) -> anyhow::Result<ExitCode> {
    let wait = Duration::try_from_secs_f64(args.wait)
        .with_context(|| format!("invalid --wait {}", args.wait))?;
    let options = conformance::Options {
        routing: args.routing,
        filter: args.filter.clone(),
        keep: args.keep,
        wait,
        ..conformance::Options::default()
    };
    let lab = conformance::lab_config(config)?;
    println!(
        "conformance cases in {}: a fresh 2-node lab per case ({} routing, lab {} in {})",
        args.cases.display(),
        args.routing,
        lab.name,
        lab.dir.display()
    );
    let summary = conformance::run(config, &args.cases, &options, |report| print!("{report}"))
        .with_context(|| format!("running the cases in {}", args.cases.display()))?;
    if args.keep {
        println!(
            "the last case's lab is left up: sluice lab --dir {} --name {} status (remove it with ... down)",
            lab.dir.display(),
            lab.name
        );
    }
    println!("total {:.1} s", summary.elapsed.as_secs_f64());
    println!("{summary}");
    Ok(if summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_tables(checks: &[Check], tables: &[TruthTable]) {
    for (check, table) in checks.iter().zip(tables) {
        println!("{check}:\n{table}");
    }
    let summary: Vec<String> = checks
        .iter()
        .zip(tables)
        .map(|(check, table)| {
            let (ok, total) = table.count();
            format!("{ok}/{total} reachable on {check}")
        })
        .collect();
    println!("{}", summary.join(", "));
}

/// The global flags that reach this lab again, when not the defaults.
fn lab_flags(config: &LabConfig) -> String {
    let mut flags = String::new();
    if config.dir != Path::new(cluster::DEFAULT_DIR) {
        flags.push_str(&format!(" --dir {}", config.dir.display()));
    }
    if config.name != cluster::DEFAULT_NAME {
        flags.push_str(&format!(" --name {}", config.name));
    }
    flags
}

fn print_hints(lab: &Lab) {
    let flags = lab_flags(lab.config());
    println!("\nthe lab is up. Try:");
    let pods = &lab.state().pods;
    match (
        pods.first(),
        pods.iter()
            .rev()
            .find(|p| Some(&p.node) != pods.first().map(|f| &f.node)),
    ) {
        (Some(from), Some(to)) => println!(
            "  sluice lab{flags} exec {} -- ping -c1 {}    # {} ({}) -> {} ({})",
            from.pod_name(),
            to.ip,
            from.pod_name(),
            from.node,
            to.pod_name(),
            to.node
        ),
        _ => println!("  sluice lab{flags} pod add x/a --node node1 --labels pod=a"),
    }
    println!("  sluice lab{flags} apply -f policy.yaml && sluice lab{flags} matrix");
    println!("  sluice lab{flags} status");
    println!("  sluice lab{flags} down");
}

fn print_status(status: &LabStatus) {
    println!(
        "lab {}: {} routing, pod CIDR {}, services by {}",
        status.name,
        status.routing,
        status.pod_cidr,
        cluster::services_by(status.kube_proxy)
    );
    println!(
        "  {:<8} {:<13} {:<16} {:<22} ENDPOINTS",
        "NODE", "IP", "POD CIDR", "AGENT"
    );
    for node in &status.nodes {
        let agent = match (node.agent_running, node.agent_pid) {
            (true, Some(pid)) => format!("running (pid {pid})"),
            _ => "NOT RUNNING".to_owned(),
        };
        let endpoints = node
            .endpoints
            .map_or_else(|| "-".to_owned(), |e| e.to_string());
        println!(
            "  {:<8} {:<13} {:<16} {:<22} {}",
            node.name,
            node.ip.to_string(),
            node.pod_cidr.to_string(),
            agent,
            endpoints
        );
    }
    if status.pods.is_empty() {
        println!("  no pods (add one: sluice lab pod add NS/NAME --node node1)");
        return;
    }
    println!("  {:<20} {:<8} {:<15} SERVER", "POD", "NODE", "IP");
    for pod in &status.pods {
        println!(
            "  {:<20} {:<8} {:<15} {}",
            pod.pod.pod_name().to_string(),
            pod.pod.node,
            pod.pod.ip.to_string(),
            if pod.server_running {
                "running"
            } else {
                "NOT RUNNING"
            }
        );
    }
    if status.services.is_empty() {
        return;
    }
    println!(
        "  {:<24} {:<12} {:<15} {:<24} ENDPOINTS",
        "SERVICE", "TYPE", "CLUSTER-IP", "PORTS"
    );
    for service in &status.services {
        let endpoints = if service.endpoints.is_empty() {
            "<none>".to_owned()
        } else {
            service.endpoints.join(",")
        };
        println!(
            "  {:<24} {:<12} {:<15} {:<24} {}",
            service.name,
            service.kind,
            service.cluster_ip,
            service.ports.join(","),
            endpoints
        );
    }
}

fn print_down(name: &str, report: &DownReport) {
    if report.is_empty() {
        println!("lab {name}: nothing to remove");
        return;
    }
    println!(
        "lab {name} down: stopped {} process(es){}, removed {} namespace(s){}{}",
        report.processes,
        if report.killed > 0 {
            format!(" ({} with SIGKILL)", report.killed)
        } else {
            String::new()
        },
        report.netns.len(),
        if report.unmounted {
            ", unmounted its bpffs"
        } else {
            ""
        },
        if report.removed_dir {
            ", removed its directory"
        } else {
            ""
        },
    );
}
