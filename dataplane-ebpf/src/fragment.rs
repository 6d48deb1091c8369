//! IPv4 fragments: a datagram's first fragment is decided like any packet
//! and its ports and verdict are kept (`SLUICE_FRAGMENTS`, keyed by the
//! datagram: addresses as received, protocol, IP id); its later fragments,
//! which carry no L4 header, get those ports back and go the same way
//! (conntrack, policy, translation), or are dropped under the first
//! fragment's reason. A later fragment whose first one is unknown keeps
//! ports zero and is marked untracked: a pod's is dropped
//! ([`Reason::DropFragmentUntracked`], see [`decidable`]), the node's own
//! traffic passes.
use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::bpf_ktime_get_ns};
use sluice_common::{
    fragment::{FragEntry, FragKey, LIFETIME_NS},
    reason::Reason,
};

use crate::{
    maps::FRAGMENTS,
    parse::{Frag, Ipv4Packet},
    verdict::Verdict,
};

/// The datagram a packet belongs to, by its header as it is now.
#[inline(always)]
fn key(pkt: &Ipv4Packet) -> FragKey {
    FragKey {
        saddr: pkt.hdr.saddr,
        daddr: pkt.hdr.daddr,
        id: pkt.hdr.id,
        protocol: pkt.hdr.protocol,
        _pad: 0,
    }
}

/// A later fragment gets its first fragment's ports (and becomes
/// [`Frag::Later`]); `Err(reason)`: the first fragment was dropped, under
/// `reason`. Unknown (or expired): left [`Frag::Untracked`], ports zero.
#[inline(always)]
pub fn resolve(pkt: &mut Ipv4Packet) -> Result<(), Reason> {
    // SAFETY: a map value pointer, valid for this program run; copied out.
    let Some(first) = FRAGMENTS.get_ptr(&key(pkt)).map(|e| unsafe { *e }) else {
        return Ok(());
    };
    // SAFETY: a helper without arguments or side effects.
    if first.expires <= unsafe { bpf_ktime_get_ns() } {
        return Ok(());
    }
    if first.dropped != 0 {
        // Not a reason this version knows (an older object's entry):
        // dropped all the same.
        return Err(Reason::from_number(first.dropped).unwrap_or(Reason::DropFragmentUntracked));
    }
    pkt.sport = first.sport;
    pkt.dport = first.dport;
    pkt.frag = Frag::Later;
    Ok(())
}

/// Whether policy can decide the packet: not a later fragment whose
/// first fragment is unknown. Checked where a packet is known to be a
/// pod's (before the decision, not inside it: an early return there has
/// the compiler spill an absent endpoint's undefined payload, which the
/// verifier refuses).
#[inline(always)]
pub fn decidable(pkt: &Ipv4Packet) -> Result<(), Reason> {
    if pkt.frag == Frag::Untracked {
        return Err(Reason::DropFragmentUntracked);
    }
    Ok(())
}

/// A first fragment as it arrived, before the program decided (and maybe
/// translated) it.
#[derive(Clone, Copy)]
pub struct First {
    key: FragKey,
    sport: u16,
    dport: u16,
}

impl First {
    #[inline(always)]
    pub fn of(pkt: &Ipv4Packet) -> Self {
        Self {
            key: key(pkt),
            sport: pkt.sport,
            dport: pkt.dport,
        }
    }

    /// Keeps what the program decided for the datagram's later fragments.
    /// A full table evicts the least recently used datagram's (LRU map):
    /// its later fragments are then dropped as untracked.
    #[inline(always)]
    pub fn record(&self, verdict: &Verdict) {
        let dropped = match verdict.reason {
            Some(reason) if verdict.action == TC_ACT_SHOT as i32 => reason as u32,
            _ => 0,
        };
        let entry = FragEntry {
            // SAFETY: a helper without arguments or side effects.
            expires: unsafe { bpf_ktime_get_ns() } + LIFETIME_NS,
            sport: self.sport,
            dport: self.dport,
            dropped,
        };
        let _ = FRAGMENTS.insert(&self.key, &entry, 0);
    }
}
