//! The prefilter's drop rate: a sender blasts small UDP packets from a
//! denied CIDR at a node's underlay as fast as one CPU can (ready-made
//! frames through a packet socket), and the same
//! deny list drops them in turn at XDP (native, then generic), at TC
//! ingress (the object's `prefilter_tc`, the same lookup) and in
//! iptables' raw table (`PREROUTING -s CIDR -j DROP`). Alternatives are
//! interleaved over the runs (A B C D A B C D ...) so the machine's drift
//! hits all alike; drops are read from the dataplane's counters and
//! iptables' rule counter, sends from the sender's own count.
//!
//! The "node" is a namespace of its own with a veth `eth0` like a lab
//! node's underlay, the programs loaded from the agent's object over a
//! private pin directory; the sender is pinned to CPU 0, where (veth being
//! synchronous) the receive side and its drop run too: a cheaper drop
//! leaves more of that CPU to sending, so drops/s is the comparison.

use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use aya::programs::{tc::TcAttachOptions, LinkOrder, TcAttachType, XdpMode};
use ipnet::Ipv4Net;
use sluice_agent::kernel::counters;
use sluice_common::{programs, reason::Reason};

use super::{
    report::{Better, Section, Table},
    test_run::TestDataplane,
    throughput::{BenchError, BenchOptions},
};
use crate::netns::Netns;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 254, 1);
const SENDER_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 254, 2);
/// The sender's source, inside the denied CIDR.
const DENIED_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const DENIED: &str = "198.18.0.0/15";
/// Datagrams per sendmmsg call, and their payload.
const BATCH: usize = 64;
pub const PAYLOAD: usize = 18;

/// Where the drop happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropAt {
    XdpNative,
    XdpGeneric,
    Tc,
    IptablesRaw,
}

impl DropAt {
    pub const ALL: [DropAt; 4] = [
        DropAt::XdpNative,
        DropAt::XdpGeneric,
        DropAt::Tc,
        DropAt::IptablesRaw,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropAt::XdpNative => "XDP prefilter, native (driver) mode",
            DropAt::XdpGeneric => "XDP prefilter, generic (skb) mode",
            DropAt::Tc => "TC ingress, same deny list (prefilter_tc)",
            DropAt::IptablesRaw => "iptables -t raw PREROUTING -s CIDR -j DROP",
        }
    }
}

/// One alternative's runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DropRate {
    pub at: DropAt,
    /// Packets dropped per second, one per run.
    pub drops: Vec<f64>,
    /// Packets the sender got out per second, one per run.
    pub sent: Vec<f64>,
}

/// The report's section: drops per second at each drop point.
pub fn section(options: &BenchOptions) -> Result<Section, BenchError> {
    let rates = run(options)?;
    let mut drops = Table::new(
        "prefilter-drops",
        "Drops of a denied source CIDR",
        "Mpps",
        Better::Higher,
    )
    .floor(DropAt::IptablesRaw.name());
    // What the sender got out: a drop point it could not keep up with
    // shows as drops below the sends.
    let mut sent = Table::new(
        "prefilter-sent",
        "Frames the sender got out meanwhile",
        "Mpps",
        Better::Higher,
    );
    for r in &rates {
        drops.push(r.at.name(), r.drops.iter().map(|d| d / 1e6).collect());
        sent.push(r.at.name(), r.sent.iter().map(|s| s / 1e6).collect());
    }
    Ok(Section {
        heading: "XDP prefilter".into(),
        text: format!(
            "{PAYLOAD}-byte UDP from a denied CIDR sent into a veth underlay by a packet socket \
             pinned to CPU 0 (the drop runs there too, veth being synchronous), {} s a run, {} \
             runs a drop point in turns. On veth every frame is an skb already, so native XDP \
             gains nothing here; the skb-free win needs a NIC driver.",
            options.seconds, options.runs
        ),
        tables: vec![drops, sent],
    })
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

fn failed(what: &str) -> impl FnOnce(String) -> BenchError + '_ {
    move |e| BenchError::Failed(format!("{what}: {e}"))
}

