//! The eBPF programs' decisions, one crafted packet at a time, with
//! BPF_PROG_TEST_RUN: fill the maps through the agent's own writers, run
//! every entry point with the device the packet is on (and arrived on) set
//! in the test-run context, check verdict, output bytes and counters.
//! Deterministic; nothing is sent anywhere.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{HashMap, Map, MapData};
use ipnet::Ipv4Net;
use sluice_agent::{
    datastore::{parse_documents, ClusterState, Event},
    flows::RawFlow,
    kernel::{bpf::MapSizes, counters},
    policy::{ports::PortPrefix, PlacedPolicy},
    services::{self, ServiceIds},
};
use sluice_common::{
    config::{routing, DataplaneConfig, ROUTED_MARK},
    conntrack::{ct_flags, CtEntry, CtKey},
    counters::verdict::Verdict,
    direction::Direction,
    endpoint::EndpointInfo,
    identity,
    ipcache::{flags, RemoteInfo},
    maps,
    observe::FlowVerdict,
    policy::ANY_IDENTITY,
    programs,
};
use sluice_lab::bench::{
    frame::{checksum, ipv4, l4_checksum_ok, with_l4_checksum},
    test_run::{SkbContext, TestDataplane},
};
use sluice_sys::netns::Entered;
use sluice_tests::{require_root, unique, Netns, Reason};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 3);
/// The node's gateway address: the `host` identity.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 1);
/// A pod on another node, behind `REMOTE_NODE`.
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 5);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const A_POD_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const A_HOST_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const B_POD_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x01];
const B_HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];
const A_ENDPOINT_ID: u32 = 1;
const B_ENDPOINT_ID: u32 = 42;
const ID_A: u32 = 300;
const ID_B: u32 = 301;

/// The programs loaded over the agent's writers, run from inside a test
/// netns that holds the devices the packets are on: pod A's and pod B's
/// host veths, the VXLAN stand-in and the underlay. Everything is removed
/// on drop, the thread's namespace restored first.
struct Unit {
    bpf: TestDataplane,
    policy: PlacedPolicy,
    a_if: u32,
    b_if: u32,
    tunnel_if: u32,
    underlay_if: u32,
    entered: Option<Entered>,
    _ns: Netns,
}

impl Unit {
    fn new() -> Self {
        Self::sized(MapSizes::default())
    }

    fn sized(sizes: MapSizes) -> Self {
        let ns = Netns::create(&unique("unit")).expect("test netns");
        for link in [
            "link add lxca type veth peer name lxca-p",
            "link add lxcb type veth peer name lxcb-p",
            "link add tun0 type veth peer name tun0-p",
            "link add ul0 type veth peer name ul0-p",
            "link set ul0 up",
            "link set ul0-p up",
            "link set lxca up",
            "link set lxca-p up",
            "addr add 172.31.0.1/24 dev ul0",
            "route add 10.60.0.0/24 via 172.31.0.2 dev ul0",
        ] {
            ns.ip(link).expect(link);
        }
        let sysctl = ns
            .command("sysctl")
            .and_then(|mut c| c.args(["-qw", "net.ipv4.conf.all.forwarding=1"]).status())
            .expect("sysctl");
        assert!(sysctl.success(), "enabling forwarding in the test netns");
        let entered = ns.enter().expect("entering the test netns");
        let index = |name: &str| nix::net::if_::if_nametoindex(name).expect(name);
        let (a_if, b_if) = (index("lxca"), index("lxcb"));
        let (tunnel_if, underlay_if) = (index("tun0"), index("ul0"));
        let mut bpf = TestDataplane::load_sized("unit", sizes).expect("loading the eBPF object");
        for (ip, id, ifindex, pod_mac, host_mac) in [
            (POD_A, A_ENDPOINT_ID, a_if, A_POD_MAC, A_HOST_MAC),
            (POD_B, B_ENDPOINT_ID, b_if, B_POD_MAC, B_HOST_MAC),
        ] {
            let info = EndpointInfo {
                id,
                ifindex,
                pod_mac,
                host_mac,
            };
            bpf.add_endpoint(ip, info).expect("endpoint");
        }
        let remote = |identity, flags| RemoteInfo {
            identity,
            tunnel_endpoint: REMOTE_NODE.octets(),
            flags,
            _pad: 0,
        };
        let local = |identity| RemoteInfo {
            identity,
            tunnel_endpoint: [0; 4],
            flags: 0,
            _pad: 0,
        };
        let ipcache: BTreeMap<Ipv4Net, RemoteInfo> = [
            (Ipv4Net::from(POD_A), local(ID_A)),
            (Ipv4Net::from(POD_B), local(ID_B)),
            (Ipv4Net::from(GATEWAY), local(identity::HOST)),
            (
                "10.60.0.0/24".parse().expect("cidr"),
                remote(identity::UNKNOWN, flags::REMOTE_POD_CIDR),
            ),
            (
                Ipv4Net::from(REMOTE_NODE),
                remote(identity::REMOTE_NODE, flags::NODE),
            ),
        ]
        .into_iter()
        .collect();
        bpf.set_ipcache(&ipcache).expect("ipcache");
        Self {
            bpf,
            policy: PlacedPolicy::default(),
            a_if,
            b_if,
            tunnel_if,
            underlay_if,
            entered: Some(entered),
            _ns: ns,
        }
    }

    /// Runs `program` on `pkt` as if it were on device `ifindex`, having
    /// arrived on `ingress`: (verdict, output packet).
    fn run_on(
        &mut self,
        program: &'static str,
        pkt: &[u8],
        ifindex: u32,
        ingress: u32,
    ) -> (u32, Vec<u8>) {
        let skb = SkbContext {
            ifindex,
            ingress_ifindex: ingress,
        };
        self.bpf
            .run(program, pkt, skb)
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    }

    /// `from_container` on pod A's veth: a packet pod A sent.
    fn sent_by_a(&mut self, pkt: &[u8]) -> u32 {
        let a = self.a_if;
        self.run_on(programs::FROM_CONTAINER, pkt, a, a).0
    }

    /// `from_container` on pod B's veth: a packet pod B sent.
    fn sent_by_b(&mut self, pkt: &[u8]) -> u32 {
        let b = self.b_if;
        self.run_on(programs::FROM_CONTAINER, pkt, b, b).0
    }

    /// Entries conntrack added so far.
    fn ct_inserts(&mut self) -> u64 {
        self.bpf
            .dataplane()
            .inserted(sluice_common::counters::inserts::CONNTRACK)
            .expect("insert count")
    }

    fn counter(&self, reason: Reason) -> u64 {
        let rows = counters::read(self.bpf.pin_dir()).expect("counters");
        counters::packets(&rows, reason)
    }

    fn verdicts(&self, direction: Direction, verdict: Verdict) -> u64 {
        let rows = counters::read_verdicts(self.bpf.pin_dir()).expect("verdicts");
        counters::verdicts(&rows, direction, verdict)
    }

    /// Writes the policy built so far, as the agent's syncer does.
    fn apply(&mut self) {
        self.bpf.apply_policy(&self.policy).expect("policy");
    }

    fn isolate(&mut self, endpoint: u32, direction: Direction) {
        self.policy.isolate(endpoint, direction);
        self.apply();
    }

    /// Isolates pod A for egress, allowing `protocol` to `port` of anyone.
    fn allow_a_egress(&mut self, protocol: u8, port: u16) {
        self.policy.isolate(A_ENDPOINT_ID, Direction::Egress);
        let port = PortPrefix { port, bits: 16 };
        self.policy.allow(
            A_ENDPOINT_ID,
            Direction::Egress,
            ANY_IDENTITY,
            protocol,
            Some(port),
        );
        self.apply();
    }

    /// Isolates pod B for ingress, allowing `protocol` to `port` from
    /// anyone.
    fn allow_b_ingress(&mut self, protocol: u8, port: u16) {
        self.policy.isolate(B_ENDPOINT_ID, Direction::Ingress);
        let port = PortPrefix { port, bits: 16 };
        self.policy.allow(
            B_ENDPOINT_ID,
            Direction::Ingress,
            ANY_IDENTITY,
            protocol,
            Some(port),
        );
        self.apply();
    }

    /// Clears every policy: nothing isolated.
    fn open_everything(&mut self) {
        self.policy = PlacedPolicy::default();
        self.apply();
    }

    /// The conntrack map as the dataplane keeps it.
    fn conntrack(&self) -> HashMap<MapData, CtKey, CtEntry> {
        let path = self.bpf.pin_dir().join(maps::CONNTRACK.name);
        let data = MapData::from_pin(&path).expect("conntrack map");
        HashMap::try_from(Map::LruHashMap(data)).expect("conntrack map type")
    }

    /// The conntrack entry of the flow whose first packet had tuple `key`
    /// (looked up either way round, as the dataplane does), if any.
    fn tracked(&self, key: CtKey) -> Option<CtEntry> {
        self.conntrack().get(&key.normalized().0, 0).ok()
    }

    /// A conntrack entry for the flow whose first packet had tuple `key`,
    /// live and checked at revision 0, as a flow that passed before any
    /// policy change.
    fn track(&mut self, key: CtKey) {
        let (normalized, reversed) = key.normalized();
        let entry = CtEntry {
            expires: u64::MAX,
            revision: 0,
            flags: if reversed { ct_flags::REVERSED } else { 0 },
        };
        self.conntrack()
            .insert(normalized, entry, 0)
            .expect("conntrack insert");
    }

    fn set_routing(&mut self, mode: u32) {
        let config = DataplaneConfig {
            routing: mode,
            tunnel_ifindex: self.tunnel_if,
            netns_cookie: 0,
        };
        self.bpf.set_config(config).expect("config");
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        if let Some(entered) = self.entered.take() {
            if let Err(e) = entered.leave() {
                eprintln!("leaving the test netns: {e}");
            }
        }
    }
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    tcp(sport, dport, 0x02)
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 12, 0, 0, b'h', b'i', b'!', b'\n']);
    u
}

const ICMP_ECHO: [u8; 8] = [8, 0, 0, 0, 0, 1, 0, 1];

fn arp_from_a() -> Vec<u8> {
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&A_POD_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&A_POD_MAC);
    arp.extend_from_slice(&POD_A.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&GATEWAY.octets());
    arp
}

fn ipv6_frame() -> Vec<u8> {
    let mut v6 = vec![0x33, 0x33, 0, 0, 0, 1];
    v6.extend_from_slice(&A_POD_MAC);
    v6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 59, 64]);
    v6.extend_from_slice(&[0; 32]);
    v6
}

/// Checks a delivered packet: MACs as the destination pod's gateway
/// writes them, TTL one less with a valid header checksum, L4 untouched.
fn assert_routed_to(out: &[u8], pkt: &[u8], pod_mac: [u8; 6], host_mac: [u8; 6]) {
    assert_eq!(out.len(), pkt.len());
    assert_eq!(&out[0..6], &pod_mac, "destination MAC is the pod's");
    assert_eq!(&out[6..12], &host_mac, "source MAC is the pod's gateway");
    assert_eq!(out[14 + 8], pkt[14 + 8] - 1, "TTL decremented");
    assert_eq!(checksum(&out[14..34]), 0, "IPv4 header checksum valid");
    assert_eq!(&out[34..], &pkt[34..], "L4 untouched");
}

// from_container: TCX ingress of a pod's host veth.

#[test]
fn local_pod_is_redirected_with_l2_rewritten_and_ttl_decremented() {
    require_root!();
    let mut unit = Unit::new();
    for (proto, l4) in [
        (6, tcp_syn(40000, 80)),
        (17, udp(40000, 53)),
        (1, ICMP_ECHO.to_vec()),
    ] {
        let pkt = ipv4(POD_A, POD_B, proto, 64, 0, &l4);
        let a = unit.a_if;
        let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &pkt, a, a);
        assert_eq!(verdict, TC_ACT_REDIRECT, "proto {proto}");
        assert_routed_to(&out, &pkt, B_POD_MAC, B_HOST_MAC);
    }
    assert_eq!(unit.counter(Reason::ForwardLocal), 3);
}

#[test]
fn unknown_destination_goes_to_the_host_stack() {
    require_root!();
    let mut unit = Unit::new();
    let pkt = ipv4(POD_A, OUTSIDE, 6, 64, 0, &tcp_syn(40000, 443));
    let a = unit.a_if;
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &pkt, a, a);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, pkt, "packets to the stack are not modified");
    assert_eq!(unit.counter(Reason::ToStack), 1);
}

