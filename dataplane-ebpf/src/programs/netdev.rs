//! The underlay device in native routing: `from_netdev` on its TCX ingress.
use aya_ebpf::programs::TcContext;

use super::to_local_pod;
use crate::{
    parse::{self, ETH_P_IP},
    verdict::{pass_uncounted, Verdict},
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
    let Ok(pkt) = parse::ipv4(ctx) else {
        return pass_uncounted();
    };
    to_local_pod(ctx, &pkt).unwrap_or(pass_uncounted())
}
