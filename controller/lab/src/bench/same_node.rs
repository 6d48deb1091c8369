//! Pod to pod on one node: sluice next to the plainest thing the kernel
//! does (two namespaces on one veth pair, the floor) and to the usual CNI
//! (Debian's `bridge` plugin with `host-local`, as a runtime invokes it).
//!
//! All three are up at once, each a client and a server namespace on this
//! host, and every figure is measured in turns (A B C A B C …) so the
//! machine's drift hits all alike. Throughput is iperf3 (1 and 4 TCP
//! streams); request/response is [`super::rr`]: TCP and UDP RR pinned
//! (client and server on one CPU) and unpinned, TCP RR's latency
//! percentiles, and new TCP connections per second.

use std::{net::Ipv4Addr, net::SocketAddr, time::Duration};

use super::{
    bridge_cni::BridgeNode,
    report::{Better, Section, Table},
    rr::{self, EchoServers, Pinning, Proto, CPU, MESSAGE},
    setups::{self, SluiceNode, VethPair, VETH_SERVER_IP},
    throughput::{iperf_streams, BenchError, BenchOptions},
    turns::{in_turns_noting as in_turns, values},
};
use crate::netns::Netns;
use sluice_agent::config::PodAttachment;

pub const RAW_VETH: &str = "raw veth";
pub const BRIDGE: &str = "bridge CNI";
pub const SLUICE: &str = "sluice";
pub const SLUICE_TC: &str = "sluice, podAttachment tc";
const TARGET: &str = "≥ 0.95 of raw veth and ≥ bridge CNI";
const TARGET_LATENCY: &str = "≤ raw veth's / 0.95 and ≤ bridge CNI's";
/// The bridge setup's pod addresses (inside its node namespace only).
const BRIDGE_SUBNET: &str = "10.22.0.0/24";

/// One setup's client and server, with the bench's echo servers running
/// in the server.
struct Path {
    name: &'static str,
    client: Netns,
    server: Netns,
    server_ip: Ipv4Addr,
    _echo: EchoServers,
}

impl Path {
    fn new(
        name: &'static str,
        client: &Netns,
        server: &Netns,
        server_ip: Ipv4Addr,
    ) -> Result<Self, BenchError> {
        Ok(Self {
            name,
            client: Netns::existing(client.name()),
            server: Netns::existing(server.name()),
            server_ip,
            _echo: EchoServers::start(Netns::existing(server.name()))?,
        })
    }

    fn addr(&self, pinning: Pinning) -> SocketAddr {
        SocketAddr::from((self.server_ip, pinning.port()))
    }
}

/// The report's section.
pub fn section(options: &BenchOptions) -> Result<Section, BenchError> {
    let prefix = format!("{}-sn", options.name);
    let veth_prefix = format!("{prefix}-veth");
    let bridge_prefix = format!("{prefix}-br");
    setups::remove_leftovers(&veth_prefix);
    setups::remove_leftovers(&bridge_prefix);
    let result = measure(options, &veth_prefix, &bridge_prefix, "sn-lab");
    // The lab removed its own directory; this one held it (and may hold
    // other suites' labs: then it stays).
    let _ = std::fs::remove_dir(&options.dir);
    result
}

