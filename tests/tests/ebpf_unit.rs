//! The eBPF program's decisions, one crafted packet at a time, with
//! BPF_PROG_TEST_RUN: fill the maps, run, check verdict, output bytes and
//! counters. Deterministic; no interfaces involved.

use std::{net::Ipv4Addr, path::PathBuf};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    Ebpf, EbpfLoader,
};
use sluice_agent::kernel::counters;
use sluice_common::{
    conntrack::{CtEntry, CtKey},
    endpoint::{flags, EndpointInfo, IpKey},
    ipcache::DataplaneConfig,
    maps,
    policy::{direction, entry, peer_mark, Isolation, PolicyEntry, PolicyKey, ANY_IDENTITY},
    programs,
};
use sluice_lab::bench::frame::{checksum, ipv4};
use sluice_tests::{require_root, unique};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 3);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_POD_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x01];
const B_HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];
/// Pod A's endpoint id and veth ifindex (test runs see ifindex 1).
const A_ENDPOINT_ID: u32 = 1;
/// Pod B's endpoint id and veth ifindex.
const B_ENDPOINT_ID: u32 = 42;

/// The program loaded with its maps pinned in a private directory,
/// removed on drop.
struct Loaded {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl Loaded {
    fn new() -> Self {
        sluice_agent::kernel::bpffs::ensure_mounted(std::path::Path::new("/sys/fs/bpf"))
            .expect("bpffs");
        let pin_dir = PathBuf::from("/sys/fs/bpf/sluice").join(unique("unit"));
        std::fs::create_dir_all(&pin_dir).expect("pin dir");
        let mut loaded = Self {
            ebpf: EbpfLoader::new()
                .default_map_pin_directory(&pin_dir)
                .load(sluice_agent::EBPF_OBJECT)
                .expect("loading the eBPF object"),
            pin_dir,
        };
        loaded.prog().load().expect("loading from_container");
        // test_run gives the packet the loopback device (ifindex 1), so pod
        // A's veth is ifindex 1 here.
        let mut eps: HashMap<&mut MapData, IpKey, EndpointInfo> =
            HashMap::try_from(loaded.ebpf.map_mut(maps::ENDPOINTS).expect("endpoint map"))
                .expect("endpoint map type");
        eps.insert(
            IpKey::v4(POD_A.octets()),
            endpoint(A_ENDPOINT_ID, [2, 0xaa, 0, 0, 0, 1], [2, 0xaa, 0, 0, 0, 2]),
            0,
        )
        .expect("insert a");
        eps.insert(
            IpKey::v4(POD_B.octets()),
            endpoint(B_ENDPOINT_ID, B_POD_MAC, B_HOST_MAC),
            0,
        )
        .expect("insert b");
        loaded
    }

    fn prog(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(programs::FROM_CONTAINER)
            .expect("program")
            .try_into()
            .expect("sched_cls")
    }

    /// Runs the program on `pkt`: (verdict, output packet).
    fn run(&mut self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; pkt.len() + 256];
        let res = self
            .prog()
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    fn counter(&self, reason: &str) -> u64 {
        counters::packets(&counters::read(&self.pin_dir).expect("counters"), reason)
    }

    fn verdicts(&self, direction: &str, verdict: &str) -> u64 {
        let rows = counters::read_verdicts(&self.pin_dir).expect("verdicts");
        counters::verdicts(&rows, direction, verdict)
    }

    /// Isolates pod B for ingress, with no rule letting anything in.
    fn isolate_b_ingress(&mut self) {
        self.isolate(B_ENDPOINT_ID, 1, 0);
    }

    fn isolate(&mut self, endpoint: u32, ingress: u8, egress: u8) {
        let mut iso: HashMap<&mut MapData, u32, Isolation> =
            HashMap::try_from(self.ebpf.map_mut(maps::ISOLATION).expect("isolation map"))
                .expect("isolation map type");
        let isolation = Isolation {
            ingress,
            egress,
            ranges: 0,
            _pad: 0,
        };
        iso.insert(endpoint, isolation, 0).expect("isolate");
    }

