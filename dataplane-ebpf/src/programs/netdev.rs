//! The underlay device in native routing: `from_netdev` on its TCX
//! ingress, `to_netdev` on its TCX egress.
use aya_ebpf::programs::TcContext;

use sluice_common::reason::Reason;

use super::{to_local_pod, FromNode};
use crate::{
    lookup,
    parse::{self, ETH_P_IP},
    policy,
    verdict::{pass, pass_uncounted, Verdict},
};

/// Local pods' traffic from other nodes skips the host stack; the node's
/// own traffic is left alone, whatever it is, and not counted.
pub fn from_netdev(ctx: &TcContext) -> Verdict {
    let Ok(eth) = parse::eth(ctx) else {
        return pass_uncounted();
    };
    if u16::from_be(eth.proto) != ETH_P_IP {
        return pass_uncounted();
    }
    let Ok(mut pkt) = parse::ipv4(ctx) else {
        return pass_uncounted();
    };
    match to_local_pod(ctx, &mut pkt) {
        FromNode::Done(verdict) => verdict,
        FromNode::ToStack => pass(Reason::ToStack),
        FromNode::NotLocal => pass_uncounted(),
    }
}

/// Everything leaving through the underlay passes, uncounted; a local
/// pod's packet that the stack forwarded here (after a Service DNAT, say)
/// is noted, so the reply from the other node goes back through the stack.
/// Packets `from_container` routed here itself belong to flows conntrack
/// already knows and are left as they are.
pub fn to_netdev(ctx: &TcContext) -> Verdict {
    let Ok(eth) = parse::eth(ctx) else {
        return pass_uncounted();
    };
    if u16::from_be(eth.proto) != ETH_P_IP {
        return pass_uncounted();
    }
    let Ok(pkt) = parse::ipv4(ctx) else {
        return pass_uncounted();
    };
    if lookup::local_endpoint(pkt.hdr.saddr).is_some() {
        policy::note_stack_forwarded(&pkt);
    }
    pass_uncounted()
}
