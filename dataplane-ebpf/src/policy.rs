//! NetworkPolicy enforcement with connection tracking. New flows are
//! checked against the egress policy of a local source and the ingress
//! policy of a local destination; later packets and replies pass through
//! conntrack, re-checked once whenever the policy revision moved.
use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use sluice_common::{
    conntrack::{ct_flags, timeout, CtEntry, CtKey},
    endpoint::EndpointInfo,
    identity,
    ipcache::Ipv4Prefix,
    metrics::reason,
    policy::{
        direction, peer_mark, PolicyKey, ALL_PORTS, ANY_IDENTITY, ANY_PROTOCOL, KEY_FULL_BITS,
    },
};

use crate::{
    maps::{CIDR_IDENTITY, CONFIG, CONNTRACK, ISOLATION, POLICY_EXACT, POLICY_RANGES},
    metrics::count_verdict,
    parse::{Ipv4Packet, Quoted, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    remote,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ICMP_ECHO_REPLY: u16 = 0;
const ICMP_ECHO: u16 = 8;

/// Label identity of an address: the ipcache's, else the outside world.
pub fn peer_identity(addr: [u8; 4]) -> u32 {
    match remote::ipcache(addr) {
        Some(entry) => entry.identity,
        None => identity::WORLD,
    }
}

/// Identity of the ipBlock region an address falls in (0: none).
fn cidr_identity(addr: [u8; 4]) -> u32 {
    CIDR_IDENTITY
        .get(Key::new(32, Ipv4Prefix { addr }))
        .copied()
        .unwrap_or(ANY_IDENTITY)
}

fn key(endpoint: u32, dir: u8, identity: u32, protocol: u8, dport: [u8; 2]) -> PolicyKey {
    PolicyKey {
        endpoint,
        identity,
        direction: dir,
        protocol,
        dport,
    }
}

/// Whether a rule lets `identity` through: none unless the identity is
/// marked; then one on this port, on all ports of the protocol, or on
/// everything (hash lookups); then, for endpoints with port ranges, a
/// range covering the port (LPM).
fn rule_hits(endpoint: u32, dir: u8, ranges: bool, identity: u32, protocol: u8, dport: u16) -> bool {
    if POLICY_EXACT
        .get_ptr(peer_mark(endpoint, identity, dir))
        .is_none()
    {
        return false;
    }
    let port = dport.to_be_bytes();
    let exact = |protocol, port| {
        POLICY_EXACT
            .get_ptr(key(endpoint, dir, identity, protocol, port))
            .is_some()
    };
    exact(protocol, port)
        || exact(protocol, ALL_PORTS)
        || exact(ANY_PROTOCOL, ALL_PORTS)
        || (ranges
            && POLICY_RANGES
                .get(Key::new(
                    KEY_FULL_BITS,
                    key(endpoint, dir, identity, protocol, port),
                ))
                .is_some())
}

/// What policy says about one direction of a flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// No policy isolates the endpoint in this direction.
    Open,
    Allowed,
    Denied,
}

/// Whether `endpoint` may exchange this packet with `peer` in `dir`: a fixed
/// number of lookups, whatever the number of rules.
fn decide(endpoint: &EndpointInfo, dir: u8, peer: [u8; 4], protocol: u8, dport: u16) -> Decision {
    let Some(isolation) = ISOLATION.get_ptr(&endpoint.id) else {
        return Decision::Open;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let isolation = unsafe { *isolation };
    let isolated = if dir == direction::INGRESS {
        isolation.ingress
    } else {
        isolation.egress
    };
    if isolated == 0 {
        return Decision::Open;
    }
    let peer_id = peer_identity(peer);
    let ranges = isolation.has_ranges(dir);
    let hits = |identity| rule_hits(endpoint.id, dir, ranges, identity, protocol, dport);
    // The pod's own node (kubelet probes, and the replies to them) always
    // passes; the ipBlock region is looked up only when the peer's labels
    // did not decide, and an address in no region has only the ANY
    // identity's rules.
    let in_ip_block = || {
        let cidr_id = cidr_identity(peer);
        cidr_id != ANY_IDENTITY && hits(cidr_id)
    };
    if peer_id == identity::HOST || hits(peer_id) || in_ip_block() || hits(ANY_IDENTITY) {
        Decision::Allowed
    } else {
        Decision::Denied
    }
}

/// Policy for a flow's first packet (or a re-check): egress of a local
/// source, ingress of a local destination. Verdicts are counted where a
/// policy decided: a denial for the direction that denied, allowances only
/// when the flow passes as a whole.
fn check(key: &CtKey, src: Option<&EndpointInfo>, dst: Option<&EndpointInfo>) -> Result<(), u32> {
    let dport = policy_port(key);
    let egress = src.map(|src| decide(src, direction::EGRESS, key.daddr, key.protocol, dport));
    if egress == Some(Decision::Denied) {
        count_verdict(false, direction::EGRESS);
        return Err(reason::DROP_POLICY_EGRESS);
    }
    let ingress = dst.map(|dst| decide(dst, direction::INGRESS, key.saddr, key.protocol, dport));
    if ingress == Some(Decision::Denied) {
        count_verdict(false, direction::INGRESS);
        return Err(reason::DROP_POLICY_INGRESS);
    }
    if egress == Some(Decision::Allowed) {
        count_verdict(true, direction::EGRESS);
    }
    if ingress == Some(Decision::Allowed) {
        count_verdict(true, direction::INGRESS);
    }
    Ok(())
}

/// Ports only mean something to policy for TCP/UDP/SCTP.
fn policy_port(key: &CtKey) -> u16 {
    if key.protocol == IPPROTO_ICMP {
        0
    } else {
        key.dport
    }
}

/// The conntrack key of a packet with these addresses, protocol and
/// ports (ICMP: type/code and id).
fn ct_key(saddr: [u8; 4], daddr: [u8; 4], protocol: u8, sport: u16, dport: u16) -> CtKey {
    let (sport, dport) = match protocol {
        // Request and reply of an echo share the id.
        IPPROTO_ICMP => match sport >> 8 {
            ICMP_ECHO | ICMP_ECHO_REPLY => (dport, dport),
            _ => (0, 0),
        },
        _ => (sport, dport),
    };
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        protocol,
        _pad: [0; 3],
    }
}

/// A flow allowed by the current policy.
fn live(entry: Option<*mut CtEntry>, now: u64, revision: u32) -> bool {
    // SAFETY: a map value pointer, valid for this program run.
    entry.is_some_and(|e| unsafe {
        (*e).expires > now && (*e).revision == revision && (*e).flags & ct_flags::DENIED == 0
    })
}

/// Whether an ICMP error reports on a flow conntrack knows, checked
/// against the current policy: it then belongs to that flow (path MTU
/// discovery, port unreachable, ...). It must travel back to the quoted
/// packet's sender, and come from the quoted packet's destination or, when
/// not sent by a local pod, from a router on the path: a node, or a host
/// outside the cluster. No pod's address passes as a router's (pods'
/// sources are checked, tunnel sources too), so a pod can only report
/// errors on its own flows, never use someone else's flow to get past
/// policy.
fn related(quoted: &Quoted, pkt: &Ipv4Packet, from_local_pod: bool, now: u64, revision: u32) -> bool {
    if quoted.saddr != pkt.hdr.daddr {
        return false;
    }
    if quoted.daddr != pkt.hdr.saddr
        && (from_local_pod
            || !matches!(
                peer_identity(pkt.hdr.saddr),
                identity::HOST | identity::REMOTE_NODE | identity::WORLD
            ))
    {
        return false;
    }
    // For a quoted ICMP packet, l4[0] is its type/code and l4[2] its id.
    let (sport, dport) = if quoted.protocol == IPPROTO_ICMP {
        (quoted.l4[0], quoted.l4[2])
    } else {
        (quoted.l4[0], quoted.l4[1])
    };
    let key = ct_key(quoted.saddr, quoted.daddr, quoted.protocol, sport, dport);
    live(CONNTRACK.get_ptr_mut(&key), now, revision)
        || live(CONNTRACK.get_ptr_mut(&key.reversed()), now, revision)
}

fn lifetime(pkt: &Ipv4Packet, flags: u32) -> u64 {
    match pkt.hdr.protocol {
        IPPROTO_TCP => {
            if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 || flags & ct_flags::CLOSING != 0 {
                timeout::TCP_CLOSING
            } else if pkt.tcp_flags & TCP_SYN != 0 && pkt.tcp_flags & TCP_ACK == 0 {
                timeout::TCP_SYN
            } else {
                timeout::TCP_ESTABLISHED
            }
        }
        IPPROTO_UDP => timeout::UDP,
        IPPROTO_ICMP => timeout::ICMP,
        _ => timeout::OTHER,
    }
}

/// A tracked flow against the current policy, seen from its first packet
/// (`flow`, with `src`/`dst` its local endpoints): checked again once per
/// policy revision. A denial turns the entry into a tombstone for that
/// revision, and every later packet of the flow, in either direction, is
/// dropped with the same reason until the next policy change. Inlined:
/// BPF calls take at most five arguments.
#[inline(always)]
fn revalidate(
    entry: *mut CtEntry,
    pkt: &Ipv4Packet,
    flow: &CtKey,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
    now: u64,
    revision: u32,
) -> Result<(), u32> {
    // SAFETY: a map value pointer, valid for this program run.
    let (flags, checked_at) = unsafe { ((*entry).flags, (*entry).revision) };
    let verdict = if checked_at == revision {
        match flags & ct_flags::DENIED {
            0 => return Ok(()),
            ct_flags::DENIED_EGRESS => Err(reason::DROP_POLICY_EGRESS),
            _ => Err(reason::DROP_POLICY_INGRESS),
        }
    } else {
        check(flow, src, dst)
    };
    let denied = match verdict {
        Ok(()) => 0,
        Err(reason::DROP_POLICY_EGRESS) => ct_flags::DENIED_EGRESS,
        Err(_) => ct_flags::DENIED_INGRESS,
    };
    if checked_at == revision && denied != 0 {
        count_verdict(false, denied_direction(denied));
    }
    // SAFETY: as above.
    unsafe {
        (*entry).flags = (flags & !ct_flags::DENIED) | denied;
        if denied != 0 {
            // Kept alive by the flow's own attempts, so a retransmission
            // long after the change still finds it.
            (*entry).revision = revision;
            (*entry).expires = now + lifetime(pkt, flags);
        }
    }
    verdict
}

fn denied_direction(denied: u32) -> u8 {
    if denied == ct_flags::DENIED_EGRESS {
        direction::EGRESS
    } else {
        direction::INGRESS
    }
}

fn refresh(entry: *mut CtEntry, pkt: &Ipv4Packet, now: u64, revision: u32, reply: bool) {
    unsafe {
        let mut flags = (*entry).flags;
        if reply {
            flags |= ct_flags::SEEN_REPLY;
        }
        if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            flags |= ct_flags::CLOSING;
        }
        (*entry).flags = flags;
        (*entry).revision = revision;
        (*entry).expires = now + lifetime(pkt, flags);
    }
}