fn measure(
    options: &BenchOptions,
    veth_prefix: &str,
    bridge_prefix: &str,
    lab_tag: &str,
) -> Result<Section, BenchError> {
    // Declared before the paths, so dropped after them: the echo servers
    // stop while their namespaces still exist.
    let veth = VethPair::create(veth_prefix)?;
    let mut bridge = BridgeNode::create(bridge_prefix, BRIDGE_SUBNET.parse().expect("a CIDR"))?;
    let bridge_client = bridge.add_pod("client")?.ns.name().to_owned();
    let bridge_server = bridge.add_pod("server")?;
    let (bridge_server, bridge_server_ip) = (bridge_server.ns.name().to_owned(), bridge_server.ip);
    let mut sluice = SluiceNode::up(options, lab_tag)?;
    let (sluice_client, _) = sluice.pod("client", &[])?;
    let (sluice_server, sluice_server_ip) = sluice.pod("server", &[])?;
    let mut sluice_tc = SluiceNode::up_with(options, &format!("{lab_tag}-tc"), PodAttachment::Tc)?;
    let (tc_client, _) = sluice_tc.pod("client", &[])?;
    let (tc_server, tc_server_ip) = sluice_tc.pod("server", &[])?;
    let paths = [
        Path::new(RAW_VETH, &veth.client, &veth.server, VETH_SERVER_IP)?,
        Path::new(
            BRIDGE,
            &Netns::existing(&bridge_client),
            &Netns::existing(&bridge_server),
            bridge_server_ip,
        )?,
        Path::new(SLUICE, &sluice_client, &sluice_server, sluice_server_ip)?,
        Path::new(SLUICE_TC, &tc_client, &tc_server, tc_server_ip)?,
    ];
    for path in &paths {
        rr::probe(
            &path.client,
            path.addr(Pinning::Pinned),
            Duration::from_secs(5),
        )
        .map_err(|e| {
            BenchError::Failed(format!("{}: the server does not answer: {e}", path.name))
        })?;
    }

    let rr_period = rr::period(options);
    let runs = options.runs;
    let mut tables = Vec::new();
    for (streams, id, title) in [
        (1, "same-node-tcp-1", "Same node, TCP, 1 stream"),
        (4, "same-node-tcp-4", "Same node, TCP, 4 streams"),
    ] {
        let (results, notes) = in_turns(runs, &paths, |p| {
            let server_ip = p.server_ip.to_string();
            iperf_streams(&p.client, &p.server, &server_ip, options.seconds, streams)
        });
        let samples = values(&results, |gbits| *gbits);
        tables.push(table(
            id,
            title,
            "Gbit/s",
            Better::Higher,
            &paths,
            samples,
            notes,
        ));
    }
    for (proto, pinning, id, title) in [
        (
            Proto::Tcp,
            Pinning::Pinned,
            "same-node-tcp-rr-pinned",
            "Same node, TCP RR, pinned",
        ),
        (
            Proto::Tcp,
            Pinning::Unpinned,
            "same-node-tcp-rr-unpinned",
            "Same node, TCP RR, unpinned",
        ),
        (
            Proto::Udp,
            Pinning::Pinned,
            "same-node-udp-rr-pinned",
            "Same node, UDP RR, pinned",
        ),
        (
            Proto::Udp,
            Pinning::Unpinned,
            "same-node-udp-rr-unpinned",
            "Same node, UDP RR, unpinned",
        ),
    ] {
        let (results, notes) = in_turns(runs, &paths, |p| {
            rr::rr(&p.client, p.addr(pinning), rr_period, proto, pinning)
        });
        let rates = values(&results, |r| r.rate);
        tables.push(table(
            id,
            title,
            "transactions/s",
            Better::Higher,
            &paths,
            rates,
            notes.clone(),
        ));
        if (proto, pinning) == (Proto::Tcp, Pinning::Pinned) {
            // Each run's percentile; the table shows their median and range.
            for (p, id, title) in [
                (
                    50.0,
                    "same-node-tcp-rr-p50",
                    "Same node, TCP RR latency p50, pinned",
                ),
                (
                    99.0,
                    "same-node-tcp-rr-p99",
                    "Same node, TCP RR latency p99, pinned",
                ),
            ] {
                let latency = values(&results, |r| r.percentile(p));
                tables.push(table(
                    id,
                    title,
                    "µs",
                    Better::Lower,
                    &paths,
                    latency,
                    notes.clone(),
                ));
            }
        }
    }
    let (results, notes) = in_turns(runs, &paths, |p| {
        rr::crr(
            &p.client,
            p.addr(Pinning::Pinned),
            rr_period,
            Pinning::Pinned,
        )
    });
    tables.push(table(
        "same-node-crr-pinned",
        "Same node, new TCP connections (CRR), pinned",
        "connections/s",
        Better::Higher,
        &paths,
        values(&results, |c| *c),
        notes,
    ));
    drop(paths);
    drop(sluice);
    drop(bridge);
    drop(veth);
    Ok(Section {
        heading: "Same node".into(),
        text: format!(
            "Pod to pod on one node, four setups up at once, each a client and a server \
             namespace: **{RAW_VETH}** (two namespaces on one veth pair, nothing else: the \
             floor), **{BRIDGE}** (Debian's `bridge` plugin with `host-local`, invoked as a \
             runtime does, both pods on one Linux bridge in a node namespace with \
             `bridge-nf-call-iptables=1` as Kubernetes nodes have it, no iptables rules), \
             **{SLUICE}** (a one-node lab, two pods, the pod programs on TCX, the default) and \
             **{SLUICE_TC}** (the same with them as clsact filters). Figures in turns ({} runs each): TCP \
             throughput by iperf3 ({} s a run, 1 and 4 streams), and {MESSAGE} B \
             request/response ({:.1} s a run): RR on one connection or UDP socket, pinned \
             (client and server on CPU {CPU}) and unpinned, its per-transaction latency \
             percentiles (p50, p99, pinned), and CRR (connect, one transaction, close with a \
             reset) pinned.",
            options.runs,
            options.seconds,
            rr_period.as_secs_f64()
        ),
        tables,
    })
}

fn table(
    id: &str,
    title: &str,
    unit: &str,
    better: Better,
    paths: &[Path],
    samples: Vec<Vec<f64>>,
    notes: Vec<String>,
) -> Table {
    let target = match better {
        Better::Higher => TARGET,
        Better::Lower => TARGET_LATENCY,
    };
    let mut t = Table::new(id, title, unit, better)
        .floor(RAW_VETH)
        .target(target);
    for (path, samples) in paths.iter().zip(samples) {
        t.push(path.name, samples);
    }
    for note in notes {
        t = t.note(note);
    }
    t
}
