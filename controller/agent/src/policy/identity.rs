//! Numbers for "who": label identities for (namespace, namespace labels,
//! pod labels) and CIDR identities for ipBlock regions.
//!
//! A number stays the same as long as its key is in use, so pod churn does
//! not rewrite the policy map. Numbers are handed out from a cursor that
//! moves forward and wraps, so a number freed now is the last one reused:
//! a peer that still caches the old meaning (the dataplane of another node,
//! a tunnelled packet in flight) is unlikely to meet a new one.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use sluice_common::identity;

use super::selector::Labels;

/// What a label identity stands for. The namespace name is part of it, so
/// a set of identities resolved from a peer selector is exact; so are the
/// pod's named ports, so an egress rule on a named port, which grants each
/// peer identity the number its pods give the name, cannot grant it to a
/// pod of the same labels that names another port or none.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelKey {
    pub namespace: String,
    pub namespace_labels: Labels,
    pub pod_labels: Labels,
    /// (name, protocol) → number, as [`super::ports::resolve_named`]
    /// resolves them.
    pub named_ports: BTreeMap<(String, u8), u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("label identities exhausted ({size} in use); no identity for {key:?}")]
    LabelsExhausted { size: usize, key: LabelKey },
    #[error("CIDR identities exhausted ({size} in use); no identity for {net}")]
    CidrsExhausted { size: usize, net: Ipv4Net },
}

/// Allocates and remembers identities across compiles.
#[derive(Clone, Debug)]
pub struct IdentityAllocator {
    labels: Pool<LabelKey>,
    cidrs: Pool<Ipv4Net>,
}

impl Default for IdentityAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl IdentityAllocator {
    /// The full ranges of `sluice_common::identity`.
    pub fn new() -> Self {
        Self::with_ranges(
            identity::FIRST_CLUSTER..=identity::FIRST_CIDR - 1,
            identity::FIRST_CIDR..=identity::MAX,
        )
    }

    /// Smaller ranges, for tests of exhaustion and reuse. Both must lie in
    /// their ranges of `sluice_common::identity`.
    pub fn with_ranges(labels: RangeInclusive<u32>, cidrs: RangeInclusive<u32>) -> Self {
        assert!(
            *labels.start() >= identity::FIRST_CLUSTER && *labels.end() < identity::FIRST_CIDR,
            "label identities out of range"
        );
        assert!(
            *cidrs.start() >= identity::FIRST_CIDR && *cidrs.end() <= identity::MAX,
            "CIDR identities out of range"
        );
        IdentityAllocator {
            labels: Pool::new(labels),
            cidrs: Pool::new(cidrs),
        }
    }

    /// Makes `live` exactly the set of label keys with an identity: new
    /// keys get numbers, keys not in `live` release theirs. Keys that could
    /// not get one are reported and have none.
    pub fn sync_labels(&mut self, live: &BTreeSet<LabelKey>) -> Vec<IdentityError> {
        self.labels
            .sync(live)
            .into_iter()
            .map(|key| IdentityError::LabelsExhausted {
                size: self.labels.assigned.len(),
                key,
            })
            .collect()
    }

    /// As [`Self::sync_labels`], for ipBlock region prefixes (canonical form).
    pub fn sync_cidrs(&mut self, live: &BTreeSet<Ipv4Net>) -> Vec<IdentityError> {
        self.cidrs
            .sync(live)
            .into_iter()
            .map(|net| IdentityError::CidrsExhausted {
                size: self.cidrs.assigned.len(),
                net,
            })
            .collect()
    }

    /// Takes over the numbers a previous agent left in the pinned maps
    /// (see [`seeds`]), so a restarted agent numbers label sets as the maps
    /// already do, and hands out new numbers only past every pinned one:
    /// a rule written for a new owner of a number can never meet a pinned
    /// ipcache entry that still gives it to the old one.
    pub fn seed(
        &mut self,
        labels: &[(LabelKey, u32)],
        cidrs: &[(Ipv4Net, u32)],
        pinned: impl IntoIterator<Item = u32>,
    ) {
        for (key, n) in labels {
            self.labels.seed(key, *n);
        }
        for (net, n) in cidrs {
            self.cidrs.seed(net, *n);
        }
        for n in pinned {
            self.labels.skip_past(n);
            self.cidrs.skip_past(n);
        }
    }

