//! Endpoints whose Pod the agent cannot name yet. Policy selects pods by
//! labels; an endpoint without a known Pod has none, so no policy could
//! isolate it and it would be open to everyone. It is isolated in both
//! directions instead (the node still reaches it, for probes) until its
//! Pod object arrives: the CNI ADD that wired it is answered only then.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use sluice_common::{api::PodRef, direction::Direction};

use super::compile::{LocalEndpoints, LocalPods};
use super::placed::PlacedPolicy;
use crate::datastore::ClusterState;

/// The Pods the endpoints were wired for, as compile ties them: by name,
/// unless the runtime gave a UID and the object of that name has another
/// (a pod of the same name that is gone, say a StatefulSet's previous
/// one, whose labels may not be the new pod's).
pub fn tie_to_pods(refs: &BTreeMap<Ipv4Addr, PodRef>, state: &ClusterState) -> LocalPods {
    refs.iter()
        .filter(|(_, pod)| {
            let object = state.pods.get(&(pod.namespace.clone(), pod.name.clone()));
            let object_uid = object.and_then(|p| p.metadata.uid.as_deref());
            match (pod.uid.as_deref(), object_uid) {
                (Some(wired), Some(known)) => wired == known,
                _ => true,
            }
        })
        .map(|(ip, pod)| (*ip, (pod.namespace.clone(), pod.name.clone())))
        .collect()
}

/// Isolates, in both directions, every local endpoint that compile gave no
/// label identity (`identities`: pod address → identity): its Pod is
/// unknown, not live, or its identity could not be allocated. Returns how
/// many.
pub fn isolate_unidentified(
    placed: &mut PlacedPolicy,
    local: &LocalEndpoints,
    identities: &BTreeMap<Ipv4Addr, u32>,
) -> usize {
    let mut isolated = 0;
    for (ip, endpoint) in local {
        if !identities.contains_key(ip) {
            placed.isolate(*endpoint, Direction::Ingress);
            placed.isolate(*endpoint, Direction::Egress);
            isolated += 1;
        }
    }
    isolated
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    fn pod_ref(name: &str, uid: Option<&str>) -> PodRef {
        PodRef {
            namespace: "x".into(),
            name: name.into(),
            uid: uid.map(Into::into),
        }
    }

    fn state_with(name: &str, uid: Option<&str>) -> ClusterState {
        let mut state = ClusterState::default();
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some("x".into());
        pod.metadata.uid = uid.map(Into::into);
        state.pods.insert(("x".into(), name.into()), pod);
        state
    }

    #[test]
    fn a_pod_is_tied_by_name_unless_its_uid_says_it_is_another() {
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let tied = |wired: Option<&str>, known: Option<&str>| {
            let refs = BTreeMap::from([(ip, pod_ref("a", wired))]);
            tie_to_pods(&refs, &state_with("a", known)).contains_key(&ip)
        };
        assert!(tied(Some("u1"), Some("u1")));
        assert!(tied(None, Some("u1")), "runtimes that give no UID");
        assert!(
            tied(Some("u1"), None),
            "objects without one (the lab's older files)"
        );
        assert!(
            !tied(Some("u2"), Some("u1")),
            "the previous pod of that name"
        );
    }

    #[test]
    fn endpoints_without_an_identity_are_isolated_both_ways() {
        let known = Ipv4Addr::new(10, 0, 0, 2);
        let unknown = Ipv4Addr::new(10, 0, 0, 3);
        let local = LocalEndpoints::from([(known, 2), (unknown, 3)]);
        let identities = BTreeMap::from([(known, 300)]);
        let mut placed = PlacedPolicy::default();
        assert_eq!(isolate_unidentified(&mut placed, &local, &identities), 1);
        assert!(!placed.isolation.contains_key(&2));
        let isolation = placed.isolation[&3];
        assert!(isolation.isolates(Direction::Ingress) && isolation.isolates(Direction::Egress));
        // With no rule, only the node passes.
        let ipcache = BTreeMap::new();
        let policy = crate::policy::InMemory {
            policy: &placed,
            ipcache: &ipcache,
        };
        let verdict =
            sluice_common::policy::decide(&policy, 3, Direction::Ingress, [10, 0, 0, 2], 6, 80);
        assert_eq!(verdict, sluice_common::policy::Decision::Denied);
    }
}
