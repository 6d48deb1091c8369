//! sluice-agent: the node daemon.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sluice_controller::{
    agent::{Agent, AgentConfig},
    bpffs,
    config::{Config, FlagConfig},
    dataplane::{self, Dataplane},
    kernel::KernelDatapath,
    netlink::{Netlink, HOST_DEVICE},
    server,
    state::StateFile,
};
use tracing::info;

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
    /// Pod interface MTU [default: 1500].
    #[arg(long)]
    mtu: Option<u32>,
    /// YAML config file; flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Remove everything the agent installed for this node (links, maps,
    /// host device, socket) and exit. Pods' veths are left to CNI DEL.
    #[arg(long)]
    uninstall: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let flags = FlagConfig {
        node_name: args.node_name,
        pod_cidr: args.pod_cidr,
        state_dir: args.state_dir,
        socket: args.socket,
        bpffs: args.bpffs,
        mtu: args.mtu,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    if args.uninstall {
        return runtime.block_on(uninstall(flags, args.config));
    }
    let config = Config::resolve(flags, args.config.as_deref())?;
    runtime.block_on(run(config))
}

async fn uninstall(mut flags: FlagConfig, file: Option<PathBuf>) -> anyhow::Result<()> {
    // Uninstall needs no pod CIDR; any placeholder passes validation.
    flags
        .pod_cidr
        .get_or_insert_with(|| "0.0.0.0/24".parse().expect("literal CIDR"));
    let config = Config::resolve(flags, file.as_deref())?;
    dataplane::remove_pins(&config.pin_dir())
        .with_context(|| format!("removing {}", config.pin_dir().display()))?;
    Netlink::new()?.delete_link(HOST_DEVICE).await?;
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
    bpffs::ensure_mounted(&config.bpffs)?;
    let dataplane = Dataplane::load(&config.pin_dir(), config.map_sizes())
        .context("loading the eBPF dataplane")?;
    let netlink = Netlink::new()?;
    let gateway = sluice_controller::ipam::Ipam::new(config.pod_cidr)?.gateway();
    netlink
        .ensure_host_device(gateway)
        .await
        .context("setting up the host device")?;
    let datapath = KernelDatapath {
        dataplane,
        netlink,
        gateway,
    };
    let mut agent = Agent::start(
        AgentConfig {
            node_name: config.node_name.clone(),
            pod_cidr: config.pod_cidr,
            mtu: config.mtu,
        },
        StateFile::new(&config.state_dir),
        datapath,
    )
    .await?;
    let listener = server::bind(&config.socket).await?;
    info!(node = %config.node_name, pod_cidr = %config.pod_cidr, socket = %config.socket.display(), pins = %config.pin_dir().display(), "agent ready");
    server::serve(listener, &mut agent, shutdown_signal()).await;
    let _ = std::fs::remove_file(&config.socket);
    info!("agent stopped; dataplane stays pinned");
    Ok(())
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
