//! sluice: the user CLI.
mod demo;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use sluice_common::api::{self, Request, Response};
use sluice_controller::{config, counters};

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
    /// Bring up one node with a few pods in network namespaces, wired by the
    /// real sluice-cni and agent, and show them talking.
    Demo(demo::DemoArgs),
    /// Show the agent's status.
    Status {
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show the dataplane's packet counters (forwarded / dropped by reason).
    Counters {
        #[arg(long)]
        node_name: String,
        #[arg(long, default_value = config::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args),
        Command::Status { socket } => {
            match api::call(&socket, &Request::Status, Duration::from_secs(5))
                .with_context(|| format!("asking the agent at {}", socket.display()))?
            {
                Response::Status { status } => {
                    println!("node:            {}", status.node_name);
                    println!("pod CIDR:        {}", status.pod_cidr);
                    println!("endpoints:       {}", status.endpoints);
                    println!("free addresses:  {}", status.free_addresses);
                    Ok(())
                }
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Counters { node_name, bpffs } => {
            let pin_dir = sluice_controller::dataplane::pin_dir(&bpffs.join("sluice"), &node_name);
            print_counters(&counters::read(&pin_dir)?);
            Ok(())
        }
    }
}

pub fn print_counters(rows: &[counters::CounterRow]) {
    println!(
        "{:<24} {:<8} {:>12} {:>14}",
        "REASON", "DIR", "PACKETS", "BYTES"
    );
    for row in rows.iter().filter(|r| r.packets > 0) {
        println!(
            "{:<24} {:<8} {:>12} {:>14}",
            row.reason, row.direction, row.packets, row.bytes
        );
    }
}
