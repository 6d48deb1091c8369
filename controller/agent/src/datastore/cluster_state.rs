//! The agent's view of the cluster, fed by [`Event`]s from any source.
//!
//! Both sources (the Kubernetes API watcher and the manifest directory)
//! speak this one event language, so everything downstream (identities,
//! the policy compiler) is written and tested once.

use std::collections::BTreeMap;
use std::ops::{BitOr, BitOrAssign};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::resource::{Kind, ObjectKey, Rejected, Resource};

/// A change reported by a source. The variants mirror kube-rs's watcher
/// events so that source maps onto them one to one.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An object was added or updated (watcher `Apply`).
    Apply(Resource),
    /// An object is gone (watcher `Delete`).
    Delete(ObjectKey),
    /// The complete current set after a (re)list (watcher `Init` ..
    /// `InitDone`): anything not in it is gone.
    Resync(Vec<Resource>),
    /// The complete current set of one kind after that kind's own (re)list,
    /// as a per-kind watcher reports it: objects of `kind` not in it are
    /// gone, other kinds are untouched. Objects of other kinds in the list
    /// are ignored.
    ResyncKind(Kind, Vec<Resource>),
}

/// Which kinds an event changed, so consumers recompute only what depends
/// on them. Merge several with `|`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub nodes: bool,
    pub namespaces: bool,
    pub pods: bool,
    pub policies: bool,
    pub services: bool,
    pub endpoint_slices: bool,
}

impl Changed {
    pub fn is_empty(self) -> bool {
        self == Changed::default()
    }

    pub fn contains(self, kind: Kind) -> bool {
        match kind {
            Kind::Node => self.nodes,
            Kind::Namespace => self.namespaces,
            Kind::Pod => self.pods,
            Kind::NetworkPolicy => self.policies,
            Kind::Service => self.services,
            Kind::EndpointSlice => self.endpoint_slices,
        }
    }

    pub fn only(kind: Kind) -> Self {
        let mut changed = Changed::default();
        changed.set(kind);
        changed
    }

    fn set(&mut self, kind: Kind) {
        match kind {
            Kind::Node => self.nodes = true,
            Kind::Namespace => self.namespaces = true,
            Kind::Pod => self.pods = true,
            Kind::NetworkPolicy => self.policies = true,
            Kind::Service => self.services = true,
            Kind::EndpointSlice => self.endpoint_slices = true,
        }
    }
}

impl BitOr for Changed {
    type Output = Changed;

    fn bitor(self, other: Changed) -> Changed {
        Changed {
            nodes: self.nodes || other.nodes,
            namespaces: self.namespaces || other.namespaces,
            pods: self.pods || other.pods,
            policies: self.policies || other.policies,
            services: self.services || other.services,
            endpoint_slices: self.endpoint_slices || other.endpoint_slices,
        }
    }
}

impl BitOrAssign for Changed {
    fn bitor_assign(&mut self, other: Changed) {
        *self = *self | other;
    }
}

/// Every object the agent knows, by name; namespaced kinds by
/// (namespace, name). BTreeMaps so iteration (and so everything compiled
/// from this) is deterministic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, Node>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<(String, String), Pod>,
    pub policies: BTreeMap<(String, String), NetworkPolicy>,
    pub services: BTreeMap<(String, String), Service>,
    pub endpoint_slices: BTreeMap<(String, String), EndpointSlice>,
    /// Objects whose current version was rejected (see [`Rejected`]). The
    /// maps above keep their last good version, if there was one: a
    /// rejected version is not a delete.
    pub rejected: BTreeMap<ObjectKey, Rejected>,
}

impl ClusterState {
    /// Applies one event; says which kinds actually changed (re-applying
    /// what is already stored changes nothing).
    pub fn apply(&mut self, event: Event) -> Changed {
        match event {
            Event::Apply(resource) => self.upsert(resource),
            Event::Delete(key) => self.remove(&key),
            Event::Resync(resources) => self.resync(resources),
            Event::ResyncKind(kind, resources) => self.resync_kind(kind, resources),
        }
    }