#[test]
fn expiring_ttl_is_left_to_the_stack() {
    require_root!();
    let mut unit = Unit::new();
    let verdict = unit.sent_by_a(&ipv4(POD_A, POD_B, 1, 1, 0, &ICMP_ECHO));
    assert_eq!(verdict, TC_ACT_OK, "the stack sends time-exceeded");
    assert_eq!(unit.counter(Reason::ToStack), 1);
}

/// The source must be the endpoint whose veth the packet came in on: the
/// device is the test-run context's, so each pod's own veth is tried.
#[test]
fn spoofed_sources_are_dropped_and_counted() {
    require_root!();
    let mut unit = Unit::new();
    // Not an endpoint at all.
    let verdict = unit.sent_by_a(&ipv4(OUTSIDE, POD_B, 6, 64, 0, &tcp_syn(1, 80)));
    assert_eq!(verdict, TC_ACT_SHOT);
    // Pod B's address, but arriving on pod A's veth.
    let b_to_a = ipv4(POD_B, POD_A, 17, 64, 0, &udp(1, 53));
    assert_eq!(unit.sent_by_a(&b_to_a), TC_ACT_SHOT);
    assert_eq!(unit.counter(Reason::DropSpoofedSource), 2);
    assert_eq!(unit.counter(Reason::ForwardLocal), 0);
    // The same packet on B's own veth is B's.
    let b = unit.b_if;
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &b_to_a, b, b);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_routed_to(&out, &b_to_a, A_POD_MAC, A_HOST_MAC);
}

#[test]
fn bad_headers_are_dropped_under_the_reason_that_names_them() {
    require_root!();
    let mut unit = Unit::new();
    let good = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    let mut bad_ipv4: Vec<(&str, Vec<u8>)> = Vec::new();
    // (A frame too short for an IPv4 header is refused by BPF_PROG_TEST_RUN
    // itself, so it cannot be crafted here; the namespace tests cover it.)
    let mut long_ihl = good.clone();
    long_ihl[14] = 0x4f;
    bad_ipv4.push(("IHL claims options beyond the packet", long_ihl));
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    bad_ipv4.push(("IHL below 5", bad_ihl));
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    bad_ipv4.push(("IP version 6 in an IPv4 frame", bad_version));
    let mut long_len = good.clone();
    long_len[16..18].copy_from_slice(&200u16.to_be_bytes());
    bad_ipv4.push(("total length beyond the packet", long_len));
    let mut bad_doff = tcp_syn(1, 80);
    bad_doff[12] = 0x40;
    let truncated: Vec<(&str, Vec<u8>)> = vec![
        (
            "TCP header cut short",
            ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(1, 80)[..12]),
        ),
        (
            "TCP data offset below 5",
            ipv4(POD_A, POD_B, 6, 64, 0, &bad_doff),
        ),
        (
            "UDP header cut short",
            ipv4(POD_A, POD_B, 17, 64, 0, &udp(1, 53)[..6]),
        ),
        (
            "ICMP header cut short",
            ipv4(POD_A, POD_B, 1, 64, 0, &ICMP_ECHO[..4]),
        ),
    ];
    let (n_ipv4, n_l4) = (bad_ipv4.len() as u64, truncated.len() as u64);
    for (what, pkt) in bad_ipv4.into_iter().chain(truncated) {
        assert_eq!(unit.sent_by_a(&pkt), TC_ACT_SHOT, "{what}");
    }
    assert_eq!(unit.counter(Reason::DropBadIpv4Header), n_ipv4);
    assert_eq!(unit.counter(Reason::DropTruncatedL4), n_l4);
    assert_eq!(unit.counter(Reason::ForwardLocal), 0);
}

#[test]
fn arp_passes_and_other_l3_is_dropped() {
    require_root!();
    let mut unit = Unit::new();
    assert_eq!(unit.sent_by_a(&arp_from_a()), TC_ACT_OK);
    assert_eq!(unit.sent_by_a(&ipv6_frame()), TC_ACT_SHOT);
    assert_eq!(unit.counter(Reason::DropUnsupportedL3), 1);
    assert_eq!(unit.counter(Reason::ToStack), 1, "ARP goes to the stack");
}

/// A pod on another node: through the tunnel in tunnel mode (TTL
/// decremented, redirected to the VXLAN device), along the FIB's route in
/// native mode, to the stack while no routing is set up.
#[test]
fn remote_pods_are_reached_through_the_tunnel_or_the_fib() {
    require_root!();
    let mut unit = Unit::new();
    let pkt = ipv4(POD_A, REMOTE_POD, 6, 64, 0, &tcp_syn(40000, 80));
    assert_eq!(unit.sent_by_a(&pkt), TC_ACT_OK, "no routing set up yet");
    assert_eq!(unit.counter(Reason::ToStack), 1);

    unit.set_routing(routing::TUNNEL);
    let a = unit.a_if;
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &pkt, a, a);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(checksum(&out[14..34]), 0);
    assert_eq!(unit.counter(Reason::ForwardTunnel), 1);

    unit.set_routing(routing::NATIVE);
    assert_eq!(unit.sent_by_a(&pkt), TC_ACT_REDIRECT, "the FIB has a route");
    assert_eq!(unit.counter(Reason::ForwardNative), 1);
    let unrouted = ipv4(POD_A, OUTSIDE, 6, 64, 0, &tcp_syn(40000, 80));
    assert_eq!(unit.sent_by_a(&unrouted), TC_ACT_OK, "not a pod CIDR");
    assert_eq!(unit.counter(Reason::ToStack), 2);
}

/// ICMP `type`/`code` quoting `quoted` (an IPv4 packet without Ethernet),
/// as a host reports an error about it.
/// A full conntrack table evicts, and the agent can tell how many: the
/// datapath counts the flows it adds, the table holds the rest.
#[test]
fn conntrack_evictions_are_what_was_added_and_is_no_longer_held() {
    require_root!();
    let mut unit = Unit::sized(MapSizes {
        conntrack: MapSizes::MIN,
        ..MapSizes::default()
    });
    unit.allow_b_ingress(17, 53);
    let flows = 500u32;
    for sport in 0..flows {
        let pkt = ipv4(POD_A, POD_B, 17, 64, 0, &udp(20000 + sport as u16, 53));
        assert_eq!(unit.sent_by_a(&pkt), TC_ACT_REDIRECT);
    }
    // A flow's later packets and a reply add nothing.
    let again = ipv4(POD_A, POD_B, 17, 64, 0, &udp(20000 + flows as u16 - 1, 53));
    assert_eq!(unit.sent_by_a(&again), TC_ACT_REDIRECT);
    let dataplane = unit.bpf.dataplane();
    let inserted = dataplane
        .inserted(sluice_common::counters::inserts::CONNTRACK)
        .expect("insert count");
    let held = dataplane
        .occupancy()
        .into_iter()
        .find(|(map, _)| *map == maps::CONNTRACK.name)
        .map(|(_, n)| n as u64)
        .expect("conntrack occupancy");
    assert_eq!(inserted, u64::from(flows));
    assert!(
        held <= u64::from(MapSizes::MIN),
        "{held} in a table of {}",
        MapSizes::MIN
    );
    let metrics = sluice_agent::metrics::Metrics::new();
    metrics.count_evictions(inserted, held);
    assert!(
        metrics.render().contains(&format!(
            "sluice_conntrack_evictions_total {}",
            inserted - held
        )),
        "{inserted} added, {held} held"
    );
    assert!(inserted - held >= u64::from(flows - MapSizes::MIN));
}

fn icmp_error(icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    // RFC 792: the offending IP header and the first 8 bytes of its data.
    icmp.extend_from_slice(&quoted[..28]);
    let csum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    icmp
}

fn udp_key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> CtKey {
    CtKey {
        saddr: src.octets(),
        daddr: dst.octets(),
        sport,
        dport,
        protocol: 17,
        _pad: [0; 3],
    }
}

/// ICMP errors about a tracked flow pass an isolated pod (here B, whose
/// own UDP to A hits a closed port); errors about unknown flows, or quoting
/// a flow of a third party, are new ICMP and denied.
#[test]
fn icmp_errors_of_tracked_flows_pass_isolation() {
    require_root!();
    let mut unit = Unit::new();
    unit.isolate(B_ENDPOINT_ID, Direction::Ingress);
    // B's datagram to A, as A's port unreachable quotes it.
    let b_to_a = ipv4(POD_B, POD_A, 17, 64, 0, &udp(5000, 53))[14..].to_vec();
    let unreachable = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 3, &b_to_a));

    assert_eq!(
        unit.sent_by_a(&unreachable),
        TC_ACT_SHOT,
        "error about an untracked flow"
    );
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 1);

    unit.track(udp_key(POD_B, POD_A, 5000, 53));
    assert_eq!(
        unit.sent_by_a(&unreachable),
        TC_ACT_REDIRECT,
        "error about B's own flow"
    );
    // Time exceeded and fragmentation needed relate the same way.
    for (t, c) in [(11, 0), (3, 4)] {
        let pkt = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(t, c, &b_to_a));
        assert_eq!(unit.sent_by_a(&pkt), TC_ACT_REDIRECT, "ICMP {t}/{c}");
    }

    // The same flow quoted in reverse (an error about a reply) relates too.
    let a_to_b = ipv4(POD_A, POD_B, 17, 64, 0, &udp(6000, 7))[14..].to_vec();
    let about_reply = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 3, &a_to_b));
    assert_eq!(unit.sent_by_a(&about_reply), TC_ACT_SHOT, "before tracking");
    unit.track(udp_key(POD_B, POD_A, 7, 6000));
    // Quoting A's packet to B: the error goes to B but A sent the quoted
    // packet, so it does not travel back to the quoted sender.
    assert_eq!(
        unit.sent_by_a(&about_reply),
        TC_ACT_SHOT,
        "quoted sender is not B"
    );

    // A third party's flow, quoted in an error sent to B.
    unit.track(udp_key(OUTSIDE, POD_A, 5000, 53));
    let third = ipv4(OUTSIDE, POD_A, 17, 64, 0, &udp(5000, 53))[14..].to_vec();
    let smuggled = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 3, &third));
    assert_eq!(unit.sent_by_a(&smuggled), TC_ACT_SHOT, "third party's flow");
    // B's own flow to someone else, "reported" by A: A is neither the
    // flow's peer nor a node on its path.
    unit.track(udp_key(POD_B, OUTSIDE, 5001, 53));
    let b_out = ipv4(POD_B, OUTSIDE, 17, 64, 0, &udp(5001, 53))[14..].to_vec();
    let forged = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 4, &b_out));
    assert_eq!(
        unit.sent_by_a(&forged),
        TC_ACT_SHOT,
        "error forged by a bystander"
    );
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 5);
    // An error whose quote runs past the packet's end relates to nothing.
    let cut = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 3, &b_to_a)[..32]);
    assert_eq!(unit.sent_by_a(&cut), TC_ACT_SHOT, "quote cut short");
}

/// Verdicts count policy decisions: an allowance once per admitted flow
/// (conntrack carries the rest), a denial per refused packet, for the
/// direction that refused it; endpoints no policy isolates count nothing.
#[test]
fn policy_verdicts_are_counted_per_direction() {
    require_root!();
    let mut unit = Unit::new();
    unit.allow_a_egress(6, 80);
    let syn = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    assert_eq!(unit.sent_by_a(&syn), TC_ACT_REDIRECT);
    assert_eq!(unit.sent_by_a(&syn), TC_ACT_REDIRECT);
    let (egress, ingress) = (Direction::Egress, Direction::Ingress);
    assert_eq!(
        unit.verdicts(egress, Verdict::Allowed),
        1,
        "A's egress, once"
    );
    assert_eq!(
        unit.verdicts(ingress, Verdict::Allowed),
        0,
        "B is not isolated"
    );
    let udp_pkt = ipv4(POD_A, POD_B, 17, 64, 0, &udp(40001, 53));
    assert_eq!(unit.sent_by_a(&udp_pkt), TC_ACT_SHOT);
    assert_eq!(unit.sent_by_a(&udp_pkt), TC_ACT_SHOT);
    assert_eq!(unit.verdicts(egress, Verdict::Denied), 2);
    assert_eq!(unit.counter(Reason::DropPolicyEgress), 2);

    unit.isolate(B_ENDPOINT_ID, Direction::Ingress);
    let other = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40002, 80));
    assert_eq!(unit.sent_by_a(&other), TC_ACT_SHOT);
    assert_eq!(unit.verdicts(ingress, Verdict::Denied), 1);
    assert_eq!(
        unit.verdicts(egress, Verdict::Allowed),
        1,
        "a flow that ingress refuses is no egress allowance"
    );
}

