use sluice_common::metrics::{index, verdict};

use crate::maps::{METRICS, POLICY_VERDICTS};

#[inline(always)]
pub fn count(reason: u32, direction: u32, bytes: u32) {
    if reason == crate::forward::UNCOUNTED {
        return;
    }
    if let Some(counter) = METRICS.get_ptr_mut(index(reason, direction)) {
        // Per-CPU slot: no other CPU writes it, plain adds are safe.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}

/// Counts one policy decision for one direction of a flow.
#[inline(always)]
pub fn count_verdict(allowed: bool, policy_direction: u8) {
    let v = if allowed {
        verdict::ALLOWED
    } else {
        verdict::DENIED
    };
    if let Some(n) = POLICY_VERDICTS.get_ptr_mut(verdict::index(v, policy_direction)) {
        // Per-CPU slot, as above.
        unsafe { *n += 1 };
    }
}
