//! Which decoded objects the oracle can judge. The oracle takes objects as
//! the API server stores them and panics on anything validation would
//! have refused (controller/policy-oracle/src/oracle.rs); under libFuzzer a
//! panic is a crash, so objects are checked against those same
//! preconditions first, and a cluster that fails them is compiled (it must
//! not panic the compiler) but not judged.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_policy_oracle::oracle::Protocol;

/// Why the oracle cannot judge `pod` (it resolves named ports through the
/// containers' ports), or `Ok` if it can.
pub fn pod_judgeable(pod: &Pod) -> Result<(), String> {
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    for port in containers.flat_map(|c| c.ports.iter().flatten()) {
        if let Some(name) = &port.protocol {
            Protocol::from_k8s_name(name)
                .ok_or_else(|| format!("container port protocol {name:?}"))?;
        }
    }
    Ok(())
}

/// Why the oracle cannot judge `policy`, or `Ok` if it can.
pub fn judgeable(policy: &NetworkPolicy) -> Result<(), String> {
    let spec = policy.spec.as_ref().ok_or("no spec")?;
    check_spec(spec)
}

fn check_spec(spec: &NetworkPolicySpec) -> Result<(), String> {
    if let Some(selector) = &spec.pod_selector {
        check_selector(selector)?;
    }
    for policy_type in spec.policy_types.iter().flatten() {
        if !matches!(policy_type.as_str(), "Ingress" | "Egress") {
            return Err(format!("policyType {policy_type:?}"));
        }
    }
    for rule in spec.ingress.iter().flatten() {
        check_peers(rule.from.iter().flatten())?;
        check_ports(rule.ports.iter().flatten())?;
    }
    for rule in spec.egress.iter().flatten() {
        check_peers(rule.to.iter().flatten())?;
        check_ports(rule.ports.iter().flatten())?;
    }
    Ok(())
}

fn check_peers<'a>(peers: impl Iterator<Item = &'a NetworkPolicyPeer>) -> Result<(), String> {
    for peer in peers {
        match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector) {
            (Some(block), None, None) => {
                for cidr in std::iter::once(&block.cidr).chain(block.except.iter().flatten()) {
                    cidr.parse::<ipnet::IpNet>()
                        .map_err(|e| format!("CIDR {cidr:?}: {e}"))?;
                }
            }
            (Some(_), _, _) => return Err("ipBlock with a selector".into()),
            (None, None, None) => return Err("empty peer".into()),
            (None, pods, namespaces) => {
                for selector in [pods, namespaces].into_iter().flatten() {
                    check_selector(selector)?;
                }
            }
        }
    }
    Ok(())
}

fn check_ports<'a>(ports: impl Iterator<Item = &'a NetworkPolicyPort>) -> Result<(), String> {
    for entry in ports {
        if let Some(name) = &entry.protocol {
            Protocol::from_k8s_name(name).ok_or_else(|| format!("protocol {name:?}"))?;
        }
        match (&entry.port, entry.end_port) {
            (None, Some(_)) => return Err("endPort without port".into()),
            (Some(IntOrString::Int(first)), Some(last)) if last < *first => {
                return Err(format!("endPort {last} < port {first}"))
            }
            (Some(IntOrString::String(_)), Some(_)) => {
                return Err("endPort with a named port".into())
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_selector(selector: &LabelSelector) -> Result<(), String> {
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.as_deref().unwrap_or_default();
        let ok = match requirement.operator.as_str() {
            "In" | "NotIn" => !values.is_empty(),
            "Exists" | "DoesNotExist" => values.is_empty(),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "selector requirement {} {:?} {values:?}",
                requirement.key, requirement.operator
            ));
        }
    }
    Ok(())
}
