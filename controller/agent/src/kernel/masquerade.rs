//! Masquerade: pod traffic to destinations outside the cluster leaves with
//! the node's address.
//!
//! Done by the host stack's netfilter NAT, not in eBPF: the programs hand
//! such packets to the stack anyway (`TO_STACK`), and the kernel's conntrack
//! already does port allocation, reply de-NAT and ICMP error translation
//! correctly for every protocol. An eBPF SNAT engine would have to redo all
//! of that with its own NAT map; it becomes worth it with Services, not
//! before. The rules live in one nftables table of our own
//! ([`super::nft`]).

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

/// The nftables table (family ip) that holds sluice's NAT rules.
pub const TABLE: &str = "sluice";

/// The ruleset: drop any previous version of the table and, when
/// `pod_cidr` is given, masquerade its traffic to everything outside
/// `cluster`. One `nft -f` transaction, so there is no moment without rules.
pub fn ruleset(pod_cidr: Option<Ipv4Net>, cluster: &BTreeSet<Ipv4Net>) -> String {
    let mut out = super::nft::replace_table("ip", TABLE);
    let Some(pod_cidr) = pod_cidr else {
        return out;
    };
    let elements: Vec<String> = cluster.iter().map(|n| n.to_string()).collect();
    out.push_str(&format!(
        "table ip {TABLE} {{\n\
         \tset cluster {{\n\
         \t\ttype ipv4_addr\n\
         \t\tflags interval\n\
         \t\tauto-merge\n\
         \t\telements = {{ {} }}\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod_cidr} ip daddr != @cluster counter masquerade\n\
         \t}}\n\
         }}\n",
        elements.join(", ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerades_pod_traffic_leaving_the_cluster() {
        let cluster: BTreeSet<Ipv4Net> = ["10.244.1.0/24", "10.244.2.0/24", "172.30.0.11/32"]
            .iter()
            .map(|s| s.parse().expect("cidr"))
            .collect();
        let rules = ruleset(Some("10.244.1.0/24".parse().expect("cidr")), &cluster);
        assert!(rules.starts_with("add table ip sluice\ndelete table ip sluice\n"));
        assert!(rules.contains("elements = { 10.244.1.0/24, 10.244.2.0/24, 172.30.0.11/32 }"));
        assert!(rules.contains("ip saddr 10.244.1.0/24 ip daddr != @cluster counter masquerade"));
    }

    #[test]
    fn disabled_only_removes_the_table() {
        assert_eq!(
            ruleset(None, &BTreeSet::new()),
            "add table ip sluice\ndelete table ip sluice\n"
        );
    }
}
