//! `sluice observe` and `sluice lab observe`: flows from node agents
//! (recorded, then live with `--follow`), filtered by the agents with the
//! shared [`FlowFilter`], merged across nodes, printed for people or as
//! one JSON object per line.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use sluice_common::{
    api::{self, Request, Response},
    observe::{Flow, FlowFilter, FlowVerdict},
};

/// The flags both commands take.
#[derive(clap::Args, Debug, Clone)]
pub struct ObserveArgs {
    /// Flows from or to this pod (NAMESPACE/NAME).
    #[arg(long)]
    pod: Option<String>,
    /// Flows from or to pods of this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// allowed, denied, dropped or translated.
    #[arg(long)]
    verdict: Option<FlowVerdict>,
    /// TCP, UDP, ICMP, SCTP or a number.
    #[arg(long)]
    protocol: Option<String>,
    /// Flows from or to this port.
    #[arg(long)]
    port: Option<u16>,
    /// Only flows of the last DURATION (30s, 5m, 2h, 1d).
    #[arg(long)]
    since: Option<String>,
    /// Of the recorded flows, only the last N (per node, then merged).
    #[arg(long)]
    last: Option<usize>,
    /// After the recorded flows, show live ones until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// `text` for people, `json` (one object per line) for programs.
    #[arg(short, long, value_enum, default_value_t = crate::Output::Text)]
    output: crate::Output,
}

impl ObserveArgs {
    pub fn filter(&self) -> anyhow::Result<FlowFilter> {
        let pod = match &self.pod {
            Some(pod) => match pod.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    Some((ns.to_owned(), name.to_owned()))
                }
                _ => bail!("--pod {pod:?}: want NAMESPACE/NAME"),
            },
            None => None,
        };
        if let Some(p) = &self.protocol {
            if sluice_common::observe::protocol_number(p).is_none() {
                bail!("--protocol {p:?}: want TCP, UDP, ICMP, SCTP or a number");
            }
        }
        let since_unix_ns = match &self.since {
            Some(since) => {
                let ago = parse_duration(since)?;
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                Some(now.saturating_sub(ago).as_nanos() as u64)
            }
            None => None,
        };
        Ok(FlowFilter {
            pod,
            namespace: self.namespace.clone(),
            verdict: self.verdict,
            protocol: self.protocol.clone(),
            port: self.port,
            since_unix_ns,
            last: self.last,
        })
    }
}

