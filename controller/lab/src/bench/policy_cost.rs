//! Per-packet cost of policy enforcement with 0 and with N rules, measured
//! by the kernel itself (BPF_PROG_TEST_RUN, many repeats, average ns per
//! run) on the real `from_container` program: lookups are hash/LPM only,
//! so the cost must not grow with the rule count.
//!
//! Two packets from local pod A to pod B elsewhere (so the program leaves
//! the packet unmodified and the kernel can rerun it as is), A isolated for
//! egress:
//! - a TCP SYN that B's policy denies: never enters conntrack, so every
//!   run does the full evaluation (all identity × protocol lookups miss);
//!   A's policy denies it;
//! - a TCP packet of an allowed, established flow: a conntrack hit;
//! - the same packet with no policy at all (no pod isolated): forwarded
//!   without conntrack, the path most pod-to-pod traffic takes.
//! - the same flow's packet as a datagram's first fragment (conntrack hit,
//!   then its ports and verdict kept for the later fragments) and as a
//!   later fragment (its first fragment's ports looked up, then the
//!   conntrack hit): the fragment tracking's cost, next to the whole
//!   packet's.
//!
//! The N rules allow A to reach other identities on many ports; none
//! matches B, as in a cluster with many policies.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use ipnet::Ipv4Net;
use sluice_agent::policy::{ports::PortPrefix, PlacedPolicy};
use sluice_common::{direction::Direction, endpoint::EndpointInfo, ipcache::RemoteInfo, programs};

use super::{
    frame,
    report::{Better, Section, Table},
    test_run::{TestDataplane, TestRunError},
};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
const ID_A: u32 = 300;
const ID_B: u32 = 301;
const ENDPOINT_A: u32 = 1;
const TCP: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error(transparent)]
    TestRun(#[from] TestRunError),
    #[error("{0}")]
    Setup(String),
}

/// Average cost per packet of each case.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub rules: usize,
    pub denied_new_flow: Duration,
    pub established: Duration,
    /// The established flow's packet when no policy isolates either pod.
    pub established_open: Duration,
    pub first_fragment: Duration,
    pub later_fragment: Duration,
}

fn one_port(port: u16) -> Option<PortPrefix> {
    Some(PortPrefix { port, bits: 16 })
}

/// Fills the maps through the agent's writers: [`populate_open`], then A
/// isolated for egress, allowed to B on port 8080 only, plus `rules` rules
/// for other identities.
fn populate(bpf: &mut TestDataplane, rules: usize) -> Result<(), CostError> {
    populate_open(bpf)?;
    let mut policy = PlacedPolicy::default();
    policy.isolate(ENDPOINT_A, Direction::Egress);
    // B is named by a rule (the 8080 one), so the denied SYN to port 80
    // takes the longest path: mark hit, then every rule shape.
    policy.allow(ENDPOINT_A, Direction::Egress, ID_B, TCP, one_port(8080));
    for i in 0..rules {
        // 100 ports for each of rules/100 other identities, on single
        // ports as most rules are: the exact-port hash.
        let identity = 1000 + (i / 100) as u32;
        let port = 1 + (i % 100) as u16;
        policy.allow(ENDPOINT_A, Direction::Egress, identity, TCP, one_port(port));
    }
    bpf.apply_policy(&policy)?;
    Ok(())
}

/// A local (test runs see ifindex 1, A's veth) and B known by identity
/// only: no policy at all.
fn populate_open(bpf: &mut TestDataplane) -> Result<(), CostError> {
    bpf.add_endpoint(
        POD_A,
        EndpointInfo {
            id: ENDPOINT_A,
            ifindex: 1,
            pod_mac: [2, 0, 0, 0, 0, 1],
            host_mac: [2, 0, 0, 0, 1, 1],
        },
    )?;
    let ipcache: BTreeMap<Ipv4Net, RemoteInfo> = [(POD_A, ID_A), (POD_B, ID_B)]
        .into_iter()
        .map(|(ip, identity)| {
            let info = RemoteInfo {
                identity,
                tunnel_endpoint: [0; 4],
                flags: 0,
                _pad: 0,
            };
            (Ipv4Net::from(ip), info)
        })
        .collect();
    bpf.set_ipcache(&ipcache)?;
    Ok(())
}

/// A TCP segment from A to B (no options, checksum left zero: the program
/// does not verify it).
fn tcp(dport: u16, flags: u8) -> Vec<u8> {
    tcp_fragment(dport, flags, 0)
}

/// The same, with these IPv4 flags and offset (`frame::ipv4` gives every
/// packet one IP id, so fragments belong to one datagram).
fn tcp_fragment(dport: u16, flags: u8, frag_off: u16) -> Vec<u8> {
    let mut l4 = 40000u16.to_be_bytes().to_vec();
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    frame::ipv4(POD_A, POD_B, 6, 64, frag_off, &l4)
}