/// A revoked flow stays revoked whoever speaks next: when a policy change
/// denies an established flow, its entry becomes a tombstone, so the
/// server's next segment is not taken for a new flow of its own (which its
/// open egress would allow); the next policy change that allows the flow
/// again brings it back.
#[test]
fn revoked_flows_stay_revoked_from_both_ends() {
    require_root!();
    let mut unit = Unit::new();
    // B connected to A's port 80 while nothing isolated A.
    unit.track(CtKey {
        protocol: 6,
        ..udp_key(POD_B, POD_A, 5000, 80)
    });
    let syn_ack = ipv4(POD_A, POD_B, 6, 64, 0, &tcp(80, 5000, 0x12));
    assert_eq!(
        unit.sent_by_a(&syn_ack),
        TC_ACT_REDIRECT,
        "before the policy"
    );

    unit.isolate(A_ENDPOINT_ID, Direction::Ingress);
    unit.bpf.bump_revision().expect("revision");
    for attempt in 0..3 {
        assert_eq!(
            unit.sent_by_a(&syn_ack),
            TC_ACT_SHOT,
            "A's segment {attempt} after A's ingress was closed"
        );
    }
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 3);
    assert_eq!(unit.verdicts(Direction::Ingress, Verdict::Denied), 3);

    unit.open_everything();
    unit.bpf.bump_revision().expect("revision");
    assert_eq!(unit.sent_by_a(&syn_ack), TC_ACT_REDIRECT, "allowed again");
}

fn skb(ifindex: u32, ingress_ifindex: u32) -> SkbContext {
    SkbContext {
        ifindex,
        ingress_ifindex,
    }
}

fn tcp_key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> CtKey {
    CtKey {
        protocol: 6,
        ..udp_key(src, dst, sport, dport)
    }
}

/// Between pods no policy isolates, nothing is tracked: a connection's
/// segments both ways, and UDP, are forwarded without a conntrack entry.
#[test]
fn flows_between_pods_no_policy_isolates_are_not_tracked() {
    require_root!();
    let mut unit = Unit::new();
    let syn = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    let syn_ack = ipv4(POD_B, POD_A, 6, 64, 0, &tcp(80, 40000, 0x12));
    let ack = ipv4(POD_A, POD_B, 6, 64, 0, &tcp(40000, 80, 0x10));
    assert_eq!(unit.sent_by_a(&syn), TC_ACT_REDIRECT);
    assert_eq!(unit.sent_by_b(&syn_ack), TC_ACT_REDIRECT);
    assert_eq!(unit.sent_by_a(&ack), TC_ACT_REDIRECT);
    let dns = ipv4(POD_A, POD_B, 17, 64, 0, &udp(40001, 53));
    assert_eq!(unit.sent_by_a(&dns), TC_ACT_REDIRECT);
    assert_eq!(unit.tracked(tcp_key(POD_A, POD_B, 40000, 80)), None);
    assert_eq!(unit.tracked(udp_key(POD_A, POD_B, 40001, 53)), None);
    assert_eq!(unit.ct_inserts(), 0);
    assert_eq!(unit.counter(Reason::ForwardLocal), 4);

    // A policy of a third pod changes nothing for them.
    unit.isolate(7, Direction::Ingress);
    assert_eq!(unit.sent_by_a(&ack), TC_ACT_REDIRECT);
    assert_eq!(unit.ct_inserts(), 0);
}

/// A flow touching an isolated pod is tracked from its first packet, in
/// whichever direction the pod is isolated, and its replies pass as
/// replies (not as new flows the isolated pod's policy would refuse). The
/// entry is rewritten only when its lifetime moves by more than a second.
#[test]
fn flows_of_isolated_pods_are_tracked_and_their_replies_pass() {
    require_root!();
    let mut unit = Unit::new();
    // B accepts TCP 80 only; A's connection to it and B's answer.
    unit.allow_b_ingress(6, 80);
    let syn = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    let syn_ack = ipv4(POD_B, POD_A, 6, 64, 0, &tcp(80, 40000, 0x12));
    let ack = ipv4(POD_A, POD_B, 6, 64, 0, &tcp(40000, 80, 0x10));
    assert_eq!(unit.sent_by_a(&syn), TC_ACT_REDIRECT);
    let key = tcp_key(POD_A, POD_B, 40000, 80);
    let opened = unit.tracked(key).expect("tracked from the SYN");
    assert_eq!(unit.sent_by_b(&syn_ack), TC_ACT_REDIRECT);
    assert_eq!(unit.sent_by_a(&ack), TC_ACT_REDIRECT);
    let established = unit.tracked(key).expect("still tracked");
    assert!(
        established.expires > opened.expires,
        "established: the SYN's lifetime gave way to the connection's"
    );
    for _ in 0..3 {
        assert_eq!(unit.sent_by_a(&ack), TC_ACT_REDIRECT);
        assert_eq!(unit.sent_by_b(&syn_ack), TC_ACT_REDIRECT);
    }
    assert_eq!(
        unit.tracked(key),
        Some(established),
        "not rewritten by packets within the refresh granularity"
    );
    assert_eq!(unit.ct_inserts(), 1, "one entry for both directions");
    // B's own new connection to A: B's ingress isolation does not refuse
    // A's answers.
    let b_syn = ipv4(POD_B, POD_A, 6, 64, 0, &tcp_syn(40001, 9000));
    let a_syn_ack = ipv4(POD_A, POD_B, 6, 64, 0, &tcp(9000, 40001, 0x12));
    assert_eq!(unit.sent_by_b(&b_syn), TC_ACT_REDIRECT);
    assert_eq!(unit.sent_by_a(&a_syn_ack), TC_ACT_REDIRECT);
    // Anything else to B is refused.
    let other = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40002, 81));
    assert_eq!(unit.sent_by_a(&other), TC_ACT_SHOT);
    assert_eq!(unit.tracked(tcp_key(POD_A, POD_B, 40002, 81)), None);

    // An egress-isolated pod's reply to a connection it accepted: tracked
    // from the SYN too, so the answer passes although B may send nothing.
    unit.open_everything();
    unit.isolate(B_ENDPOINT_ID, Direction::Egress);
    let syn = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40003, 80));
    let syn_ack = ipv4(POD_B, POD_A, 6, 64, 0, &tcp(80, 40003, 0x12));
    assert_eq!(unit.sent_by_a(&syn), TC_ACT_REDIRECT);
    assert_eq!(unit.sent_by_b(&syn_ack), TC_ACT_REDIRECT);
    assert!(unit.tracked(tcp_key(POD_A, POD_B, 40003, 80)).is_some());
    let b_new = ipv4(POD_B, POD_A, 6, 64, 0, &tcp_syn(40004, 80));
    assert_eq!(unit.sent_by_b(&b_new), TC_ACT_SHOT, "B's own may not");
}

/// Connections opened while no policy isolated their pods are untracked;
/// when a policy first isolates one, its next segment is judged as policy
/// says of the connection: opened by the end with a client's (ephemeral)
/// port, or, when the ports do not tell, only if allowed both ways.
#[test]
fn a_newly_isolated_pods_untracked_connections_are_judged_by_policy() {
    require_root!();
    let mut unit = Unit::new();
    // A (port 40000) connected to B's port 80; B (port 40010) to A's 80;
    // and one between ports that do not say who opened it.
    let a_to_b = ipv4(POD_A, POD_B, 6, 64, 0, &tcp(40000, 80, 0x10));
    let b_answers_a = ipv4(POD_B, POD_A, 6, 64, 0, &tcp(80, 40000, 0x10));
    let b_to_a = ipv4(POD_B, POD_A, 6, 64, 0, &tcp(40010, 80, 0x10));
    let a_answers_b = ipv4(POD_A, POD_B, 6, 64, 0, &tcp(80, 40010, 0x10));
    let unclear_ab = ipv4(POD_A, POD_B, 6, 64, 0, &tcp(1000, 2000, 0x10));
    let unclear_ba = ipv4(POD_B, POD_A, 6, 64, 0, &tcp(2000, 1000, 0x10));
    for pkt in [&a_to_b, &a_answers_b, &unclear_ab] {
        assert_eq!(unit.sent_by_a(pkt), TC_ACT_REDIRECT);
    }
    for pkt in [&b_answers_a, &b_to_a, &unclear_ba] {
        assert_eq!(unit.sent_by_b(pkt), TC_ACT_REDIRECT);
    }
    assert_eq!(unit.ct_inserts(), 0, "untracked while nothing isolates");

    // B now admits nobody: A's connection to B stops, whichever end speaks
    // first (here B); B's own connection to A goes on.
    unit.isolate(B_ENDPOINT_ID, Direction::Ingress);
    unit.bpf.bump_revision().expect("revision");
    assert_eq!(unit.sent_by_b(&b_answers_a), TC_ACT_SHOT);
    assert_eq!(unit.sent_by_a(&a_to_b), TC_ACT_SHOT);
    assert_eq!(unit.sent_by_a(&a_answers_b), TC_ACT_REDIRECT);
    assert_eq!(unit.sent_by_b(&b_to_a), TC_ACT_REDIRECT);
    assert!(
        unit.tracked(tcp_key(POD_B, POD_A, 40010, 80)).is_some(),
        "tracked from now on"
    );
    assert_eq!(unit.sent_by_a(&unclear_ab), TC_ACT_SHOT);
    assert_eq!(unit.sent_by_b(&unclear_ba), TC_ACT_SHOT);
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 4);

    // Allowed both ways, an unclear connection is adopted, and checked
    // both ways again at the next policy change.
    unit.allow_b_ingress(6, 2000);
    unit.bpf.bump_revision().expect("revision");
    assert_eq!(unit.sent_by_a(&unclear_ab), TC_ACT_REDIRECT);
    assert_eq!(unit.sent_by_b(&unclear_ba), TC_ACT_REDIRECT);
    let adopted = unit
        .tracked(tcp_key(POD_A, POD_B, 1000, 2000))
        .expect("adopted");
    assert_ne!(adopted.flags & ct_flags::ADOPTED, 0);
    unit.isolate(A_ENDPOINT_ID, Direction::Ingress);
    unit.bpf.bump_revision().expect("revision");
    assert_eq!(
        unit.sent_by_a(&unclear_ab),
        TC_ACT_SHOT,
        "A's ingress now refuses B's side of it"
    );
}

/// SCTP ports are policy ports like TCP's and UDP's: enforced from the
/// packet, whether or not this kernel speaks SCTP itself.
#[test]
fn sctp_ports_are_enforced() {
    require_root!();
    let mut unit = Unit::new();
    unit.allow_a_egress(132, 80);
    // Common header: ports, verification tag, checksum.
    let sctp = |dport: u16| {
        let mut l4 = 40000u16.to_be_bytes().to_vec();
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        ipv4(POD_A, POD_B, 132, 64, 0, &l4)
    };
    assert_eq!(
        unit.sent_by_a(&sctp(80)),
        TC_ACT_REDIRECT,
        "SCTP to the allowed port"
    );
    assert_eq!(
        unit.sent_by_a(&sctp(81)),
        TC_ACT_SHOT,
        "SCTP to another port"
    );
    let tcp = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    assert_eq!(
        unit.sent_by_a(&tcp),
        TC_ACT_SHOT,
        "TCP to the SCTP rule's port"
    );
    let short = ipv4(POD_A, POD_B, 132, 64, 0, &sctp(80)[34..42]);
    assert_eq!(unit.sent_by_a(&short), TC_ACT_SHOT, "SCTP header cut short");
    assert_eq!(unit.counter(Reason::DropTruncatedL4), 1);
}

// to_container: TCX egress of a pod's host veth, what the stack delivers.

