//! The node's own sockets (kubelet, hostNetwork pods) reaching ClusterIPs
//! without kube-proxy: a socket connecting to a frontend, or sending a
//! datagram to one, is given a backend right there (cgroup `connect4`,
//! `sendmsg4`), so its packets carry the backend from the first one and
//! nothing on the path translates them; what the application reads back
//! (the source of a datagram, `recvmsg4`; the peer, `getpeername4`) is the
//! frontend again. One choice per socket, not per packet, and none of the
//! per-packet work at all.
//!
//! The programs are attached to the host's root cgroup, which holds every
//! process, pods' included: only sockets of the node's own network
//! namespace are touched (pods' packets are translated on their veth).
//! Every hook lets the call proceed; a socket that is not the node's, or
//! not addressed to a frontend, is left exactly as it was.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockAddrContext,
    EbpfContext as _,
};
use sluice_common::services::{Backend, ServiceKey, SockFrontend, SockKey};

use crate::{
    lookup,
    maps::{SERVICES, SOCK_REVERSE},
    metrics,
    parse::{IPPROTO_TCP, IPPROTO_UDP},
    service,
};

/// What the hooks return: go ahead (with the address as the program left
/// it).
pub const PROCEED: i32 = 1;

/// Whether the socket is in the node's network namespace.
#[inline(always)]
fn node_socket(ctx: &SockAddrContext) -> bool {
    let node = lookup::config().netns_cookie;
    // SAFETY: the helper reads the context's socket; no side effects.
    node != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == node
}

/// `connect4`, `sendmsg4`: a frontend's address becomes a backend's.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    if !node_socket(ctx) {
        return PROCEED;
    }
    let addr = ctx.sock_addr;
    // SAFETY: the context the kernel passed, valid for this run.
    let (ip, port, protocol) = unsafe { ((*addr).user_ip4, (*addr).user_port, (*addr).protocol) };
    let Ok(protocol) = u8::try_from(protocol) else {
        return PROCEED;
    };
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return PROCEED;
    }
    let frontend = ServiceKey {
        addr: ip.to_ne_bytes(),
        // The port is in network order in the low 16 bits.
        port: (port as u16).to_ne_bytes(),
        protocol,
        _pad: 0,
    };
    // SAFETY: a map value pointer, valid for this program run; copied out.
    let Some(info) = SERVICES.get_ptr(&frontend).map(|s| unsafe { *s }) else {
        return PROCEED;
    };
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // The node is one client, whichever of its processes connects.
    let Some(backend) = service::pick(&info, info.backends, [0; 4], now) else {
        // No ready backend: the packets go out to the frontend, and the
        // agent's nftables table refuses them (output).
        metrics::count_service(info.id, true);
        return PROCEED;
    };
    metrics::count_service(info.id, false);
    // SAFETY: as above; these two fields are writable in these hooks.
    unsafe {
        (*addr).user_ip4 = u32::from_ne_bytes(backend.addr);
        (*addr).user_port = u32::from(u16::from_ne_bytes(backend.port));
    }
    let key = SockKey {
        // SAFETY: the helper reads the context's socket.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend,
    };
    let front = SockFrontend {
        addr: frontend.addr,
        port: frontend.port,
        _pad: [0; 2],
    };
    // A full table evicts the least recently used socket's (LRU): its
    // answers then show the backend's address.
    let _ = SOCK_REVERSE.insert(&key, &front, 0);
    PROCEED
}

/// `recvmsg4`, `getpeername4`: a backend's address, on a socket that was
/// given it, is shown as the frontend's.
#[inline(always)]
pub fn to_frontend(ctx: &SockAddrContext) -> i32 {
    if !node_socket(ctx) {
        return PROCEED;
    }
    let addr = ctx.sock_addr;
    // SAFETY: the context the kernel passed, valid for this run.
    let (ip, port) = unsafe { ((*addr).user_ip4, (*addr).user_port) };
    let key = SockKey {
        // SAFETY: the helper reads the context's socket.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend: Backend {
            addr: ip.to_ne_bytes(),
            port: (port as u16).to_ne_bytes(),
            _pad: [0; 2],
        },
    };
    // SAFETY: a map value pointer, valid for this program run; copied out.
    if let Some(front) = SOCK_REVERSE.get_ptr(&key).map(|f| unsafe { *f }) {
        // SAFETY: as above; writable in these hooks.
        unsafe {
            (*addr).user_ip4 = u32::from_ne_bytes(front.addr);
            (*addr).user_port = u32::from(u16::from_ne_bytes(front.port));
        }
    }
    PROCEED
}