    /// How many objects of `kind` there are.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Node => self.nodes.len(),
            Kind::Namespace => self.namespaces.len(),
            Kind::Pod => self.pods.len(),
            Kind::NetworkPolicy => self.policies.len(),
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.endpoint_slices.len(),
        }
    }

    /// The rejected NetworkPolicies, by (namespace, name).
    pub fn rejected_policies(&self) -> impl Iterator<Item = ((&str, &str), &Rejected)> {
        self.rejected
            .iter()
            .filter(|(key, _)| key.kind == Kind::NetworkPolicy)
            .map(|(key, r)| {
                let namespace = key.namespace.as_deref().unwrap_or_default();
                ((namespace, key.name.as_str()), r)
            })
    }

    fn upsert(&mut self, resource: Resource) -> Changed {
        let key = resource.key();
        let kind = key.kind;
        let changed = match resource {
            Resource::Rejected(r) => put(&mut self.rejected, key, *r),
            good => {
                let was_rejected = self.rejected.remove(&key).is_some();
                self.store(good) | was_rejected
            }
        };
        if changed {
            Changed::only(kind)
        } else {
            Changed::default()
        }
    }

    /// Stores a good version; true if anything changed.
    fn store(&mut self, resource: Resource) -> bool {
        let key = resource.key();
        match resource {
            Resource::Node(o) => put(&mut self.nodes, key.name, *o),
            Resource::Namespace(o) => put(&mut self.namespaces, key.name, *o),
            Resource::Pod(o) => put(&mut self.pods, namespaced(key), *o),
            Resource::NetworkPolicy(o) => put(&mut self.policies, namespaced(key), *o),
            Resource::Service(o) => put(&mut self.services, namespaced(key), *o),
            Resource::EndpointSlice(o) => put(&mut self.endpoint_slices, namespaced(key), *o),
            Resource::Rejected(_) => unreachable!("rejected objects are not stored as good"),
        }
    }

    /// The stored good version of `key`.
    fn good(&self, key: &ObjectKey) -> Option<Resource> {
        let name = &key.name;
        let ns = || (key.namespace.clone().unwrap_or_default(), name.clone());
        Some(match key.kind {
            Kind::Node => Resource::Node(Box::new(self.nodes.get(name)?.clone())),
            Kind::Namespace => Resource::Namespace(Box::new(self.namespaces.get(name)?.clone())),
            Kind::Pod => Resource::Pod(Box::new(self.pods.get(&ns())?.clone())),
            Kind::NetworkPolicy => {
                Resource::NetworkPolicy(Box::new(self.policies.get(&ns())?.clone()))
            }
            Kind::Service => Resource::Service(Box::new(self.services.get(&ns())?.clone())),
            Kind::EndpointSlice => {
                Resource::EndpointSlice(Box::new(self.endpoint_slices.get(&ns())?.clone()))
            }
        })
    }

    fn remove(&mut self, key: &ObjectKey) -> Changed {
        let was_rejected = self.rejected.remove(key).is_some();
        let removed = match key.kind {
            Kind::Node => self.nodes.remove(&key.name).is_some(),
            Kind::Namespace => self.namespaces.remove(&key.name).is_some(),
            Kind::Pod => self.pods.remove(&namespaced(key.clone())).is_some(),
            Kind::NetworkPolicy => self.policies.remove(&namespaced(key.clone())).is_some(),
            Kind::Service => self.services.remove(&namespaced(key.clone())).is_some(),
            Kind::EndpointSlice => self
                .endpoint_slices
                .remove(&namespaced(key.clone()))
                .is_some(),
        };
        if removed || was_rejected {
            Changed::only(key.kind)
        } else {
            Changed::default()
        }
    }

    /// A state of just `resources`, where a rejected object keeps the good
    /// version this state has of it.
    fn fresh(&self, resources: impl IntoIterator<Item = Resource>) -> ClusterState {
        let mut fresh = ClusterState::default();
        for resource in resources {
            // A list holds each object once; if a source repeats one, the
            // last copy wins, as it would have with Apply events.
            fresh.upsert(resource);
        }
        let keep: Vec<Resource> = fresh
            .rejected
            .keys()
            .filter(|key| fresh.good(key).is_none())
            .filter_map(|key| self.good(key))
            .collect();
        for good in keep {
            fresh.store(good);
        }
        fresh
    }

    fn rejected_of(&self, kind: Kind) -> impl Iterator<Item = (&ObjectKey, &Rejected)> {
        self.rejected
            .iter()
            .filter(move |(key, _)| key.kind == kind)
    }

    fn resync(&mut self, resources: Vec<Resource>) -> Changed {
        let fresh = self.fresh(resources);
        let mut changed = Changed {
            nodes: fresh.nodes != self.nodes,
            namespaces: fresh.namespaces != self.namespaces,
            pods: fresh.pods != self.pods,
            policies: fresh.policies != self.policies,
            services: fresh.services != self.services,
            endpoint_slices: fresh.endpoint_slices != self.endpoint_slices,
        };
        for kind in Kind::ALL {
            if !fresh.rejected_of(kind).eq(self.rejected_of(kind)) {
                changed.set(kind);
            }
        }
        *self = fresh;
        changed
    }

    fn resync_kind(&mut self, kind: Kind, resources: Vec<Resource>) -> Changed {
        let fresh = self.fresh(resources.into_iter().filter(|r| r.kind() == kind));
        let rejected_changed = !fresh.rejected_of(kind).eq(self.rejected_of(kind));
        self.rejected.retain(|key, _| key.kind != kind);
        self.rejected.extend(fresh.rejected.clone());
        let changed = match kind {
            Kind::Node => replace(&mut self.nodes, fresh.nodes),
            Kind::Namespace => replace(&mut self.namespaces, fresh.namespaces),
            Kind::Pod => replace(&mut self.pods, fresh.pods),
            Kind::NetworkPolicy => replace(&mut self.policies, fresh.policies),
            Kind::Service => replace(&mut self.services, fresh.services),
            Kind::EndpointSlice => replace(&mut self.endpoint_slices, fresh.endpoint_slices),
        };
        if changed || rejected_changed {
            Changed::only(kind)
        } else {
            Changed::default()
        }
    }
}