/// What the host stack delivers to a pod meets the pod's ingress policy:
/// the node itself (the `host` identity) always passes, the outside world
/// only if a rule lets it in; ARP passes.
#[test]
fn host_stack_deliveries_meet_the_pods_ingress_policy() {
    require_root!();
    let mut unit = Unit::new();
    let b = unit.b_if;
    let from_outside = ipv4(OUTSIDE, POD_B, 6, 63, 0, &tcp_syn(40000, 80));
    let from_host = ipv4(GATEWAY, POD_B, 6, 64, 0, &tcp_syn(40001, 80));
    let (verdict, out) = unit.run_on(programs::TO_CONTAINER, &from_outside, b, 0);
    assert_eq!(verdict, TC_ACT_OK, "B is not isolated");
    assert_eq!(out, from_outside, "delivered as the stack built it");

    unit.isolate(B_ENDPOINT_ID, Direction::Ingress);
    let from_outside = ipv4(OUTSIDE, POD_B, 6, 63, 0, &tcp_syn(40002, 80));
    assert_eq!(
        unit.run_on(programs::TO_CONTAINER, &from_outside, b, 0).0,
        TC_ACT_SHOT,
        "the world is not allowed in"
    );
    assert_eq!(
        unit.run_on(programs::TO_CONTAINER, &from_host, b, 0).0,
        TC_ACT_OK,
        "the node (kubelet probes) always is"
    );
    let mut arp = arp_from_a();
    arp[0..6].copy_from_slice(&B_POD_MAC);
    assert_eq!(unit.run_on(programs::TO_CONTAINER, &arp, b, 0).0, TC_ACT_OK);
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 1);
    assert_eq!(unit.counter(Reason::FromStack), 3);
}

// from_overlay / to_overlay: the VXLAN device.

/// A test run carries no tunnel metadata: the overlay's ingress refuses
/// the packet as not from the tunnel.
#[test]
fn overlay_ingress_refuses_packets_without_tunnel_metadata() {
    require_root!();
    let mut unit = Unit::new();
    let tun = unit.tunnel_if;
    let pkt = ipv4(REMOTE_POD, POD_B, 6, 63, 0, &tcp_syn(40000, 80));
    assert_eq!(
        unit.run_on(programs::FROM_OVERLAY, &pkt, tun, tun).0,
        TC_ACT_SHOT
    );
    assert_eq!(unit.counter(Reason::DropNoTunnelKey), 1);
    assert_eq!(unit.counter(Reason::ForwardLocal), 0);
}

/// What the host routes into the VXLAN device gets its tunnel key from the
/// ipcache; an address no node owns, or anything but IPv4, is dropped.
#[test]
fn overlay_egress_keys_host_traffic_for_remote_pods() {
    require_root!();
    let mut unit = Unit::new();
    let tun = unit.tunnel_if;
    let to_remote = ipv4(GATEWAY, REMOTE_POD, 6, 64, 0, &tcp_syn(40000, 80));
    let (verdict, out) = unit.run_on(programs::TO_OVERLAY, &to_remote, tun, 0);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, to_remote, "only the metadata is set");
    assert_eq!(unit.counter(Reason::ForwardTunnel), 1);
    let nowhere = ipv4(GATEWAY, OUTSIDE, 6, 64, 0, &tcp_syn(40000, 80));
    assert_eq!(
        unit.run_on(programs::TO_OVERLAY, &nowhere, tun, 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(unit.counter(Reason::DropNoTunnelEndpoint), 1);
    assert_eq!(
        unit.run_on(programs::TO_OVERLAY, &ipv6_frame(), tun, 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(unit.counter(Reason::DropUnsupportedL3), 1);
}

// from_netdev: TCX ingress of the underlay device.

/// Packets for local pods arriving on the underlay go straight into the
/// pod, under the pod's ingress policy; anything else is the node's own
/// business and passes uncounted.
#[test]
fn underlay_ingress_delivers_local_pods_and_leaves_the_rest() {
    require_root!();
    let mut unit = Unit::new();
    unit.set_routing(routing::NATIVE);
    let ul = unit.underlay_if;
    let pkt = ipv4(REMOTE_POD, POD_B, 6, 63, 0, &tcp_syn(40000, 80));
    let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &pkt, ul, ul);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_routed_to(&out, &pkt, B_POD_MAC, B_HOST_MAC);
    assert_eq!(unit.counter(Reason::ForwardLocal), 1);

    let for_node = ipv4(
        REMOTE_NODE,
        Ipv4Addr::new(172, 31, 0, 1),
        6,
        64,
        0,
        &tcp_syn(1, 22),
    );
    assert_eq!(
        unit.run_on(programs::FROM_NETDEV, &for_node, ul, ul).0,
        TC_ACT_OK
    );
    assert_eq!(
        unit.run_on(programs::FROM_NETDEV, &ipv6_frame(), ul, ul).0,
        TC_ACT_OK
    );
    let total: u64 = Reason::ALL.iter().map(|r| unit.counter(*r)).sum();
    assert_eq!(total, 1, "the node's own traffic is not counted");

    unit.isolate(B_ENDPOINT_ID, Direction::Ingress);
    let other = ipv4(REMOTE_POD, POD_B, 6, 63, 0, &tcp_syn(40001, 80));
    assert_eq!(
        unit.run_on(programs::FROM_NETDEV, &other, ul, ul).0,
        TC_ACT_SHOT
    );
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 1);

    // In tunnel mode pods' traffic from other nodes comes through the
    // VXLAN device; what reaches a pod on the underlay is from outside,
    // and the host stack routes it (to_container judges it).
    unit.set_routing(routing::TUNNEL);
    let from_outside = ipv4(
        Ipv4Addr::new(203, 0, 113, 10),
        POD_B,
        6,
        63,
        0,
        &tcp_syn(40002, 80),
    );
    let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &from_outside, ul, ul);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, from_outside);
}

// IPv4 fragments: only a datagram's first fragment carries its ports; the
// later ones go the way it went.

/// Fragment of datagram `id` at `offset` (8-byte units), `more` to follow
/// or not; a first fragment's `bytes` start with its L4 header.
fn fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    offset: u16,
    more: bool,
    bytes: &[u8],
) -> Vec<u8> {
    let flags = if more { 0x2000 } else { 0 };
    let mut pkt = ipv4(src, dst, proto, 64, offset | flags, bytes);
    pkt[18..20].copy_from_slice(&id.to_be_bytes());
    pkt[24..26].copy_from_slice(&[0, 0]);
    let csum = checksum(&pkt[14..34]);
    pkt[24..26].copy_from_slice(&csum.to_be_bytes());
    pkt
}

/// A UDP header and 24 bytes of payload: 32 bytes, cut by
/// [`udp_fragments`] at 24 (offset 3).
fn udp_datagram(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 32, 0, 0]);
    u.extend((0..24).map(|i| i as u8 | 0x40));
    u
}

/// Datagram `id` from `src` to `dst` in two fragments: the first with
/// the UDP header and 16 bytes, the last with 8 bytes at offset 3.
fn udp_fragments(src: Ipv4Addr, dst: Ipv4Addr, id: u16, sport: u16, dport: u16) -> [Vec<u8>; 2] {
    let datagram = udp_datagram(sport, dport);
    [
        fragment(src, dst, 17, id, 0, true, &datagram[..24]),
        fragment(src, dst, 17, id, 3, false, &datagram[24..]),
    ]
}

/// Allowed by pod B's ingress policy, a datagram arrives whole: its
/// later fragment passes as its first did, through conntrack, so a
/// policy change that revokes the flow stops it too.
#[test]
fn later_fragments_pass_as_their_first_fragment_did() {
    require_root!();
    let mut unit = Unit::new();
    unit.allow_b_ingress(17, 53);
    let a = unit.a_if;
    for (id, sport) in [(7, 5000), (8, 5001)] {
        for (what, pkt) in ["first", "later"]
            .into_iter()
            .zip(udp_fragments(POD_A, POD_B, id, sport, 53))
        {
            let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &pkt, a, a);
            assert_eq!(
                verdict, TC_ACT_REDIRECT,
                "datagram {id}: the {what} fragment"
            );
            assert_routed_to(&out, &pkt, B_POD_MAC, B_HOST_MAC);
        }
    }
    assert_eq!(unit.counter(Reason::ForwardLocal), 4);
    assert_eq!(
        unit.verdicts(Direction::Ingress, Verdict::Allowed),
        2,
        "one decision per flow"
    );

    // Port 53 no longer allowed: the next datagram's first fragment is
    // refused, and so is a late fragment of the flow's earlier one.
    unit.policy = PlacedPolicy::default();
    unit.isolate(B_ENDPOINT_ID, Direction::Ingress);
    unit.bpf.bump_revision().expect("revision");
    let [_, late] = udp_fragments(POD_A, POD_B, 8, 5001, 53);
    assert_eq!(
        unit.sent_by_a(&late),
        TC_ACT_SHOT,
        "a revoked flow's fragment"
    );
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 1);
    assert_eq!(unit.counter(Reason::DropFragmentUntracked), 0);
}

/// A later fragment whose first fragment was never seen has no ports to
/// be judged by: dropped and counted, also for a pod no policy isolates,
/// and for any protocol.
#[test]
fn later_fragments_without_their_first_fragment_are_dropped() {
    require_root!();
    let mut unit = Unit::new();
    let [_, orphan] = udp_fragments(POD_A, POD_B, 9, 5000, 53);
    assert_eq!(unit.sent_by_a(&orphan), TC_ACT_SHOT);
    let tcp_orphan = fragment(POD_A, POD_B, 6, 10, 185, false, &[0; 8]);
    assert_eq!(unit.sent_by_a(&tcp_orphan), TC_ACT_SHOT);
    // The same datagram's first fragment, from another source, does not
    // vouch for it: the datagram is the addresses, protocol and id.
    let b = unit.b_if;
    let [first, _] = udp_fragments(POD_B, POD_A, 9, 5000, 53);
    assert_eq!(
        unit.run_on(programs::FROM_CONTAINER, &first, b, b).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(unit.sent_by_a(&orphan), TC_ACT_SHOT);
    assert_eq!(unit.counter(Reason::DropFragmentUntracked), 3);
    assert_eq!(unit.counter(Reason::ForwardLocal), 1);
}

/// A first fragment to a port policy denies is dropped, and every later
/// fragment of its datagram under the same reason.
#[test]
fn later_fragments_of_a_denied_first_fragment_are_dropped() {
    require_root!();
    let mut unit = Unit::new();
    unit.allow_b_ingress(17, 53);
    let [first, later] = udp_fragments(POD_A, POD_B, 11, 5000, 80);
    assert_eq!(unit.sent_by_a(&first), TC_ACT_SHOT);
    assert_eq!(unit.sent_by_a(&later), TC_ACT_SHOT);
    assert_eq!(
        unit.sent_by_a(&later),
        TC_ACT_SHOT,
        "a retransmitted fragment"
    );
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 3);
    assert_eq!(unit.counter(Reason::ForwardLocal), 0);
    // Pod A's egress policy, the same way.
    unit.allow_a_egress(17, 53);
    let [first, later] = udp_fragments(POD_A, POD_B, 12, 5000, 80);
    assert_eq!(unit.sent_by_a(&first), TC_ACT_SHOT);
    assert_eq!(unit.sent_by_a(&later), TC_ACT_SHOT);
    assert_eq!(unit.counter(Reason::DropPolicyEgress), 2);
}