/// IPv4 "more fragments".
const MF: u16 = 0x2000;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// Measures both cases with `rules` extra rules, `repeat` runs each.
pub fn measure(rules: usize, repeat: u32) -> Result<Cost, CostError> {
    let mut bpf = TestDataplane::load("bench")?;
    populate(&mut bpf, rules)?;
    let program = programs::FROM_CONTAINER;
    let (verdict, denied) = bpf.time(program, &tcp(80, 0x02), repeat)?;
    if verdict != TC_ACT_SHOT {
        return Err(CostError::Setup(format!(
            "the denied SYN got verdict {verdict}, not drop"
        )));
    }
    // The first run opens the flow; the timed runs hit conntrack.
    bpf.time(program, &tcp(8080, 0x02), 1)?;
    let (verdict, established) = bpf.time(program, &tcp(8080, 0x10), repeat)?;
    if verdict != TC_ACT_OK {
        return Err(CostError::Setup(format!(
            "the established packet got verdict {verdict}, not pass"
        )));
    }
    let (verdict, first_fragment) = bpf.time(program, &tcp_fragment(8080, 0x10, MF), repeat)?;
    if verdict != TC_ACT_OK {
        return Err(CostError::Setup(format!(
            "the first fragment got verdict {verdict}, not pass"
        )));
    }
    // At offset 3 (24 bytes), past the TCP header, in the datagram just
    // recorded.
    let later = frame::ipv4(POD_A, POD_B, 6, 64, 3, &[0; 16]);
    let (verdict, later_fragment) = bpf.time(program, &later, repeat)?;
    if verdict != TC_ACT_OK {
        return Err(CostError::Setup(format!(
            "the later fragment got verdict {verdict}, not pass"
        )));
    }
    // The same flow with no policy anywhere (the rules do not apply).
    drop(bpf);
    let mut open = TestDataplane::load("bench")?;
    populate_open(&mut open)?;
    open.time(program, &tcp(8080, 0x02), 1)?;
    let (verdict, established_open) = open.time(program, &tcp(8080, 0x10), repeat)?;
    if verdict != TC_ACT_OK {
        return Err(CostError::Setup(format!(
            "the unisolated established packet got verdict {verdict}, not pass"
        )));
    }
    Ok(Cost {
        rules,
        denied_new_flow: denied,
        established,
        established_open,
        first_fragment,
        later_fragment,
    })
}

/// Runs of the program between drains of the flow event ring: fewer than
/// it holds (4096+ events), so every event of a run is written, none lost.
const EVENT_CHUNK: u32 = 2_000;

/// The denied new flow's cost with flow events off and on (a listener:
/// the switch on, a rate no bucket refuses, the ring drained between
/// chunks of runs, as the agent drains it), the two in turns on one
/// loaded object: (off, on) per run.
pub fn measure_emission(runs: u32, repeat: u32) -> Result<Vec<(Duration, Duration)>, CostError> {
    let mut bpf = TestDataplane::load("bench")?;
    populate(&mut bpf, 0)?;
    let program = programs::FROM_CONTAINER;
    let syn = tcp(80, 0x02);
    let mut out = Vec::new();
    for _ in 0..runs.max(1) {
        bpf.set_flow_events(false, 1)?;
        let (_, off) = bpf.time(program, &syn, repeat)?;
        bpf.set_flow_events(true, 10_000_000)?;
        let (mut total, mut done, mut events) = (Duration::ZERO, 0u32, 0usize);
        while done < repeat {
            let n = EVENT_CHUNK.min(repeat - done);
            let (_, each) = bpf.time(program, &syn, n)?;
            total += each * n;
            done += n;
            events += bpf.take_flow_events().len();
        }
        if events != repeat as usize {
            return Err(CostError::Setup(format!(
                "{events} flow events for {repeat} denied packets"
            )));
        }
        out.push((off, total / repeat));
    }
    bpf.set_flow_events(false, 1)?;
    Ok(out)
}

