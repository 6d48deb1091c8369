//! Header layouts and bounds-checked parsing. Loads go through
//! bpf_skb_load_bytes, so a short packet is an error, never an out-of-bounds
//! read. Errors are the drop reason that names what was wrong.
use aya_ebpf::programs::TcContext;
use sluice_common::{
    fragment::{IP_MF, IP_OFFSET},
    reason::Reason,
};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// Offsets in the IPv4 header of the TTL/protocol 16-bit word, the header
/// checksum and the addresses, for rewrites with incremental checksum
/// updates.
pub const IPV4_TTL_OFF: usize = 8;
pub const IPV4_CSUM_OFF: usize = 10;
pub const IPV4_SADDR_OFF: usize = 12;
pub const IPV4_DADDR_OFF: usize = 16;
/// Offsets of the checksum in the TCP and UDP headers.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;

/// What the dataplane needs to know about an IPv4 packet.
#[derive(Clone, Copy)]
pub struct Ipv4Packet {
    pub hdr: Ipv4Hdr,
    /// Offset of the L4 header in the frame.
    pub l4_offset: usize,
    /// Source and destination port (ICMP: type/code and id), host order.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 otherwise.
    pub tcp_flags: u8,
    /// ICMP errors: the packet they report on, as its sender sent it
    /// (see [`Ipv4Packet::quoted`]). Zero and not `Option`: a `None`'s
    /// undefined bytes, copied with the packet, are registers the verifier
    /// refuses to see stored.
    quoted: Quoted,
    has_quoted: bool,
    /// Where the packet lies in its datagram.
    pub frag: Frag,
}

impl Ipv4Packet {
    /// ICMP errors: the packet they report on, as its sender sent it.
    #[inline(always)]
    pub fn quoted(&self) -> Option<&Quoted> {
        self.has_quoted.then_some(&self.quoted)
    }
}

/// Which part of a datagram a packet is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment: offset zero, more fragments follow. It carries
    /// the L4 header.
    First,
    /// A later fragment, without an L4 header, whose first fragment is
    /// not known (yet): ports zero.
    Untracked,
    /// A later fragment given its first fragment's ports
    /// (`fragment::resolve`).
    Later,
}

impl Frag {
    /// The packet holds no L4 header: nothing may read or rewrite one.
    #[inline(always)]
    pub fn is_later(self) -> bool {
        matches!(self, Frag::Untracked | Frag::Later)
    }
}

/// The header an ICMP error (destination unreachable, time exceeded,
/// parameter problem) quotes: the offending packet's addresses and first
/// eight L4 bytes, enough to name its flow.
#[derive(Clone, Copy)]
pub struct Quoted {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub protocol: u8,
    /// The first four 16-bit words of the quoted L4 header, host order:
    /// ports for TCP/UDP; type/code, checksum and id for ICMP.
    pub l4: [u16; 4],
}