/// The fragment attacks: a later fragment reaching into the L4 header
/// policy read (RFC 1858: TCP at offset 8 rewrites the flags, SCTP's
/// 12-byte header), a first fragment too short to hold the ports, a
/// second first fragment with other ports. Dropped, whatever the policy.
#[test]
fn fragments_overlapping_or_cutting_the_l4_header_are_dropped() {
    require_root!();
    let mut unit = Unit::new();
    let overlapping = [
        (
            "TCP at 8 bytes",
            fragment(POD_A, POD_B, 6, 20, 1, true, &[0; 16]),
        ),
        (
            "TCP at 16 bytes",
            fragment(POD_A, POD_B, 6, 20, 2, false, &[0; 8]),
        ),
        (
            "SCTP at 8 bytes",
            fragment(POD_A, POD_B, 132, 21, 1, false, &[0; 8]),
        ),
    ];
    for (what, pkt) in &overlapping {
        assert_eq!(unit.sent_by_a(pkt), TC_ACT_SHOT, "{what}");
    }
    assert_eq!(unit.counter(Reason::DropFragmentOverlap), 3);

    let tiny = [
        (
            "TCP, 12 bytes",
            fragment(POD_A, POD_B, 6, 22, 0, true, &tcp_syn(1, 80)[..12]),
        ),
        (
            "UDP, 6 bytes",
            fragment(POD_A, POD_B, 17, 23, 0, true, &udp(1, 53)[..6]),
        ),
    ];
    for (what, pkt) in &tiny {
        assert_eq!(
            unit.sent_by_a(pkt),
            TC_ACT_SHOT,
            "tiny first fragment: {what}"
        );
    }
    assert_eq!(unit.counter(Reason::DropTruncatedL4), 2);
    assert_eq!(unit.counter(Reason::ForwardLocal), 0);

    // UDP's header is 8 bytes: a fragment at 8 bytes is past it.
    unit.allow_b_ingress(17, 53);
    let datagram = udp_datagram(5000, 53);
    let first = fragment(POD_A, POD_B, 17, 24, 0, true, &datagram[..8]);
    let next = fragment(POD_A, POD_B, 17, 24, 1, true, &datagram[8..16]);
    assert_eq!(unit.sent_by_a(&first), TC_ACT_REDIRECT);
    assert_eq!(unit.sent_by_a(&next), TC_ACT_REDIRECT, "UDP at 8 bytes");
    // Another first fragment of the datagram, to a denied port, is judged
    // by its own ports; the datagram's later fragments are then dropped
    // with it (the receiver could not tell which first fragment is right).
    let other = fragment(POD_A, POD_B, 17, 24, 0, true, &udp_datagram(5000, 80)[..8]);
    assert_eq!(unit.sent_by_a(&other), TC_ACT_SHOT);
    let last = fragment(POD_A, POD_B, 17, 24, 2, false, &datagram[16..]);
    assert_eq!(unit.sent_by_a(&last), TC_ACT_SHOT);
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 2);
}

/// From another node (native routing, on the underlay): the same, for
/// the destination's ingress policy; the node's own fragments pass, with
/// or without their first one, uncounted.
#[test]
fn fragments_from_other_nodes_pass_as_their_first_fragment_did() {
    require_root!();
    let mut unit = Unit::new();
    unit.set_routing(routing::NATIVE);
    unit.allow_b_ingress(17, 53);
    let ul = unit.underlay_if;
    for pkt in udp_fragments(REMOTE_POD, POD_B, 40, 5000, 53) {
        let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &pkt, ul, ul);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_routed_to(&out, &pkt, B_POD_MAC, B_HOST_MAC);
    }
    for pkt in udp_fragments(REMOTE_POD, POD_B, 41, 5000, 80) {
        assert_eq!(
            unit.run_on(programs::FROM_NETDEV, &pkt, ul, ul).0,
            TC_ACT_SHOT
        );
    }
    let [_, orphan] = udp_fragments(REMOTE_POD, POD_B, 42, 5000, 53);
    assert_eq!(
        unit.run_on(programs::FROM_NETDEV, &orphan, ul, ul).0,
        TC_ACT_SHOT
    );
    assert_eq!(unit.counter(Reason::ForwardLocal), 2);
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 2);
    assert_eq!(unit.counter(Reason::DropFragmentUntracked), 1);

    let node = Ipv4Addr::new(172, 31, 0, 1);
    let [first, later] = udp_fragments(REMOTE_NODE, node, 43, 5000, 22);
    let [_, orphan] = udp_fragments(REMOTE_NODE, node, 44, 5000, 22);
    for pkt in [first, later, orphan] {
        let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &pkt, ul, ul);
        assert_eq!(verdict, TC_ACT_OK, "the node's own");
        assert_eq!(out, pkt);
    }
    let total: u64 = Reason::ALL.iter().map(|r| unit.counter(*r)).sum();
    assert_eq!(total, 5, "the node's own fragments are not counted");
}

/// A datagram to a Service: its first fragment picks the backend and is
/// translated (address, port, checksum); the later one goes to the same
/// backend with only its address rewritten (it holds no port), and the
/// reassembled datagram's UDP checksum is right for the backend.
#[test]
fn later_fragments_to_a_service_reach_the_first_fragment_s_backend() {
    require_root!();
    let mut unit = Unit::new();
    web_service(&mut unit, &mut ServiceIds::new(), &[POD_B]);
    let a = unit.a_if;
    let whole = with_l4_checksum(ipv4(POD_A, VIP, 17, 64, 0, &udp_datagram(40000, 53)));
    let first = fragment(POD_A, VIP, 17, 50, 0, true, &whole[34..58]);
    let later = fragment(POD_A, VIP, 17, 50, 3, false, &whole[58..]);
    let (verdict, first_out) = unit.run_on(programs::FROM_CONTAINER, &first, a, a);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dst_of(&first_out), (POD_B, 5353));
    let (verdict, later_out) = unit.run_on(programs::FROM_CONTAINER, &later, a, a);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&later_out[0..6], &B_POD_MAC);
    assert_eq!(&later_out[30..34], &POD_B.octets(), "to the backend");
    assert_eq!(checksum(&later_out[14..34]), 0, "IPv4 header checksum");
    assert_eq!(&later_out[34..], &later[34..], "the payload untouched");
    let payload = [&first_out[34..], &later_out[34..]].concat();
    let reassembled = ipv4(POD_A, POD_B, 17, 63, 0, &payload);
    assert!(
        l4_checksum_ok(&reassembled),
        "UDP checksum of the whole datagram"
    );
}

// Flows the host stack hands in (kube-proxy's Service DNAT, hostPorts):
// their replies go back through the stack, which translates them back.

/// A flow that reaches pod B through the stack (to_container): B's replies
/// go to the stack, not straight to the client; a flow between the same
/// pods that nobody handed in keeps the direct path.
#[test]
fn replies_of_flows_the_stack_delivered_go_back_through_it() {
    require_root!();
    let mut unit = Unit::new();
    let b = unit.b_if;
    // A's connection to a Service address, DNATed by the stack to B.
    let translated = ipv4(POD_A, POD_B, 6, 63, 0, &tcp_syn(40000, 80));
    let (verdict, _) = unit.run_on(programs::TO_CONTAINER, &translated, b, 0);
    assert_eq!(verdict, TC_ACT_OK, "delivered by the stack");
    let reply = ipv4(POD_B, POD_A, 6, 64, 0, &tcp(80, 40000, 0x12));
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &reply, b, b);
    assert_eq!(verdict, TC_ACT_OK, "the reply goes to the stack");
    assert_eq!(out, reply, "untouched: the stack translates it");
    assert_eq!(unit.counter(Reason::ToStack), 1);
    assert_eq!(unit.counter(Reason::ForwardLocal), 0);

    // Another connection, A to B directly: replies go straight back.
    let direct = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40001, 80));
    assert_eq!(unit.sent_by_a(&direct), TC_ACT_REDIRECT);
    let reply = ipv4(POD_B, POD_A, 6, 64, 0, &tcp(80, 40001, 0x12));
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &reply, b, b);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_routed_to(&out, &reply, A_POD_MAC, A_HOST_MAC);
}

/// A pod's packet the stack forwards to another node (after a Service
/// DNAT to a remote backend) is noted at the underlay's egress; the
/// backend's reply arriving on the underlay then goes to the stack instead
/// of into the pod. The pod's own flows, which from_container already
/// tracks, are not affected.
#[test]
fn replies_to_flows_the_stack_forwarded_to_another_node_go_back_through_it() {
    require_root!();
    let mut unit = Unit::new();
    unit.set_routing(routing::NATIVE);
    let ul = unit.underlay_if;
    let forwarded = ipv4(POD_A, REMOTE_POD, 6, 63, 0, &tcp_syn(40000, 80));
    let (verdict, _) = unit.run_on(programs::TO_NETDEV, &forwarded, ul, 0);
    assert_eq!(verdict, TC_ACT_OK);
    let reply = ipv4(REMOTE_POD, POD_A, 6, 63, 0, &tcp(80, 40000, 0x12));
    let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &reply, ul, ul);
    assert_eq!(verdict, TC_ACT_OK, "to the stack, which translates back");
    assert_eq!(out, reply);
    assert_eq!(unit.counter(Reason::ToStack), 1);

    // A's own connection, routed by from_container (which marks it as
    // not the stack's): the reply goes straight in even though the packet
    // passed the underlay's egress, which clears the mark.
    unit.set_routing(routing::NATIVE);
    let own = ipv4(POD_A, REMOTE_POD, 6, 64, 0, &tcp_syn(40001, 80));
    let a = unit.a_if;
    let (verdict, _, mark) = unit
        .bpf
        .run_marked(programs::FROM_CONTAINER, &own, skb(a, a), 0)
        .expect("from_container");
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(mark, ROUTED_MARK, "marked as routed by the program");
    let own_out = ipv4(POD_A, REMOTE_POD, 6, 63, 0, &tcp_syn(40001, 80));
    let (_, _, mark) = unit
        .bpf
        .run_marked(programs::TO_NETDEV, &own_out, skb(ul, 0), mark)
        .expect("to_netdev");
    assert_eq!(mark, 0, "the mark does not leave the node");
    let reply = ipv4(REMOTE_POD, POD_A, 6, 63, 0, &tcp(80, 40001, 0x12));
    let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &reply, ul, ul);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_routed_to(&out, &reply, A_POD_MAC, A_HOST_MAC);
    // Nothing leaving through the underlay is counted.
    assert_eq!(unit.counter(Reason::ToStack), 1);
}

// Services (kube-proxy replacement): a client's connection to a frontend
// is translated to a backend before policy and forwarding, and the
// backend's replies are translated back.

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// A Service `web` (TCP 80 and UDP 53 on [`VIP`]) with the given ready
/// backends (address, node) behind target ports 8080 and 5353, as the
/// agent compiles it.
fn web_service(
    unit: &mut Unit,
    ids: &mut ServiceIds,
    backends: &[Ipv4Addr],
) -> sluice_agent::services::DesiredServices {
    web_service_with(unit, ids, backends, "")
}

/// [`web_service`] with more `spec` lines (indented two spaces).
fn web_service_with(
    unit: &mut Unit,
    ids: &mut ServiceIds,
    backends: &[Ipv4Addr],
    spec: &str,
) -> sluice_agent::services::DesiredServices {
    let endpoints: String = backends
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n"))
        .collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec:\n{spec}  clusterIP: {VIP}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n- {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n{endpoints}"
    );
    let mut state = ClusterState::default();
    for resource in parse_documents(&yaml) {
        state.apply(Event::Apply(resource.expect("test manifest")));
    }
    let desired = services::compile(&state, "node1", None, ids);
    assert!(desired.problems.is_empty(), "{:?}", desired.problems);
    unit.bpf.apply_services(&desired).expect("service maps");
    desired
}

fn dst_of(pkt: &[u8]) -> (Ipv4Addr, u16) {
    let ip = Ipv4Addr::new(pkt[30], pkt[31], pkt[32], pkt[33]);
    (ip, u16::from_be_bytes([pkt[36], pkt[37]]))
}

fn src_of(pkt: &[u8]) -> (Ipv4Addr, u16) {
    let ip = Ipv4Addr::new(pkt[26], pkt[27], pkt[28], pkt[29]);
    (ip, u16::from_be_bytes([pkt[34], pkt[35]]))
}

