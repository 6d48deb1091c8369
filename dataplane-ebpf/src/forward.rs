//! Delivery: into a pod on this node, into the tunnel to another node, or
//! along the underlay's route (native routing). Each rewrites what a router
//! would (TTL, MACs) and returns the verdict of the redirect.
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, bpf_tunnel_key, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_REDIRECT,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
        bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key,
    },
    programs::TcContext,
};
use sluice_common::{config::TUNNEL_VNI, endpoint::EndpointInfo, reason::Reason};

use crate::{
    parse::{Ipv4Hdr, ETH_HLEN, IPV4_CSUM_OFF, IPV4_TTL_OFF},
    verdict::{drop, pass, redirected, Verdict},
};

const AF_INET: u8 = 2;
/// The route is enough; bpf_redirect_neigh resolves the neighbour itself.
const BPF_FIB_LOOKUP_SKIP_NEIGH: u32 = 1 << 2;

/// Decrements the TTL as a router does; the caller checked it is above 1.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, hdr: &Ipv4Hdr) -> Result<(), ()> {
    let old_word = u16::from_be_bytes([hdr.ttl, hdr.protocol]);
    let new_word = u16::from_be_bytes([hdr.ttl - 1, hdr.protocol]);
    ctx.l3_csum_replace(
        ETH_HLEN + IPV4_CSUM_OFF,
        old_word.to_be() as u64,
        new_word.to_be() as u64,
        2,
    )
    .map_err(|_| ())?;
    ctx.store(ETH_HLEN + IPV4_TTL_OFF, &(hdr.ttl - 1), 0)
        .map_err(|_| ())
}

/// A redirect helper's answer as a verdict.
#[inline(always)]
fn redirect_verdict(ret: i64, ok: Reason, failed: Reason) -> Verdict {
    if ret == i64::from(TC_ACT_REDIRECT) {
        redirected(ok)
    } else {
        drop(failed)
    }
}

/// Route to a pod on this node: decrement TTL, rewrite L2 as the pod's
/// gateway would, and hand the packet straight to the pod's netns, skipping
/// the host's routing and netfilter.
#[inline(always)]
pub fn deliver_local(ctx: &TcContext, hdr: &Ipv4Hdr, dst: &EndpointInfo) -> Verdict {
    if decrement_ttl(ctx, hdr).is_err() {
        return drop(Reason::DropRewriteFailed);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&dst.pod_mac);
    macs[6..].copy_from_slice(&dst.host_mac);
    if ctx.store(0, &macs, 0).is_err() {
        return drop(Reason::DropRewriteFailed);
    }
    // SAFETY: a helper taking an ifindex and flags; the kernel checks both.
    let ret = unsafe { bpf_redirect_peer(dst.ifindex, 0) };
    redirect_verdict(ret, Reason::ForwardLocal, Reason::DropLocalRedirectFailed)
}

/// The sending node's address (network order), from the tunnel metadata
/// the packet carries; `None` without metadata.
#[inline(always)]
pub fn tunnel_source(ctx: &TcContext) -> Option<[u8; 4]> {
    // SAFETY: bpf_tunnel_key is plain data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    // SAFETY: the helper writes at most `size` bytes into `key`, which
    // lives on this stack frame.
    let ret = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    // SAFETY: the helper filled the IPv4 member (no BPF_F_TUNINFO_IPV6).
    (ret == 0).then(|| unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes())
}

/// Sets the tunnel key: to node `endpoint` (the VNI carries nothing).
#[inline(always)]
pub fn set_tunnel_key(ctx: &TcContext, endpoint: [u8; 4]) -> Result<(), Reason> {
    // SAFETY: bpf_tunnel_key is plain data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    key.tunnel_id = TUNNEL_VNI;
    // The helper takes the address in host order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(endpoint);
    key.tunnel_ttl = 64;
    // SAFETY: the helper reads `size` bytes of `key`, on this stack frame.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Reason::DropSetTunnelKeyFailed)
    }
}

/// Into the tunnel to the node at `endpoint`: decrement TTL, set the
/// tunnel key and hand the packet to the collect-metadata VXLAN device
/// `ifindex`.
#[inline(always)]
pub fn encapsulate(ctx: &TcContext, hdr: &Ipv4Hdr, endpoint: [u8; 4], ifindex: u32) -> Verdict {
    if decrement_ttl(ctx, hdr).is_err() {
        return drop(Reason::DropRewriteFailed);
    }
    if let Err(reason) = set_tunnel_key(ctx, endpoint) {
        return drop(reason);
    }
    // SAFETY: a helper taking an ifindex and flags; the kernel checks both.
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    redirect_verdict(ret, Reason::ForwardTunnel, Reason::DropTunnelRedirectFailed)
}

/// Native routing: the kernel's FIB picks the underlay device and next hop;
/// anything it cannot forward directly (no route, MTU exceeded, forwarding
/// off) goes to the host stack, which answers with the right ICMP error.
#[inline(always)]
pub fn route_native(ctx: &TcContext, hdr: &Ipv4Hdr) -> Verdict {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.family = AF_INET;
    params.l4_protocol = hdr.protocol;
    params.__bindgen_anon_2.tos = hdr.tos;
    // __be32 fields: the bytes as on the wire.
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(hdr.saddr);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(hdr.daddr);
    // SAFETY: the context's skb pointer is valid for this program run.
    params.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: the helper reads and writes `size` bytes of `params`, on
    // this stack frame.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return pass(Reason::ToStack);
    }
    if decrement_ttl(ctx, hdr).is_err() {
        return drop(Reason::DropRewriteFailed);
    }
    // SAFETY: bpf_redir_neigh is plain data; all-zero is a valid value.
    let mut nh: bpf_redir_neigh = unsafe { zeroed() };
    nh.nh_family = u32::from(AF_INET);
    // SAFETY: after a successful IPv4 lookup the ipv4_dst member holds the
    // next hop (the gateway, if any).
    nh.__bindgen_anon_1.ipv4_nh = unsafe { params.__bindgen_anon_4.ipv4_dst };
    // SAFETY: the helper reads `size` bytes of `nh`, on this stack frame.
    let ret = unsafe {
        bpf_redirect_neigh(
            params.ifindex,
            &mut nh,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    redirect_verdict(ret, Reason::ForwardNative, Reason::DropNativeRedirectFailed)
}