/// Runs every alternative `options.runs` times, interleaved, for
/// `options.seconds` each; the namespaces, programs and the iptables rule
/// go on every exit path.
pub fn run(options: &BenchOptions) -> Result<Vec<DropRate>, BenchError> {
    let node = Netns::create(&format!("{}-pfnode", options.name)).map_err(io("creating netns"))?;
    let sender =
        Netns::create(&format!("{}-pfsend", options.name)).map_err(io("creating netns"))?;
    let ip = |ns: &Netns, args: &str| ns.ip(args).map_err(|e| BenchError::Failed(e.to_string()));
    ip(
        &node,
        &format!(
            "link add eth0 type veth peer name eth0 netns {}",
            sender.name()
        ),
    )?;
    let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    ip(&node, &format!("link set eth0 address {}", mac(NODE_MAC)))?;
    ip(
        &sender,
        &format!("link set eth0 address {}", mac(SENDER_MAC)),
    )?;
    ip(&node, &format!("addr add {NODE_IP}/24 dev eth0"))?;
    ip(&sender, &format!("addr add {SENDER_IP}/24 dev eth0"))?;
    for ns in [&node, &sender] {
        ip(ns, "link set eth0 up")?;
        ip(ns, "link set lo up")?;
    }
    // The object is loaded anywhere; its programs attach by ifindex, which
    // means something only inside the node's namespace.
    let mut bpf =
        TestDataplane::load("bench-prefilter").map_err(|e| BenchError::Failed(e.to_string()))?;
    let denied: Ipv4Net = DENIED.parse().expect("literal CIDR");
    bpf.set_deny_list(&[denied])
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    bpf.dataplane()
        .program(programs::PREFILTER_TC)
        .and_then(|p| {
            p.load()
                .map_err(|e| sluice_agent::kernel::bpf::DataplaneError::Program {
                    name: programs::PREFILTER_TC,
                    source: e,
                })
        })
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let ifindex = node
        .run_in(|| nix::net::if_::if_nametoindex("eth0"))
        .map_err(io("entering the node netns"))?
        .map_err(|e| BenchError::Failed(format!("eth0 in the node netns: {e}")))?;
    let mut rates: Vec<DropRate> = DropAt::ALL
        .iter()
        .map(|at| DropRate {
            at: *at,
            drops: vec![],
            sent: vec![],
        })
        .collect();
    let seconds = Duration::from_secs(options.seconds.max(1).into());
    for _ in 0..options.runs.max(1) {
        for rate in &mut rates {
            let (drops, sent) = measure(&node, &sender, &mut bpf, ifindex, rate.at, seconds)?;
            rate.drops.push(drops);
            rate.sent.push(sent);
        }
    }
    Ok(rates)
}

/// One run with the drop at `at`: (drops/s, sent/s).
fn measure(
    node: &Netns,
    sender: &Netns,
    bpf: &mut TestDataplane,
    ifindex: u32,
    at: DropAt,
    seconds: Duration,
) -> Result<(f64, f64), BenchError> {
    let pin_dir = bpf.pin_dir().to_owned();
    let counted = || -> Result<u64, BenchError> {
        let rows = counters::read(&pin_dir).map_err(|e| BenchError::Failed(e.to_string()))?;
        Ok(counters::packets(&rows, Reason::DropDeniedSource))
    };
    let attached = node
        .run_in(|| attach(bpf, ifindex, at, node))
        .map_err(io("entering the node netns"))??;
    let before = match at {
        DropAt::IptablesRaw => iptables_drops(node)?,
        _ => counted()?,
    };
    let blast = blast(sender, seconds);
    let after = match at {
        DropAt::IptablesRaw => iptables_drops(node),
        _ => counted(),
    };
    let detached = node
        .run_in(|| detach(bpf, attached, node))
        .map_err(io("entering the node netns"))?;
    let (sent, elapsed) = blast?;
    let after = after?;
    detached?;
    let secs = elapsed.as_secs_f64();
    Ok(((after - before) as f64 / secs, sent as f64 / secs))
}

/// What to undo after a run.
enum Attached {
    Xdp(aya::programs::xdp::XdpLinkId),
    Tc(aya::programs::tc::SchedClassifierLinkId),
    Iptables,
}

const IPTABLES_RULE: [&str; 6] = ["PREROUTING", "-s", DENIED, "-j", "DROP", "-w"];

fn attach(
    bpf: &mut TestDataplane,
    ifindex: u32,
    at: DropAt,
    node: &Netns,
) -> Result<Attached, BenchError> {
    let program_error = |e: aya::programs::ProgramError| BenchError::Failed(e.to_string());
    let dataplane = bpf.dataplane();
    match at {
        DropAt::XdpNative | DropAt::XdpGeneric => {
            let mode = if at == DropAt::XdpNative {
                XdpMode::Driver
            } else {
                XdpMode::Skb
            };
            let prog = dataplane
                .prefilter_program()
                .map_err(|e| BenchError::Failed(e.to_string()))?;
            Ok(Attached::Xdp(
                prog.attach_to_if_index(ifindex, mode)
                    .map_err(program_error)?,
            ))
        }
        DropAt::Tc => {
            let prog = dataplane
                .program(programs::PREFILTER_TC)
                .map_err(|e| BenchError::Failed(e.to_string()))?;
            Ok(Attached::Tc(
                prog.attach_with_options(
                    "eth0",
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(program_error)?,
            ))
        }
        DropAt::IptablesRaw => {
            iptables(node, "-A")?;
            Ok(Attached::Iptables)
        }
    }
}

fn detach(bpf: &mut TestDataplane, attached: Attached, node: &Netns) -> Result<(), BenchError> {
    let program_error = |e: aya::programs::ProgramError| BenchError::Failed(e.to_string());
    let dataplane = bpf.dataplane();
    match attached {
        Attached::Xdp(id) => dataplane
            .prefilter_program()
            .map_err(|e| BenchError::Failed(e.to_string()))?
            .detach(id)
            .map_err(program_error),
        Attached::Tc(id) => dataplane
            .program(programs::PREFILTER_TC)
            .map_err(|e| BenchError::Failed(e.to_string()))?
            .detach(id)
            .map_err(program_error),
        Attached::Iptables => iptables(node, "-D"),
    }
}

fn iptables(node: &Netns, op: &str) -> Result<(), BenchError> {
    let out = node
        .command("iptables")
        .map_err(io("iptables"))?
        .args(["-t", "raw", op])
        .args(IPTABLES_RULE)
        .output()
        .map_err(io("running iptables (is it installed?)"))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "iptables -t raw {op}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The packets the raw table's rule dropped so far.
fn iptables_drops(node: &Netns) -> Result<u64, BenchError> {
    let out = node
        .command("iptables")
        .map_err(io("iptables"))?
        .args(["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n", "-w"])
        .output()
        .map_err(io("running iptables"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    rule_packets(&text, DENIED).ok_or_else(|| {
        BenchError::Failed(format!(
            "no rule for {DENIED} in iptables -t raw -L:\n{text}"
        ))
    })
}

/// The packet count of the DROP rule for `source` in `iptables -L -v -x
/// -n` output (columns: pkts bytes target prot opt in out source ...).
fn rule_packets(listing: &str, source: &str) -> Option<u64> {
    listing.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() >= 8 && fields[2] == "DROP" && fields[7] == source)
            .then(|| fields[0].parse().ok())
            .flatten()
    })
}

/// The node's underlay MAC, set so the sender's frames are addressed to
/// it (the stack drops frames for other hosts before iptables sees them).
const NODE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xfe, 0x01];
const SENDER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xfe, 0x02];