/// A connection to the frontend goes to the backend (address, port and
/// both checksums rewritten), and the backend's replies come back with
/// the frontend as their source, for TCP and for UDP.
#[test]
fn service_connections_are_translated_to_the_backend_and_back() {
    require_root!();
    let mut unit = Unit::new();
    web_service(&mut unit, &mut ServiceIds::new(), &[POD_B]);
    let (a, b) = (unit.a_if, unit.b_if);
    for (proto, port, target, l4) in [
        (6, 80, 8080, tcp_syn(40000, 80)),
        (17, 53, 5353, udp(40001, 53)),
    ] {
        let syn = with_l4_checksum(ipv4(POD_A, VIP, proto, 64, 0, &l4));
        let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &syn, a, a);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "proto {proto}: to the backend on this node"
        );
        assert_eq!(&out[0..6], &B_POD_MAC);
        assert_eq!(dst_of(&out), (POD_B, target), "proto {proto}");
        assert_eq!(checksum(&out[14..34]), 0, "IPv4 header checksum");
        assert!(
            l4_checksum_ok(&out),
            "proto {proto}: L4 checksum after DNAT"
        );

        let sport = u16::from_be_bytes([l4[0], l4[1]]);
        let reply_l4 = if proto == 6 {
            tcp(target, sport, 0x12)
        } else {
            udp(target, sport)
        };
        let reply = with_l4_checksum(ipv4(POD_B, POD_A, proto, 64, 0, &reply_l4));
        let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &reply, b, b);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "proto {proto}: the reply to the client"
        );
        assert_eq!(&out[0..6], &A_POD_MAC);
        assert_eq!(
            src_of(&out),
            (VIP, port),
            "proto {proto}: from the frontend"
        );
        assert_eq!(checksum(&out[14..34]), 0);
        assert!(
            l4_checksum_ok(&out),
            "proto {proto}: L4 checksum after reverse NAT"
        );
    }
    // A UDP datagram without a checksum keeps having none.
    let bare = ipv4(POD_A, VIP, 17, 64, 0, &udp(40002, 53));
    let (_, out) = unit.run_on(programs::FROM_CONTAINER, &bare, a, a);
    assert_eq!(dst_of(&out), (POD_B, 5353));
    assert_eq!(&out[40..42], &[0, 0], "no UDP checksum made up");
}

/// Every packet of a connection goes to the backend it was given, also
/// after the backend set changed; new connections get the new set.
#[test]
fn connections_keep_their_backend_when_the_backends_change() {
    require_root!();
    let mut unit = Unit::new();
    let mut ids = ServiceIds::new();
    web_service(&mut unit, &mut ids, &[POD_B]);
    let a = unit.a_if;
    let first = with_l4_checksum(ipv4(POD_A, VIP, 6, 64, 0, &tcp_syn(40000, 80)));
    let (_, out) = unit.run_on(programs::FROM_CONTAINER, &first, a, a);
    assert_eq!(dst_of(&out).0, POD_B);

    unit.set_routing(routing::TUNNEL);
    web_service(&mut unit, &mut ids, &[REMOTE_POD]);
    let next = with_l4_checksum(ipv4(POD_A, VIP, 6, 64, 0, &tcp(40000, 80, 0x10)));
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &next, a, a);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        dst_of(&out),
        (POD_B, 8080),
        "the established connection stays"
    );
    let fresh = with_l4_checksum(ipv4(POD_A, VIP, 6, 64, 0, &tcp_syn(40001, 80)));
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &fresh, a, a);
    assert_eq!(verdict, TC_ACT_REDIRECT, "into the tunnel");
    assert_eq!(
        dst_of(&out),
        (REMOTE_POD, 8080),
        "a new connection, the new backend"
    );
    assert_eq!(unit.counter(Reason::ForwardTunnel), 1);
}

/// An ICMP error about a translated packet (the backend's port
/// unreachable) reaches the client quoting what the client sent, to the
/// frontend, and from the frontend: checksums of the error, of its quote
/// and of the packet all right.
#[test]
fn icmp_errors_about_translated_packets_name_the_frontend() {
    require_root!();
    let mut unit = Unit::new();
    web_service(&mut unit, &mut ServiceIds::new(), &[POD_B]);
    let (a, b) = (unit.a_if, unit.b_if);
    let query = with_l4_checksum(ipv4(POD_A, VIP, 17, 64, 0, &udp(40001, 53)));
    let (_, translated) = unit.run_on(programs::FROM_CONTAINER, &query, a, a);
    assert_eq!(dst_of(&translated), (POD_B, 5353));
    // B's port is closed: B's stack quotes the datagram as it arrived.
    let unreachable = ipv4(POD_B, POD_A, 1, 64, 0, &icmp_error(3, 3, &translated[14..]));
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &unreachable, b, b);
    assert_eq!(verdict, TC_ACT_REDIRECT, "to the client");
    assert_eq!(src_of(&out).0, VIP, "from the frontend");
    assert_eq!(checksum(&out[14..34]), 0, "the packet's header checksum");
    assert_eq!(checksum(&out[34..]), 0, "the ICMP checksum");
    let quote = &out[42..];
    assert_eq!(checksum(&quote[..20]), 0, "the quoted header's checksum");
    assert_eq!(&quote[16..20], &VIP.octets(), "the quote's destination");
    assert_eq!(&quote[22..24], &53u16.to_be_bytes(), "the quote's port");
    assert_eq!(&quote[12..16], &POD_A.octets());
    assert_eq!(&quote[20..22], &40001u16.to_be_bytes());
}

/// A client reusing its port: a direct connection after a translated one
/// on the same backend tuple (the client's kernel sees different
/// connections) gets untranslated replies, and a translated one after a
/// direct one gets the frontend back. Found by the connection-rate bench,
/// where a stale translation made every few thousandth SYN-ACK come from
/// the frontend to a client that had connected to the pod.
#[test]
fn a_reused_client_port_starts_a_connection_of_its_own() {
    require_root!();
    let mut unit = Unit::new();
    web_service(&mut unit, &mut ServiceIds::new(), &[POD_B]);
    let (a, b) = (unit.a_if, unit.b_if);
    let send = |unit: &mut Unit, to: Ipv4Addr, dport: u16, flags: u8| {
        let pkt = with_l4_checksum(ipv4(POD_A, to, 6, 64, 0, &tcp(40000, dport, flags)));
        unit.run_on(programs::FROM_CONTAINER, &pkt, a, a)
    };
    let answer = |unit: &mut Unit, flags: u8| {
        let pkt = with_l4_checksum(ipv4(POD_B, POD_A, 6, 64, 0, &tcp(8080, 40000, flags)));
        let (_, out) = unit.run_on(programs::FROM_CONTAINER, &pkt, b, b);
        src_of(&out)
    };
    // Through the Service, ended by the client's reset.
    let (_, out) = send(&mut unit, VIP, 80, 0x02);
    assert_eq!(dst_of(&out), (POD_B, 8080));
    assert_eq!(answer(&mut unit, 0x12), (VIP, 80));
    send(&mut unit, VIP, 80, 0x14);
    // Straight to the pod, from the same port.
    let (_, out) = send(&mut unit, POD_B, 8080, 0x02);
    assert_eq!(dst_of(&out), (POD_B, 8080));
    assert_eq!(
        answer(&mut unit, 0x12),
        (POD_B, 8080),
        "the direct connection's SYN-ACK comes from the pod"
    );
    // And through the Service again, while the direct one is still open:
    // the translated SYN opens a connection of its own too.
    let (_, out) = send(&mut unit, VIP, 80, 0x02);
    assert_eq!(dst_of(&out), (POD_B, 8080));
    assert_eq!(
        answer(&mut unit, 0x12),
        (VIP, 80),
        "and this one's from the frontend"
    );
}

/// An external frontend (here an externalIP) is translated where its
/// traffic arrives, on the underlay, and handed to the host stack to
/// forward; the backend's reply gets the frontend back on its way out of
/// the underlay (or the tunnel, to another node's pod), and so does an
/// ICMP error about the connection. A pod's
/// own packets to it are translated where they start, as to a ClusterIP,
/// under either traffic policy. Under `Local`, a client from outside
/// reaching a node without an endpoint of its own is dropped, while a pod
/// of another node is inside the cluster and gets any backend; outside
/// packets to a ClusterIP are left alone.
#[test]
fn external_frontends_are_translated_on_the_underlay_and_back() {
    require_root!();
    let mut unit = Unit::new();
    let mut ids = ServiceIds::new();
    let external_ip = Ipv4Addr::new(198, 51, 100, 7);
    let client = Ipv4Addr::new(203, 0, 113, 10);
    let external = format!("  externalIPs: [{external_ip}]\n");
    web_service_with(&mut unit, &mut ids, &[POD_B], &external);
    let ul = unit.underlay_if;
    let syn = with_l4_checksum(ipv4(client, external_ip, 6, 63, 0, &tcp_syn(40000, 80)));
    let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &syn, ul, ul);
    assert_eq!(verdict, TC_ACT_OK, "to the host stack, which forwards it");
    assert_eq!(dst_of(&out), (POD_B, 8080));
    assert_eq!(checksum(&out[14..34]), 0);
    assert!(l4_checksum_ok(&out), "L4 checksum after DNAT");

    let reply = with_l4_checksum(ipv4(POD_B, client, 6, 63, 0, &tcp(8080, 40000, 0x12)));
    let (verdict, out) = unit.run_on(programs::TO_NETDEV, &reply, ul, ul);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(src_of(&out), (external_ip, 80), "from the frontend");
    assert_eq!(checksum(&out[14..34]), 0);
    assert!(l4_checksum_ok(&out), "L4 checksum after reverse NAT");

    // The backend's port unreachable about a datagram, on its way out.
    let query = with_l4_checksum(ipv4(client, external_ip, 17, 63, 0, &udp(40004, 53)));
    let (_, translated) = unit.run_on(programs::FROM_NETDEV, &query, ul, ul);
    assert_eq!(dst_of(&translated), (POD_B, 5353));
    let unreachable = ipv4(
        POD_B,
        client,
        1,
        63,
        0,
        &icmp_error(3, 3, &translated[14..]),
    );
    let (verdict, out) = unit.run_on(programs::TO_NETDEV, &unreachable, ul, ul);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(src_of(&out).0, external_ip, "the error from the frontend");
    assert_eq!(checksum(&out[34..]), 0, "the ICMP checksum");
    let quote = &out[42..];
    assert_eq!(checksum(&quote[..20]), 0, "the quoted header's checksum");
    assert_eq!(
        &quote[16..20],
        &external_ip.octets(),
        "the quote's destination"
    );
    assert_eq!(&quote[22..24], &53u16.to_be_bytes(), "the quote's port");

    let a = unit.a_if;
    let from_pod = with_l4_checksum(ipv4(POD_A, external_ip, 6, 64, 0, &tcp_syn(40001, 80)));
    let (_, out) = unit.run_on(programs::FROM_CONTAINER, &from_pod, a, a);
    assert_eq!(dst_of(&out), (POD_B, 8080), "a pod's packet, under Cluster");
    web_service_with(
        &mut unit,
        &mut ids,
        &[POD_B],
        &format!("{external}  externalTrafficPolicy: Local\n"),
    );
    let from_pod = with_l4_checksum(ipv4(POD_A, external_ip, 6, 64, 0, &tcp_syn(40003, 80)));
    let (_, out) = unit.run_on(programs::FROM_CONTAINER, &from_pod, a, a);
    assert_eq!(
        dst_of(&out),
        (POD_B, 8080),
        "a pod's packet, under Local: any backend"
    );
    // POD_B is no endpoint of this node's (the slice names no node).
    let syn = with_l4_checksum(ipv4(client, external_ip, 6, 63, 0, &tcp_syn(40005, 80)));
    let (verdict, _) = unit.run_on(programs::FROM_NETDEV, &syn, ul, ul);
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "from outside, under Local, no local endpoint"
    );
    assert_eq!(unit.counter(Reason::DropNoLocalBackend), 1);
    let syn = with_l4_checksum(ipv4(REMOTE_POD, external_ip, 6, 63, 0, &tcp_syn(40006, 80)));
    let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &syn, ul, ul);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        dst_of(&out),
        (POD_B, 8080),
        "another node's pod, under Local: any backend"
    );
    // The reply, de-masqueraded by the stack, leaves through the tunnel to
    // that pod's node: from the frontend.
    let reply = with_l4_checksum(ipv4(POD_B, REMOTE_POD, 6, 63, 0, &tcp(8080, 40006, 0x12)));
    let tun = unit.tunnel_if;
    let (verdict, out) = unit.run_on(programs::TO_OVERLAY, &reply, tun, 0);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(src_of(&out), (external_ip, 80), "through the tunnel");
    assert!(l4_checksum_ok(&out));
    let to_cluster_ip = with_l4_checksum(ipv4(client, VIP, 6, 63, 0, &tcp_syn(40002, 80)));
    let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &to_cluster_ip, ul, ul);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst_of(&out), (VIP, 80), "ClusterIPs are not for outside");
}

