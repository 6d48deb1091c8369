//! Header layouts and bounds-checked parsing. Loads go through
//! bpf_skb_load_bytes, so a short packet is an error, never an out-of-bounds
//! read. Errors are the drop reason that names what was wrong.
use aya_ebpf::programs::TcContext;
use sluice_common::reason::Reason;

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
    /// ICMP errors: the packet they report on, as its sender sent it.
    pub quoted: Option<Quoted>,
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
    let mut pkt = Ipv4Packet {
        hdr,
        l4_offset: ETH_HLEN + ihl,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        quoted: None,
    };
    // Only the first fragment carries the L4 header.
    if u16::from_be(hdr.frag_off) & 0x1fff != 0 {
        return Ok(pkt);
    }
    let l4 = ETH_HLEN + ihl;
    let l4_len = tot_len - ihl;
    match hdr.protocol {
        IPPROTO_TCP => {
            if l4_len < 20 {
                return Err(TRUNCATED);
            }
            let ports: [u16; 2] = ctx.load(l4).map_err(|_| TRUNCATED)?;
            let doff: u8 = ctx.load(l4 + 12).map_err(|_| TRUNCATED)?;
            if ((doff >> 4) as usize) * 4 < 20 || ((doff >> 4) as usize) * 4 > l4_len {
                return Err(TRUNCATED);
            }
            pkt.sport = u16::from_be(ports[0]);
            pkt.dport = u16::from_be(ports[1]);
            pkt.tcp_flags = ctx.load(l4 + 13).map_err(|_| TRUNCATED)?;
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
                pkt.quoted = quoted(ctx, l4 + ICMP_ERROR_HLEN, ETH_HLEN + tot_len);
            }
        }
        _ => {}
    }
    Ok(pkt)
}

/// The quoted header at `at`, if it and 8 bytes of its L4 header lie
/// within the packet (before `end`, so never in an L2 trailer).
fn quoted(ctx: &TcContext, at: usize, end: usize) -> Option<Quoted> {
    let hdr: Ipv4Hdr = ctx.load(at).ok()?;
    let ihl = ((hdr.version_ihl & 0x0f) as usize) * 4;
    if hdr.version_ihl >> 4 != 4 || ihl < 20 || at + ihl + 8 > end {
        return None;
    }
    let l4: [u16; 4] = ctx.load(at + ihl).ok()?;
    Some(Quoted {
        saddr: hdr.saddr,
        daddr: hdr.daddr,
        protocol: hdr.protocol,
        l4: [
            u16::from_be(l4[0]),
            u16::from_be(l4[1]),
            u16::from_be(l4[2]),
            u16::from_be(l4[3]),
        ],
    })
}