/// `30s`, `5m`, `2h`, `1d` (a bare number is seconds).
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = text.split_at(
        text.trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .len(),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("--since {text:?}: want e.g. 30s, 5m, 2h, 1d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("--since {text:?}: unit must be s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

/// What one node's stream said.
enum Message {
    Flow(Box<Flow>),
    /// The node's recorded flows are all sent.
    End,
    Failed(String),
}

/// Streams `socket`'s flows into `tx`: recorded ones, then `End`, then
/// (following) live ones.
fn stream_node(
    node: String,
    socket: PathBuf,
    filter: FlowFilter,
    follow: bool,
    tx: mpsc::Sender<Message>,
) {
    let request = Request::Flows { filter, follow };
    let mut ended = false;
    let result = api::stream(
        &socket,
        &request,
        Duration::from_secs(5),
        None,
        |response| {
            let message = match response {
                Response::Flow { flow } => Message::Flow(flow),
                Response::FlowsEnd { .. } => {
                    ended = true;
                    Message::End
                }
                Response::Error { message, .. } => Message::Failed(format!("{node}: {message}")),
                other => Message::Failed(format!("{node}: unexpected answer {other:?}")),
            };
            tx.send(message).is_ok() && (follow || !ended)
        },
    );
    if let Err(e) = result {
        let _ = tx.send(Message::Failed(format!(
            "{node} ({}): {e}",
            socket.display()
        )));
    }
    if !ended {
        let _ = tx.send(Message::End);
    }
}

/// Observes the agents at `sockets` (node name, socket); returns whether
/// every node answered.
pub fn observe(sockets: &[(String, PathBuf)], args: &ObserveArgs) -> anyhow::Result<bool> {
    let filter = args.filter()?;
    let (tx, rx) = mpsc::channel();
    for (node, socket) in sockets {
        let (node, socket, filter, tx) = (node.clone(), socket.clone(), filter.clone(), tx.clone());
        let follow = args.follow;
        std::thread::spawn(move || stream_node(node, socket, filter, follow, tx));
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    if args.output == crate::Output::Text {
        writeln!(out, "{}", header())?;
    }
    // Recorded flows: gathered from every node, merged in time order.
    let mut recorded = Vec::new();
    let mut pending = sockets.len();
    let mut ok = true;
    while pending > 0 {
        match rx.recv() {
            Ok(Message::Flow(flow)) => recorded.push(*flow),
            Ok(Message::End) => pending -= 1,
            Ok(Message::Failed(e)) => {
                eprintln!("error: {e}");
                ok = false;
            }
            Err(_) => break,
        }
    }
    recorded.sort_by_key(|f| f.time_unix_ns);
    for flow in filter.select(&recorded) {
        print_flow(&mut out, flow, args.output)?;
    }
    out.flush()?;
    if !args.follow {
        return Ok(ok);
    }
    // Live flows, as they come from any node.
    for message in rx {
        match message {
            Message::Flow(flow) => {
                print_flow(&mut out, &flow, args.output)?;
                out.flush()?;
            }
            Message::End => {}
            Message::Failed(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    Ok(ok)
}

/// The one agent of this host.
pub fn observe_node(socket: &Path, args: &ObserveArgs) -> anyhow::Result<bool> {
    observe(&[("agent".into(), socket.to_owned())], args)
}

fn header() -> String {
    format!(
        "{:<15} {:<7} {:<28} {:<28} {:<10} {:<10} {:<8} {}",
        "TIME", "NODE", "SOURCE", "DESTINATION", "PROTO", "VERDICT", "DIR", "REASON / POLICY"
    )
}

fn endpoint(end: &sluice_common::observe::FlowEnd) -> String {
    if end.ip.is_unspecified() {
        // A frame the datapath could not read as IPv4.
        "-".into()
    } else if end.port == 0 {
        end.name()
    } else {
        format!("{}:{}", end.name(), end.port)
    }
}

/// One line for people: time of day, node, ends, protocol, verdict,
/// direction, and the drop reason or the policies that selected the pod.
pub fn text_line(flow: &Flow) -> String {
    let time = flow.time.get(11..26).unwrap_or(&flow.time);
    let mut destination = endpoint(&flow.destination);
    if let Some(service) = &flow.service {
        destination = format!("{} -> {destination}", endpoint(service));
    }
    let decided = match flow.direction.as_str() {
        "ingress" => flow.ingress.as_ref(),
        _ => flow.egress.as_ref(),
    };
    let policies = decided
        .filter(|d| !d.policies.is_empty())
        .map(|d| format!("policies {}", d.policies.join(",")));
    let why = match (&flow.reason, policies) {
        (Some(reason), Some(p)) => format!("{reason} ({p})"),
        (Some(reason), None) => reason.clone(),
        (None, Some(p)) => p,
        (None, None) => String::new(),
    };
    format!(
        "{:<15} {:<7} {:<28} {:<28} {:<10} {:<10} {:<8} {}",
        time,
        flow.node,
        endpoint(&flow.source),
        destination,
        flow.protocol,
        flow.verdict.name(),
        flow.direction,
        why
    )
    .trim_end()
    .to_owned()
}

fn print_flow(
    out: &mut impl std::io::Write,
    flow: &Flow,
    output: crate::Output,
) -> anyhow::Result<()> {
    match output {
        crate::Output::Text => writeln!(out, "{}", text_line(flow))?,
        crate::Output::Json => writeln!(out, "{}", serde_json::to_string(flow)?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_pods_parse_or_say_why_not() {
        assert_eq!(parse_duration("30s").expect("30s"), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").expect("5m"), Duration::from_secs(300));
        assert_eq!(parse_duration("2").expect("2"), Duration::from_secs(2));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("m").is_err());
        let args = |pod: &str| ObserveArgs {
            pod: Some(pod.into()),
            namespace: None,
            verdict: None,
            protocol: None,
            port: None,
            since: None,
            last: None,
            follow: false,
            output: crate::Output::Text,
        };
        assert_eq!(
            args("x/a").filter().expect("filter").pod,
            Some(("x".into(), "a".into()))
        );
        assert!(args("xa").filter().is_err());
        assert!(args("/a").filter().is_err());
    }
}
