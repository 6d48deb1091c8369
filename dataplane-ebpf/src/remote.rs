//! Other nodes: sending pod traffic to them (VXLAN tunnel or native
//! routing) and taking theirs in.
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, bpf_tunnel_key, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK,
        TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_get_tunnel_key,
        bpf_skb_set_tunnel_key,
    },
    maps::lpm_trie::Key,
    programs::TcContext,
};
use sluice_common::{
    identity,
    ipcache::{flags, routing, Ipv4Prefix, RemoteInfo},
    metrics::reason,
};

use crate::{
    forward::{decrement_ttl, to_local_pod, verdict, Verdict, UNCOUNTED},
    maps::{CONFIG, IPCACHE},
    parse::{self, ETH_P_IP},
    policy::peer_identity,
};

const AF_INET: u8 = 2;
/// The route is enough; bpf_redirect_neigh resolves the neighbour itself.
const BPF_FIB_LOOKUP_SKIP_NEIGH: u32 = 1 << 2;
/// `skb->pkt_type` of a frame addressed to this host.
const PACKET_HOST: u32 = 0;

pub fn ipcache(addr: [u8; 4]) -> Option<&'static RemoteInfo> {
    IPCACHE.get(Key::new(32, Ipv4Prefix { addr }))
}

/// The tunnel metadata the packet carries, if any.
fn tunnel_key(ctx: &TcContext) -> Option<bpf_tunnel_key> {
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    let ret = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    (ret == 0).then_some(key)
}

