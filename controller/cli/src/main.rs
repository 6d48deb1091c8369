//! sluice: the user CLI.
mod explain;
mod install_cni;
mod lab;
mod observe;
mod prefilter;
mod status;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use sluice_agent::{config, kernel::counters};
use sluice_common::api::{self, Request, Response};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "sluice: eBPF networking for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A cluster on this host: nodes and pods in network namespaces, wired
    /// by the real agent and sluice-cni; `sluice lab demo` shows it working.
    Lab(lab::LabArgs),
    /// Show a node agent's status: readiness, datapath, endpoints,
    /// identities, what it knows of the cluster, Services, map fill,
    /// freshness and problems.
    Status {
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// `text` for people, `json` (one object) for programs.
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Read or change the underlay prefilter's deny list (XDP drops of
    /// source CIDRs), live, through the node agent.
    Prefilter {
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        command: prefilter::PrefilterCommand,
    },
    /// NetworkPolicy as the node agent applies it.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show flows the node agent recorded (and, with --follow, live ones):
    /// new flows' verdicts, drops with their reason, Service translations.
    Observe {
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        args: observe::ObserveArgs,
    },
    /// Show the dataplane's packet counters (forwarded / dropped by reason).
    Counters {
        #[arg(long)]
        node_name: String,
        #[arg(long, default_value = config::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Install sluice-cni (and the reference plugins a CRI runtime needs,
    /// when the host lacks them) and its network config on this host: the
    /// Helm chart's init container.
    InstallCni {
        /// The host's CNI bin directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The host's CNI conf directory; gets `05-sluice.conflist`.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The config's `cniVersion`: 1.0.0 suits containerd 1.6/1.7 and
        /// CRI-O with libcni < 1.2; 1.1.0 needs newer runtimes.
        #[arg(long, default_value = install_cni::DEFAULT_CNI_VERSION)]
        cni_version: String,
        /// The agent's socket, as the plugin on the host reaches it.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The sluice-cni binary [default: beside this one].
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Where the reference plugins to install from are (Debian's
        /// containernetworking-plugins).
        #[arg(long, default_value = "/usr/lib/cni")]
        companions_dir: PathBuf,
    },
    /// Remove sluice's network config from this host (the binaries stay
    /// for the pods' DEL): the Helm chart's preStop hook.
    UninstallCni {
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Why a flow is allowed or denied: each direction's verdict, the
    /// policies and rules that decided it, checked against the BPF maps of
    /// this node (whose own pods' policy it holds).
    Explain {
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        args: explain::ExplainArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out causes the message
/// above them already quotes (many errors here embed their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    let mut last = text.clone();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !last.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        last = cause;
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Lab(args) => lab::run(args),
        Command::Status { socket, output } => {
            match api::call(&socket, &Request::Status, Duration::from_secs(5))
                .with_context(|| format!("asking the agent at {}", socket.display()))?
            {
                Response::Status { status } => {
                    match output {
                        Output::Text => print!("{}", status::text(&status)),
                        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Prefilter { socket, command } => prefilter::run(&socket, command),
        Command::Policy {
            command: PolicyCommand::Explain { socket, args },
        } => {
            let request = Request::Explain {
                query: args.query(),
            };
            match api::call(&socket, &request, Duration::from_secs(5))
                .with_context(|| format!("asking the agent at {}", socket.display()))?
            {
                Response::Explained { explanation } => args.print(&explanation),
                Response::Error { message, .. } => bail!("{message}"),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Observe { socket, args } => Ok(if observe::observe_node(&socket, &args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::InstallCni {
            bin_dir,
            conf_dir,
            cni_version,
            socket,
            plugin,
            companions_dir,
        } => {
            let plugin = match plugin {
                Some(plugin) => plugin,
                None => std::env::current_exe()
                    .context("locating this binary")?
                    .with_file_name("sluice-cni"),
            };
            let installed = install_cni::install(&install_cni::InstallOptions {
                bin_dir,
                conf_dir,
                cni_version,
                agent_socket: socket,
                plugin,
                companions_dir,
            })?;
            for name in &installed.companions {
                println!("installed {name} (the host had none)");
            }
            for name in &installed.missing {
                eprintln!("warning: no {name} on the host nor in the image");
            }
            println!("wrote {}", installed.config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::UninstallCni { conf_dir } => {
            if install_cni::uninstall(&conf_dir)? {
                println!("removed {}", conf_dir.join(install_cni::CONFLIST).display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Counters { node_name, bpffs } => {
            let pin_dir = sluice_agent::kernel::bpf::pin_dir(&bpffs.join("sluice"), &node_name);
            print_counters(&counters::read(&pin_dir)?);
            println!();
            print_verdicts(&counters::read_verdicts(&pin_dir)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_counters(rows: &[counters::CounterRow]) {
    println!(
        "{:<24} {:<8} {:>12} {:>14}",
        "REASON", "DIR", "PACKETS", "BYTES"
    );
    for row in rows.iter().filter(|r| r.packets > 0) {
        println!(
            "{:<24} {:<8} {:>12} {:>14}",
            row.reason.name(),
            row.direction.name(),
            row.packets,
            row.bytes
        );
    }
}

fn print_verdicts(rows: &[counters::VerdictRow]) {
    println!("{:<24} {:<8} {:>12}", "POLICY VERDICT", "DIR", "COUNT");
    for row in rows {
        println!(
            "{:<24} {:<8} {:>12}",
            row.verdict.name(),
            row.direction.name(),
            row.count
        );
    }
}