    pub fn label(&self, key: &LabelKey) -> Option<u32> {
        self.labels.assigned.get(key).copied()
    }

    pub fn cidr(&self, net: &Ipv4Net) -> Option<u32> {
        self.cidrs.assigned.get(net).copied()
    }

    /// Every label identity in use, for `sluice policy explain` and tests.
    pub fn labels(&self) -> impl Iterator<Item = (&LabelKey, u32)> {
        self.labels.assigned.iter().map(|(k, v)| (k, *v))
    }

    pub fn cidrs(&self) -> impl Iterator<Item = (&Ipv4Net, u32)> {
        self.cidrs.assigned.iter().map(|(k, v)| (k, *v))
    }
}

/// The label identities to take over from a previous agent: the pinned
/// ipcache's pod entries (`pinned`: address → identity) against what the
/// pods at those addresses are now (`now`: address → label set). A number
/// is taken over only when every address holding it now has one and the
/// same label set, so its rules keep meaning what the pinned ipcache says;
/// a label set found under several numbers keeps the first.
pub fn seeds(
    pinned: &BTreeMap<std::net::Ipv4Addr, u32>,
    now: &BTreeMap<std::net::Ipv4Addr, LabelKey>,
) -> Vec<(LabelKey, u32)> {
    let mut holders: BTreeMap<u32, Option<&LabelKey>> = BTreeMap::new();
    let mut consistent: BTreeMap<u32, bool> = BTreeMap::new();
    for (ip, n) in pinned {
        let Some(key) = now.get(ip) else { continue };
        match holders.get(n) {
            None => {
                holders.insert(*n, Some(key));
                consistent.insert(*n, true);
            }
            Some(held) if *held != Some(key) => {
                consistent.insert(*n, false);
            }
            Some(_) => {}
        }
    }
    let mut taken: BTreeSet<&LabelKey> = BTreeSet::new();
    let mut out = Vec::new();
    for (n, key) in holders {
        let Some(key) = key else { continue };
        if consistent[&n] && taken.insert(key) {
            out.push((key.clone(), n));
        }
    }
    out
}

#[derive(Clone, Debug)]
struct Pool<K> {
    range: RangeInclusive<u32>,
    assigned: BTreeMap<K, u32>,
    used: BTreeSet<u32>,
    /// Where the search for a free number starts.
    next: u32,
}

