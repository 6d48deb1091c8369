//! Address allocation from the node's pod CIDR. Pure: persistence is
//! `state`'s job.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use sluice_common::api::Attachment;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("pod CIDR {0} has no free address")]
    Exhausted(Ipv4Net),
    #[error("pod CIDR {0} is too small: it needs room for a gateway and at least one pod")]
    TooSmall(Ipv4Net),
}

/// The node's pod CIDR and the addresses handed out from it.
///
/// The first usable address is the node's gateway (held by the host
/// device); network and broadcast addresses are never handed out. New
/// allocations continue after the last one instead of reusing the lowest
/// free address, so a just-released address is not immediately given to
/// another pod while stale flows or caches may still point at it.
#[derive(Debug, Clone)]
pub struct Ipam {
    cidr: Ipv4Net,
    allocated: BTreeMap<Ipv4Addr, Attachment>,
    by_attachment: BTreeMap<Attachment, Ipv4Addr>,
    cursor: u32,
}

impl Ipam {
    pub fn new(cidr: Ipv4Net) -> Result<Self, IpamError> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 30 {
            return Err(IpamError::TooSmall(cidr));
        }
        Ok(Self {
            cidr,
            allocated: BTreeMap::new(),
            by_attachment: BTreeMap::new(),
            cursor: 0,
        })
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    /// Addresses a pod may get: everything but network, gateway, broadcast.
    fn first_host(&self) -> u32 {
        u32::from(self.cidr.network()) + 2
    }

    fn last_host(&self) -> u32 {
        u32::from(self.cidr.broadcast()) - 1
    }

    pub fn capacity(&self) -> u64 {
        u64::from(self.last_host() - self.first_host()) + 1
    }

    pub fn free(&self) -> u64 {
        self.capacity() - self.allocated.len() as u64
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first_host()..=self.last_host()).contains(&u32::from(ip))
    }

    pub fn get(&self, attachment: &Attachment) -> Option<Ipv4Addr> {
        self.by_attachment.get(attachment).copied()
    }

    /// Restores an allocation read back from the state file.
    pub fn restore(&mut self, attachment: Attachment, ip: Ipv4Addr) -> bool {
        if !self.contains(ip) || self.allocated.contains_key(&ip) {
            return false;
        }
        self.cursor = self.cursor.max(u32::from(ip) - self.first_host() + 1);
        self.allocated.insert(ip, attachment.clone());
        self.by_attachment.insert(attachment, ip);
        true
    }

    /// The attachment's address; a new one if it has none yet.
    pub fn allocate(&mut self, attachment: &Attachment) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.get(attachment) {
            return Ok(ip);
        }
        let span = self.capacity() as u32;
        for step in 0..span {
            let offset = (self.cursor + step) % span;
            let ip = Ipv4Addr::from(self.first_host() + offset);
            if !self.allocated.contains_key(&ip) {
                self.cursor = (offset + 1) % span;
                self.allocated.insert(ip, attachment.clone());
                self.by_attachment.insert(attachment.clone(), ip);
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(self.cidr))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Attachment, Ipv4Addr)> {
        self.by_attachment.iter().map(|(a, ip)| (a, *ip))
    }

    pub fn release(&mut self, attachment: &Attachment) -> Option<Ipv4Addr> {
        let ip = self.by_attachment.remove(attachment)?;
        self.allocated.remove(&ip);
        Some(ip)
    }

    /// Cursor position, persisted so a restart keeps avoiding recent addresses.
    pub fn cursor(&self) -> u32 {
        self.cursor
    }

    pub fn set_cursor(&mut self, cursor: u32) {
        self.cursor = cursor % self.capacity() as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn ipam(cidr: &str) -> Ipam {
        Ipam::new(cidr.parse().expect("cidr")).expect("ipam")
    }

    #[test]
    fn skips_network_gateway_and_broadcast() {
        let mut ipam = ipam("10.1.0.0/29");
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 1, 0, 1));
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&att(&i.to_string())).expect("alloc"))
            .collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 1, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 1, 0, 6)));
        assert_eq!(
            ipam.allocate(&att("x")),
            Err(IpamError::Exhausted("10.1.0.0/29".parse().expect("cidr")))
        );
    }

    #[test]
    fn same_attachment_gets_same_address() {
        let mut ipam = ipam("10.1.0.0/24");
        let a = ipam.allocate(&att("a")).expect("alloc");
        assert_eq!(ipam.allocate(&att("a")), Ok(a));
        assert_eq!(ipam.free(), ipam.capacity() - 1);
    }

    #[test]
    fn released_address_is_not_reused_immediately() {
        let mut ipam = ipam("10.1.0.0/24");
        let a = ipam.allocate(&att("a")).expect("alloc");
        assert_eq!(ipam.release(&att("a")), Some(a));
        let b = ipam.allocate(&att("b")).expect("alloc");
        assert_ne!(a, b);
        assert_eq!(ipam.release(&att("missing")), None);
    }

    #[test]
    fn wraps_around_to_freed_addresses() {
        let mut ipam = ipam("10.1.0.0/30");
        assert_eq!(ipam.capacity(), 1);
        let a = ipam.allocate(&att("a")).expect("alloc");
        ipam.release(&att("a"));
        assert_eq!(ipam.allocate(&att("b")), Ok(a));
    }

    #[test]
    fn restore_rejects_duplicates_and_foreign_addresses() {
        let mut ipam = ipam("10.1.0.0/24");
        assert!(ipam.restore(att("a"), Ipv4Addr::new(10, 1, 0, 9)));
        assert!(!ipam.restore(att("b"), Ipv4Addr::new(10, 1, 0, 9)));
        assert!(!ipam.restore(att("c"), Ipv4Addr::new(10, 2, 0, 9)));
        assert!(!ipam.restore(att("d"), Ipv4Addr::new(10, 1, 0, 1)));
        // New allocations continue after restored ones.
        assert_eq!(ipam.allocate(&att("e")), Ok(Ipv4Addr::new(10, 1, 0, 10)));
    }

    #[test]
    fn too_small_cidr_is_rejected() {
        assert!(matches!(
            Ipam::new("10.0.0.0/31".parse().expect("cidr")),
            Err(IpamError::TooSmall(_))
        ));
    }
}