    /// What the agent does after every policy change.
    fn set_policy_revision(&mut self, revision: u32) {
        let mut config: Array<&mut MapData, DataplaneConfig> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).expect("config map"))
                .expect("config map type");
        let mut current = config.get(&0, 0).expect("config");
        current.policy_revision = revision;
        config.set(0, current, 0).expect("set config");
    }

    /// Isolates pod A for egress, allowing `protocol` to `port` of anyone.
    fn allow_a_egress(&mut self, protocol: u8, port: u16) {
        self.isolate(A_ENDPOINT_ID, 0, 1);
        let mut exact: HashMap<&mut MapData, PolicyKey, PolicyEntry> =
            HashMap::try_from(self.ebpf.map_mut(maps::POLICY_EXACT).expect("policy map"))
                .expect("policy map type");
        let allow = PolicyEntry {
            flags: entry::ALLOW,
            _pad: 0,
        };
        let rule = PolicyKey {
            endpoint: A_ENDPOINT_ID,
            identity: ANY_IDENTITY,
            direction: direction::EGRESS,
            protocol,
            dport: port.to_be_bytes(),
        };
        exact.insert(rule, allow, 0).expect("rule");
        let mark = peer_mark(A_ENDPOINT_ID, ANY_IDENTITY, direction::EGRESS);
        exact.insert(mark, allow, 0).expect("mark");
    }

    /// A conntrack entry for `key`, live and checked at the current
    /// policy revision.
    fn track(&mut self, key: CtKey) {
        let mut ct: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map_mut(maps::CONNTRACK).expect("conntrack map"))
                .expect("conntrack map type");
        let entry = CtEntry {
            expires: u64::MAX,
            revision: 0,
            flags: 0,
        };
        ct.insert(key, entry, 0).expect("conntrack insert");
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = sluice_agent::kernel::bpf::remove_pins(&self.pin_dir);
    }
}

fn endpoint(ifindex: u32, pod_mac: [u8; 6], host_mac: [u8; 6]) -> EndpointInfo {
    EndpointInfo {
        id: ifindex,
        ifindex,
        identity: 0,
        flags: flags::LOCAL_POD,
        pod_mac,
        host_mac,
        _pad: [0; 4],
    }
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
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

#[test]
fn local_pod_is_redirected_with_l2_rewritten_and_ttl_decremented() {
    require_root!();
    let mut bpf = Loaded::new();
    for (proto, l4) in [
        (6, tcp_syn(40000, 80)),
        (17, udp(40000, 53)),
        (1, ICMP_ECHO.to_vec()),
    ] {
        let pkt = ipv4(POD_A, POD_B, proto, 64, 0, &l4);
        let (verdict, out) = bpf.run(&pkt);
        assert_eq!(verdict, TC_ACT_REDIRECT, "proto {proto}");
        assert_eq!(out.len(), pkt.len());
        assert_eq!(&out[0..6], &B_POD_MAC, "dst MAC is pod B's");
        assert_eq!(
            &out[6..12],
            &B_HOST_MAC,
            "src MAC is B's gateway (host veth)"
        );
        assert_eq!(out[14 + 8], 63, "TTL decremented");
        assert_eq!(
            checksum(&out[14..34]),
            0,
            "IPv4 header checksum still valid"
        );
        assert_eq!(&out[34..], &pkt[34..], "L4 untouched");
    }
    assert_eq!(bpf.counter("forward_local"), 3);
}

#[test]
fn unknown_destination_goes_to_the_host_stack() {
    require_root!();
    let mut bpf = Loaded::new();
    let pkt = ipv4(POD_A, OUTSIDE, 6, 64, 0, &tcp_syn(40000, 443));
    let (verdict, out) = bpf.run(&pkt);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, pkt, "packets to the stack are not modified");
    assert_eq!(bpf.counter("to_stack"), 1);
}

#[test]
fn expiring_ttl_is_left_to_the_stack() {
    require_root!();
    let mut bpf = Loaded::new();
    let (verdict, _) = bpf.run(&ipv4(POD_A, POD_B, 1, 1, 0, &ICMP_ECHO));
    assert_eq!(verdict, TC_ACT_OK, "the stack sends time-exceeded");
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    require_root!();
    let mut bpf = Loaded::new();
    // Not an endpoint at all.
    let (verdict, _) = bpf.run(&ipv4(OUTSIDE, POD_B, 6, 64, 0, &tcp_syn(1, 80)));
    assert_eq!(verdict, TC_ACT_SHOT);
    // Pod B's address, but arriving on pod A's veth (ifindex 1).
    let (verdict, _) = bpf.run(&ipv4(POD_B, POD_A, 17, 64, 0, &udp(1, 53)));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(bpf.counter("drop_spoofed_source"), 2);
    assert_eq!(bpf.counter("forward_local"), 0);
}

