//! Crafted Ethernet/IPv4 frames for BPF_PROG_TEST_RUN: the kernel-side
//! benchmarks and the eBPF unit tests build their packets here.

use std::net::Ipv4Addr;

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 (valid checksum) + `l4` payload.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, frag_off: u16, l4: &[u8]) -> Vec<u8> {
    let mut pkt = vec![0x02, 0xaa, 0, 0, 0, 2, 0x02, 0xaa, 0, 0, 0, 1, 0x08, 0x00];
    let tot_len = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&tot_len.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34]);
    ip.extend_from_slice(&frag_off.to_be_bytes());
    ip.extend_from_slice(&[ttl, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    pkt.extend_from_slice(&ip);
    pkt.extend_from_slice(l4);
    pkt
}

/// The TCP or UDP checksum of an Ethernet/IPv4 frame's L4 segment over the
/// IPv4 pseudo-header, as a receiver computes it: 0 when the stored one is
/// right.
fn l4_sum(pkt: &[u8]) -> u16 {
    let ihl = usize::from(pkt[14] & 0x0f) * 4;
    let l4 = &pkt[14 + ihl..];
    let mut pseudo = Vec::with_capacity(12 + l4.len());
    pseudo.extend_from_slice(&pkt[26..34]);
    pseudo.extend_from_slice(&[0, pkt[23]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    checksum(&pseudo)
}

/// Offset of the checksum in the frame's TCP or UDP header.
fn l4_checksum_offset(pkt: &[u8]) -> usize {
    let ihl = usize::from(pkt[14] & 0x0f) * 4;
    14 + ihl + if pkt[23] == 6 { 16 } else { 6 }
}

/// Fills in the TCP or UDP checksum of a frame built by [`ipv4`].
pub fn with_l4_checksum(mut pkt: Vec<u8>) -> Vec<u8> {
    let at = l4_checksum_offset(&pkt);
    pkt[at..at + 2].copy_from_slice(&[0, 0]);
    let sum = l4_sum(&pkt);
    pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    pkt
}

/// Whether the frame's TCP or UDP checksum is right (a UDP checksum of 0,
/// none, counts as right).
pub fn l4_checksum_ok(pkt: &[u8]) -> bool {
    let at = l4_checksum_offset(pkt);
    (pkt[23] == 17 && pkt[at..at + 2] == [0, 0]) || l4_sum(pkt) == 0
}
