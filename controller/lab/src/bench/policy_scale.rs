//! What rules that do not match cost the traffic that is allowed: pinned
//! TCP RR and CRR from a client to a server at 0, 1,000 and 10,000 rules
//! that do not match the client, with one rule that allows it.
//!
//! - **sluice**, a one-node lab with two server pods, each selected by a
//!   NetworkPolicy of its own: one with N `ipBlock` peers (N distinct /32s
//!   outside the cluster), one with N `podSelector` peers (N label values no
//!   pod has), each plus a rule allowing the client by its label;
//! - **bridge + iptables chain**, Debian's bridge CNI with
//!   `bridge-nf-call-iptables=1`: the node's `FORWARD` sends packets to the
//!   server into a chain of N `-s CIDR -j ACCEPT` that do not match, then
//!   the client's accept, then a drop. There is no ESTABLISHED accept before
//!   it, so every packet towards the server walks all N rules, the first
//!   of a connection and every later one alike; the answers pass after
//!   the two `-d` tests of `FORWARD`;
//! - **bridge + ipset**, on the same bridge, a second server whose chain
//!   matches one `hash:net` set of the same N CIDRs in one rule.
//!
//! All four are up at once and measured in turns at each rule count; the
//! counts follow one another (the maps and tables hold one count at a time).

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    process::Stdio,
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::{
    bridge_cni::BridgeNode,
    report::{self, Better, Section, Table},
    rr::{self, EchoServers, Pinning, Proto, CPU, MESSAGE, UNPINNED_PORT},
    setups::{self, SluiceNode, NAMESPACE},
    stats::Summary,
    throughput::{BenchError, BenchOptions},
    turns::{in_turns_noting as in_turns, values},
};
use crate::netns::Netns;

/// The implementations, in the tables' order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    SluiceIpBlock,
    SluiceSelector,
    IptablesChain,
    Ipset,
}

impl Impl {
    pub const ALL: [Impl; 4] = [
        Impl::SluiceIpBlock,
        Impl::SluiceSelector,
        Impl::IptablesChain,
        Impl::Ipset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Impl::SluiceIpBlock => "sluice, ipBlock peers",
            Impl::SluiceSelector => "sluice, podSelector peers",
            Impl::IptablesChain => "bridge + iptables chain",
            Impl::Ipset => "bridge + ipset",
        }
    }

    /// The server pod's name (and, in the lab, its `app` label).
    fn server(self) -> &'static str {
        match self {
            Impl::SluiceIpBlock => "scale-ipblock",
            Impl::SluiceSelector => "scale-selector",
            Impl::IptablesChain => "scale-chain",
            Impl::Ipset => "scale-set",
        }
    }
}

/// The bridge setup's pod addresses (inside its node namespace only).
const BRIDGE_SUBNET: &str = "10.23.0.0/24";
/// Where the rules' CIDRs come from: the benchmarking range, which holds
/// neither the lab's nor the bridge's pods.
const RULE_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const MAX_RULES: usize = 1 << 17;
/// The iptables chains and the ipset.
const CHAIN: &str = "SCALE-CHAIN";
const SET_CHAIN: &str = "SCALE-SET";
const SET: &str = "scale";
/// How long the lab's agent may take to have a policy in its maps.
const CONVERGE: Duration = Duration::from_secs(120);
/// A probe that a policy drops fails after this long.
const PROBE: Duration = Duration::from_millis(300);

/// `n` distinct /32s from 198.18.0.0/15, none of them a pod's.
pub fn nonmatching_cidrs(n: usize) -> Vec<Ipv4Net> {
    assert!(n <= MAX_RULES, "198.18.0.0/15 holds {MAX_RULES} addresses");
    let base = u32::from(RULE_BASE);
    (0..n as u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(base + i), 32).expect("a /32"))
        .collect()
}