/// Sets the tunnel key: to node `endpoint`, VNI = `identity`.
fn set_tunnel_key(ctx: &TcContext, endpoint: [u8; 4], identity: u32) -> Result<(), ()> {
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    key.tunnel_id = identity;
    // The helper takes the address in host order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(endpoint);
    key.tunnel_ttl = 64;
    let ret = unsafe {
        bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// The IPv4 packet on a tunnel device, which carries nothing else.
fn ipv4_only(ctx: &TcContext) -> Result<parse::Ipv4Packet, Verdict> {
    let eth = parse::eth(ctx).map_err(|_| verdict(TC_ACT_SHOT, reason::DROP_MALFORMED))?;
    if u16::from_be(eth.proto) != ETH_P_IP {
        return Err(verdict(TC_ACT_SHOT, reason::DROP_UNSUPPORTED_L3));
    }
    parse::ipv4(ctx).map_err(|_| verdict(TC_ACT_SHOT, reason::DROP_MALFORMED))
}

/// A pod's packet for a non-local address: to the node owning it, or to the
/// host stack (outside the cluster: masqueraded there).
pub fn forward(ctx: &TcContext, hdr: &parse::Ipv4Hdr) -> Verdict {
    let Some(config) = CONFIG.get(0) else {
        return verdict(TC_ACT_OK, reason::TO_STACK);
    };
    let Some(remote) = ipcache(hdr.daddr) else {
        return verdict(TC_ACT_OK, reason::TO_STACK);
    };
    if remote.flags & flags::REMOTE_POD_CIDR == 0 {
        return verdict(TC_ACT_OK, reason::TO_STACK);
    }
    match config.routing {
        routing::TUNNEL => {
            let endpoint = remote.tunnel_endpoint;
            let ifindex = config.tunnel_ifindex;
            if decrement_ttl(ctx, hdr).is_err() {
                return verdict(TC_ACT_SHOT, reason::DROP_MALFORMED);
            }
            // The VNI carries the sender's identity as this node's ipcache
            // knows it (the receiver enforces with its own ipcache; the VNI
            // is for visibility).
            let src_identity = peer_identity(hdr.saddr);
            encapsulate(ctx, endpoint, src_identity, ifindex)
        }
        routing::NATIVE => route_native(ctx, hdr),
        _ => verdict(TC_ACT_OK, reason::TO_STACK),
    }
}

/// Sets the tunnel key (destination node, VNI = source identity) and hands
/// the packet to the collect-metadata VXLAN device.
fn encapsulate(ctx: &TcContext, endpoint: [u8; 4], src_identity: u32, ifindex: u32) -> Verdict {
    if set_tunnel_key(ctx, endpoint, src_identity).is_err() {
        return verdict(TC_ACT_SHOT, reason::DROP_NO_TUNNEL_KEY);
    }
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret == i64::from(TC_ACT_REDIRECT) {
        verdict(TC_ACT_REDIRECT, reason::FORWARD_TUNNEL)
    } else {
        verdict(TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED)
    }
}

/// Native routing: the kernel's FIB picks the underlay device and next hop;
/// anything it cannot forward directly (no route, MTU exceeded, forwarding
/// off) goes to the host stack, which answers with the right ICMP error.
fn route_native(ctx: &TcContext, hdr: &parse::Ipv4Hdr) -> Verdict {
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.family = AF_INET;
    params.l4_protocol = hdr.protocol;
    params.__bindgen_anon_2.tos = hdr.tos;
    // __be32 fields: the bytes as on the wire.
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(hdr.saddr);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(hdr.daddr);
    params.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return verdict(TC_ACT_OK, reason::TO_STACK);
    }
    if decrement_ttl(ctx, hdr).is_err() {
        return verdict(TC_ACT_SHOT, reason::DROP_MALFORMED);
    }
    let mut nh: bpf_redir_neigh = unsafe { zeroed() };
    nh.nh_family = u32::from(AF_INET);
    // After the lookup ipv4_dst is the next hop (the gateway, if any).
    nh.__bindgen_anon_1.ipv4_nh = unsafe { params.__bindgen_anon_4.ipv4_dst };
    let ret = unsafe {
        bpf_redirect_neigh(
            params.ifindex,
            &mut nh,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    if ret == i64::from(TC_ACT_REDIRECT) {
        verdict(TC_ACT_REDIRECT, reason::FORWARD_NATIVE)
    } else {
        verdict(TC_ACT_SHOT, reason::DROP_REDIRECT_FAILED)
    }
}

/// TC ingress of the VXLAN device: the tunnel key says which node sent the
/// packet and, in the VNI, the sender's identity (for ingress policy).
pub fn from_overlay(ctx: &TcContext) -> Verdict {
    let Some(key) = tunnel_key(ctx) else {
        return verdict(TC_ACT_SHOT, reason::DROP_NO_TUNNEL_KEY);
    };
    let sender = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();
    let pkt = match ipv4_only(ctx) {
        Ok(pkt) => pkt,
        Err(v) => return v,
    };
    // A node may only send its own pods' and its own traffic.
    match ipcache(pkt.hdr.saddr) {
        Some(src) if src.tunnel_endpoint == sender => {}
        _ => return verdict(TC_ACT_SHOT, reason::DROP_TUNNEL_SOURCE),
    }
    if let Some(v) = to_local_pod(ctx, &pkt) {
        return v;
    }
    // For the host itself (e.g. replies to the node's own connections).
    // The inner destination MAC is the sending node's device address, so
    // the stack would discard the frame as someone else's.
    if ctx.change_type(PACKET_HOST).is_err() {
        return verdict(TC_ACT_SHOT, reason::DROP_MALFORMED);
    }
    verdict(TC_ACT_OK, reason::TO_STACK)
}

/// TC egress of the VXLAN device: pod traffic arrives with its tunnel key
/// set; what the host stack routes here (node -> remote pod) gets one from
/// the ipcache.
pub fn to_overlay(ctx: &TcContext) -> Verdict {
    if tunnel_key(ctx).is_some() {
        return verdict(TC_ACT_OK, UNCOUNTED);
    }
    let pkt = match ipv4_only(ctx) {
        Ok(pkt) => pkt,
        Err(v) => return v,
    };
    match ipcache(pkt.hdr.daddr) {
        Some(dst) if dst.flags & flags::REMOTE_POD_CIDR != 0 => {
            if set_tunnel_key(ctx, dst.tunnel_endpoint, identity::HOST).is_err() {
                return verdict(TC_ACT_SHOT, reason::DROP_NO_TUNNEL_KEY);
            }
            verdict(TC_ACT_OK, reason::FORWARD_TUNNEL)
        }
        _ => verdict(TC_ACT_SHOT, reason::DROP_NO_TUNNEL_ENDPOINT),
    }
}

/// TC ingress of the underlay device (native routing): local pods' traffic
/// from other nodes skips the host stack; the node's own traffic is left
/// alone, whatever it is.
pub fn from_netdev(ctx: &TcContext) -> Verdict {
    let pass = verdict(TC_ACT_OK, UNCOUNTED);
    let Ok(eth) = parse::eth(ctx) else {
        return pass;
    };
    if u16::from_be(eth.proto) != ETH_P_IP {
        return pass;
    }
    let Ok(pkt) = parse::ipv4(ctx) else {
        return pass;
    };
    to_local_pod(ctx, &pkt).unwrap_or(pass)
}