/// Replaces `stored` unless it equals `fresh`; true if anything changed.
fn replace<T: PartialEq>(stored: &mut T, fresh: T) -> bool {
    if *stored == fresh {
        return false;
    }
    *stored = fresh;
    true
}

/// Inserts unless an equal value is stored; true if anything changed.
fn put<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    match map.get_mut(&key) {
        Some(stored) if *stored == value => false,
        Some(stored) => {
            *stored = value;
            true
        }
        None => {
            map.insert(key, value);
            true
        }
    }
}

/// The map key of a namespaced object. Keys built by `Resource::key` always
/// carry a namespace; a key without one matches nothing stored.
fn namespaced(key: ObjectKey) -> (String, String) {
    (key.namespace.unwrap_or_default(), key.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::fixtures::{self, ENDPOINT_SLICE, NAMESPACE, NODE, POD, POLICY, SERVICE};
    use crate::datastore::resource::parse_documents;

    fn resource(yaml: &str) -> Resource {
        let mut results = parse_documents(yaml);
        assert_eq!(results.len(), 1);
        results.remove(0).unwrap()
    }

    fn all() -> Vec<Resource> {
        [NODE, NAMESPACE, POD, POLICY, SERVICE, ENDPOINT_SLICE]
            .into_iter()
            .map(resource)
            .collect()
    }

    fn loaded(resources: Vec<Resource>) -> ClusterState {
        let mut state = ClusterState::default();
        state.apply(Event::Resync(resources));
        state
    }

    const NOTHING: Changed = Changed {
        nodes: false,
        namespaces: false,
        pods: false,
        policies: false,
        services: false,
        endpoint_slices: false,
    };

    #[test]
    fn apply_adds_each_kind_under_its_key() {
        let mut state = ClusterState::default();
        let changes: Vec<_> = all()
            .into_iter()
            .map(|r| state.apply(Event::Apply(r)))
            .collect();
        assert_eq!(
            changes,
            Kind::ALL.map(Changed::only),
            "each apply reports only its own kind"
        );
        assert!(state.nodes.contains_key("node-a"));
        assert!(state.namespaces.contains_key("shop"));
        assert!(state
            .pods
            .contains_key(&("shop".into(), "web-7d4b9c5f6-x2x9k".into())));
        assert!(state
            .policies
            .contains_key(&("shop".into(), "web-allow-frontend".into())));
        for kind in Kind::ALL {
            assert_eq!(state.count(kind), 1);
        }
    }

    #[test]
    fn applying_the_stored_object_again_is_no_change() {
        let mut state = loaded(all());
        for r in all() {
            assert!(state.apply(Event::Apply(r)).is_empty());
        }
    }

    #[test]
    fn apply_of_an_update_replaces_the_object() {
        let mut state = loaded(all());
        let moved = resource(&POD.replace("10.244.1.5", "10.244.1.6"));
        assert_eq!(state.apply(Event::Apply(moved)), Changed::only(Kind::Pod));
        let pod = &state.pods[&("shop".into(), "web-7d4b9c5f6-x2x9k".into())];
        assert_eq!(
            pod.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.244.1.6")
        );
        assert_eq!(state.count(Kind::Pod), 1);
    }

    #[test]
    fn same_name_in_another_namespace_is_another_object() {
        let mut state = loaded(all());
        let other = resource(&POD.replace("namespace: shop", "namespace: staging"));
        assert_eq!(state.apply(Event::Apply(other)), Changed::only(Kind::Pod));
        assert_eq!(state.count(Kind::Pod), 2);
    }

    #[test]
    fn delete_removes_and_reports_only_if_present() {
        let mut state = loaded(all());
        let key = ObjectKey::namespaced(Kind::NetworkPolicy, "shop", "web-allow-frontend");
        assert_eq!(
            state.apply(Event::Delete(key.clone())),
            Changed::only(Kind::NetworkPolicy)
        );
        assert!(state.policies.is_empty());
        assert!(state.apply(Event::Delete(key)).is_empty());
        // Wrong namespace, or no namespace at all: nothing to delete.
        let elsewhere = ObjectKey::namespaced(Kind::Pod, "default", "web-7d4b9c5f6-x2x9k");
        assert!(state.apply(Event::Delete(elsewhere)).is_empty());
        let unnamespaced = ObjectKey {
            kind: Kind::Pod,
            namespace: None,
            name: "web-7d4b9c5f6-x2x9k".into(),
        };
        assert!(state.apply(Event::Delete(unnamespaced)).is_empty());
        let node = ObjectKey::cluster_scoped(Kind::Node, "node-a");
        assert_eq!(state.apply(Event::Delete(node)), Changed::only(Kind::Node));
    }

    #[test]
    fn resync_replaces_everything_and_reports_exactly_what_differs() {
        let mut state = loaded(all());
        // Same set: nothing changed.
        assert_eq!(state.apply(Event::Resync(all())), NOTHING);

        // One pod updated, one added, the policy gone; node and namespace
        // identical.
        let resources = vec![
            resource(NODE),
            resource(NAMESPACE),
            resource(&POD.replace("10.244.1.5", "10.244.1.7")),
            resource(&fixtures::pod("shop", "db", "10.244.1.9")),
        ];
        let changed = state.apply(Event::Resync(resources.clone()));
        assert_eq!(
            changed,
            Changed {
                pods: true,
                policies: true,
                services: true,
                endpoint_slices: true,
                ..NOTHING
            }
        );
        assert_eq!(state, loaded(resources));
        assert!(state.policies.is_empty());

        // Empty resync: everything that was there is reported.
        let changed = state.apply(Event::Resync(Vec::new()));
        assert_eq!(
            changed,
            Changed {
                nodes: true,
                namespaces: true,
                pods: true,
                ..NOTHING
            }
        );
        assert_eq!(state, ClusterState::default());
    }

    #[test]
    fn resync_of_an_empty_state_with_nothing_is_no_change() {
        assert!(ClusterState::default()
            .apply(Event::Resync(Vec::new()))
            .is_empty());
    }

    #[test]
    fn resync_kind_replaces_only_its_own_kind() {
        let mut state = loaded(all());
        // Same pods again: nothing changed.
        assert!(state
            .apply(Event::ResyncKind(Kind::Pod, vec![resource(POD)]))
            .is_empty());

        // One pod updated, one added; the other kinds stay as they were.
        let pods = vec![
            resource(&POD.replace("10.244.1.5", "10.244.1.7")),
            resource(&fixtures::pod("shop", "db", "10.244.1.9")),
        ];
        let changed = state.apply(Event::ResyncKind(Kind::Pod, pods.clone()));
        assert_eq!(changed, Changed::only(Kind::Pod));
        let mut expected = pods;
        expected.extend(
            [NODE, NAMESPACE, POLICY, SERVICE, ENDPOINT_SLICE]
                .into_iter()
                .map(resource),
        );
        assert_eq!(state, loaded(expected));

        // An empty list of policies deletes the policies, and only them.
        let changed = state.apply(Event::ResyncKind(Kind::NetworkPolicy, Vec::new()));
        assert_eq!(changed, Changed::only(Kind::NetworkPolicy));
        assert!(state.policies.is_empty());
        assert_eq!(state.count(Kind::Pod), 2);
        assert_eq!(state.count(Kind::Node), 1);
        assert_eq!(state.count(Kind::Namespace), 1);
    }

    #[test]
    fn resync_kind_ignores_objects_of_other_kinds() {
        let mut state = loaded(all());
        // A node in a namespace resync neither lands nor deletes anything
        // but namespaces.
        let other = resource(&NODE.replace("node-a", "node-b"));
        let changed = state.apply(Event::ResyncKind(Kind::Namespace, vec![other]));
        assert_eq!(changed, Changed::only(Kind::Namespace));
        assert!(state.namespaces.is_empty());
        assert_eq!(state.nodes.keys().collect::<Vec<_>>(), ["node-a"]);
        assert!(ClusterState::default()
            .apply(Event::ResyncKind(Kind::Node, Vec::new()))
            .is_empty());
    }

    fn rejected_policy() -> Resource {
        let broken = POLICY.replace("operator: In", "operator: Equals");
        let r = resource(&broken);
        assert!(r.is_rejected(), "{r:?}");
        r
    }

    #[test]
    fn a_rejected_version_keeps_the_last_good_one_until_a_good_one_or_a_delete() {
        let mut state = loaded(all());
        let good = state.policies.clone();
        let key = ObjectKey::namespaced(Kind::NetworkPolicy, "shop", "web-allow-frontend");
        assert_eq!(
            state.apply(Event::Apply(rejected_policy())),
            Changed::only(Kind::NetworkPolicy)
        );
        assert_eq!(state.policies, good, "the last good version stays");
        assert!(state.rejected.contains_key(&key));
        assert_eq!(state.rejected_policies().count(), 1);
        assert!(state.apply(Event::Apply(rejected_policy())).is_empty());

        // A relist that holds the rejected version: still not a delete,
        // whether of everything or of the kind.
        let mut everything = all();
        everything[3] = rejected_policy();
        assert!(state.apply(Event::Resync(everything.clone())).is_empty());
        assert_eq!(state.policies, good);
        let only = vec![rejected_policy()];
        assert!(state
            .apply(Event::ResyncKind(Kind::NetworkPolicy, only))
            .is_empty());
        assert_eq!(state.policies, good);
        assert!(state.rejected.contains_key(&key));

        // Good again: the rejection goes.
        assert_eq!(
            state.apply(Event::Apply(resource(POLICY))),
            Changed::only(Kind::NetworkPolicy)
        );
        assert!(state.rejected.is_empty());

        // Rejected, then deleted: both go.
        state.apply(Event::Apply(rejected_policy()));
        assert_eq!(
            state.apply(Event::Delete(key.clone())),
            Changed::only(Kind::NetworkPolicy)
        );
        assert!(state.rejected.is_empty() && state.policies.is_empty());

        // Rejected with no good version ever: known only as rejected.
        let mut state = ClusterState::default();
        state.apply(Event::Resync(vec![rejected_policy()]));
        assert!(state.policies.is_empty());
        assert_eq!(state.rejected_policies().count(), 1);
        // A relist without it deletes it.
        assert_eq!(
            state.apply(Event::ResyncKind(Kind::NetworkPolicy, Vec::new())),
            Changed::only(Kind::NetworkPolicy)
        );
        assert!(state.rejected.is_empty());
    }

    #[test]
    fn changed_merges_and_answers_per_kind() {
        let mut changed = Changed::default();
        assert!(changed.is_empty());
        changed |= Changed::only(Kind::Pod);
        changed |= Changed::only(Kind::Namespace);
        assert!(!changed.is_empty());
        assert!(changed.contains(Kind::Pod) && changed.contains(Kind::Namespace));
        assert!(!changed.contains(Kind::Node) && !changed.contains(Kind::NetworkPolicy));
        assert_eq!(
            Changed::only(Kind::Node) | Changed::only(Kind::NetworkPolicy),
            Changed {
                nodes: true,
                policies: true,
                ..NOTHING
            }
        );
    }
}