/// NetworkPolicy judges the backend: the backend's ingress policy refuses
/// the client through the Service as it would directly.
#[test]
fn policy_applies_to_the_backend_after_translation() {
    require_root!();
    let mut unit = Unit::new();
    web_service(&mut unit, &mut ServiceIds::new(), &[POD_B]);
    unit.isolate(B_ENDPOINT_ID, Direction::Ingress);
    let syn = with_l4_checksum(ipv4(POD_A, VIP, 6, 64, 0, &tcp_syn(40000, 80)));
    assert_eq!(unit.sent_by_a(&syn), TC_ACT_SHOT);
    assert_eq!(unit.counter(Reason::DropPolicyIngress), 1);
}

/// A frontend without a ready backend hands its packets to the host
/// stack, which rejects them (the agent's nftables table), untouched.
#[test]
fn a_service_without_backends_is_left_to_the_stack_to_refuse() {
    require_root!();
    let mut unit = Unit::new();
    web_service(&mut unit, &mut ServiceIds::new(), &[]);
    let a = unit.a_if;
    let syn = with_l4_checksum(ipv4(POD_A, VIP, 6, 64, 0, &tcp_syn(40000, 80)));
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &syn, a, a);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, syn);
    assert_eq!(unit.counter(Reason::ToStack), 1);
}

/// A backend on another node answers through the underlay: the client's
/// node, where the translation happened, translates the reply back.
#[test]
fn replies_from_remote_backends_are_translated_on_the_clients_node() {
    require_root!();
    let mut unit = Unit::new();
    unit.set_routing(routing::NATIVE);
    web_service(&mut unit, &mut ServiceIds::new(), &[REMOTE_POD]);
    let a = unit.a_if;
    let syn = with_l4_checksum(ipv4(POD_A, VIP, 6, 64, 0, &tcp_syn(40000, 80)));
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &syn, a, a);
    assert_eq!(verdict, TC_ACT_REDIRECT, "along the FIB's route");
    assert_eq!(dst_of(&out), (REMOTE_POD, 8080));
    let ul = unit.underlay_if;
    let reply = with_l4_checksum(ipv4(REMOTE_POD, POD_A, 6, 63, 0, &tcp(8080, 40000, 0x12)));
    let (verdict, out) = unit.run_on(programs::FROM_NETDEV, &reply, ul, ul);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(src_of(&out), (VIP, 80));
    assert!(l4_checksum_ok(&out));
    assert_eq!(checksum(&out[14..34]), 0);
}

/// How many backends 24 new connections from pod A to the two-backend
/// Service with `spec` go to.
fn backends_reached(spec: &str) -> usize {
    let mut unit = Unit::new();
    unit.set_routing(routing::TUNNEL);
    web_service_with(
        &mut unit,
        &mut ServiceIds::new(),
        &[POD_B, REMOTE_POD],
        spec,
    );
    let a = unit.a_if;
    (0..24u16)
        .map(|i| {
            let syn = with_l4_checksum(ipv4(POD_A, VIP, 6, 64, 0, &tcp_syn(41000 + i, 80)));
            let (_, out) = unit.run_on(programs::FROM_CONTAINER, &syn, a, a);
            dst_of(&out).0
        })
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// Without session affinity a client's connections spread over the
/// backends (all 24 on one of two: about 1 in 8 million); with
/// `sessionAffinity: ClientIP` they all go to one.
#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    require_root!();
    assert_eq!(backends_reached(""), 2, "spread without affinity");
    assert_eq!(
        backends_reached("  sessionAffinity: ClientIP\n"),
        1,
        "one backend with affinity"
    );
}

/// A pod reaching itself through its own Service (hairpin): the packet it
/// gets comes from the hairpin address (its own would be a martian
/// source), and its reply to that address comes back to it from the
/// frontend.
#[test]
fn hairpin_connections_reach_the_pod_itself() {
    require_root!();
    let mut unit = Unit::new();
    web_service(&mut unit, &mut ServiceIds::new(), &[POD_A]);
    let a = unit.a_if;
    let syn = with_l4_checksum(ipv4(POD_A, VIP, 6, 64, 0, &tcp_syn(40000, 80)));
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &syn, a, a);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &A_POD_MAC, "back into pod A");
    let hairpin = Ipv4Addr::from(sluice_common::services::HAIRPIN_SOURCE);
    assert_eq!(src_of(&out), (hairpin, 40000));
    assert_eq!(dst_of(&out), (POD_A, 8080));
    assert_eq!(checksum(&out[14..34]), 0);
    assert!(l4_checksum_ok(&out));

    let reply = with_l4_checksum(ipv4(POD_A, hairpin, 6, 64, 0, &tcp(8080, 40000, 0x12)));
    let (verdict, out) = unit.run_on(programs::FROM_CONTAINER, &reply, a, a);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &A_POD_MAC);
    assert_eq!(src_of(&out), (VIP, 80), "from the frontend");
    assert_eq!(dst_of(&out), (POD_A, 40000));
    assert_eq!(checksum(&out[14..34]), 0);
    assert!(l4_checksum_ok(&out));
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// A VXLAN packet (outer UDP to the VXLAN port) from `src`.
fn vxlan_from(src: Ipv4Addr) -> Vec<u8> {
    let mut payload = udp(40000, sluice_common::config::VXLAN_PORT);
    payload[4..6].copy_from_slice(&16u16.to_be_bytes());
    // VXLAN header (I flag, VNI 0) and the start of an inner frame.
    payload.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 0, 0]);
    ipv4(src, GATEWAY, 17, 64, 0, &payload)
}

impl Unit {
    fn prefilter(&mut self, pkt: &[u8]) -> u32 {
        let (action, out) = self
            .bpf
            .run_prefilter(pkt)
            .unwrap_or_else(|e| panic!("prefilter: {e}"));
        assert_eq!(out, pkt, "the prefilter never rewrites a packet");
        action
    }

    fn deny(&mut self, cidrs: &[&str]) {
        let cidrs: Vec<Ipv4Net> = cidrs.iter().map(|c| c.parse().expect("cidr")).collect();
        self.bpf.set_deny_list(&cidrs).expect("deny list");
    }
}

/// Sources in the deny list are dropped (the most specific entry needs no
/// covering one; removing an entry lets its sources in again), the rest
/// pass untouched and uncounted.
#[test]
fn the_prefilter_drops_denied_sources_only() {
    require_root!();
    let mut unit = Unit::new();
    let from = |src| ipv4(src, GATEWAY, 6, 64, 0, &tcp_syn(40000, 22));
    assert_eq!(unit.prefilter(&from(OUTSIDE)), XDP_PASS, "empty deny list");
    unit.deny(&["192.0.2.0/24", "10.60.0.5/32"]);
    assert_eq!(unit.prefilter(&from(OUTSIDE)), XDP_DROP, "in 192.0.2.0/24");
    assert_eq!(unit.prefilter(&from(REMOTE_POD)), XDP_DROP, "the /32");
    let neighbour = Ipv4Addr::new(10, 60, 0, 6);
    assert_eq!(
        unit.prefilter(&from(neighbour)),
        XDP_PASS,
        "next to the /32"
    );
    assert_eq!(unit.prefilter(&from(REMOTE_NODE)), XDP_PASS, "not denied");
    assert_eq!(unit.counter(Reason::DropDeniedSource), 2);
    unit.deny(&["192.0.2.0/24"]);
    assert_eq!(unit.prefilter(&from(REMOTE_POD)), XDP_PASS, "/32 removed");
    assert_eq!(unit.prefilter(&from(OUTSIDE)), XDP_DROP);
    assert_eq!(unit.counter(Reason::DropDeniedSource), 3);
    for reason in Reason::ALL {
        if reason != Reason::DropDeniedSource {
            assert_eq!(unit.counter(reason), 0, "{}", reason.name());
        }
    }
}

/// IPv4 headers that are not one are dropped before the stack sees them;
/// a sound packet with options passes.
#[test]
fn the_prefilter_drops_malformed_ipv4() {
    require_root!();
    let mut unit = Unit::new();
    let good = ipv4(OUTSIDE, GATEWAY, 17, 64, 0, &udp(40000, 53));
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    cases.push(("version 6 in an IPv4 frame", bad_version));
    let mut short_ihl = good.clone();
    short_ihl[14] = 0x44;
    cases.push(("IHL below 5", short_ihl));
    let mut long_ihl = good.clone();
    long_ihl[14] = 0x4f;
    cases.push(("IHL beyond the total length", long_ihl));
    let mut short_len = good.clone();
    short_len[16..18].copy_from_slice(&19u16.to_be_bytes());
    cases.push(("total length below the header", short_len));
    let mut long_len = good.clone();
    long_len[16..18].copy_from_slice(&1400u16.to_be_bytes());
    cases.push(("total length beyond the frame", long_len));
    cases.push(("header cut short", good[..14 + 12].to_vec()));
    let n = cases.len() as u64;
    for (what, pkt) in cases {
        assert_eq!(unit.prefilter(&pkt), XDP_DROP, "{what}");
    }
    assert_eq!(unit.counter(Reason::DropBadIpv4Header), n);
    assert_eq!(unit.prefilter(&good), XDP_PASS);
    // 4 bytes of options (IHL 6), total length counting them.
    let mut options = good[..34].to_vec();
    options.extend_from_slice(&[1, 1, 1, 0]);
    options.extend_from_slice(&good[34..]);
    options[14] = 0x46;
    let tot_len = (options.len() - 14) as u16;
    options[16..18].copy_from_slice(&tot_len.to_be_bytes());
    assert_eq!(unit.prefilter(&options), XDP_PASS, "IPv4 with options");
    // Ethernet padding after a short packet is no malformation.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 16]);
    assert_eq!(unit.prefilter(&padded), XDP_PASS, "padded frame");
    assert_eq!(unit.counter(Reason::DropBadIpv4Header), n);
}

/// ARP and IPv6 are none of the prefilter's business, even from a denied
/// source's neighbourhood, and are not counted.
#[test]
fn the_prefilter_passes_arp_and_ipv6() {
    require_root!();
    let mut unit = Unit::new();
    unit.deny(&["10.50.0.0/24", "0.0.0.0/0"]);
    assert_eq!(unit.prefilter(&arp_from_a()), XDP_PASS, "ARP");
    assert_eq!(unit.prefilter(&ipv6_frame()), XDP_PASS, "IPv6");
    for reason in Reason::ALL {
        assert_eq!(unit.counter(reason), 0, "{}", reason.name());
    }
}

/// In tunnel routing, VXLAN from an address that is no node's is dropped,
/// from a node it passes; other UDP from the same address, later
/// fragments (no UDP header) and, in native routing (no VXLAN device),
/// the port itself are left alone.
#[test]
fn the_prefilter_drops_vxlan_from_addresses_that_are_not_nodes() {
    require_root!();
    let mut unit = Unit::new();
    unit.set_routing(routing::TUNNEL);
    assert_eq!(unit.prefilter(&vxlan_from(OUTSIDE)), XDP_DROP, "not a node");
    assert_eq!(
        unit.prefilter(&vxlan_from(REMOTE_POD)),
        XDP_DROP,
        "a remote pod is not its node"
    );
    assert_eq!(unit.prefilter(&vxlan_from(REMOTE_NODE)), XDP_PASS, "a node");
    assert_eq!(unit.counter(Reason::DropVxlanNotFromNode), 2);
    let dns = ipv4(OUTSIDE, GATEWAY, 17, 64, 0, &udp(40000, 53));
    assert_eq!(unit.prefilter(&dns), XDP_PASS, "other UDP");
    let fragment = ipv4(OUTSIDE, GATEWAY, 17, 64, 185, &[0u8; 16]);
    assert_eq!(unit.prefilter(&fragment), XDP_PASS, "a later fragment");
    unit.set_routing(routing::NATIVE);
    assert_eq!(unit.prefilter(&vxlan_from(OUTSIDE)), XDP_PASS, "native");
    assert_eq!(unit.counter(Reason::DropVxlanNotFromNode), 2);
    // A denied node is denied all the same.
    unit.set_routing(routing::TUNNEL);
    unit.deny(&["172.31.0.2/32"]);
    assert_eq!(unit.prefilter(&vxlan_from(REMOTE_NODE)), XDP_DROP);
    assert_eq!(unit.counter(Reason::DropDeniedSource), 1);
}

