//! `sluice policy explain` and `sluice lab explain`: the flags, and the
//! answer for people.

use std::fmt::Write as _;
use std::process::ExitCode;

use sluice_common::explain::{
    DirectionExplanation, EndRef, ExplainQuery, Explanation, PortSpec, Verdict,
};

use crate::Output;

/// Exit status when the maps disagree with the computed verdict.
const DISAGREE: u8 = 3;

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The flow's source: NAMESPACE/POD or an IPv4 address.
    #[arg(long)]
    from: EndRef,
    /// The flow's destination: NAMESPACE/POD or an IPv4 address.
    #[arg(long)]
    to: EndRef,
    /// The destination port: PORT[/TCP|UDP|SCTP] (TCP when not given).
    #[arg(long)]
    port: PortSpec,
    /// Also list the map lookups the datapath's decision made.
    #[arg(long)]
    lookups: bool,
    /// `text` for people, `json` (one object) for programs.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

impl ExplainArgs {
    pub fn query(&self) -> ExplainQuery {
        ExplainQuery {
            from: self.from.clone(),
            to: self.to.clone(),
            port: self.port,
        }
    }

    /// Prints the answer; fails (exit 3) when the maps disagree with it.
    pub fn print(&self, explanation: &Explanation) -> anyhow::Result<ExitCode> {
        match self.output {
            Output::Text => print!("{}", text(explanation, self.lookups)),
            Output::Json => println!("{}", serde_json::to_string_pretty(explanation)?),
        }
        Ok(if explanation.disagreements().next().is_some() {
            ExitCode::from(DISAGREE)
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// The explanation in words: the overall verdict, then each direction
/// with what decided it and what the datapath's maps say.
pub fn text(e: &Explanation, lookups: bool) -> String {
    let mut out = String::new();
    let verdict = if e.allowed() { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(out, "{} -> {} {}: {verdict}", e.from, e.to, e.port);
    for d in [&e.egress, &e.ingress] {
        direction(&mut out, d, lookups);
    }
    let wrong: Vec<&str> = e.disagreements().map(|d| d.direction.as_str()).collect();
    if !wrong.is_empty() {
        let _ = writeln!(
            out,
            "!! THE DATAPATH DISAGREES ({}): the BPF maps do not hold what the cluster state asks for. This is a bug; please report it with the output of --lookups -o json.",
            wrong.join(", ")
        );
    }
    let _ = writeln!(out, "answered by {}", e.node);
    out
}

fn direction(out: &mut String, d: &DirectionExplanation, lookups: bool) {
    let whose = d.pod.as_deref().unwrap_or("the source/destination");
    if d.verdict == Verdict::NotApplicable {
        let _ = writeln!(out, "  {}: not applicable", d.direction);
    } else {
        let _ = writeln!(out, "  {} of {whose}: {}", d.direction, d.verdict.name());
    }
    if !d.isolated_by.is_empty() {
        let _ = writeln!(out, "    isolated by: {}", d.isolated_by.join(", "));
    }
    for rule in &d.allowed_by {
        let _ = writeln!(out, "    allowed by: {rule}");
    }
    for note in &d.notes {
        let _ = writeln!(out, "    {note}");
    }
    match &d.datapath {
        Some(check) => {
            let agreement = if check.agrees { "agrees" } else { "DISAGREES" };
            let _ = writeln!(
                out,
                "    datapath ({} maps, endpoint {}): {}, {agreement}",
                check.node,
                check.endpoint,
                check.verdict.name()
            );
            if lookups {
                for lookup in &check.lookups {
                    let _ = writeln!(out, "      {lookup}");
                }
            }
        }
        None if d.pod.is_some() => {
            let _ = writeln!(
                out,
                "    datapath: not checked (the pod is not on the answering node)"
            );
        }
        None => {}
    }
}
