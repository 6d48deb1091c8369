use sluice_common::metrics::index;

use crate::maps::METRICS;

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