#[test]
fn malformed_and_truncated_packets_are_dropped_and_counted() {
    require_root!();
    let mut bpf = Loaded::new();
    let good = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // (A frame too short for an IPv4 header is refused by BPF_PROG_TEST_RUN
    // itself, so it cannot be crafted here; the namespace tests cover it.)
    let mut long_ihl = good.clone();
    long_ihl[14] = 0x4f;
    cases.push(("IHL claims options beyond the packet", long_ihl));
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    cases.push(("IHL below 5", bad_ihl));
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    cases.push(("IP version 6 in an IPv4 frame", bad_version));
    let mut long_len = good.clone();
    long_len[16..18].copy_from_slice(&200u16.to_be_bytes());
    cases.push(("total length beyond the packet", long_len));
    cases.push((
        "TCP header cut short",
        ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(1, 80)[..12]),
    ));
    let mut bad_doff = tcp_syn(1, 80);
    bad_doff[12] = 0x40;
    cases.push((
        "TCP data offset below 5",
        ipv4(POD_A, POD_B, 6, 64, 0, &bad_doff),
    ));
    cases.push((
        "UDP header cut short",
        ipv4(POD_A, POD_B, 17, 64, 0, &udp(1, 53)[..6]),
    ));
    cases.push((
        "ICMP header cut short",
        ipv4(POD_A, POD_B, 1, 64, 0, &ICMP_ECHO[..4]),
    ));
    let n = cases.len() as u64;
    for (what, pkt) in cases {
        let (verdict, _) = bpf.run(&pkt);
        assert_eq!(verdict, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(bpf.counter("drop_malformed"), n);
    assert_eq!(bpf.counter("forward_local"), 0);
}

#[test]
fn non_first_fragments_need_no_l4_header() {
    require_root!();
    let mut bpf = Loaded::new();
    // Offset 185 * 8 bytes, no TCP header in this fragment.
    let (verdict, _) = bpf.run(&ipv4(POD_A, POD_B, 6, 64, 185, &[0u8; 8]));
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

#[test]
fn arp_passes_and_other_l3_is_dropped() {
    require_root!();
    let mut bpf = Loaded::new();
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0xaa, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[2, 0xaa, 0, 0, 0, 1]);
    arp.extend_from_slice(&POD_A.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 50, 0, 1]);
    assert_eq!(bpf.run(&arp).0, TC_ACT_OK);
    let mut v6 = vec![0x33, 0x33, 0, 0, 0, 1, 2, 0xaa, 0, 0, 0, 1, 0x86, 0xdd];
    v6.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 59, 64]);
    v6.extend_from_slice(&[0; 32]);
    assert_eq!(bpf.run(&v6).0, TC_ACT_SHOT);
    assert_eq!(bpf.counter("drop_unsupported_l3"), 1);
}

/// ICMP `type`/`code` quoting `quoted` (an IPv4 packet without Ethernet),
/// as a host reports an error about it.
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
    let mut bpf = Loaded::new();
    bpf.isolate_b_ingress();
    // B's datagram to A, as A's port unreachable quotes it.
    let b_to_a = ipv4(POD_B, POD_A, 17, 64, 0, &udp(5000, 53))[14..].to_vec();
    let unreachable = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 3, &b_to_a));

    let (verdict, _) = bpf.run(&unreachable);
    assert_eq!(verdict, TC_ACT_SHOT, "error about an untracked flow");
    assert_eq!(bpf.counter("drop_policy_ingress"), 1);

    bpf.track(udp_key(POD_B, POD_A, 5000, 53));
    let (verdict, _) = bpf.run(&unreachable);
    assert_eq!(verdict, TC_ACT_REDIRECT, "error about B's own flow");
    // Time exceeded and fragmentation needed relate the same way.
    for (t, c) in [(11, 0), (3, 4)] {
        let pkt = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(t, c, &b_to_a));
        assert_eq!(bpf.run(&pkt).0, TC_ACT_REDIRECT, "ICMP {t}/{c}");
    }

    // The same flow quoted in reverse (an error about a reply) relates too.
    let a_to_b = ipv4(POD_A, POD_B, 17, 64, 0, &udp(6000, 7))[14..].to_vec();
    let about_reply = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 3, &a_to_b));
    assert_eq!(bpf.run(&about_reply).0, TC_ACT_SHOT, "before tracking");
    bpf.track(udp_key(POD_B, POD_A, 7, 6000));
    // Quoting A's packet to B: the error goes to B but A sent the quoted
    // packet, so it does not travel back to the quoted sender.
    assert_eq!(
        bpf.run(&about_reply).0,
        TC_ACT_SHOT,
        "quoted sender is not B"
    );

    // A third party's flow, quoted in an error sent to B.
    bpf.track(udp_key(OUTSIDE, POD_A, 5000, 53));
    let third = ipv4(OUTSIDE, POD_A, 17, 64, 0, &udp(5000, 53))[14..].to_vec();
    let smuggled = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 3, &third));
    assert_eq!(bpf.run(&smuggled).0, TC_ACT_SHOT, "third party's flow");
    // B's own flow to someone else, "reported" by A: A is neither the
    // flow's peer nor a node on its path.
    bpf.track(udp_key(POD_B, OUTSIDE, 5001, 53));
    let b_out = ipv4(POD_B, OUTSIDE, 17, 64, 0, &udp(5001, 53))[14..].to_vec();
    let forged = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 4, &b_out));
    assert_eq!(
        bpf.run(&forged).0,
        TC_ACT_SHOT,
        "error forged by a bystander"
    );
    assert_eq!(bpf.counter("drop_policy_ingress"), 5);
    // An error whose quote runs past the packet's end relates to nothing.
    let cut = ipv4(POD_A, POD_B, 1, 64, 0, &icmp_error(3, 3, &b_to_a)[..32]);
    assert_eq!(bpf.run(&cut).0, TC_ACT_SHOT, "quote cut short");
}

