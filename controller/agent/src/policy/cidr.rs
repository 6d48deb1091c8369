//! ipBlocks as regions of the CIDR-identity LPM.
//!
//! Every cidr and except prefix of every policy becomes a region with its
//! own identity. The dataplane finds the longest region prefix P* that
//! holds an address; because `cidr` and each `except` are themselves
//! regions, the address lies in `cidr` minus `except` exactly when P* lies
//! inside `cidr` and inside no `except`. So an ipBlock is "the regions
//! inside cidr and not inside any except", whatever other regions exist —
//! no per-packet loop over excepts, and no splitting of ranges.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::networking::v1::IPBlock;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("ipBlock.cidr {0:?} is not a CIDR")]
    InvalidCidr(String),
    #[error("ipBlock.except {0:?} is not a CIDR")]
    InvalidExcept(String),
    #[error("ipBlock.except {except} is not inside cidr {cidr}")]
    ExceptOutside { cidr: String, except: String },
}

/// A validated IPv4 ipBlock, in canonical (truncated) form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub cidr: Ipv4Net,
    pub except: Vec<Ipv4Net>,
}

/// `Ok(None)` for an IPv6 ipBlock: it can never match the IPv4 traffic this
/// dataplane handles yet, so it adds nothing (dual stack will need an IPv6
/// CIDR-identity map).
pub fn parse_block(block: &IPBlock) -> Result<Option<Block>, CidrError> {
    let cidr = parse_net(&block.cidr).ok_or_else(|| CidrError::InvalidCidr(block.cidr.clone()))?;
    let mut except = Vec::new();
    for raw in block.except.iter().flatten() {
        let net = parse_net(raw).ok_or_else(|| CidrError::InvalidExcept(raw.clone()))?;
        match (cidr, net) {
            (IpNet::V4(c), IpNet::V4(e)) if c.contains(&e) => except.push(e),
            (IpNet::V6(c), IpNet::V6(e)) if c.contains(&e) => {}
            // Another family's except removes nothing from this cidr.
            (IpNet::V4(_), IpNet::V6(_)) | (IpNet::V6(_), IpNet::V4(_)) => {}
            _ => {
                return Err(CidrError::ExceptOutside {
                    cidr: block.cidr.clone(),
                    except: raw.clone(),
                })
            }
        }
    }
    Ok(match cidr {
        IpNet::V4(cidr) => Some(Block { cidr, except }),
        IpNet::V6(_) => None,
    })
}

/// Parses `a.b.c.d/n` (host bits allowed, as the API allows them) into its
/// canonical network.
fn parse_net(raw: &str) -> Option<IpNet> {
    raw.trim().parse::<IpNet>().ok().map(|n| n.trunc())
}

impl Block {
    /// The prefixes this block adds to the region set.
    pub fn prefixes(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        std::iter::once(self.cidr).chain(self.except.iter().copied())
    }

    /// The regions whose addresses all belong to the block.
    pub fn regions<'a>(
        &'a self,
        regions: &'a BTreeSet<Ipv4Net>,
    ) -> impl Iterator<Item = Ipv4Net> + 'a {
        within(regions, self.cidr).filter(|r| !self.except.iter().any(|e| e.contains(r)))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.cidr.contains(&addr) && !self.except.iter().any(|e| e.contains(&addr))
    }
}

