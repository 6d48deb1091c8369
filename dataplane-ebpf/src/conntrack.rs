//! Connection tracking: one entry per flow, keyed by its tuple in a
//! direction-independent order, so a packet and its reply find it in one
//! lookup. Entries carry the policy revision they were checked at and,
//! when the policy of that revision refuses the flow, which direction
//! refused it (a tombstone). What to do with an entry is policy's business
//! (`policy::enforce`), and so is which flows get one; this module keeps
//! the entries, and per local pod until when its flows need them
//! (`STATEFUL_ENDPOINTS`).
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns};
use sluice_common::{
    conntrack::{ct_flags, stateful_slot, timeout, CtEntry, CtKey},
    counters::inserts,
    direction::Direction,
    identity,
};

use crate::{
    lookup::peer_identity,
    maps::{CONNTRACK, STATEFUL_ENDPOINTS},
    metrics,
    parse::{
        Ipv4Packet, Quoted, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST,
        TCP_SYN,
    },
};

const ICMP_ECHO_REPLY: u16 = 0;
const ICMP_ECHO: u16 = 8;

/// The conntrack key of a packet with these addresses, protocol and ports
/// (ICMP: type/code and id).
#[inline(always)]
pub fn key(saddr: [u8; 4], daddr: [u8; 4], protocol: u8, sport: u16, dport: u16) -> CtKey {
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

/// The key of a packet's own tuple.
#[inline(always)]
pub fn packet_key(pkt: &Ipv4Packet) -> CtKey {
    key(
        pkt.hdr.saddr,
        pkt.hdr.daddr,
        pkt.hdr.protocol,
        pkt.sport,
        pkt.dport,
    )
}

/// Conntrack's clock: the coarse monotonic clock (a tick's resolution is
/// plenty for lifetimes of seconds, and reading it costs a load, not a
/// clock source read).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A tracked flow: a pointer into the map, valid for this program run.
#[derive(Clone, Copy)]
pub struct Entry(*mut CtEntry);

/// A packet's flow as conntrack keys it: the normalized key, and whether
/// the packet runs from the key's `daddr` end (see [`CtKey::normalized`]).
#[derive(Clone, Copy)]
pub struct FlowKey {
    pub key: CtKey,
    pub reversed: bool,
}

impl FlowKey {
    #[inline(always)]
    pub fn of(tuple: &CtKey) -> Self {
        let (key, reversed) = tuple.normalized();
        Self { key, reversed }
    }
}

/// The unexpired entry of a flow, whichever way `flow`'s packet runs.
#[inline(always)]
pub fn lookup(flow: &FlowKey, now: u64) -> Option<Entry> {
    let entry = CONNTRACK.get_ptr_mut(&flow.key)?;
    // SAFETY: a map value pointer, valid for this program run.
    (unsafe { (*entry).expires } > now).then_some(Entry(entry))
}

/// Whether a local pod's flows must go through conntrack though no policy
/// isolates it: a flow of it needs its entry, until the time kept in its
/// slot (zero, never: no clock read). A missing slot (cannot happen: an
/// array) counts as needing it.
#[inline(always)]
pub fn stateful(endpoint: u32) -> bool {
    STATEFUL_ENDPOINTS
        .get(stateful_slot(endpoint))
        .is_none_or(|until| *until != 0 && *until > now())
}

/// Keeps a local pod's flows in conntrack until `until` at least.
#[inline(always)]
pub fn keep_stateful(endpoint: u32, until: u64) {
    if let Some(slot) = STATEFUL_ENDPOINTS.get_ptr_mut(stateful_slot(endpoint)) {
        // SAFETY: an array slot, valid for this program run; a lost update
        // between CPUs is redone by the flow's next refresh (a second
        // later at most), well before the older time runs out.
        unsafe {
            if *slot < until {
                *slot = until;
            }
        }
    }
}

/// What the entry's last check said, if it was at `revision`: `Ok` for an
/// allowed flow, `Err(direction)` for a tombstone.
pub enum Checked {
    AtRevision(Result<(), Direction>),
    Outdated,
}

impl Entry {
    #[inline(always)]
    pub fn checked(&self, revision: u32) -> Checked {
        // SAFETY: a map value pointer, valid for this program run.
        let (flags, checked_at) = unsafe { ((*self.0).flags, (*self.0).revision) };
        if checked_at != revision {
            return Checked::Outdated;
        }
        Checked::AtRevision(match flags & ct_flags::DENIED {
            0 => Ok(()),
            ct_flags::DENIED_EGRESS => Err(Direction::Egress),
            _ => Err(Direction::Ingress),
        })
    }

    /// Records the verdict of a check at `revision`. A denial keeps the
    /// entry alive as a tombstone: renewed by the flow's own attempts, so
    /// a retransmission long after the change still finds it.
    #[inline(always)]
    pub fn set_checked(
        &self,
        pkt: &Ipv4Packet,
        verdict: Result<(), Direction>,
        revision: u32,
        now: u64,
    ) {
        let denied = match verdict {
            Ok(()) => 0,
            Err(Direction::Egress) => ct_flags::DENIED_EGRESS,
            Err(Direction::Ingress) => ct_flags::DENIED_INGRESS,
        };
        // SAFETY: a map value pointer, valid for this program run; entries
        // are per flow and a lost update between CPUs only delays expiry.
        unsafe {
            let flags = ((*self.0).flags & !ct_flags::DENIED) | denied;
            (*self.0).flags = flags;
            if denied != 0 {
                (*self.0).revision = revision;
                (*self.0).expires = now + lifetime(pkt, flags);
            }
        }
    }

    /// A packet of an allowed flow passed: renew the entry's lifetime, if
    /// it moves by more than [`timeout::REFRESH`] or the flags or revision
    /// change (so a busy flow writes its entry once a second, not once a
    /// packet). `Some(expires)`: the entry was written.
    #[inline(always)]
    pub fn refresh(&self, pkt: &Ipv4Packet, revision: u32, now: u64) -> Option<u64> {
        // SAFETY: as in `set_checked`.
        unsafe {
            let old = (*self.0).flags;
            let mut flags = old;
            if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                flags |= ct_flags::CLOSING;
            }
            let expires = now + lifetime(pkt, flags);
            if flags == old
                && (*self.0).revision == revision
                && expires <= (*self.0).expires + timeout::REFRESH
            {
                return None;
            }
            (*self.0).flags = flags;
            (*self.0).revision = revision;
            (*self.0).expires = expires;
            Some(expires)
        }
    }

    /// Whether `flow`'s packet runs the way the flow's first packet did
    /// (else it is a reply).
    #[inline(always)]
    pub fn forward(&self, flow: &FlowKey) -> bool {
        self.has(ct_flags::REVERSED) == flow.reversed
    }

    /// Which end opened the flow is a guess, and policy must allow it both
    /// ways.
    #[inline(always)]
    pub fn adopted(&self) -> bool {
        self.has(ct_flags::ADOPTED)
    }

    /// Its local pods need the entry (see [`ct_flags::STEERS`]).
    #[inline(always)]
    pub fn steers(&self) -> bool {
        self.has(ct_flags::STEERS)
    }

    /// Allowed by the policy of `revision`, not a tombstone.
    #[inline(always)]
    fn live(&self, revision: u32) -> bool {
        matches!(self.checked(revision), Checked::AtRevision(Ok(())))
    }

    /// The host stack handed the flow in: its replies go back through it.
    #[inline(always)]
    pub fn via_stack(&self) -> bool {
        self.has(ct_flags::VIA_STACK)
    }

    /// The flow is a translated connection to a Service.
    #[inline(always)]
    pub fn service(&self) -> bool {
        self.has(ct_flags::SERVICE)
    }

    /// Whether `pkt` (running the way the flow's first packet did) opens a
    /// new TCP connection on this entry's tuple (a
    /// client reusing its port) rather than belonging to the entry's: a
    /// bare SYN after the old connection closed, or one that reaches the
    /// tuple another way than the old one did (`flags`, what a new flow
    /// would be tracked with: translated by a Service or not, handed in by
    /// the stack or not). Without this the new connection would inherit
    /// the old one's translation: a direct connection's replies would get
    /// a Service's address, and the other way round.
    #[inline(always)]
    pub fn superseded_by(&self, pkt: &Ipv4Packet, flags: u32) -> bool {
        if pkt.hdr.protocol != IPPROTO_TCP || pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return false;
        }
        // SAFETY: a map value pointer, valid for this program run.
        let old = unsafe { (*self.0).flags };
        let how = ct_flags::SERVICE | ct_flags::VIA_STACK;
        old & ct_flags::CLOSING != 0 || old & how != flags & how
    }

    #[inline(always)]
    fn has(&self, flag: u32) -> bool {
        // SAFETY: a map value pointer, valid for this program run.
        unsafe { (*self.0).flags & flag != 0 }
    }
}

