//! A simulated large cluster as manifests: Nodes, Namespaces, Pods and
//! NetworkPolicies in the shapes a real cluster has (pods of a namespace
//! in deployments of ten, each deployment its own label set; a few
//! policies a namespace, selecting deployments and admitting others and
//! a labelled set of namespaces), generated as YAML text. Pure: the
//! same sizes and generation give the same text.
//!
//! Files: one for the Nodes, one for the Namespaces, one for the
//! policies, and one per namespace for its pods, so churn rewrites a
//! file of fifty pods rather than one of a hundred thousand (the
//! directory source re-reads a changed file whole).

use std::{fmt::Write as _, net::Ipv4Addr};

/// How many of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSizes {
    pub nodes: usize,
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
}

impl SimSizes {
    pub const FULL: SimSizes = SimSizes {
        nodes: 5_000,
        pods: 100_000,
        namespaces: 2_000,
        policies: 10_000,
    };

    pub fn tenth(self) -> Self {
        SimSizes {
            nodes: self.nodes / 10,
            pods: self.pods / 10,
            namespaces: self.namespaces / 10,
            policies: self.policies / 10,
        }
    }

    fn pods_per_namespace(&self) -> usize {
        self.pods.div_ceil(self.namespaces.max(1))
    }

    fn policies_per_namespace(&self) -> usize {
        self.policies.div_ceil(self.namespaces.max(1))
    }
}

/// Pods of a deployment (one label set).
const DEPLOYMENT: usize = 10;
/// Namespaces carry one of this many `team` labels.
const TEAMS: usize = 10;

/// A simulated node's name, address and pod CIDR: addresses from
/// 100.64.0.0/10, pod CIDRs /24s from 10.128.0.0/9 (clear of the lab's
/// 10.244.0.0/16 and of 172.30.0.0/24).
pub fn node(i: usize) -> (String, Ipv4Addr, Ipv4Addr) {
    let i = u32::try_from(i).expect("fewer than 2^32 nodes");
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)) + i);
    let cidr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i << 8));
    (format!("sim-{i:05}"), ip, cidr)
}

pub fn namespace_name(n: usize) -> String {
    format!("ns-{n:04}")
}

impl SimSizes {
    /// Pod `j` of namespace `n`: its name, node index and address (the
    /// pods spread round-robin over the nodes, each node's pods numbered
    /// from .2 of its /24).
    fn pod(&self, n: usize, j: usize) -> (String, usize, Ipv4Addr) {
        let global = n * self.pods_per_namespace() + j;
        let node_index = global % self.nodes.max(1);
        let (_, _, cidr) = node(node_index);
        let host = u32::try_from(global / self.nodes.max(1) + 2).expect("a small host number");
        (
            format!("pod-{j:03}"),
            node_index,
            Ipv4Addr::from(u32::from(cidr) + host),
        )
    }

    /// How many pods namespace `n` has (the last one may have fewer).
    fn pods_in(&self, n: usize) -> usize {
        let per = self.pods_per_namespace();
        self.pods.saturating_sub(n * per).min(per)
    }