/// The NetworkPolicy selecting `impl_`'s server pod (label `app`): `n`
/// peers that match nothing (ipBlock /32s or podSelector label values no
/// pod has), a rule allowing pods labelled `role=client`, and, when
/// `marker`, one allowing `role=control` on [`UNPINNED_PORT`] — which
/// flips from one rule count to the next, so a probe tells that the new
/// version is in the maps and not still the previous one.
pub fn policy(impl_: Impl, n: usize, marker: bool) -> Value {
    let peers: Vec<Value> = match impl_ {
        Impl::SluiceIpBlock => nonmatching_cidrs(n)
            .iter()
            .map(|cidr| json!({"ipBlock": {"cidr": cidr.to_string()}}))
            .collect(),
        _ => (0..n)
            .map(|i| json!({"podSelector": {"matchLabels": {"scale": format!("v{i:05}")}}}))
            .collect(),
    };
    let mut ingress = Vec::new();
    if !peers.is_empty() {
        ingress.push(json!({"from": peers}));
    }
    ingress.push(json!({"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}));
    if marker {
        ingress.push(json!({
            "from": [{"podSelector": {"matchLabels": {"role": "control"}}}],
            "ports": [{"protocol": "TCP", "port": UNPINNED_PORT}],
        }));
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": impl_.server(), "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": impl_.server()}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    })
}

/// `iptables-restore` input for the bridge node's filter table: packets to
/// `chain_server` walk `n` non-matching rules before the client's accept;
/// packets to `set_server` look the same CIDRs up in [`SET`] in one rule.
/// Both chains drop the rest (the control pod).
pub fn iptables_rules(
    n: usize,
    chain_server: Ipv4Addr,
    set_server: Ipv4Addr,
    client: Ipv4Addr,
) -> String {
    let mut out = String::with_capacity(64 * (n + 16));
    out.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    out.push_str(&format!(":{CHAIN} - [0:0]\n:{SET_CHAIN} - [0:0]\n"));
    out.push_str(&format!("-A FORWARD -d {chain_server}/32 -j {CHAIN}\n"));
    out.push_str(&format!("-A FORWARD -d {set_server}/32 -j {SET_CHAIN}\n"));
    for cidr in nonmatching_cidrs(n) {
        out.push_str(&format!("-A {CHAIN} -s {cidr} -j ACCEPT\n"));
    }
    out.push_str(&format!(
        "-A {CHAIN} -s {client}/32 -j ACCEPT\n-A {CHAIN} -j DROP\n"
    ));
    out.push_str(&format!(
        "-A {SET_CHAIN} -m set --match-set {SET} src -j ACCEPT\n"
    ));
    out.push_str(&format!(
        "-A {SET_CHAIN} -s {client}/32 -j ACCEPT\n-A {SET_CHAIN} -j DROP\n"
    ));
    out.push_str("COMMIT\n");
    out
}

/// `ipset restore` input: [`SET`] (made if missing) holding exactly the
/// `n` CIDRs.
pub fn ipset_entries(n: usize) -> String {
    let mut out =
        format!("create {SET} hash:net family inet maxelem {MAX_RULES} -exist\nflush {SET}\n");
    for cidr in nonmatching_cidrs(n) {
        out.push_str(&format!("add {SET} {cidr}\n"));
    }
    out
}

/// One alternative: a client, a server with the bench's echo servers, and
/// a control pod the rules deny.
struct Path {
    impl_: Impl,
    client: Netns,
    control: Netns,
    server_ip: Ipv4Addr,
    _echo: EchoServers,
}

impl Path {
    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.server_ip, port))
    }

    /// Whether the rules just written are in force: the client gets
    /// through, the control does not, except on the marker's port exactly
    /// when `marker` (sluice's paths; see [`policy`]) is on.
    fn converged(&self, marker: Option<bool>) -> bool {
        let reaches = |from: &Netns, port| rr::probe(from, self.addr(port), PROBE).is_ok();
        reaches(&self.client, rr::PORT)
            && !reaches(&self.control, rr::PORT)
            && marker.is_none_or(|on| reaches(&self.control, UNPINNED_PORT) == on)
    }
}

/// One measurement of every implementation at one rule count.
struct Measured {
    rules: usize,
    /// In [`Impl::ALL`]'s order, each run's rate.
    rr: Vec<Vec<f64>>,
    crr: Vec<Vec<f64>>,
    notes: Vec<String>,
    /// Seconds from writing the policies to both being in force.
    converged_s: f64,
}

/// The report's section.
pub fn section(options: &BenchOptions) -> Result<Section, BenchError> {
    let sizes: &[usize] = if options.quick {
        &[0, 1_000]
    } else {
        &[0, 1_000, 10_000]
    };
    let bridge_prefix = format!("{}-ps-br", options.name);
    setups::remove_leftovers(&bridge_prefix);
    let measured = measure(options, &bridge_prefix, "ps-lab", sizes);
    // The lab removed its own directory; this one held it (and may hold
    // other suites' labs: then it stays).
    let _ = std::fs::remove_dir(&options.dir);
    let measured = measured?;
    let period = rr::period(options);
    let tables = vec![
        table(
            "policy-scale-rr",
            "Policy scale, TCP RR to an allowed server, pinned",
            "transactions/s",
            &measured,
            |m| &m.rr,
        ),
        table(
            "policy-scale-crr",
            "Policy scale, new TCP connections (CRR) to an allowed server, pinned",
            "connections/s",
            &measured,
            |m| &m.crr,
        ),
    ];
    let converged: Vec<String> = measured
        .iter()
        .map(|m| {
            format!(
                "{} rules {:.1} s",
                report::thousands(m.rules as i64),
                m.converged_s
            )
        })
        .collect();
    Ok(Section {
        heading: "Policy scale".into(),
        text: format!(
            "Pinned ({MESSAGE} B, client and server on CPU {CPU}, {:.1} s a run, {} runs in turns \
             at each rule count) TCP RR and CRR from a client to a server at N rules that do not \
             match the client, plus one that allows it. **sluice**: a one-node lab, two servers, \
             one selected by a NetworkPolicy with N `ipBlock` peers (distinct /32s outside the \
             cluster), the other by one with N `podSelector` peers (label values no pod has). \
             **bridge + iptables chain**: Debian's bridge CNI (`bridge-nf-call-iptables=1`), \
             `FORWARD` jumping packets to the server into a chain of N `-s CIDR -j ACCEPT` that \
             do not match, then the client's accept, then a drop, with no ESTABLISHED accept \
             before it: every packet towards the server walks all N rules (the answers pass \
             after two `-d` tests). **bridge + ipset**: a second server on that bridge whose \
             chain matches the same N CIDRs in one `hash:net` set. Rule counts follow one \
             another; the four implementations are up at once. × floor is a row's median over \
             sluice's (ipBlock) at 0 rules; each implementation's own ratio (its median at N \
             rules over its median at 0) is in the note under each table. Policies in the \
             lab's maps (the client through, a control pod refused, a marker rule flipped) \
             within: {}.",
            period.as_secs_f64(),
            options.runs,
            converged.join(", ")
        ),
        tables,
    })
}

fn table(
    id: &str,
    title: &str,
    unit: &str,
    measured: &[Measured],
    of: impl Fn(&Measured) -> &Vec<Vec<f64>>,
) -> Table {
    let row = |impl_: Impl, rules: usize| {
        format!(
            "{}, {} rules",
            impl_.name(),
            report::thousands(rules as i64)
        )
    };
    let first = measured.first().map_or(0, |m| m.rules);
    let mut t = Table::new(id, title, unit, Better::Higher)
        .floor(&row(Impl::SluiceIpBlock, first))
        .target("flat (±5%) from 0 to 10,000 rules while iptables degrades");
    for (i, impl_) in Impl::ALL.iter().enumerate() {
        for m in measured {
            t.push(row(*impl_, m.rules), of(m)[i].clone());
        }
    }
    // Each implementation against itself: what the target is about.
    if let Some(base) = measured.first() {
        for m in &measured[1..] {
            let own: Vec<String> = Impl::ALL
                .iter()
                .enumerate()
                .map(|(i, impl_)| {
                    let ratio = Summary::of(&of(m)[i]).median / Summary::of(&of(base)[i]).median;
                    format!("{} {}", impl_.name(), report::number(ratio))
                })
                .collect();
            t = t.note(format!(
                "Each at {} rules over itself at {} rules: {}.",
                report::thousands(m.rules as i64),
                report::thousands(base.rules as i64),
                own.join("; ")
            ));
        }
    }
    for note in measured.iter().flat_map(|m| &m.notes) {
        t = t.note(note.clone());
    }
    t
}

fn measure(
    options: &BenchOptions,
    bridge_prefix: &str,
    lab_tag: &str,
    sizes: &[usize],
) -> Result<Vec<Measured>, BenchError> {
    // Declared before the paths, so dropped after them: the echo servers
    // stop while their namespaces still exist.
    let mut bridge = BridgeNode::create(bridge_prefix, BRIDGE_SUBNET.parse().expect("a CIDR"))?;
    let pod = |p: &super::bridge_cni::BridgePod| (p.ns.name().to_owned(), p.ip);
    let (bridge_client, bridge_client_ip) = pod(bridge.add_pod("client")?);
    let (bridge_control, _) = pod(bridge.add_pod("control")?);
    let (chain_server, chain_ip) = pod(bridge.add_pod(Impl::IptablesChain.server())?);
    let (set_server, set_ip) = pod(bridge.add_pod(Impl::Ipset.server())?);
    let mut sluice = SluiceNode::up(options, lab_tag)?;
    let (lab_client, _) = sluice.pod("client", &[("role", "client")])?;
    let (lab_control, _) = sluice.pod("control", &[("role", "control")])?;
    let mut paths = Vec::new();
    for impl_ in Impl::ALL {
        let (client, control, server, server_ip) = match impl_ {
            Impl::SluiceIpBlock | Impl::SluiceSelector => {
                let (ns, ip) = sluice.pod(impl_.server(), &[("app", impl_.server())])?;
                (
                    lab_client.name(),
                    lab_control.name(),
                    ns.name().to_owned(),
                    ip,
                )
            }
            Impl::IptablesChain => (
                bridge_client.as_str(),
                bridge_control.as_str(),
                chain_server.clone(),
                chain_ip,
            ),
            Impl::Ipset => (
                bridge_client.as_str(),
                bridge_control.as_str(),
                set_server.clone(),
                set_ip,
            ),
        };
        paths.push(Path {
            impl_,
            client: Netns::existing(client),
            control: Netns::existing(control),
            server_ip,
            _echo: EchoServers::start(Netns::existing(&server))?,
        });
    }

    let node = Netns::existing(bridge.node().name());
    let period = rr::period(options);
    let mut out = Vec::new();
    for (index, &rules) in sizes.iter().enumerate() {
        let marker = index % 2 == 0;
        restore(&node, "ipset", &["restore"], &ipset_entries(rules))?;
        let iptables = iptables_rules(rules, chain_ip, set_ip, bridge_client_ip);
        restore(&node, "iptables-restore", &[], &iptables)?;
        let started = Instant::now();
        apply_policies(&mut sluice, &options.dir, rules, marker)?;
        loop {
            let pending: Vec<&str> = paths
                .iter()
                .filter(|p| {
                    let marker = matches!(p.impl_, Impl::SluiceIpBlock | Impl::SluiceSelector)
                        .then_some(marker);
                    !p.converged(marker)
                })
                .map(|p| p.impl_.name())
                .collect();
            if pending.is_empty() {
                break;
            }
            if started.elapsed() > CONVERGE {
                return Err(BenchError::Failed(format!(
                    "{rules} rules not in force after {} s: {}",
                    CONVERGE.as_secs(),
                    pending.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let converged_s = started.elapsed().as_secs_f64();
        let (rr, mut notes) = in_turns(options.runs, &paths, |p| {
            rr::rr(
                &p.client,
                p.addr(rr::PORT),
                period,
                Proto::Tcp,
                Pinning::Pinned,
            )
            .map_err(|e| BenchError::Failed(format!("{}, {rules} rules: {e}", p.impl_.name())))
        });
        let (crr, crr_notes) = in_turns(options.runs, &paths, |p| {
            rr::crr(&p.client, p.addr(rr::PORT), period, Pinning::Pinned)
                .map_err(|e| BenchError::Failed(format!("{}, {rules} rules: {e}", p.impl_.name())))
        });
        notes.extend(crr_notes);
        out.push(Measured {
            rules,
            rr: values(&rr, |r| r.rate),
            crr: values(&crr, |c| *c),
            notes,
            converged_s,
        });
    }
    drop(paths);
    drop(sluice);
    drop(bridge);
    Ok(out)
}

/// Writes both sluice policies at `rules` peers and applies them to the
/// lab, as `kubectl apply -f` would.
fn apply_policies(
    sluice: &mut SluiceNode,
    dir: &std::path::Path,
    rules: usize,
    marker: bool,
) -> Result<(), BenchError> {
    // JSON is YAML; one document each.
    let documents: Vec<String> = [Impl::SluiceIpBlock, Impl::SluiceSelector]
        .iter()
        .map(|i| policy(*i, rules, marker).to_string())
        .collect();
    setups::apply_yaml(
        sluice.lab(),
        dir,
        "policies.yaml",
        &documents.join("\n---\n"),
    )
}

/// Runs `program args` in `ns` with `input` on stdin (`ipset restore`,
/// `iptables-restore`: thousands of rules in one call).
fn restore(ns: &Netns, program: &str, args: &[&str], input: &str) -> Result<(), BenchError> {
    let io = |source| BenchError::Io {
        what: format!("running {program} in {}", ns.name()),
        source,
    };
    let mut child = ns
        .command(program)
        .map_err(io)?
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Failed(format!(
            "{program} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_cidrs_are_distinct_and_hold_no_pod() {
        let cidrs = nonmatching_cidrs(10_000);
        let distinct: std::collections::HashSet<_> = cidrs.iter().collect();
        assert_eq!(distinct.len(), 10_000);
        for pod in [
            Ipv4Addr::new(10, 244, 1, 2),
            "10.23.0.2".parse().unwrap(),
            Ipv4Addr::new(172, 30, 0, 11),
        ] {
            assert!(cidrs.iter().all(|c| !c.contains(&pod)), "{pod}");
        }
        assert_eq!(cidrs[0].to_string(), "198.18.0.0/32");
        assert_eq!(cidrs[256].to_string(), "198.18.1.0/32");
    }

    #[test]
    fn policies_hold_n_peers_and_the_clients_rule() {
        let p = policy(Impl::SluiceIpBlock, 3, false);
        let ingress = p["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 2);
        assert_eq!(ingress[0]["from"].as_array().unwrap().len(), 3);
        assert_eq!(ingress[0]["from"][2]["ipBlock"]["cidr"], "198.18.0.2/32");
        assert_eq!(
            ingress[1]["from"][0]["podSelector"]["matchLabels"]["role"],
            "client"
        );
        assert_eq!(
            p["spec"]["podSelector"]["matchLabels"]["app"],
            "scale-ipblock"
        );

        let s = policy(Impl::SluiceSelector, 2, true);
        let ingress = s["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 3);
        assert_eq!(
            ingress[0]["from"][1]["podSelector"]["matchLabels"]["scale"],
            "v00001"
        );
        assert_eq!(ingress[2]["ports"][0]["port"], UNPINNED_PORT);

        // No peers: no empty `from` (which would allow everyone).
        let empty = policy(Impl::SluiceIpBlock, 0, false);
        assert_eq!(empty["spec"]["ingress"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_iptables_chain_walks_n_rules_before_the_client() {
        let client = Ipv4Addr::new(10, 23, 0, 2);
        let rules = iptables_rules(
            3,
            "10.23.0.4".parse().unwrap(),
            "10.23.0.5".parse().unwrap(),
            client,
        );
        let chain: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A SCALE-CHAIN"))
            .collect();
        assert_eq!(
            chain,
            [
                "-A SCALE-CHAIN -s 198.18.0.0/32 -j ACCEPT",
                "-A SCALE-CHAIN -s 198.18.0.1/32 -j ACCEPT",
                "-A SCALE-CHAIN -s 198.18.0.2/32 -j ACCEPT",
                "-A SCALE-CHAIN -s 10.23.0.2/32 -j ACCEPT",
                "-A SCALE-CHAIN -j DROP",
            ]
        );
        assert!(rules.contains("-A FORWARD -d 10.23.0.4/32 -j SCALE-CHAIN\n"));
        assert!(rules.contains("-A SCALE-SET -m set --match-set scale src -j ACCEPT\n"));
        assert!(
            !rules.contains("ESTABLISHED"),
            "nothing may shortcut the walk"
        );
        assert!(rules.ends_with("COMMIT\n"));
    }

    #[test]
    fn the_ipset_holds_exactly_n_cidrs() {
        let set = ipset_entries(2);
        assert_eq!(
            set,
            "create scale hash:net family inet maxelem 131072 -exist\nflush scale\n\
             add scale 198.18.0.0/32\nadd scale 198.18.0.1/32\n"
        );
    }
}