/// Tracks a new flow that passed policy, `flow` keyed from its first
/// packet (`flags`: how it was reached, [`ct_flags`]); returns when the
/// entry expires. A full table evicts the least recently used flow (LRU
/// map); the packet is allowed either way. New keys are counted, so the
/// agent can tell evictions from what the table still holds; a key held
/// already (an expired or revoked flow's) is overwritten uncounted.
#[inline(always)]
pub fn track(flow: &FlowKey, pkt: &Ipv4Packet, flags: u32, revision: u32, now: u64) -> u64 {
    let flags = if flow.reversed {
        flags | ct_flags::REVERSED
    } else {
        flags
    };
    let expires = now + lifetime(pkt, flags);
    let entry = CtEntry {
        expires,
        revision,
        flags,
    };
    if CONNTRACK
        .insert(&flow.key, &entry, BPF_NOEXIST as u64)
        .is_ok()
    {
        metrics::count_insert(inserts::CONNTRACK);
    } else {
        let _ = CONNTRACK.insert(&flow.key, &entry, 0);
    }
    expires
}

/// How long a flow lives without packets, from its last packet (and the
/// entry's flags).
#[inline(always)]
pub fn lifetime(pkt: &Ipv4Packet, flags: u32) -> u64 {
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

/// Whether an ICMP error reports on a flow conntrack knows, allowed by the
/// current policy: it then belongs to that flow (path MTU discovery, port
/// unreachable, ...). It must travel back to the quoted packet's sender,
/// and come from the quoted packet's destination or, when not sent by a
/// local pod, from a router on the path: a node, or a host outside the
/// cluster. No pod's address passes as a router's (pods' sources are
/// checked, tunnel sources too), so a pod can only report errors on its
/// own flows, never use someone else's flow to get past policy. `Some`:
/// related, and to what kind of flow.
#[inline(always)]
pub fn related(
    quoted: &Quoted,
    pkt: &Ipv4Packet,
    from_local_pod: bool,
    now: u64,
    revision: u32,
) -> Option<Related> {
    if quoted.saddr != pkt.hdr.daddr {
        return None;
    }
    if quoted.daddr != pkt.hdr.saddr
        && (from_local_pod
            || !matches!(
                peer_identity(pkt.hdr.saddr),
                identity::HOST | identity::REMOTE_NODE | identity::WORLD
            ))
    {
        return None;
    }
    // For a quoted ICMP packet, l4[0] is its type/code and l4[2] its id.
    let (sport, dport) = if quoted.protocol == IPPROTO_ICMP {
        (quoted.l4[0], quoted.l4[2])
    } else {
        (quoted.l4[0], quoted.l4[1])
    };
    let flow = FlowKey::of(&key(
        quoted.saddr,
        quoted.daddr,
        quoted.protocol,
        sport,
        dport,
    ));
    let entry = lookup(&flow, now).filter(|e| e.live(revision))?;
    Some(Related {
        via_stack: entry.via_stack(),
        // About the flow's own direction: for a translated one, the quote
        // names the backend the client never addressed.
        service: entry.service() && entry.forward(&flow),
    })
}

/// What an ICMP error's flow is.
#[derive(Clone, Copy)]
pub struct Related {
    /// The stack handed the flow in: the error goes back through it too,
    /// which translates the quote as well.
    pub via_stack: bool,
    /// It reports on a client's packet translated to a Service backend:
    /// the quote must name the frontend again.
    pub service: bool,
}
