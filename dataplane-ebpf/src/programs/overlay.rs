//! The node's collect-metadata VXLAN device: `from_overlay` on its TCX
//! ingress (pod traffic from other nodes), `to_overlay` on its TCX egress
//! (traffic the host stack routes to remote pods).
use aya_ebpf::programs::TcContext;
use sluice_common::{ipcache::flags, reason::Reason};

use super::{by_datagram, to_local_pod, FromNode};
use crate::{
    forward, lookup,
    parse::{self, ETH_P_IP},
    policy, service,
    verdict::{drop, pass, pass_uncounted, Verdict},
};

/// `skb->pkt_type` of a frame addressed to this host.
const PACKET_HOST: u32 = 0;

/// The IPv4 packet on a tunnel device, which carries nothing else.
fn ipv4_only(ctx: &TcContext) -> Result<parse::Ipv4Packet, Verdict> {
    let eth = parse::eth(ctx).map_err(drop)?;
    if u16::from_be(eth.proto) != ETH_P_IP {
        return Err(drop(Reason::DropUnsupportedL3));
    }
    parse::ipv4(ctx).map_err(drop)
}

/// The tunnel key says which node sent the packet; it may only send its
/// own pods' and its own traffic. Then local pods get it directly (their
/// ingress policy applies), and the rest is the host's.
pub fn from_overlay(ctx: &TcContext) -> Verdict {
    let Some(sender) = forward::tunnel_source(ctx) else {
        return drop(Reason::DropNoTunnelKey);
    };
    let mut pkt = match ipv4_only(ctx) {
        Ok(pkt) => pkt,
        Err(verdict) => return verdict,
    };
    match lookup::ipcache(pkt.hdr.saddr) {
        Some(src) if src.tunnel_endpoint == sender => {}
        _ => return drop(Reason::DropTunnelSource),
    }
    by_datagram(ctx, &mut pkt, from_node)
}

/// An IPv4 packet from the node that sent it (checked).
#[inline(always)]
fn from_node(ctx: &TcContext, pkt: &mut parse::Ipv4Packet) -> Verdict {
    if let FromNode::Done(verdict) = to_local_pod(ctx, pkt) {
        return verdict;
    }
    // For the host itself (e.g. replies to the node's own connections), or
    // answering a flow it forwarded, which it translates back.
    // The inner destination MAC is the sending node's device address, so
    // the stack would discard the frame as someone else's.
    if ctx.change_type(PACKET_HOST).is_err() {
        return drop(Reason::DropPacketTypeFailed);
    }
    pass(Reason::ToStack)
}

/// Pod traffic arrives with its tunnel key set (by `from_container`); what
/// the host stack routes here (the node's own, and pods' packets it
/// forwarded) gets one from the ipcache. A backend's reply to another
/// node's pod that reached this node's NodePort gets the frontend back,
/// as replies leaving through the underlay do.
pub fn to_overlay(ctx: &TcContext) -> Verdict {
    if forward::tunnel_source(ctx).is_some() {
        return pass_uncounted();
    }
    let mut pkt = match ipv4_only(ctx) {
        Ok(pkt) => pkt,
        Err(verdict) => return verdict,
    };
    by_datagram(ctx, &mut pkt, to_node)
}

/// An IPv4 packet the host stack routes to another node.
#[inline(always)]
fn to_node(ctx: &TcContext, pkt: &mut parse::Ipv4Packet) -> Verdict {
    match lookup::ipcache(pkt.hdr.daddr) {
        Some(dst) if dst.flags & flags::REMOTE_POD_CIDR != 0 => {
            if let Some(src) = lookup::local_endpoint(pkt.hdr.saddr) {
                // A pod's packet the stack forwarded here (after a
                // Service DNAT, say): the reply must come back through it.
                policy::note_stack_forwarded(pkt, &src);
            }
            if let Err(reason) = service::leaving_node(ctx, pkt) {
                return drop(reason);
            }
            match forward::set_tunnel_key(ctx, dst.tunnel_endpoint) {
                Ok(()) => pass(Reason::ForwardTunnel),
                Err(reason) => drop(reason),
            }
        }
        _ => drop(Reason::DropNoTunnelEndpoint),
    }
}
