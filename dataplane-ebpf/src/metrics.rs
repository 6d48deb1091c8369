//! Per-CPU counters: packets and bytes by (reason, direction), and policy
//! verdicts by (verdict, direction).
use sluice_common::{
    counters::{index, verdict},
    direction::Direction,
    reason::Reason,
};

use crate::maps::{PACKET_COUNTERS, POLICY_VERDICTS, SERVICE_COUNTERS, TABLE_INSERTS};

#[inline(always)]
pub fn count(reason: Reason, direction: Direction, bytes: u32) {
    if let Some(counter) = PACKET_COUNTERS.get_ptr_mut(index(reason, direction)) {
        // SAFETY: a per-CPU array slot, valid for this program run; no
        // other CPU writes it and BPF programs do not preempt each other
        // on one CPU, so plain adds are race-free.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}

/// Counts one policy decision for one direction of a flow.
#[inline(always)]
pub fn count_verdict(verdict: verdict::Verdict, direction: Direction) {
    if let Some(n) = POLICY_VERDICTS.get_ptr_mut(verdict::index(verdict, direction)) {
        // SAFETY: a per-CPU array slot, as in `count`.
        unsafe { *n += 1 };
    }
}

/// Counts a new connection to the frontend `service`: given a backend, or
/// refused.
#[inline(always)]
pub fn count_service(service: u32, refused: bool) {
    if let Some(counter) = SERVICE_COUNTERS.get_ptr_mut(service) {
        // SAFETY: a per-CPU array slot, as in `count`.
        unsafe {
            if refused {
                (*counter).refused += 1;
            } else {
                (*counter).connections += 1;
            }
        }
    }
}

/// Counts a new entry in the LRU table of `slot`
/// ([`sluice_common::counters::inserts`]).
#[inline(always)]
pub fn count_insert(slot: u32) {
    if let Some(n) = TABLE_INSERTS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU array slot, as in `count`.
        unsafe { *n += 1 };
    }
}