/// Flow events the agent's reading path takes per second: events written
/// by the program into the ring (a chunk it holds), then read, decoded,
/// named after the pods and recorded by the agent's own code (the
/// reader's epoll wake-ups aside), one rate per run.
pub fn measure_agent_rate(runs: u32) -> Result<Vec<f64>, CostError> {
    use sluice_agent::{
        datastore::{parse_documents, ClusterState, Event},
        flows::{Directory, FlowHub, FlowsConfig},
        metrics::Metrics,
        policy::IdentityAllocator,
    };
    let mut bpf = TestDataplane::load("bench")?;
    populate(&mut bpf, 0)?;
    let mut state = ClusterState::default();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{app: a}}}}\nspec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: {POD_A}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: b, namespace: y, labels: {{app: b}}}}\nspec: {{nodeName: node2, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: {POD_B}}}\n"
    );
    for resource in parse_documents(&yaml) {
        let resource = resource.map_err(|e| CostError::Setup(e.to_string()))?;
        state.apply(Event::Apply(resource));
    }
    let hub = FlowHub::new("node1", FlowsConfig::default(), Metrics::new());
    hub.set_directory(Directory::build(
        &state,
        &BTreeMap::new(),
        &IdentityAllocator::new(),
    ));
    bpf.set_flow_events(true, 10_000_000)?;
    let syn = tcp(80, 0x02);
    let mut rates = Vec::new();
    for _ in 0..runs.max(1) {
        let (mut events, mut took) = (0usize, Duration::ZERO);
        for _ in 0..25 {
            bpf.time(programs::FROM_CONTAINER, &syn, EVENT_CHUNK)?;
            let started = std::time::Instant::now();
            for raw in bpf.take_flow_events() {
                let raw = raw.map_err(|e| CostError::Setup(e.to_string()))?;
                hub.ingest(&raw);
                events += 1;
            }
            took += started.elapsed();
        }
        rates.push(events as f64 / took.as_secs_f64());
    }
    bpf.set_flow_events(false, 1)?;
    Ok(rates)
}

/// The table of [`measure_emission`].
fn emission_table(runs: u32, repeat: u32) -> Result<Table, CostError> {
    let measured = measure_emission(runs, repeat)?;
    let ns = |on: bool| {
        measured
            .iter()
            .map(|(off, with)| if on { with } else { off }.as_nanos() as f64)
            .collect()
    };
    let off = "flow events off (nobody listens)";
    Ok(Table::new(
        "policy-cost-flow-events",
        "Per packet, new flow denied: flow event emission off and on",
        "ns",
        Better::Lower,
    )
    .floor(off)
    .target("off: one array lookup more than before events existed")
    .row(off, ns(false))
    .row(
        "flow events on (a listener; every packet's event written)",
        ns(true),
    ))
}

/// The report's section: each packet kind's cost at every rule count, the
/// rule counts measured in turns, `repeat` runs of the program a measure.
pub fn section(rule_counts: &[usize], runs: u32, repeat: u32) -> Result<Section, CostError> {
    let costs = super::turns::in_turns(runs, rule_counts, |rules| measure(*rules, repeat))?;
    type Of = fn(&Cost) -> Duration;
    let kinds: [(&str, &str, Of); 4] = [
        (
            "policy-cost-denied",
            "new flow, denied (full lookup path)",
            |c| c.denied_new_flow,
        ),
        ("policy-cost-established", "established flow", |c| {
            c.established
        }),
        (
            "policy-cost-first-fragment",
            "first fragment of an established flow",
            |c| c.first_fragment,
        ),
        (
            "policy-cost-later-fragment",
            "later fragment of an established flow",
            |c| c.later_fragment,
        ),
    ];
    let floor = format!("{} rules", rule_counts.first().copied().unwrap_or(0));
    let mut tables: Vec<Table> = kinds
        .iter()
        .map(|(id, title, of)| {
            let mut t = Table::new(id, &format!("Per packet, {title}"), "ns", Better::Lower)
                .floor(&floor)
                .target("flat (±5%) from 0 to 10,000 rules");
            for (rules, runs) in rule_counts.iter().zip(&costs) {
                let ns = runs.iter().map(|c| of(c).as_nanos() as f64).collect();
                t.push(format!("{rules} rules"), ns);
            }
            t
        })
        .collect();
    // Conntrack only where policy needs it: at the first rule count, the
    // unisolated flow next to the isolated one.
    if let Some(first) = costs.first() {
        let ns = |of: Of| first.iter().map(|c| of(c).as_nanos() as f64).collect();
        let open = "no policy isolates either pod (no conntrack)";
        tables.push(
            Table::new(
                "policy-cost-established-open",
                "Per packet, established flow: unisolated pods next to an isolated source",
                "ns",
                Better::Lower,
            )
            .floor(open)
            .target("below the isolated (conntrack) path")
            .row(open, ns(|c| c.established_open))
            .row(
                "source isolated for egress (conntrack hit)",
                ns(|c| c.established),
            ),
        );
    }
    tables.push(emission_table(runs, repeat)?);
    let rates = measure_agent_rate(runs)?;
    tables.push(
        Table::new(
            "flow-events-agent-rate",
            "Flow events the agent reads, decodes, names and records (one thread)",
            "events/s",
            Better::Higher,
        )
        .row("from the ring into the history", rates),
    );
    Ok(Section {
        heading: "Per-packet cost (BPF_PROG_TEST_RUN)".into(),
        text: format!(
            "`from_container` run by the kernel on a crafted packet {repeat} times a measure \
             (its average), {runs} measures a rule count in turns. Non-matching rules allow the \
             source pod other identities on many ports."
        ),
        tables,
    })
}
