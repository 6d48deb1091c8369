//! Services (kube-proxy replacement): a client's packet to a Service
//! frontend is given a backend (once per connection, remembered in
//! `SERVICE_FLOWS`; per client with session affinity, `SERVICE_AFFINITY`) and translated to it before policy and forwarding see
//! it, so both judge the backend, as Kubernetes requires; the backend's
//! replies get the frontend back as their source (`SERVICE_REVERSE`)
//! before they reach the client. Both happen on the client's node only;
//! the backend's node sees an ordinary pod-to-pod flow.
//!
//! External frontends (NodePorts, externalIPs, LoadBalancer IPs) are
//! translated where their traffic arrives, on the underlay
//! (`from_outside`), and the translated packet is handed to the host
//! stack, which forwards it to the backend (masquerading it to the node
//! under `externalTrafficPolicy: Cluster`, asked by a packet mark) and
//! whose conntrack brings the replies back; they get the frontend back on
//! their way out of the node (`from_backend` in `to_netdev`, and in
//! `to_overlay` for a pod of another node in tunnel mode). Pods and the
//! node reach external frontends as they reach ClusterIPs.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use sluice_common::{
    conntrack::CtKey,
    ipcache::flags,
    reason::Reason,
    services::{
        service_flags, Affinity, AffinityKey, Backend, BackendSlot, Frontend, ServiceFlow,
        ServiceInfo, ServiceKey, HAIRPIN_SOURCE, MASQUERADE_MARK,
    },
};

use crate::{
    conntrack, events, lookup, metrics,
    maps::{SERVICES, SERVICE_AFFINITY, SERVICE_BACKENDS, SERVICE_FLOWS, SERVICE_REVERSE},
    parse::{
        Ipv4Packet, ETH_HLEN, ICMP_CSUM_OFF, ICMP_ERROR_HLEN, IPPROTO_SCTP, IPPROTO_TCP,
        IPPROTO_UDP, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
};

/// What became of a packet towards a Service.
pub enum Toward {
    /// Not a Service frontend.
    NotAService,
    /// Translated to a backend; the packet and `pkt` now name it.
    Backend,
    /// A frontend without ready backends: the host stack rejects it.
    NoBackend,
}

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy)]
enum End {
    Source,
    Destination,
}

/// How long a connection keeps its backend without packets: as long as
/// conntrack keeps the connection.
#[inline(always)]
fn lifetime(pkt: &Ipv4Packet) -> u64 {
    conntrack::lifetime(pkt, 0)
}