impl Quoted {
    const NONE: Self = Self {
        saddr: [0; 4],
        daddr: [0; 4],
        protocol: 0,
        l4: [0; 4],
    };
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROB: u8 = 12;
/// ICMP header length before an error's quoted packet.
pub const ICMP_ERROR_HLEN: usize = 8;
/// Offset of the checksum in the ICMP header.
pub const ICMP_CSUM_OFF: usize = 2;

pub fn eth(ctx: &TcContext) -> Result<EthHdr, Reason> {
    ctx.load::<EthHdr>(0).map_err(|_| Reason::DropShortFrame)
}

/// The IPv4 packet after the Ethernet header.
pub fn ipv4(ctx: &TcContext) -> Result<Ipv4Packet, Reason> {
    const BAD_HEADER: Reason = Reason::DropBadIpv4Header;
    const TRUNCATED: Reason = Reason::DropTruncatedL4;
    let hdr: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| BAD_HEADER)?;
    let ihl = ((hdr.version_ihl & 0x0f) as usize) * 4;
    if hdr.version_ihl >> 4 != 4 || ihl < 20 {
        return Err(BAD_HEADER);
    }
    let tot_len = u16::from_be(hdr.tot_len) as usize;
    if tot_len < ihl || ETH_HLEN + tot_len > ctx.len() as usize {
        return Err(BAD_HEADER);
    }
    // Only the first fragment carries the L4 header; a later one may not
    // reach into the part of it that policy reads (RFC 1858's overlapping
    // fragment attack: offset 1 rewriting TCP's flags), which the receiver
    // would take as the header.
    let frag_off = u16::from_be(hdr.frag_off);
    let offset = usize::from(frag_off & IP_OFFSET) * 8;
    let frag = if offset != 0 {
        if offset < min_l4_header(hdr.protocol) {
            return Err(Reason::DropFragmentOverlap);
        }
        Frag::Untracked
    } else if frag_off & IP_MF != 0 {
        Frag::First
    } else {
        Frag::Whole
    };
    let mut pkt = Ipv4Packet {
        hdr,
        l4_offset: ETH_HLEN + ihl,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        quoted: Quoted::NONE,
        has_quoted: false,
        frag,
    };
    if frag == Frag::Untracked {
        return Ok(pkt);
    }
    let l4 = ETH_HLEN + ihl;
    let l4_len = tot_len - ihl;
    match hdr.protocol {
        IPPROTO_TCP => {
            if l4_len < 20 {
                return Err(TRUNCATED);
            }
            // Ports, data offset and flags in one load (a helper call
            // each is most of what parsing costs).
            let head: TcpHead = ctx.load(l4).map_err(|_| TRUNCATED)?;
            let doff = head.doff;
            if ((doff >> 4) as usize) * 4 < 20 || ((doff >> 4) as usize) * 4 > l4_len {
                return Err(TRUNCATED);
            }
            pkt.sport = u16::from_be(head.ports[0]);
            pkt.dport = u16::from_be(head.ports[1]);
            pkt.tcp_flags = head.flags;
        }
        // SCTP's common header starts with the ports too (12 bytes in all);
        // policy matches its ports whether or not the kernel speaks SCTP.
        IPPROTO_UDP | IPPROTO_SCTP => {
            if l4_len < if hdr.protocol == IPPROTO_UDP { 8 } else { 12 } {
                return Err(TRUNCATED);
            }
            let ports: [u16; 2] = ctx.load(l4).map_err(|_| TRUNCATED)?;
            pkt.sport = u16::from_be(ports[0]);
            pkt.dport = u16::from_be(ports[1]);
        }
        IPPROTO_ICMP => {
            if l4_len < 8 {
                return Err(TRUNCATED);
            }
            let type_code: u16 = ctx.load(l4).map_err(|_| TRUNCATED)?;
            let id: u16 = ctx.load(l4 + 4).map_err(|_| TRUNCATED)?;
            pkt.sport = u16::from_be(type_code);
            pkt.dport = u16::from_be(id);
            if matches!(
                (pkt.sport >> 8) as u8,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB
            ) {
                // An error quoting less than it must is unrelated to any
                // flow, not malformed: policy decides it as plain ICMP.
                read_quoted(ctx, l4 + ICMP_ERROR_HLEN, ETH_HLEN + tot_len, &mut pkt);
            }
        }
        _ => {}
    }
    Ok(pkt)
}

/// The first 14 bytes of a TCP header: what the parser reads.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHead {
    /// Source and destination port, network order.
    ports: [u16; 2],
    _seq_ack: [u8; 8],
    /// Data offset (high nibble).
    doff: u8,
    flags: u8,
}

/// The L4 header bytes a first fragment must hold and a later one may not
/// overlap: what the parser reads below (TCP's fixed header, SCTP's common
/// header, UDP's and ICMP's 8 bytes); other protocols have none it reads.
#[inline(always)]
fn min_l4_header(protocol: u8) -> usize {
    match protocol {
        IPPROTO_TCP => 20,
        IPPROTO_SCTP => 12,
        IPPROTO_UDP | IPPROTO_ICMP => 8,
        _ => 0,
    }
}

/// The quoted header at `at`, into `pkt`, if it and 8 bytes of its L4
/// header lie within the packet (before `end`, so never in an L2
/// trailer). Not inlined: its loads would grow the parser's stack frame,
/// which adds to every program's.
#[inline(never)]
fn read_quoted(ctx: &TcContext, at: usize, end: usize, pkt: &mut Ipv4Packet) {
    let Ok(hdr) = ctx.load::<Ipv4Hdr>(at) else {
        return;
    };
    let ihl = ((hdr.version_ihl & 0x0f) as usize) * 4;
    if hdr.version_ihl >> 4 != 4 || ihl < 20 || at + ihl + 8 > end {
        return;
    }
    let Ok(l4) = ctx.load::<[u16; 4]>(at + ihl) else {
        return;
    };
    pkt.quoted = Quoted {
        saddr: hdr.saddr,
        daddr: hdr.daddr,
        protocol: hdr.protocol,
        l4: [
            u16::from_be(l4[0]),
            u16::from_be(l4[1]),
            u16::from_be(l4[2]),
            u16::from_be(l4[3]),
        ],
    };
    pkt.has_quoted = true;
}
