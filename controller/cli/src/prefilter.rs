//! `sluice prefilter` (and `sluice lab prefilter NODE`): the underlay
//! prefilter's deny list, read and changed through the agent, which owns
//! it, applies changes at once and keeps them across restarts.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use sluice_common::api::{self, PrefilterOp, PrefilterStatus, Request, Response};

#[derive(Subcommand, Debug)]
pub enum PrefilterCommand {
    /// Show where the prefilter runs and what it denies.
    List,
    /// Deny sources in these CIDRs (a bare address is its /32).
    Add {
        #[arg(required = true)]
        cidrs: Vec<String>,
    },
    /// Stop denying these CIDRs (added ones; the config file's stay).
    Delete {
        #[arg(required = true)]
        cidrs: Vec<String>,
    },
    /// Make the added CIDRs exactly these (none: clear them).
    Set { cidrs: Vec<String> },
}

impl PrefilterCommand {
    fn op(self) -> PrefilterOp {
        match self {
            PrefilterCommand::List => PrefilterOp::List,
            PrefilterCommand::Add { cidrs } => PrefilterOp::Add { cidrs },
            PrefilterCommand::Delete { cidrs } => PrefilterOp::Delete { cidrs },
            PrefilterCommand::Set { cidrs } => PrefilterOp::Set { cidrs },
        }
    }
}

/// Sends the command to the agent at `socket` and prints the list it
/// answers with.
pub fn run(socket: &Path, command: PrefilterCommand) -> anyhow::Result<ExitCode> {
    let request = Request::Prefilter {
        prefilter: command.op(),
    };
    match api::call(socket, &request, Duration::from_secs(5))
        .with_context(|| format!("asking the agent at {}", socket.display()))?
    {
        Response::Prefilter { prefilter } => {
            print!("{}", text(&prefilter));
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message, .. } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn text(status: &PrefilterStatus) -> String {
    let mut out = match (&status.device, &status.mode) {
        (Some(device), Some(mode)) => format!("attached  {device} ({mode} XDP)\n"),
        _ => "attached  no (no underlay: the agent runs without a datastore)\n".to_owned(),
    };
    for (origin, cidrs) in [
        ("config", &status.config_cidrs),
        ("added", &status.added_cidrs),
    ] {
        for cidr in cidrs {
            out.push_str(&format!("{origin:<9} {cidr}\n"));
        }
    }
    if status.config_cidrs.is_empty() && status.added_cidrs.is_empty() {
        out.push_str("denied    nothing\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_the_mode_and_each_cidrs_origin() {
        let status = PrefilterStatus {
            device: Some("eth0".into()),
            mode: Some("native".into()),
            config_cidrs: vec!["192.0.2.0/24".into()],
            added_cidrs: vec!["198.18.0.0/15".into()],
        };
        assert_eq!(
            text(&status),
            "attached  eth0 (native XDP)\nconfig    192.0.2.0/24\nadded     198.18.0.0/15\n"
        );
        let empty = text(&PrefilterStatus::default());
        assert!(empty.contains("attached  no"), "{empty}");
        assert!(empty.contains("denied    nothing"), "{empty}");
    }
}