/// The prefilter attaches natively where the driver can (veth), falls back
/// to generic mode where it cannot (a bridge), takes generic when
/// configured so, keeps a live link across attaches, replaces it when the
/// mode changes, and leaves with its pin.
#[test]
fn the_prefilter_attaches_native_or_falls_back_to_generic() {
    require_root!();
    use sluice_agent::kernel::bpf::AttachMode;
    let mut unit = Unit::new();
    unit._ns.ip("link add br9 type bridge").expect("bridge");
    unit._ns.ip("link set br9 up").expect("bridge up");
    let bridge = nix::net::if_::if_nametoindex("br9").expect("br9");
    let underlay = unit.underlay_if;
    let pins = unit.bpf.pin_dir().join("xdp");
    let pinned = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&pins)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let dataplane = unit.bpf.dataplane();
    let attach = |dp: &mut sluice_agent::kernel::bpf::Dataplane, dev, index, mode| {
        dp.attach_prefilter(dev, index, mode)
            .unwrap_or_else(|e| panic!("attaching to {dev}: {e}"))
    };
    assert_eq!(
        attach(dataplane, "ul0", underlay, AttachMode::Native),
        AttachMode::Native
    );
    assert_eq!(
        attach(dataplane, "ul0", underlay, AttachMode::Native),
        AttachMode::Native
    );
    assert_eq!(pinned(), ["native@ul0"]);
    assert_eq!(
        attach(dataplane, "ul0", underlay, AttachMode::Generic),
        AttachMode::Generic
    );
    assert_eq!(pinned(), ["generic@ul0"]);
    assert_eq!(
        attach(dataplane, "br9", bridge, AttachMode::Native),
        AttachMode::Generic,
        "a bridge has no native XDP"
    );
    assert_eq!(
        pinned(),
        ["generic@br9"],
        "one device carries the prefilter"
    );
    let link = |dev: &str| {
        let out = std::process::Command::new("ip")
            .args(["-d", "link", "show", dev])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // An unpinned link is released by a kernel work item, not by the
    // unlink itself: on a busy machine the device shows it a moment longer.
    let released = |dev: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while link(dev).contains("xdp") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        !link(dev).contains("xdp")
    };
    assert!(link("br9").contains("xdpgeneric"), "{}", link("br9"));
    assert!(released("ul0"), "{}", link("ul0"));
    dataplane.detach_prefilter().expect("detach");
    assert!(pinned().is_empty());
    assert!(released("br9"), "{}", link("br9"));
}

impl Unit {
    /// The flow events emitted since the last call, decoded.
    fn flow_events(&mut self) -> Vec<RawFlow> {
        self.bpf
            .take_flow_events()
            .into_iter()
            .map(|e| e.expect("a decodable flow event"))
            .collect()
    }

    fn flow_event_counts(&self) -> BTreeMap<&'static str, u64> {
        counters::read_flow_events(self.bpf.pin_dir())
            .expect("flow event counters")
            .into_iter()
            .collect()
    }
}

/// New flows' verdicts (with the rule that allowed them), drops with their
/// reason and Service translations become flow events, once each; the
/// established flow's packets emit nothing; with the switch off nothing is
/// emitted at all.
#[test]
fn flow_events_report_verdicts_drops_and_translations() {
    require_root!();
    let mut unit = Unit::new();
    unit.allow_a_egress(6, 80);
    let refused = ipv4(POD_A, POD_B, 17, 64, 0, &udp(40001, 53));
    assert_eq!(unit.sent_by_a(&refused), TC_ACT_SHOT);
    assert!(unit.flow_events().is_empty(), "the switch is off");

    unit.bpf.set_flow_events(true, 1000).expect("switch on");
    let syn = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    assert_eq!(unit.sent_by_a(&syn), TC_ACT_REDIRECT);
    let ack = ipv4(POD_A, POD_B, 6, 64, 0, &tcp(40000, 80, 0x10));
    assert_eq!(unit.sent_by_a(&ack), TC_ACT_REDIRECT);
    let events = unit.flow_events();
    assert_eq!(events.len(), 1, "the new flow only: {events:?}");
    let allowed = &events[0];
    assert_eq!(allowed.verdict, FlowVerdict::Allowed);
    assert_eq!((allowed.saddr, allowed.sport), (POD_A, 40000));
    assert_eq!(
        (allowed.daddr, allowed.dport, allowed.protocol),
        (POD_B, 80, 6)
    );
    assert_eq!(allowed.egress, Some("allowed"));
    assert_eq!(allowed.ingress, Some("open"));
    assert_eq!(
        (allowed.src_identity, allowed.dst_identity),
        (Some(ID_A), Some(ID_B)),
        "the identities policy judged the ends by"
    );

    assert_eq!(unit.sent_by_a(&refused), TC_ACT_SHOT);
    let events = unit.flow_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let denied = &events[0];
    assert_eq!(denied.verdict, FlowVerdict::Denied);
    assert_eq!(denied.direction, Direction::Egress);
    assert_eq!(denied.reason, Some(Ok(Reason::DropPolicyEgress)));
    assert_eq!(
        (denied.daddr, denied.dport, denied.protocol),
        (POD_B, 53, 17)
    );
    assert_eq!(denied.egress, Some("denied"));
    assert_eq!(denied.ingress, None, "not looked at once egress denied");

    // Not from pod A's address: dropped as spoofed, with the packet's
    // tuple read again.
    let spoofed = ipv4(OUTSIDE, POD_B, 6, 64, 0, &tcp_syn(1234, 80));
    assert_eq!(unit.sent_by_a(&spoofed), TC_ACT_SHOT);
    let events = unit.flow_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].verdict, FlowVerdict::Dropped);
    assert_eq!(events[0].reason, Some(Ok(Reason::DropSpoofedSource)));
    assert_eq!((events[0].saddr, events[0].sport), (OUTSIDE, 1234));
    assert_eq!((events[0].daddr, events[0].dport), (POD_B, 80));

    unit.open_everything();
    web_service(&mut unit, &mut ServiceIds::new(), &[POD_B]);
    let to_vip = with_l4_checksum(ipv4(POD_A, VIP, 6, 64, 0, &tcp_syn(40010, 80)));
    assert_eq!(unit.sent_by_a(&to_vip), TC_ACT_REDIRECT);
    let events = unit.flow_events();
    let translated: Vec<_> = events
        .iter()
        .filter(|e| e.verdict == FlowVerdict::Translated)
        .collect();
    assert_eq!(translated.len(), 1, "{events:?}");
    assert_eq!(translated[0].frontend, Some((VIP, 80)));
    assert_eq!((translated[0].daddr, translated[0].dport), (POD_B, 8080));

    let counts = unit.flow_event_counts();
    // Allowed, denied, spoofed, and this last packet's.
    assert_eq!(counts["emitted"], 3 + events.len() as u64);
    assert_eq!((counts["lost"], counts["rate_limited"]), (0, 0));
}

/// Audit mode: what the policy would deny passes, counted and reported as
/// would-deny; what it allows is allowed as before; enforcing again, the
/// same flow is denied.
#[test]
fn audit_mode_lets_what_policy_would_deny_pass_and_reports_it() {
    require_root!();
    let mut unit = Unit::new();
    unit.bpf.set_flow_events(true, 1000).expect("switch on");
    unit.policy.isolate(A_ENDPOINT_ID, Direction::Egress);
    let http = PortPrefix { port: 80, bits: 16 };
    unit.policy.allow(
        A_ENDPOINT_ID,
        Direction::Egress,
        ANY_IDENTITY,
        6,
        Some(http),
    );
    unit.policy.audit(A_ENDPOINT_ID);
    unit.apply();

    let dns = ipv4(POD_A, POD_B, 17, 64, 0, &udp(40001, 53));
    assert_eq!(
        unit.sent_by_a(&dns),
        TC_ACT_REDIRECT,
        "audit mode passes it"
    );
    let events = unit.flow_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let audited = &events[0];
    assert_eq!(audited.verdict, FlowVerdict::WouldDeny);
    assert_eq!(audited.direction, Direction::Egress);
    assert_eq!((audited.daddr, audited.dport), (POD_B, 53));
    assert_eq!(audited.egress, Some("would-deny"));
    assert_eq!(audited.ingress, Some("open"));
    assert_eq!(audited.reason, None);
    assert_eq!(unit.verdicts(Direction::Egress, Verdict::WouldDeny), 1);
    assert_eq!(unit.verdicts(Direction::Egress, Verdict::Denied), 0);
    // Its later packets are the established flow's: nothing new.
    assert_eq!(unit.sent_by_a(&dns), TC_ACT_REDIRECT);
    assert!(unit.flow_events().is_empty());

    let syn = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    assert_eq!(unit.sent_by_a(&syn), TC_ACT_REDIRECT);
    let events = unit.flow_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].verdict, FlowVerdict::Allowed);
    assert_eq!(events[0].egress, Some("allowed"));
    assert_eq!(unit.verdicts(Direction::Egress, Verdict::Allowed), 1);
    assert_eq!(unit.verdicts(Direction::Egress, Verdict::WouldDeny), 1);

    // A connection under way when the policy came, seen first from its
    // server (B:8080, a reply to A's ephemeral port): decided, and
    // reported, from its opener, A, whose egress would deny it.
    let reply = ipv4(POD_B, POD_A, 6, 64, 0, &tcp(8080, 40005, 0x10));
    assert_eq!(unit.sent_by_b(&reply), TC_ACT_REDIRECT);
    let events = unit.flow_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let under_way = &events[0];
    assert_eq!(under_way.verdict, FlowVerdict::WouldDeny);
    assert_eq!(under_way.direction, Direction::Egress);
    assert_eq!((under_way.saddr, under_way.sport), (POD_A, 40005));
    assert_eq!((under_way.daddr, under_way.dport), (POD_B, 8080));
    assert_eq!(under_way.egress, Some("would-deny"));
    assert_eq!(unit.verdicts(Direction::Egress, Verdict::WouldDeny), 2);

    // Enforcing: the flow audit mode let through is refused from its next
    // packet (the policy revision moves, as the agent moves it), and so is
    // a new one.
    unit.open_everything();
    unit.allow_a_egress(6, 80);
    unit.bpf.bump_revision().expect("revision");
    assert_eq!(unit.sent_by_a(&dns), TC_ACT_SHOT);
    let other = ipv4(POD_A, POD_B, 17, 64, 0, &udp(40002, 53));
    assert_eq!(unit.sent_by_a(&other), TC_ACT_SHOT);
    assert_eq!(unit.verdicts(Direction::Egress, Verdict::Denied), 2);
    assert_eq!(unit.verdicts(Direction::Egress, Verdict::WouldDeny), 2);
}

/// A flood is bounded: past its burst, a CPU's token bucket refuses
/// events (counted); a ring nobody drains loses the rest (counted); the
/// packets' verdicts are the same either way.
#[test]
fn flow_events_under_a_flood_are_rate_limited_and_losses_counted() {
    require_root!();
    let mut unit = Unit::new();
    // Run on loopback: not pod A's veth, so every packet is a spoofed
    // drop, one event each.
    let pkt = ipv4(POD_A, POD_B, 17, 64, 0, &udp(40001, 53));
    unit.bpf.set_flow_events(true, 5).expect("switch on");
    let (verdict, _) = unit
        .bpf
        .time(programs::FROM_CONTAINER, &pkt, 200)
        .expect("test run");
    assert_eq!(verdict, TC_ACT_SHOT);
    let emitted = unit.flow_events().len() as u64;
    let counts = unit.flow_event_counts();
    assert!((5..=6).contains(&emitted), "the burst of 5: {emitted}");
    assert_eq!(counts["emitted"], emitted);
    assert_eq!(counts["rate_limited"], 200 - emitted);

    unit.bpf.set_flow_events(true, 10_000_000).expect("rate up");
    let (verdict, _) = unit
        .bpf
        .time(programs::FROM_CONTAINER, &pkt, 20_000)
        .expect("test run");
    assert_eq!(verdict, TC_ACT_SHOT);
    let counts = unit.flow_event_counts();
    let waiting = unit.flow_events().len() as u64;
    assert!(counts["lost"] > 0, "the ring filled: {counts:?}");
    assert_eq!(
        counts["emitted"] + counts["lost"] + counts["rate_limited"],
        20_200,
        "every packet's event emitted, lost or refused: {counts:?}"
    );
    assert_eq!(
        counts["emitted"] - emitted,
        waiting,
        "what was emitted waits in the ring"
    );
}