/// Decides a packet between `src` and `dst` (each given when it is a pod
/// on this node): `Err(reason)` to drop.
pub fn enforce(
    pkt: &Ipv4Packet,
    src: Option<&EndpointInfo>,
    dst: Option<&EndpointInfo>,
) -> Result<(), u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let revision = CONFIG.get(0).map(|c| c.policy_revision).unwrap_or(0);
    if let Some(quoted) = &pkt.quoted {
        if related(quoted, pkt, src.is_some(), now, revision) {
            return Ok(());
        }
    }
    let key = ct_key(
        pkt.hdr.saddr,
        pkt.hdr.daddr,
        pkt.hdr.protocol,
        pkt.sport,
        pkt.dport,
    );
    if let Some(entry) = CONNTRACK.get_ptr_mut(&key) {
        if unsafe { (*entry).expires } > now {
            revalidate(entry, pkt, &key, src, dst, now, revision)?;
            refresh(entry, pkt, now, revision, false);
            return Ok(());
        }
    }
    let reverse = key.reversed();
    if let Some(entry) = CONNTRACK.get_ptr_mut(&reverse) {
        if unsafe { (*entry).expires } > now {
            // A reply: what counts is whether the original direction is
            // still allowed.
            revalidate(entry, pkt, &reverse, dst, src, now, revision)?;
            refresh(entry, pkt, now, revision, true);
            return Ok(());
        }
    }
    check(&key, src, dst)?;
    let entry = CtEntry {
        expires: now + lifetime(pkt, 0),
        revision,
        flags: 0,
    };
    // A full table evicts the least recently used flow (LRU map); the
    // packet is allowed either way, it passed policy.
    let _ = CONNTRACK.insert(&key, &entry, 0);
    Ok(())
}
