//! NetworkPolicy maps: what each local endpoint may send and receive,
//! written against identities so the per-packet cost is a fixed number of
//! lookups whatever the number of rules.
//!
//! - `SLUICE_POLICY_EXACT` (hash): [`PolicyKey`] → [`PolicyEntry`] for rules
//!   on one port, or on all ports ([`ALL_PORTS`]). Most rules are of this
//!   kind, and a hash lookup costs the same with 10 or 10,000 of them.
//! - `SLUICE_POLICY_RANGES` (LPM trie): the same keys for port ranges (`endPort`):
//!   every field but the port is matched in full, the port by prefix, so a
//!   range is a handful of prefixes, not a loop. Consulted only for
//!   endpoints that have range rules ([`Isolation::ranges`]).
//! - `SLUICE_ISOLATION` (hash): endpoint id → [`Isolation`]: for each
//!   direction some policy selects the endpoint in, whether that is
//!   enforced or in audit mode. An endpoint absent here is open in both
//!   directions.
//! - `SLUICE_CIDR_IDENTITY` (LPM trie, key as the ipcache's): address →
//!   identity of the ipBlock region it falls in. ipBlocks match pod
//!   addresses too, so a packet is checked against both its peer's label
//!   identity (ipcache) and this one.
//!
//! What the programs make of these maps is [`decide`], shared with user
//! space so tests decide packets with the very same code.

mod decide;

pub use decide::{decide, decide_flow, policy_port, Decision, FlowDecision, PolicyLookup};

use crate::direction::Direction;

/// Number of key bits before the port: endpoint (32), identity (32),
/// direction (8), protocol (8).
pub const KEY_FIXED_BITS: u32 = 80;
/// Prefix length of a key matching one exact port.
pub const KEY_FULL_BITS: u32 = KEY_FIXED_BITS + 16;

/// `identity` of a key that matches any peer.
pub const ANY_IDENTITY: u32 = 0;
/// `protocol` of a key that matches any protocol (a rule without ports).
pub const ANY_PROTOCOL: u8 = 0;
/// `dport` of an exact-map key that matches every port. Port 0 is not a
/// port a rule can name (1-65535), and a packet to port 0 matching a rule
/// that allows all ports is right anyway.
pub const ALL_PORTS: [u8; 2] = [0, 0];

/// Bit set in the `direction` of an exact-map key that marks a peer: the
/// key (endpoint, identity, direction | PEER_MARK, 0, ALL_PORTS) exists when
/// some rule of the endpoint in that direction names the identity. A
/// lookup of an identity without its mark stops at one miss, so a denied
/// flow costs one lookup per identity instead of one per rule shape. No
/// rule's direction has the bit, so a mark never allows anything itself.
pub const PEER_MARK: u8 = 0x80;

/// The mark of `identity` among `endpoint`'s rules in `direction`.
pub const fn peer_mark(endpoint: u32, identity: u32, direction: Direction) -> PolicyKey {
    PolicyKey {
        endpoint,
        identity,
        direction: direction as u8 | PEER_MARK,
        protocol: ANY_PROTOCOL,
        dport: ALL_PORTS,
    }
}

/// Data of an LPM key of the policy map (its prefix length travels beside
/// it). Byte order matters for the prefix match: `dport` is big-endian so
/// its high bits come first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The local endpoint the rule protects (its endpoint id).
    pub endpoint: u32,
    /// The peer: a label identity, a CIDR identity, or [`ANY_IDENTITY`].
    pub identity: u32,
    /// A [`Direction`], with [`PEER_MARK`] set in marks.
    pub direction: u8,
    /// IP protocol number, or [`ANY_PROTOCOL`].
    pub protocol: u8,
    /// Destination port, network byte order.
    pub dport: [u8; 2],
}

/// Value of the policy map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEntry {
    /// [`entry::ALLOW`]; other bits reserved for deny tiers later.
    pub flags: u32,
    pub _pad: u32,
}

pub mod entry {
    pub const ALLOW: u32 = 1;
}

/// Value of the isolation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Some policy selects the endpoint for ingress and it is enforced:
    /// only allowed peers in.
    pub ingress: u8,
    /// ... for egress.
    pub egress: u8,
    /// Bit `1 << direction as u8`: the port-range trie holds rules of this
    /// endpoint for that direction, so lookups there are worth making.
    pub ranges: u8,
    /// Bit `1 << direction as u8`: audit mode. Some policy selects the
    /// endpoint for that direction and its rules are in the maps, but it
    /// is not enforced (its `ingress`/`egress` byte is zero, so the
    /// enforcing path needs no second look): what it would deny passes,
    /// reported as would-deny. (This byte was padding before audit mode:
    /// zero, enforcing.)
    pub audit: u8,
}

impl Isolation {
    /// Whether some policy isolates the endpoint in `direction`, enforced.
    pub const fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress != 0,
            Direction::Egress => self.egress != 0,
        }
    }

    /// Isolates `direction`, enforced (also where it was in audit mode:
    /// enforcement wins, e.g. for an endpoint without an identity).
    pub fn isolate(&mut self, direction: Direction) {
        match direction {
            Direction::Ingress => self.ingress = 1,
            Direction::Egress => self.egress = 1,
        }
        self.audit &= !(1 << direction as u8);
    }

    pub const fn has_ranges(&self, direction: Direction) -> bool {
        self.ranges & (1 << direction as u8) != 0
    }

    pub fn set_ranges(&mut self, direction: Direction) {
        self.ranges |= 1 << direction as u8;
    }

    /// Whether `direction` is in audit mode: decided and reported, not
    /// enforced.
    pub const fn audits(&self, direction: Direction) -> bool {
        self.audit & (1 << direction as u8) != 0
    }

    /// Puts `direction`, if isolated, in audit mode: still decided, no
    /// longer enforced.
    pub fn audit(&mut self, direction: Direction) {
        if self.isolates(direction) {
            match direction {
                Direction::Ingress => self.ingress = 0,
                Direction::Egress => self.egress = 0,
            }
            self.audit |= 1 << direction as u8;
        }
    }
}

const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);
const _: () = assert!(core::mem::size_of::<PolicyEntry>() == 8);
const _: () = assert!(core::mem::size_of::<Isolation>() == 4);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyEntry {}
    unsafe impl aya::Pod for super::Isolation {}
}