/// Verdicts count policy decisions: an allowance once per admitted flow
/// (conntrack carries the rest), a denial per refused packet, for the
/// direction that refused it; endpoints no policy isolates count nothing.
#[test]
fn policy_verdicts_are_counted_per_direction() {
    require_root!();
    let mut bpf = Loaded::new();
    bpf.allow_a_egress(6, 80);
    let syn = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    assert_eq!(bpf.run(&syn).0, TC_ACT_REDIRECT);
    assert_eq!(bpf.run(&syn).0, TC_ACT_REDIRECT);
    assert_eq!(bpf.verdicts("egress", "allowed"), 1, "A's egress, once");
    assert_eq!(bpf.verdicts("ingress", "allowed"), 0, "B is not isolated");
    let udp_pkt = ipv4(POD_A, POD_B, 17, 64, 0, &udp(40001, 53));
    assert_eq!(bpf.run(&udp_pkt).0, TC_ACT_SHOT);
    assert_eq!(bpf.run(&udp_pkt).0, TC_ACT_SHOT);
    assert_eq!(bpf.verdicts("egress", "denied"), 2);
    assert_eq!(bpf.counter("drop_policy_egress"), 2);

    bpf.isolate_b_ingress();
    let other = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40002, 80));
    assert_eq!(bpf.run(&other).0, TC_ACT_SHOT);
    assert_eq!(bpf.verdicts("ingress", "denied"), 1);
    assert_eq!(
        bpf.verdicts("egress", "allowed"),
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
    let mut bpf = Loaded::new();
    // B connected to A's port 80 while nothing isolated A.
    bpf.track(CtKey {
        protocol: 6,
        ..udp_key(POD_B, POD_A, 5000, 80)
    });
    let syn_ack = {
        let mut seg = tcp_syn(80, 5000);
        seg[13] = 0x12;
        ipv4(POD_A, POD_B, 6, 64, 0, &seg)
    };
    assert_eq!(bpf.run(&syn_ack).0, TC_ACT_REDIRECT, "before the policy");

    bpf.isolate(A_ENDPOINT_ID, 1, 0);
    bpf.set_policy_revision(1);
    for attempt in 0..3 {
        assert_eq!(
            bpf.run(&syn_ack).0,
            TC_ACT_SHOT,
            "A's segment {attempt} after A's ingress was closed"
        );
    }
    assert_eq!(bpf.counter("drop_policy_ingress"), 3);
    assert_eq!(bpf.verdicts("ingress", "denied"), 3);

    bpf.isolate(A_ENDPOINT_ID, 0, 0);
    bpf.set_policy_revision(2);
    assert_eq!(bpf.run(&syn_ack).0, TC_ACT_REDIRECT, "allowed again");
}

/// SCTP ports are policy ports like TCP's and UDP's: enforced from the
/// packet, whether or not this kernel speaks SCTP itself.
#[test]
fn sctp_ports_are_enforced() {
    require_root!();
    let mut bpf = Loaded::new();
    bpf.allow_a_egress(132, 80);
    // Common header: ports, verification tag, checksum.
    let sctp = |dport: u16| {
        let mut l4 = 40000u16.to_be_bytes().to_vec();
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        ipv4(POD_A, POD_B, 132, 64, 0, &l4)
    };
    assert_eq!(
        bpf.run(&sctp(80)).0,
        TC_ACT_REDIRECT,
        "SCTP to the allowed port"
    );
    assert_eq!(bpf.run(&sctp(81)).0, TC_ACT_SHOT, "SCTP to another port");
    let tcp = ipv4(POD_A, POD_B, 6, 64, 0, &tcp_syn(40000, 80));
    assert_eq!(bpf.run(&tcp).0, TC_ACT_SHOT, "TCP to the SCTP rule's port");
    let short = ipv4(POD_A, POD_B, 132, 64, 0, &sctp(80)[34..42]);
    assert_eq!(bpf.run(&short).0, TC_ACT_SHOT, "SCTP header cut short");
    assert_eq!(bpf.counter("drop_malformed"), 1);
}
