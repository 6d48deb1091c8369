//! Manifests from arbitrary bytes: the agent's decoders (YAML documents and
//! JSON streams, as its directory source reads them) into a cluster state,
//! then the policy and Service compilers over it. Nothing may panic; and
//! where the decoded objects are ones the oracle can judge, the compiled
//! policy must never allow a flow the NetworkPolicy semantics deny.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_agent::datastore::{parse_documents, parse_json, ClusterState, Event};
use sluice_agent::policy::{compile, IdentityAllocator, LocalEndpoints, LocalPods};
use sluice_agent::services::{self, ServiceIds};
use sluice_policy_oracle::generate::GeneratedCluster;
use sluice_policy_oracle::oracle::Cluster;

use crate::policy::{self, Strictness, GATEWAY};
use crate::validity;

/// Addresses that are no pod's, probed as external peers besides the
/// first address of every IPv4 ipBlock CIDR and exception.
const EXTERNALS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(10, 1, 0, 5),
];

/// Externals probed at most, so one input stays cheap.
const MAX_EXTERNALS: usize = 8;

/// Pods judged at most (flows grow with the square).
const MAX_PODS: usize = 12;

/// What became of one input.
#[derive(Debug, Default)]
pub struct Outcome {
    pub objects: usize,
    pub errors: usize,
    /// Why the oracle did not judge it, if it did not.
    pub unjudged: Option<String>,
    pub flows: u64,
}

pub fn check(data: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(data);
    let mut outcome = Outcome::default();
    let mut state = ClusterState::default();
    for result in parse_documents(&text).into_iter().chain(parse_json(&text)) {
        match result {
            Ok(resource) => {
                outcome.objects += 1;
                state.apply(Event::Apply(resource));
            }
            Err(error) => {
                outcome.errors += 1;
                // Every error names where it is.
                assert!(!error.to_string().is_empty());
            }
        }
    }
    services::compile(
        &state,
        "node-0",
        Some(Ipv4Addr::new(172, 31, 0, 1)),
        &mut ServiceIds::new(),
    );
    match judgeable(&state) {
        Ok(generated) => {
            outcome.flows = policy::judge(&generated, &state, Strictness::NoWiderThanOracle).flows;
        }
        Err(why) => {
            // Still compiled, every pod with an address local: the
            // compiler must survive any object.
            let local: LocalEndpoints = state
                .pods
                .values()
                .filter_map(|pod| pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
                .zip(1..)
                .collect();
            compile(
                &state,
                &local,
                &LocalPods::new(),
                &mut IdentityAllocator::new(),
                false,
            );
            outcome.unjudged = Some(why);
        }
    }
    outcome
}

/// The oracle's view of `state`, if it can judge it: the pods the compiler
/// gives an address of their own (live, IPv4, the first of each address in
/// name order), namespaces for every namespace named, policies with their
/// namespace and name as the state keys them.
fn judgeable(state: &ClusterState) -> Result<GeneratedCluster, String> {
    let mut cluster = Cluster::default();
    let mut nodes = Vec::new();
    let mut seen = BTreeSet::new();
    for ((namespace, name), pod) in &state.pods {
        if !live(pod) {
            continue;
        }
        let Some(ip) = first_ipv4(pod) else { continue };
        // API validation makes podIPs[0] the podIP; the compiler reads
        // podIPs first, the oracle podIP only.
        let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
        if pod_ip.and_then(|ip| ip.parse().ok()) != Some(ip) {
            return Err(format!("pod {namespace}/{name}: podIPs and podIP disagree"));
        }
        if ip == GATEWAY || !seen.insert(ip) {
            continue;
        }
        validity::pod_judgeable(pod).map_err(|why| format!("pod {namespace}/{name}: {why}"))?;
        if cluster.pods.len() == MAX_PODS {
            return Err(format!("more than {MAX_PODS} pods"));
        }
        let mut pod = pod.clone();
        pod.metadata.namespace = Some(namespace.clone());
        pod.metadata.name = Some(name.clone());
        let on = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-1");
        nodes.push(u8::from(on));
        cluster.pods.push(pod);
    }
    let mut externals: Vec<Ipv4Addr> = EXTERNALS.to_vec();
    for ((namespace, name), policy) in &state.policies {
        validity::judgeable(policy).map_err(|why| format!("policy {namespace}/{name}: {why}"))?;
        externals.extend(block_addresses(policy));
        let mut policy = policy.clone();
        policy.metadata.namespace = Some(namespace.clone());
        policy.metadata.name = Some(name.clone());
        cluster.policies.push(policy);
    }
    let mut names: BTreeSet<String> = state.namespaces.keys().cloned().collect();
    names.extend(state.pods.keys().map(|(ns, _)| ns.clone()));
    names.extend(state.policies.keys().map(|(ns, _)| ns.clone()));
    for name in names {
        let mut namespace = state
            .namespaces
            .get(&name)
            .cloned()
            .unwrap_or_else(|| Namespace {
                metadata: ObjectMeta::default(),
                ..Namespace::default()
            });
        namespace.metadata.name = Some(name);
        cluster.namespaces.push(namespace);
    }
    let mut unique = BTreeSet::new();
    externals.retain(|ip| *ip != GATEWAY && !seen.contains(ip) && unique.insert(*ip));
    externals.truncate(MAX_EXTERNALS);
    Ok(GeneratedCluster {
        cluster,
        nodes,
        externals,
    })
}

/// Whether the pod takes part in policy with an address of its own (the
/// compiler's conditions: not hostNetwork, not Succeeded/Failed).
fn live(pod: &Pod) -> bool {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The first IPv4 address among podIPs, then podIP.
fn first_ipv4(pod: &Pod) -> Option<Ipv4Addr> {
    let status = pod.status.as_ref()?;
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .find_map(|ip| ip.parse().ok())
}

/// The first address of each IPv4 CIDR an ipBlock names: the edges where
/// a compiled region could be wrong.
fn block_addresses(policy: &NetworkPolicy) -> Vec<Ipv4Addr> {
    let Some(spec) = &policy.spec else {
        return Vec::new();
    };
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .flat_map(|r| r.from.iter().flatten());
    let egress = spec
        .egress
        .iter()
        .flatten()
        .flat_map(|r| r.to.iter().flatten());
    ingress
        .chain(egress)
        .filter_map(|peer| peer.ip_block.as_ref())
        .flat_map(|block| std::iter::once(&block.cidr).chain(block.except.iter().flatten()))
        .filter_map(|cidr| cidr.parse::<ipnet::Ipv4Net>().ok())
        .map(|net| net.network())
        .collect()
}