/// Gives a packet towards a Service frontend its backend and rewrites it
/// there (destination address and port, checksums). A connection's first
/// packet picks a backend at random among the ready ones (one lookup: the
/// slots are numbered); the choice is kept, so later packets go to the
/// same backend whatever happens to the backend set. A function of its
/// own (not inlined): its locals would otherwise push the caller's stack
/// frame past what the verifier allows beside policy's.
/// Also for an external frontend (a pod reaching a NodePort of its node,
/// an externalIP): a client inside the cluster is given any ready
/// backend, whatever the traffic policy, as kube-proxy does.
#[inline(never)]
pub fn to_backend(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Result<Toward, Reason> {
    let frontend = frontend_of(pkt);
    // SAFETY: a map value pointer, valid for this program run; copied out.
    let Some(service) = SERVICES.get_ptr(&frontend).map(|s| unsafe { *s }) else {
        return Ok(Toward::NotAService);
    };
    translate(ctx, pkt, &frontend, &service, service.backends)
}

/// Gives a packet that arrived on the underlay towards an external
/// frontend its backend, as [`to_backend`] does, and marks it for
/// masquerade when the frontend's traffic policy is `Cluster`. The caller
/// hands it to the host stack either way: translated, to be forwarded;
/// without a ready backend, to be refused. Other frontends (ClusterIPs)
/// are not reachable from outside.
///
/// Under `Local` a client from outside the cluster gets this node's
/// endpoints only, and keeps its address; without one here the packet is
/// dropped ([`Reason::DropNoLocalBackend`]), as kube-proxy does. A pod of
/// another node (which reached this node's NodePort) is inside the
/// cluster and gets any ready backend, masqueraded, so that the reply of
/// a backend on a third node comes back through here to be translated.
#[inline(never)]
pub fn from_outside(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Result<Toward, Reason> {
    let frontend = frontend_of(pkt);
    // SAFETY: a map value pointer, valid for this program run; copied out.
    let Some(service) = SERVICES.get_ptr(&frontend).map(|s| unsafe { *s }) else {
        return Ok(Toward::NotAService);
    };
    if service.flags & service_flags::EXTERNAL == 0 {
        return Ok(Toward::NotAService);
    }
    let masquerade = service.flags & service_flags::MASQUERADE != 0
        || lookup::ipcache(pkt.hdr.saddr).is_some_and(|e| e.flags & flags::REMOTE_POD_CIDR != 0);
    let count = if masquerade {
        service.backends
    } else {
        service.local_backends
    };
    let toward = translate(ctx, pkt, &frontend, &service, count)?;
    match toward {
        // A packet just received carries no mark of anyone else's yet.
        Toward::Backend if masquerade => ctx.set_mark(MASQUERADE_MARK),
        // Endpoints elsewhere, none here: not refused (the client would
        // give up) but dropped.
        Toward::NoBackend if service.backends > 0 => return Err(Reason::DropNoLocalBackend),
        _ => {}
    }
    Ok(toward)
}

#[inline(always)]
fn frontend_of(pkt: &Ipv4Packet) -> ServiceKey {
    ServiceKey {
        addr: pkt.hdr.daddr,
        port: pkt.dport.to_be_bytes(),
        protocol: pkt.hdr.protocol,
        _pad: 0,
    }
}

/// The backend of the connection `pkt` belongs to (kept, or picked for a
/// new one among the first `count` slots), and the rewrite to it.
#[inline(always)]
fn translate(
    ctx: &TcContext,
    pkt: &mut Ipv4Packet,
    frontend: &ServiceKey,
    service: &ServiceInfo,
    count: u32,
) -> Result<Toward, Reason> {
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = conntrack::packet_key(pkt);
    let kept = SERVICE_FLOWS
        .get_ptr_mut(&key)
        // SAFETY: a map value pointer, valid for this program run.
        .filter(|flow| unsafe { (**flow).expires } > now);
    let backend = match kept {
        Some(flow) => {
            // SAFETY: as above; a lost update between CPUs only shortens
            // how long the choice is kept.
            unsafe {
                (*flow).expires = now + lifetime(pkt);
                (*flow).backend
            }
        }
        None => {
            let Some(backend) = pick(service, count, pkt.hdr.saddr, now) else {
                metrics::count_service(service.id, true);
                return Ok(Toward::NoBackend);
            };
            metrics::count_service(service.id, false);
            remember(&key, &backend, frontend, pkt, now);
            events::translated(&key, backend.addr, u16::from_be_bytes(backend.port));
            backend
        }
    };
    rewrite(ctx, pkt, End::Destination, backend.addr, backend.port)?;
    Ok(Toward::Backend)
}

/// A new connection's backend among the first `count` slots (the
/// frontend's `backends` or `local_backends`): the one its client is
/// bound to by session affinity if that still serves (its slot still
/// holds it), else one at random. `None`: no ready backend (or a slot
/// the agent could not write: a full map), which is refused like none.
#[inline(always)]
pub fn pick(service: &ServiceInfo, count: u32, client: [u8; 4], now: u64) -> Option<Backend> {
    if count == 0 {
        return None;
    }
    let bound = AffinityKey {
        client,
        service: service.id,
    };
    let affinity = if service.affinity_timeout > 0 {
        SERVICE_AFFINITY.get_ptr_mut(&bound)
    } else {
        None
    };
    let timeout = u64::from(service.affinity_timeout) * 1_000_000_000;
    if let Some(affinity) = affinity {
        // SAFETY: a map value pointer, valid for this program run.
        let (backend, slot, expires) =
            unsafe { ((*affinity).backend, (*affinity).slot, (*affinity).expires) };
        let slot = BackendSlot {
            service: service.id,
            slot,
        };
        // SAFETY: as above; copied out.
        let still = SERVICE_BACKENDS.get_ptr(&slot).map(|b| unsafe { *b });
        if expires > now && slot.slot < count && still == Some(backend) {
            // SAFETY: as above; a lost update between CPUs only shortens
            // the binding.
            unsafe { (*affinity).expires = now + timeout };
            return Some(backend);
        }
    }
    // SAFETY: a helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % count;
    let slot = BackendSlot {
        service: service.id,
        slot,
    };
    // SAFETY: a map value pointer, valid for this program run; copied out.
    // The agent writes slots before their count: a missing one is a map
    // that filled up.
    let backend = SERVICE_BACKENDS.get_ptr(&slot).map(|b| unsafe { *b })?;
    if service.affinity_timeout > 0 {
        let affinity = Affinity {
            backend,
            slot: slot.slot,
            _pad: 0,
            expires: now + timeout,
        };
        let _ = SERVICE_AFFINITY.insert(&bound, &affinity, 0);
    }
    Some(backend)
}

/// Keeps a new connection's backend, and the frontend its replies must
/// come from. A full table evicts the least recently used connection's
/// (LRU maps): it is given a backend again with its next packet.
#[inline(always)]
fn remember(key: &CtKey, backend: &Backend, frontend: &ServiceKey, pkt: &Ipv4Packet, now: u64) {
    let expires = now + lifetime(pkt);
    let flow = ServiceFlow {
        backend: *backend,
        _pad: 0,
        expires,
    };
    let _ = SERVICE_FLOWS.insert(key, &flow, 0);
    let reply = CtKey {
        saddr: backend.addr,
        daddr: key.saddr,
        sport: u16::from_be_bytes(backend.port),
        dport: key.sport,
        protocol: key.protocol,
        _pad: [0; 3],
    };
    let from = Frontend {
        addr: frontend.addr,
        port: frontend.port,
        _pad: [0; 2],
        expires,
    };
    let _ = SERVICE_REVERSE.insert(&reply, &from, 0);
}

/// A pod's packet to itself through its own Service, translated: its
/// source becomes [`HAIRPIN_SOURCE`] so the pod accepts it.
#[inline(never)]
pub fn hairpin_out(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Result<(), Reason> {
    let port = pkt.sport.to_be_bytes();
    rewrite(ctx, pkt, End::Source, HAIRPIN_SOURCE, port)
}

/// A pod's reply to [`HAIRPIN_SOURCE`]: a reply to itself. It is addressed
/// back to the pod, after which it is an ordinary backend reply (the
/// frontend then becomes its source, see [`from_backend`]).
#[inline(never)]
pub fn hairpin_back(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Result<(), Reason> {
    let (addr, port) = (pkt.hdr.saddr, pkt.dport.to_be_bytes());
    rewrite(ctx, pkt, End::Destination, addr, port)
}

/// A backend's reply in a translated connection: its source becomes the
/// frontend the client addressed. Without the translation on record (it
/// was evicted), the reply is left as it is; the client then refuses it,
/// as it would a reply from an address it never talked to. Not inlined,
/// as [`to_backend`].
#[inline(never)]
pub fn from_backend(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Result<(), Reason> {
    let key = conntrack::packet_key(pkt);
    let Some(frontend) = SERVICE_REVERSE.get_ptr_mut(&key) else {
        return Ok(());
    };
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value pointer, valid for this program run.
    let (addr, port) = unsafe {
        (*frontend).expires = now + lifetime(pkt);
        ((*frontend).addr, (*frontend).port)
    };
    rewrite(ctx, pkt, End::Source, addr, port)
}

/// A packet the host stack sends out of the node (through the underlay,
/// or the tunnel to another node's pod) in a connection
/// [`from_outside`] translated: a backend's reply, or an ICMP error
/// about the connection, gets the frontend back.
#[inline(always)]
pub fn leaving_node(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Result<(), Reason> {
    if pkt.quoted().is_some() {
        error_from_backend(ctx, pkt)
    } else {
        from_backend(ctx, pkt)
    }
}

/// An ICMP error about a translated connection (the backend's port
/// unreachable, a router's fragmentation needed), on its way to the
/// client: the packet it quotes goes back to what the client sent, to the
/// frontend, and so does the error's source if the backend sent it, so
/// the client's stack matches it to its socket (a connected UDP socket
/// gets ECONNREFUSED, TCP learns the path MTU). The quoted L4 checksum is
/// left as it is: nobody checks it in a quote.
#[inline(never)]
pub fn error_from_backend(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Result<(), Reason> {
    const FAILED: Reason = Reason::DropRewriteFailed;
    let Some(&quoted) = pkt.quoted() else {
        return Ok(());
    };
    if quoted.protocol != IPPROTO_TCP && quoted.protocol != IPPROTO_UDP {
        return Ok(());
    }
    // The quote is the client's packet as translated: client → backend.
    let reply = conntrack::key(
        quoted.daddr,
        quoted.saddr,
        quoted.protocol,
        quoted.l4[1],
        quoted.l4[0],
    );
    // SAFETY: a map value pointer, valid for this program run; copied out.
    let Some(frontend) = SERVICE_REVERSE.get_ptr(&reply).map(|f| unsafe { *f }) else {
        return Ok(());
    };
    let icmp = pkt.l4_offset;
    let inner = icmp + ICMP_ERROR_HLEN;
    let version_ihl: u8 = ctx.load(inner).map_err(|_| FAILED)?;
    let inner_l4 = inner + usize::from(version_ihl & 0x0f) * 4;
    let (old_ip, new_ip) = (
        u32::from_ne_bytes(quoted.daddr),
        u32::from_ne_bytes(frontend.addr),
    );
    // The quoted header's own checksum follows its address, so the quoted
    // header still sums as before and the ICMP checksum needs no update
    // for it; only for the port.
    ctx.l3_csum_replace(inner + IPV4_CSUM_OFF, u64::from(old_ip), u64::from(new_ip), 4)
        .map_err(|_| FAILED)?;
    ctx.store(inner + IPV4_DADDR_OFF, &frontend.addr, 0)
        .map_err(|_| FAILED)?;
    let old_port = u16::from_ne_bytes(quoted.l4[1].to_be_bytes());
    let new_port = u16::from_ne_bytes(frontend.port);
    if old_port != new_port {
        ctx.l4_csum_replace(
            icmp + ICMP_CSUM_OFF,
            u64::from(old_port),
            u64::from(new_port),
            2,
        )
        .map_err(|_| FAILED)?;
        ctx.store(inner_l4 + 2, &frontend.port, 0)
            .map_err(|_| FAILED)?;
    }
    if pkt.hdr.saddr == quoted.daddr {
        // From the backend itself: from the frontend, then.
        ctx.l3_csum_replace(ETH_HLEN + IPV4_CSUM_OFF, u64::from(old_ip), u64::from(new_ip), 4)
            .map_err(|_| FAILED)?;
        ctx.store(ETH_HLEN + IPV4_SADDR_OFF, &frontend.addr, 0)
            .map_err(|_| FAILED)?;
        pkt.hdr.saddr = frontend.addr;
    }
    Ok(())
}

/// Rewrites one end's address and port, updating the IPv4 header checksum
/// and the TCP or UDP checksum (pseudo-header and port). SCTP's checksum
/// covers neither the addresses nor anything the agent lets change (it
/// refuses SCTP services whose target port differs from their port).
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    pkt: &mut Ipv4Packet,
    end: End,
    addr: [u8; 4],
    port: [u8; 2],
) -> Result<(), Reason> {
    const FAILED: Reason = Reason::DropRewriteFailed;
    let (old_addr, addr_off, old_port, port_off) = match end {
        End::Source => (pkt.hdr.saddr, IPV4_SADDR_OFF, pkt.sport, 0),
        End::Destination => (pkt.hdr.daddr, IPV4_DADDR_OFF, pkt.dport, 2),
    };
    let (old_ip, new_ip) = (u32::from_ne_bytes(old_addr), u32::from_ne_bytes(addr));
    let (old_port_be, new_port_be) = (
        u16::from_ne_bytes(old_port.to_be_bytes()),
        u16::from_ne_bytes(port),
    );
    // A later fragment carries no L4 header: its first fragment's
    // checksum update covers the whole datagram.
    let l4_header = !pkt.frag.is_later();
    let l4_csum = match pkt.hdr.protocol {
        _ if !l4_header => None,
        IPPROTO_TCP => Some((pkt.l4_offset + TCP_CSUM_OFF, 0)),
        // A UDP checksum of zero means none: it stays zero.
        IPPROTO_UDP => Some((pkt.l4_offset + UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0 as u64)),
        _ => None,
    };
    if let Some((csum, flags)) = l4_csum {
        ctx.l4_csum_replace(
            csum,
            u64::from(old_ip),
            u64::from(new_ip),
            flags | BPF_F_PSEUDO_HDR as u64 | 4,
        )
        .map_err(|_| FAILED)?;
        if old_port_be != new_port_be {
            ctx.l4_csum_replace(
                csum,
                u64::from(old_port_be),
                u64::from(new_port_be),
                flags | 2,
            )
            .map_err(|_| FAILED)?;
        }
    }
    ctx.l3_csum_replace(
        ETH_HLEN + IPV4_CSUM_OFF,
        u64::from(old_ip),
        u64::from(new_ip),
        4,
    )
    .map_err(|_| FAILED)?;
    ctx.store(ETH_HLEN + addr_off, &addr, 0)
        .map_err(|_| FAILED)?;
    if old_port_be != new_port_be && pkt.hdr.protocol != IPPROTO_SCTP && l4_header {
        ctx.store(pkt.l4_offset + port_off, &port, 0)
            .map_err(|_| FAILED)?;
    }
    let port = u16::from_be_bytes(port);
    match end {
        End::Source => {
            pkt.hdr.saddr = addr;
            pkt.sport = port;
        }
        End::Destination => {
            pkt.hdr.daddr = addr;
            pkt.dport = port;
        }
    }
    Ok(())
}
