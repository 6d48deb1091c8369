//! The per-packet policy decision, written once: the eBPF programs run it
//! over the BPF maps, and user space (unit tests, the differential test,
//! the benches' checks) over in-memory copies of the same layout. Only the
//! map lookups differ, behind [`PolicyLookup`]; what is looked up, in which
//! order, and what the answers mean is this file.

use super::{peer_mark, Isolation, PolicyKey, ALL_PORTS, ANY_IDENTITY, ANY_PROTOCOL};
use crate::{direction::Direction, identity};

/// The maps a decision reads. Implementations answer exactly what the
/// kernel's maps would: hash lookups, and longest-prefix matches for the
/// tries.
pub trait PolicyLookup {
    /// The endpoint's entry in the isolation map.
    fn isolation(&self, endpoint: u32) -> Option<Isolation>;
    /// Whether the exact-port hash holds `key` (a rule or a peer mark).
    fn exact(&self, key: &PolicyKey) -> bool;
    /// Whether some prefix in the port-range trie covers the full-length
    /// `key`.
    fn range(&self, key: &PolicyKey) -> bool;
    /// The label identity of `addr` from the ipcache; `identity::WORLD`
    /// for addresses it does not know.
    fn peer_identity(&self, addr: [u8; 4]) -> u32;
    /// The identity of the ipBlock region `addr` falls in (the longest
    /// matching prefix), [`ANY_IDENTITY`] when in none.
    fn cidr_identity(&self, addr: [u8; 4]) -> u32;
}

/// What policy says about one direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No policy isolates the endpoint in this direction.
    Open,
    Allowed,
    Denied,
    /// Denied, but the endpoint is in audit mode for this direction: the
    /// packet passes and is reported as one policy would deny.
    WouldDeny,
}

/// The port policy sees: ports mean something only to TCP, UDP and SCTP
/// (ICMP's "ports" in a flow key are its type and echo id).
#[inline(always)]
pub const fn policy_port(protocol: u8, dport: u16) -> u16 {
    match protocol {
        6 | 17 | 132 => dport,
        _ => 0,
    }
}

/// Whether a rule of `endpoint` in `direction` lets `identity` through on
/// (`protocol`, `dport`): nothing unless some rule names the identity (its
/// mark, one lookup); then a rule on this port, on all ports of the
/// protocol, or on everything (hash lookups); then, for endpoints with port
/// ranges, a range covering the port (LPM).
#[inline(always)]
fn rule_hits<M: PolicyLookup>(maps: &M, query: &Query, identity: u32) -> bool {
    if !maps.exact(&peer_mark(query.endpoint, identity, query.direction)) {
        return false;
    }
    let key = |protocol, dport| PolicyKey {
        endpoint: query.endpoint,
        identity,
        direction: query.direction as u8,
        protocol,
        dport,
    };
    let port = query.dport.to_be_bytes();
    maps.exact(&key(query.protocol, port))
        || maps.exact(&key(query.protocol, ALL_PORTS))
        || maps.exact(&key(ANY_PROTOCOL, ALL_PORTS))
        || (query.ranges && maps.range(&key(query.protocol, port)))
}

/// One direction of one flow, as the lookups need it.
struct Query {
    endpoint: u32,
    direction: Direction,
    protocol: u8,
    dport: u16,
    ranges: bool,
}

/// Whether `endpoint` may exchange a packet with `peer` in `direction`
/// (`protocol`, destination port `dport` as the packet carries it): a
/// fixed number of lookups, whatever the number of rules. What policy
/// would deny an endpoint in audit mode is [`Decision::WouldDeny`].
///
/// The pod's own node (kubelet probes, and the replies to them) always
/// passes. A peer passes when a rule names its label identity, the ipBlock
/// region it falls in (looked up only when the labels did not decide), or
/// any peer.
#[inline(always)]
pub fn decide<M: PolicyLookup>(
    maps: &M,
    endpoint: u32,
    direction: Direction,
    peer: [u8; 4],
    protocol: u8,
    dport: u16,
) -> Decision {
    decide_as(
        maps,
        endpoint,
        direction,
        peer,
        protocol,
        dport,
        Audit::Decide,
    )
}

/// What [`decide_as`] does with a direction in audit mode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Audit {
    /// Decides it, what would be denied as [`Decision::WouldDeny`].
    Decide,
    /// Leaves it undecided ([`Decision::Open`]): nothing is enforced there.
    Skip,
}

#[inline(always)]
fn decide_as<M: PolicyLookup>(
    maps: &M,
    endpoint: u32,
    direction: Direction,
    peer: [u8; 4],
    protocol: u8,
    dport: u16,
    audit: Audit,
) -> Decision {
    let Some(isolation) = maps.isolation(endpoint) else {
        return Decision::Open;
    };
    // Audit mode leaves the isolation byte clear, so enforcement (`Skip`)
    // reads what it read before audit mode existed.
    let audited =
        audit == Audit::Decide && isolation.audits(direction) && !isolation.isolates(direction);
    if !isolation.isolates(direction) && !audited {
        return Decision::Open;
    }
    let query = Query {
        endpoint,
        direction,
        protocol,
        dport: policy_port(protocol, dport),
        ranges: isolation.has_ranges(direction),
    };
    let label = maps.peer_identity(peer);
    let in_ip_block = || {
        let cidr = maps.cidr_identity(peer);
        cidr != ANY_IDENTITY && rule_hits(maps, &query, cidr)
    };
    if label == identity::HOST
        || rule_hits(maps, &query, label)
        || in_ip_block()
        || rule_hits(maps, &query, ANY_IDENTITY)
    {
        Decision::Allowed
    } else if audited {
        Decision::WouldDeny
    } else {
        Decision::Denied
    }
}

/// The decisions about a new flow: the egress policy of its source, if a
/// local endpoint, then (unless egress denied it) the ingress policy of its
/// destination, if a local endpoint. `None`: not decided here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowDecision {
    pub egress: Option<Decision>,
    pub ingress: Option<Decision>,
}

impl FlowDecision {
    /// The direction that refuses the flow, if one does.
    pub fn denied_by(&self) -> Option<Direction> {
        if self.egress == Some(Decision::Denied) {
            Some(Direction::Egress)
        } else if self.ingress == Some(Decision::Denied) {
            Some(Direction::Ingress)
        } else {
            None
        }
    }
}

/// Decides a new flow from `saddr` to `daddr` (`src`/`dst`: the endpoint
/// ids of the ends that are local pods), as the datapath enforces it. Both
/// ends' policies must allow it; egress is decided first, and ingress is
/// not looked at once egress refused. A direction in audit mode is not
/// enforced: [`Decision::Open`] here, decided with [`decide`] where the
/// flow is reported (so the per-packet path never carries a would-deny,
/// nor pays for the lookups twice).
#[inline(always)]
pub fn decide_flow<M: PolicyLookup>(
    maps: &M,
    src: Option<u32>,
    dst: Option<u32>,
    saddr: [u8; 4],
    daddr: [u8; 4],
    protocol: u8,
    dport: u16,
) -> FlowDecision {
    let egress = src.map(|ep| {
        decide_as(
            maps,
            ep,
            Direction::Egress,
            daddr,
            protocol,
            dport,
            Audit::Skip,
        )
    });
    if egress == Some(Decision::Denied) {
        return FlowDecision {
            egress,
            ingress: None,
        };
    }
    let ingress = dst.map(|ep| {
        decide_as(
            maps,
            ep,
            Direction::Ingress,
            saddr,
            protocol,
            dport,
            Audit::Skip,
        )
    });
    FlowDecision { egress, ingress }
}
