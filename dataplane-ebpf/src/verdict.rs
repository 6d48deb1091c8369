//! What a program returns (a TC action) and the reason its packet is
//! counted under.
use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use sluice_common::reason::Reason;

#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: i32,
    /// `None`: not counted (the underlay's own traffic passing by).
    pub reason: Option<Reason>,
}

/// Let the packet continue on its way (the host stack, or the device).
pub const fn pass(reason: Reason) -> Verdict {
    Verdict {
        action: TC_ACT_OK,
        reason: Some(reason),
    }
}

/// Let a packet that is none of the dataplane's business continue,
/// uncounted.
pub const fn pass_uncounted() -> Verdict {
    Verdict {
        action: TC_ACT_OK,
        reason: None,
    }
}

pub const fn drop(reason: Reason) -> Verdict {
    Verdict {
        action: TC_ACT_SHOT,
        reason: Some(reason),
    }
}

/// The packet was redirected by a helper.
pub const fn redirected(reason: Reason) -> Verdict {
    Verdict {
        action: TC_ACT_REDIRECT,
        reason: Some(reason),
    }
}