/// One UDP datagram from the denied source to the node, as a frame.
fn denied_frame() -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + PAYLOAD);
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&9u16.to_be_bytes());
    udp.extend_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&[0u8; PAYLOAD]);
    let mut frame = super::frame::ipv4(DENIED_SOURCE, NODE_IP, 17, 64, 0, &udp);
    frame[0..6].copy_from_slice(&NODE_MAC);
    frame[6..12].copy_from_slice(&SENDER_MAC);
    frame
}

/// Sends the denied frame for `seconds` with sendmmsg on a packet socket
/// (no UDP/IP stack on the sending side, no qdisc, so the sender is cheap
/// next to the receive path measured), on a thread in the sender's
/// namespace pinned to CPU 0: (frames sent, time).
fn blast(sender: &Netns, seconds: Duration) -> Result<(u64, Duration), BenchError> {
    sender
        .run(move || -> Result<(u64, Duration), String> {
            pin_to_cpu0()?;
            let sock = PacketSocket::bound_to("eth0")?;
            let mut frame = denied_frame();
            let mut iov: Vec<libc::iovec> = (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: frame.as_mut_ptr().cast(),
                    iov_len: frame.len(),
                })
                .collect();
            // SAFETY: mmsghdr is plain data; zero is a valid empty header.
            let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
                .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
                .collect();
            for (msg, iov) in msgs.iter_mut().zip(iov.iter_mut()) {
                msg.msg_hdr.msg_iov = iov;
                msg.msg_hdr.msg_iovlen = 1;
            }
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < seconds {
                // SAFETY: `msgs` holds BATCH headers whose iovecs point at
                // `frame`, all alive for the call; the socket is open and
                // bound, so no address is needed.
                let n = unsafe {
                    libc::sendmmsg(sock.0.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0)
                };
                // A full queue (ENOBUFS) is a lost batch, not the end.
                if n > 0 {
                    sent += n as u64;
                }
            }
            Ok((sent, start.elapsed()))
        })
        .map_err(io("entering the sender netns"))?
        .map_err(failed("sending"))
}

/// An AF_PACKET raw socket bound to one device, sending only.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn bound_to(ifname: &str) -> Result<Self, String> {
        use std::os::fd::FromRawFd as _;
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|e| format!("{ifname}: {e}"))?;
        let last = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(last("opening a packet socket"));
        }
        // SAFETY: a fresh fd we own.
        let sock = Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        // SAFETY: a zeroed sockaddr_ll with family and ifindex set is a
        // valid address for bind(2); sizes match the types.
        unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            if libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                return Err(last("binding the packet socket"));
            }
            let one: libc::c_int = 1;
            if libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            ) != 0
            {
                return Err(last("PACKET_QDISC_BYPASS"));
            }
        }
        Ok(sock)
    }
}

fn pin_to_cpu0() -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays in bounds
    // for CPU 0; sched_setaffinity(0) is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "pinning the sender to CPU 0: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_tables_rule_counter_is_read_from_the_listing() {
        let listing = "\
Chain PREROUTING (policy ACCEPT 12 packets, 1000 bytes)
    pkts      bytes target     prot opt in     out     source               destination
       7      420 ACCEPT     all  --  *      *       10.0.0.0/8           0.0.0.0/0
 1234567 80246855 DROP       all  --  *      *       198.18.0.0/15        0.0.0.0/0
";
        assert_eq!(rule_packets(listing, DENIED), Some(1_234_567));
        assert_eq!(rule_packets(listing, "192.0.2.0/24"), None);
    }
}
