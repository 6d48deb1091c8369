//! What the host stack does for Services, in one nftables table:
//!
//! - frontends without a ready backend refuse connections, as kube-proxy
//!   makes them do: the programs hand such packets to the host stack,
//!   where this table rejects them (TCP reset; ICMP port unreachable for
//!   UDP and SCTP), so a client learns at once instead of timing out;
//! - external connections under `externalTrafficPolicy: Cluster`, which
//!   `from_netdev` translated and marked, leave with the node's address
//!   (masquerade), so the backend's replies come back through this node.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use sluice_common::services::{ServiceKey, MASQUERADE_MARK};

use super::nft;
use crate::policy::ports::{SCTP, TCP, UDP};

/// The nftables table (family ip).
pub const TABLE: &str = "sluice_services";

/// The ruleset for `refused` frontends, with the masquerade of marked
/// connections if `masquerade` (neither: the table is removed).
pub fn ruleset(refused: &BTreeSet<ServiceKey>, masquerade: bool) -> String {
    let mut out = nft::replace_table("ip", TABLE);
    if refused.is_empty() && !masquerade {
        return out;
    }
    let elements = |protocol: u8| -> Vec<String> {
        refused
            .iter()
            .filter(|k| k.protocol == protocol)
            .map(|k| {
                format!(
                    "{} . {}",
                    Ipv4Addr::from(k.addr),
                    u16::from_be_bytes(k.port)
                )
            })
            .collect()
    };
    out.push_str(&format!("table ip {TABLE} {{\n"));
    let mut rules = Vec::new();
    for (protocol, name, reject) in [
        (TCP, "tcp", "reject with tcp reset"),
        (UDP, "udp", "reject"),
        (SCTP, "sctp", "reject"),
    ] {
        let elements = elements(protocol);
        if elements.is_empty() {
            continue;
        }
        // Set names must not be keywords such as `tcp`.
        out.push_str(&format!(
            "\tset refused_{name} {{\n\t\ttype ipv4_addr . inet_service\n\t\telements = {{ {} }}\n\t}}\n",
            elements.join(", ")
        ));
        rules.push(format!(
            "\t\tip daddr . {name} dport @refused_{name} counter {reject}\n"
        ));
    }
    // Pods' packets are forwarded; the node's own would be output; those
    // from outside to a NodePort on the node's address are input.
    if !rules.is_empty() {
        for (chain, hook) in [
            ("forward", "forward"),
            ("output", "output"),
            ("input", "input"),
        ] {
            out.push_str(&format!(
                "\tchain {chain} {{\n\t\ttype filter hook {hook} priority filter; policy accept;\n"
            ));
            for rule in &rules {
                out.push_str(rule);
            }
            out.push_str("\t}\n");
        }
    }
    if masquerade {
        out.push_str(&format!(
            "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} counter masquerade\n\t}}\n"
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, protocol: u8) -> ServiceKey {
        ServiceKey {
            addr: [10, 96, 0, 10],
            port: port.to_be_bytes(),
            protocol,
            _pad: 0,
        }
    }

    #[test]
    fn tcp_gets_resets_the_others_port_unreachable() {
        let rules = ruleset(&BTreeSet::from([key(80, TCP), key(53, UDP)]), false);
        assert!(
            rules.starts_with("add table ip sluice_services\ndelete table ip sluice_services\n")
        );
        assert!(rules.contains(
            "set refused_tcp {\n\t\ttype ipv4_addr . inet_service\n\t\telements = { 10.96.0.10 . 80 }"
        ));
        assert!(rules.contains("ip daddr . tcp dport @refused_tcp counter reject with tcp reset"));
        assert!(rules.contains("ip daddr . udp dport @refused_udp counter reject\n"));
        assert!(!rules.contains("sctp"));
        assert_eq!(
            rules.matches("ip daddr . tcp dport").count(),
            3,
            "forward, output and input"
        );
        assert!(!rules.contains("masquerade"));
    }

    #[test]
    fn marked_external_connections_are_masqueraded() {
        let rules = ruleset(&BTreeSet::new(), true);
        assert!(rules.contains(
            "chain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta mark & 0x200 == 0x200 counter masquerade\n\t}"
        ));
        assert!(!rules.contains("reject"));
    }

    #[test]
    fn nothing_refused_removes_the_table() {
        assert_eq!(
            ruleset(&BTreeSet::new(), false),
            "add table ip sluice_services\ndelete table ip sluice_services\n"
        );
    }
}