    pub fn nodes_yaml(&self) -> String {
        let mut out = String::new();
        for i in 0..self.nodes {
            let (name, ip, cidr) = node(i);
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: {cidr}/24\n  podCIDRs: [{cidr}/24]\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
            );
        }
        out
    }

    pub fn namespaces_yaml(&self) -> String {
        let mut out = String::new();
        for n in 0..self.namespaces {
            let name = namespace_name(n);
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/metadata.name: {name}\n    team: t{}\n",
                n % TEAMS
            );
        }
        out
    }

    /// The pods of namespace `n` at churn `generation` (0: as created).
    /// Each generation relabels a tenth of them (a rollout's `revision`)
    /// and adds or removes one extra pod.
    pub fn pods_yaml(&self, n: usize, generation: u64) -> String {
        let namespace = namespace_name(n);
        let mut out = String::new();
        let count = self.pods_in(n);
        let extra = generation % 2 == 1 && count > 0;
        for j in 0..count + usize::from(extra) {
            let (name, node_index, ip) = if j < count {
                self.pod(n, j)
            } else {
                // The extra pod goes on the node of the namespace's first
                // pod, past that node's regular pods; namespaces whose
                // first pods share a node are `period` apart.
                let (_, node_index, _) = self.pod(n, 0);
                let (_, _, cidr) = node(node_index);
                let nodes = self.nodes.max(1);
                let period = nodes / gcd(self.pods_per_namespace(), nodes);
                let host = u32::try_from(self.pods / nodes + 3 + n / period.max(1))
                    .expect("a small host number");
                (
                    "pod-extra".to_owned(),
                    node_index,
                    Ipv4Addr::from(u32::from(cidr) + host),
                )
            };
            let (node_name, host_ip, _) = node(node_index);
            let deployment = j / DEPLOYMENT;
            let revision = if generation > 0 && (j as u64) % 10 == generation % 10 {
                generation
            } else {
                0
            };
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    app: app-{deployment}\n    pod-template-hash: h{n}x{deployment}\n    revision: r{revision}\nspec:\n  nodeName: {node_name}\n  containers:\n  - name: main\n    image: registry.example/app:1\n    ports:\n    - name: http\n      containerPort: 80\n      protocol: TCP\nstatus:\n  phase: Running\n  hostIP: {host_ip}\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
            );
        }
        out
    }

    /// Every NetworkPolicy: policy `k` of a namespace selects deployment
    /// `k` and admits deployment `k + 1` of the namespace on TCP 80, and
    /// the first of each namespace also anything from the namespaces of
    /// its team.
    pub fn policies_yaml(&self) -> String {
        let mut out = String::new();
        let per = self.policies_per_namespace();
        let deployments = self.pods_per_namespace().div_ceil(DEPLOYMENT).max(1);
        for i in 0..self.policies {
            let (n, k) = (i / per, i % per);
            let namespace = namespace_name(n);
            let team = if k == 0 {
                format!(
                    "    - namespaceSelector:\n        matchLabels:\n          team: t{}\n",
                    n % TEAMS
                )
            } else {
                String::new()
            };
            let _ = write!(
                out,
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: policy-{k}\n  namespace: {namespace}\nspec:\n  podSelector:\n    matchLabels:\n      app: app-{}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: app-{}\n{team}    ports:\n    - protocol: TCP\n      port: 80\n",
                k % deployments,
                (k + 1) % deployments
            );
        }
        out
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use sluice_agent::datastore::{parse_documents, Resource};

    use super::*;

    const SMALL: SimSizes = SimSizes {
        nodes: 7,
        pods: 95,
        namespaces: 4,
        policies: 9,
    };

    fn parsed(yaml: &str) -> Vec<Resource> {
        parse_documents(yaml)
            .into_iter()
            .map(|r| r.expect("generated manifests parse"))
            .collect()
    }

    fn all_pods(sizes: &SimSizes, generation: u64) -> Vec<Resource> {
        (0..sizes.namespaces)
            .flat_map(|n| parsed(&sizes.pods_yaml(n, generation)))
            .collect()
    }

    #[test]
    fn every_object_is_there_and_parses() {
        assert_eq!(parsed(&SMALL.nodes_yaml()).len(), 7);
        assert_eq!(parsed(&SMALL.namespaces_yaml()).len(), 4);
        assert_eq!(all_pods(&SMALL, 0).len(), 95);
        assert_eq!(parsed(&SMALL.policies_yaml()).len(), 9);
        assert!(parsed(&SMALL.policies_yaml())
            .iter()
            .all(|r| matches!(r, Resource::NetworkPolicy(_))));
    }

    #[test]
    fn pod_addresses_are_distinct_and_in_their_nodes_cidr() {
        for generation in [0, 1] {
            let mut seen = HashSet::new();
            for r in all_pods(&SMALL, generation) {
                let Resource::Pod(pod) = r else {
                    panic!("not a pod")
                };
                let ip: Ipv4Addr = pod
                    .status
                    .and_then(|s| s.pod_ip)
                    .expect("an IP")
                    .parse()
                    .expect("IPv4");
                let node_name = pod.spec.and_then(|s| s.node_name).expect("a node");
                let i: usize = node_name
                    .trim_start_matches("sim-")
                    .parse()
                    .expect("an index");
                let (_, _, cidr) = node(i);
                assert_eq!(
                    u32::from(ip) >> 8,
                    u32::from(cidr) >> 8,
                    "{ip} on {node_name}"
                );
                assert!(seen.insert(ip), "{ip} twice");
            }
        }
    }

    #[test]
    fn churn_relabels_a_tenth_and_toggles_one_pod() {
        let before = SMALL.pods_yaml(0, 0);
        let after = SMALL.pods_yaml(0, 1);
        assert_eq!(parsed(&after).len(), parsed(&before).len() + 1);
        assert_eq!(after.matches("revision: r1").count(), 3); // pods 1, 11, 21 of 24, and not the extra (24)
        assert_eq!(parsed(&SMALL.pods_yaml(0, 2)).len(), parsed(&before).len());
        assert_eq!(
            SMALL.pods_yaml(0, 3),
            SMALL.pods_yaml(0, 3),
            "deterministic"
        );
    }

    #[test]
    fn the_full_size_fits_its_address_plan() {
        let full = SimSizes::FULL;
        // 20 pods a node, plus the extras of the 20 namespaces whose
        // first pods share a node, within a /24.
        let per = full.pods / full.namespaces;
        let period = full.nodes / gcd(per, full.nodes);
        assert!(full.pods / full.nodes + 3 + full.namespaces / period < 255);
        assert_eq!(full.tenth().pods, 10_000);
        let (_, ip, cidr) = node(full.nodes - 1);
        assert!(ip < Ipv4Addr::new(100, 128, 0, 0));
        assert!(cidr < Ipv4Addr::new(11, 0, 0, 0));
    }
}