impl<K: Ord + Clone> Pool<K> {
    fn new(range: RangeInclusive<u32>) -> Self {
        Pool {
            next: *range.start(),
            range,
            assigned: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    /// Returns the keys left without a number.
    fn sync(&mut self, live: &BTreeSet<K>) -> Vec<K> {
        let stale: Vec<K> = self
            .assigned
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        // New keys first, while stale keys still hold their numbers, so that
        // none is reused within one sync...
        let mut waiting = Vec::new();
        for key in live {
            if !self.assigned.contains_key(key) && !self.allocate(key) {
                waiting.push(key.clone());
            }
        }
        for key in &stale {
            if let Some(n) = self.assigned.remove(key) {
                self.used.remove(&n);
            }
        }
        // ... unless that is the only way to give every live key one.
        waiting.retain(|key| !self.allocate(key));
        waiting
    }

    fn seed(&mut self, key: &K, n: u32) {
        if self.range.contains(&n) && !self.used.contains(&n) && !self.assigned.contains_key(key) {
            self.used.insert(n);
            self.assigned.insert(key.clone(), n);
            self.skip_past(n);
        }
    }

    /// New numbers start after `n` (when it is in range and ahead).
    fn skip_past(&mut self, n: u32) {
        if self.range.contains(&n) && n >= self.next {
            self.next = if n == *self.range.end() {
                *self.range.start()
            } else {
                n + 1
            };
        }
    }

    fn allocate(&mut self, key: &K) -> bool {
        let (start, end) = (*self.range.start(), *self.range.end());
        let candidate = self
            .free_from(self.next, end)
            .or_else(|| self.free_from(start, end));
        let Some(n) = candidate else {
            return false;
        };
        self.used.insert(n);
        self.assigned.insert(key.clone(), n);
        self.next = if n == end { start } else { n + 1 };
        true
    }

    /// The first free number in `from..=end`.
    fn free_from(&self, from: u32, end: u32) -> Option<u32> {
        let mut candidate = from;
        for &n in self.used.range(from..=end) {
            if n != candidate {
                break;
            }
            candidate = n.checked_add(1)?;
        }
        (candidate <= end).then_some(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, pod: &str) -> LabelKey {
        LabelKey {
            namespace: ns.into(),
            namespace_labels: [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into(),
            pod_labels: [("pod".to_string(), pod.to_string())].into(),
            named_ports: BTreeMap::new(),
        }
    }

    fn set(keys: &[LabelKey]) -> BTreeSet<LabelKey> {
        keys.iter().cloned().collect()
    }

    #[test]
    fn identities_are_in_the_cluster_range_and_stable() {
        let mut ids = IdentityAllocator::new();
        assert!(ids
            .sync_labels(&set(&[key("x", "a"), key("x", "b")]))
            .is_empty());
        let a = ids.label(&key("x", "a")).unwrap();
        let b = ids.label(&key("x", "b")).unwrap();
        assert_ne!(a, b);
        for n in [a, b] {
            assert!((identity::FIRST_CLUSTER..identity::FIRST_CIDR).contains(&n));
        }
        // Another sync with one more key leaves the others alone.
        assert!(ids
            .sync_labels(&set(&[key("x", "a"), key("x", "b"), key("y", "a")]))
            .is_empty());
        assert_eq!(ids.label(&key("x", "a")), Some(a));
        assert_eq!(ids.label(&key("x", "b")), Some(b));
        assert_ne!(ids.label(&key("y", "a")), ids.label(&key("x", "a")));
    }

    #[test]
    fn a_restarted_allocator_seeded_from_the_pinned_ipcache_keeps_the_numbers() {
        use std::net::Ipv4Addr;
        // The first agent saw z before a, so z got the lower number; a
        // fresh allocator would number them the other way round.
        let mut first = IdentityAllocator::new();
        first.sync_labels(&set(&[key("x", "z")]));
        first.sync_labels(&set(&[key("x", "z"), key("x", "a")]));
        let (ip_z, ip_a, ip_b) = (
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 3),
            Ipv4Addr::new(10, 0, 0, 4),
        );
        let pinned = BTreeMap::from([
            (ip_z, first.label(&key("x", "z")).unwrap()),
            (ip_a, first.label(&key("x", "a")).unwrap()),
        ]);
        let now = BTreeMap::from([
            (ip_z, key("x", "z")),
            (ip_a, key("x", "a")),
            (ip_b, key("x", "b")),
        ]);
        let mut next = IdentityAllocator::new();
        next.seed(&seeds(&pinned, &now), &[], pinned.values().copied());
        next.sync_labels(&set(&[key("x", "a"), key("x", "b"), key("x", "z")]));
        assert_eq!(next.label(&key("x", "z")), first.label(&key("x", "z")));
        assert_eq!(next.label(&key("x", "a")), first.label(&key("x", "a")));
        let b = next.label(&key("x", "b")).unwrap();
        assert!(
            pinned.values().all(|&n| b > n),
            "new numbers come after the pinned ones"
        );
    }

    #[test]
    fn a_number_whose_holders_now_differ_is_taken_over_by_none() {
        use std::net::Ipv4Addr;
        let (ip1, ip2) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
        // Both pods had number 300; one was relabelled meanwhile.
        let pinned = BTreeMap::from([(ip1, 300), (ip2, 300)]);
        let now = BTreeMap::from([(ip1, key("x", "a")), (ip2, key("x", "b"))]);
        assert!(seeds(&pinned, &now).is_empty());
        let mut next = IdentityAllocator::new();
        next.seed(&[], &[], [300]);
        next.sync_labels(&set(&[key("x", "a"), key("x", "b")]));
        for pod in ["a", "b"] {
            assert!(
                next.label(&key("x", pod)).unwrap() > 300,
                "300 stays unused"
            );
        }
    }

    #[test]
    fn namespace_labels_are_part_of_the_key() {
        let mut ids = IdentityAllocator::new();
        let plain = key("x", "a");
        let mut labelled = plain.clone();
        labelled
            .namespace_labels
            .insert("team".into(), "blue".into());
        ids.sync_labels(&set(&[plain.clone(), labelled.clone()]));
        assert_ne!(ids.label(&plain), ids.label(&labelled));
    }

    #[test]
    fn unused_identities_are_released_and_not_reused_at_once() {
        let mut ids =
            IdentityAllocator::with_ranges(256..=259, identity::FIRST_CIDR..=identity::MAX);
        ids.sync_labels(&set(&[key("x", "a"), key("x", "b")]));
        let a = ids.label(&key("x", "a")).unwrap();
        // x/a goes away while x/c arrives in the same sync.
        ids.sync_labels(&set(&[key("x", "b"), key("x", "c")]));
        assert_eq!(ids.label(&key("x", "a")), None);
        let c = ids.label(&key("x", "c")).unwrap();
        assert_ne!(c, a, "a number freed in this sync is not reused in it");
        // A later key prefers never-used numbers over recently freed ones.
        ids.sync_labels(&set(&[key("x", "b"), key("x", "c"), key("x", "d")]));
        assert_eq!(ids.label(&key("x", "d")), Some(259));
        // Once the range is used up, freed numbers come back.
        ids.sync_labels(&set(&[
            key("x", "b"),
            key("x", "c"),
            key("x", "d"),
            key("x", "e"),
        ]));
        assert_eq!(ids.label(&key("x", "e")), Some(a));
    }

    #[test]
    fn exhaustion_is_an_error_and_never_wraps_into_other_ranges() {
        let mut ids =
            IdentityAllocator::with_ranges(256..=257, identity::FIRST_CIDR..=identity::MAX);
        let errors = ids.sync_labels(&set(&[key("x", "a"), key("x", "b"), key("x", "c")]));
        assert_eq!(
            errors,
            vec![IdentityError::LabelsExhausted {
                size: 2,
                key: key("x", "c")
            }]
        );
        assert_eq!(ids.label(&key("x", "c")), None);
        assert_eq!(ids.labels().count(), 2);
        for (_, n) in ids.labels() {
            assert!((256..=257).contains(&n));
        }
        // If the only free numbers are those freed in this sync, use them.
        let errors = ids.sync_labels(&set(&[key("x", "c"), key("x", "d")]));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(ids.label(&key("x", "c")).is_some() && ids.label(&key("x", "d")).is_some());
    }

    #[test]
    fn cidr_identities_are_in_their_range_and_stable() {
        let mut ids = IdentityAllocator::new();
        let nets: BTreeSet<Ipv4Net> = ["0.0.0.0/0", "10.0.0.0/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(ids.sync_cidrs(&nets).is_empty());
        let n = ids.cidr(&"10.0.0.0/8".parse().unwrap()).unwrap();
        assert!((identity::FIRST_CIDR..=identity::MAX).contains(&n));
        ids.sync_cidrs(&nets);
        assert_eq!(ids.cidr(&"10.0.0.0/8".parse().unwrap()), Some(n));
        assert_eq!(ids.cidrs().count(), 2);

        let mut small = IdentityAllocator::with_ranges(256..=300, identity::MAX..=identity::MAX);
        let errors = small.sync_cidrs(&nets);
        assert_eq!(errors.len(), 1);
        assert!(matches!(errors[0], IdentityError::CidrsExhausted { .. }));
    }
}