/// The prefixes of `set` inside `net`, found by range rather than by a
/// walk of the whole set (a policy of many ipBlocks would otherwise cost
/// blocks × regions). Prefixes order by address, then length; every prefix
/// inside `net` has its address in `net`, and a prefix no shorter than
/// `net`'s, so all lie between `net` itself and its last address as a /32.
pub fn within(set: &BTreeSet<Ipv4Net>, net: Ipv4Net) -> impl Iterator<Item = Ipv4Net> + '_ {
    let first = net.trunc();
    let last = Ipv4Net::from(net.broadcast());
    set.range(first..=last)
        .copied()
        .filter(move |r| net.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> IPBlock {
        IPBlock {
            cidr: cidr.into(),
            except: Some(except.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// The dataplane's decision: longest region holding `addr`, then "is
    /// that region one of the block's".
    fn dataplane_contains(b: &Block, regions: &BTreeSet<Ipv4Net>, addr: Ipv4Addr) -> bool {
        let allowed: BTreeSet<Ipv4Net> = b.regions(regions).collect();
        regions
            .iter()
            .filter(|r| r.contains(&addr))
            .max_by_key(|r| r.prefix_len())
            .is_some_and(|r| allowed.contains(r))
    }

    #[test]
    fn canonical_form_and_validation() {
        let b = parse_block(&block("10.1.2.3/16", &["10.1.200.9/24"]))
            .unwrap()
            .unwrap();
        assert_eq!(b.cidr, net("10.1.0.0/16"));
        assert_eq!(b.except, vec![net("10.1.200.0/24")]);
        assert!(matches!(
            parse_block(&block("10.1.0.0/33", &[])),
            Err(CidrError::InvalidCidr(_))
        ));
        assert!(matches!(
            parse_block(&block("10.1.0.0", &[])),
            Err(CidrError::InvalidCidr(_))
        ));
        assert!(matches!(
            parse_block(&block("10.1.0.0/16", &["bogus"])),
            Err(CidrError::InvalidExcept(_))
        ));
        assert!(matches!(
            parse_block(&block("10.1.0.0/16", &["10.2.0.0/24"])),
            Err(CidrError::ExceptOutside { .. })
        ));
        assert!(matches!(
            parse_block(&block("10.1.0.0/16", &["10.0.0.0/8"])),
            Err(CidrError::ExceptOutside { .. })
        ));
        // Wrong-family excepts are skipped; IPv6 blocks compile to nothing.
        let b = parse_block(&block("10.1.0.0/16", &["fd00::/64"]))
            .unwrap()
            .unwrap();
        assert!(b.except.is_empty());
        assert_eq!(parse_block(&block("fd00::/48", &["fd00::/64"])), Ok(None));
    }

    #[test]
    fn regions_decide_membership_exactly() {
        let blocks = [
            parse_block(&block("0.0.0.0/0", &["10.0.0.0/8"]))
                .unwrap()
                .unwrap(),
            parse_block(&block("10.0.0.0/8", &["10.1.0.0/16", "10.1.2.3/32"]))
                .unwrap()
                .unwrap(),
            parse_block(&block("10.1.0.0/16", &["10.1.0.0/16"]))
                .unwrap()
                .unwrap(),
            parse_block(&block("192.168.0.0/16", &[])).unwrap().unwrap(),
        ];
        let regions: BTreeSet<Ipv4Net> = blocks.iter().flat_map(Block::prefixes).collect();
        let addrs = [
            "0.0.0.0",
            "1.2.3.4",
            "9.255.255.255",
            "10.0.0.0",
            "10.0.0.1",
            "10.1.0.0",
            "10.1.2.3",
            "10.1.2.4",
            "10.2.0.0",
            "10.255.255.255",
            "11.0.0.0",
            "192.168.3.4",
            "255.255.255.255",
        ];
        for b in &blocks {
            for a in addrs {
                let a: Ipv4Addr = a.parse().unwrap();
                assert_eq!(
                    dataplane_contains(b, &regions, a),
                    b.contains(a),
                    "{b:?} {a}"
                );
            }
        }
        assert_eq!(
            blocks[2].regions(&regions).count(),
            0,
            "except == cidr leaves nothing"
        );
        assert!(blocks[0].contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn within_finds_exactly_the_prefixes_a_walk_of_the_set_finds() {
        // Nested, adjacent and overlapping prefixes of every length, some
        // with host bits set, around a few addresses.
        let mut seed = 0x2545_f491_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut set = BTreeSet::new();
        for _ in 0..2000 {
            let addr = Ipv4Addr::from(0x0a00_0000 | (next() & 0x0003_ffff));
            let len = (next() % 33) as u8;
            let net = Ipv4Net::new(addr, len).unwrap();
            set.insert(if next() % 4 == 0 { net } else { net.trunc() });
        }
        set.extend([
            net("0.0.0.0/0"),
            net("255.255.255.255/32"),
            net("10.0.0.0/8"),
        ]);
        let queries: Vec<Ipv4Net> = set
            .iter()
            .copied()
            .chain([net("0.0.0.0/0"), net("10.1.0.0/16"), net("10.0.0.0/30")])
            .collect();
        for query in queries {
            let walked: Vec<Ipv4Net> = set.iter().copied().filter(|r| query.contains(r)).collect();
            assert_eq!(within(&set, query).collect::<Vec<_>>(), walked, "{query}");
        }
    }
}
