//! Which pods a selector picks, without matching it against every pod.
//!
//! The compiler asks this for every policy's podSelector and every peer:
//! matched against all pods each time, a cluster of N pods and N policies
//! costs N² matches per compile. Pods are indexed by namespace and by
//! label pair; a search starts from the smallest list the selector
//! narrows it to (its namespace, or the pods holding one of a required
//! key's values) and checks only those against the whole selector, so the
//! answer is exactly that of the full walk.

use std::collections::BTreeMap;

use super::selector::{Labels, Selector};

/// Pods `0..n` (the caller's numbering) by namespace and label pair.
#[derive(Debug, Default)]
pub struct PodIndex<'a> {
    all: Vec<usize>,
    by_namespace: BTreeMap<&'a str, Vec<usize>>,
    /// Label key → value → pods.
    by_label: BTreeMap<&'a str, BTreeMap<&'a str, Vec<usize>>>,
}

/// Where a search may look.
#[derive(Clone, Copy, Debug)]
pub enum Namespaces<'s> {
    /// This namespace only.
    One(&'s str),
    /// These namespaces (in any order, each once).
    Some(&'s [&'s str]),
}

impl<'a> PodIndex<'a> {
    /// `pods`: each pod's namespace and labels, in the caller's order.
    pub fn new(pods: impl IntoIterator<Item = (&'a str, &'a Labels)>) -> Self {
        let mut index = PodIndex::default();
        for (i, (namespace, labels)) in pods.into_iter().enumerate() {
            index.all.push(i);
            index.by_namespace.entry(namespace).or_default().push(i);
            for (key, value) in labels {
                let values = index.by_label.entry(key.as_str()).or_default();
                values.entry(value.as_str()).or_default().push(i);
            }
        }
        index
    }

    /// The pods that may match: every one the selector picks in
    /// `namespaces` is among them, in ascending order. The caller checks
    /// each candidate with `matches` (see [`Self::select`]).
    fn candidates(&self, namespaces: Namespaces<'_>, selector: &Selector) -> Vec<usize> {
        let namespace_pods = match namespaces {
            Namespaces::One(ns) => self.namespace(ns).to_vec(),
            Namespaces::Some([ns]) => self.namespace(ns).to_vec(),
            Namespaces::Some(list) => union(list.iter().map(|ns| self.namespace(ns))),
        };
        let mut best = namespace_pods;
        for (key, values) in selector.required_values() {
            let lists = values.iter().map(|v| self.label(key, v));
            let size: usize = lists.clone().map(<[usize]>::len).sum();
            if size < best.len() {
                best = union(lists);
            }
        }
        best
    }

    /// The pods in `namespaces` whose labels `selector` matches, in
    /// ascending order; `labels(i)` gives pod i's labels.
    pub fn select<'l>(
        &self,
        namespaces: Namespaces<'_>,
        selector: &Selector,
        namespace_of: impl Fn(usize) -> &'l str,
        labels: impl Fn(usize) -> &'l Labels,
    ) -> Vec<usize> {
        let in_namespaces = |ns: &str| match namespaces {
            Namespaces::One(one) => ns == one,
            Namespaces::Some(list) => list.contains(&ns),
        };
        let mut picked = self.candidates(namespaces, selector);
        picked.retain(|&i| in_namespaces(namespace_of(i)) && selector.matches(labels(i)));
        picked
    }

    /// Every pod, in order.
    pub fn all(&self) -> &[usize] {
        &self.all
    }

    fn namespace(&self, ns: &str) -> &[usize] {
        self.by_namespace.get(ns).map_or(&[], Vec::as_slice)
    }

    fn label(&self, key: &str, value: &str) -> &[usize] {
        self.by_label
            .get(key)
            .and_then(|values| values.get(value))
            .map_or(&[], Vec::as_slice)
    }
}

/// The sorted union of sorted lists.
fn union<'l>(lists: impl Iterator<Item = &'l [usize]>) -> Vec<usize> {
    let mut out: Vec<usize> = lists.flatten().copied().collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn selector(yaml: &str) -> Selector {
        let raw: LabelSelector = serde_yaml::from_str(yaml).expect("selector YAML");
        Selector::parse(&raw).expect("a valid selector")
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Every combination of three keys' values over three namespaces.
    fn pods() -> Vec<(&'static str, Labels)> {
        let mut pods = Vec::new();
        for ns in ["x", "y", "z"] {
            for app in ["", "a", "b"] {
                for tier in ["", "web", "db"] {
                    let mut pairs = Vec::new();
                    if !app.is_empty() {
                        pairs.push(("app", app));
                    }
                    if !tier.is_empty() {
                        pairs.push(("tier", tier));
                    }
                    pairs.push(("empty", ""));
                    pods.push((ns, labels(&pairs)));
                }
            }
        }
        pods
    }

    #[test]
    fn selects_exactly_what_matching_every_pod_selects() {
        let pods = pods();
        let index = PodIndex::new(pods.iter().map(|(ns, l)| (*ns, l)));
        let selectors = [
            "{}",
            "matchLabels: {app: a}",
            "matchLabels: {app: a, tier: web}",
            "matchLabels: {app: c}",
            "matchLabels: {empty: ''}",
            "matchExpressions: [{key: app, operator: In, values: [a, b]}]",
            "matchExpressions: [{key: app, operator: NotIn, values: [a]}]",
            "matchExpressions: [{key: tier, operator: Exists}]",
            "matchExpressions: [{key: tier, operator: DoesNotExist}]",
            "matchLabels: {tier: db}\nmatchExpressions: [{key: app, operator: In, values: [b, c]}]",
        ];
        let namespace_sets: [&[&str]; 5] = [&["x"], &["y", "x"], &["x", "y", "z"], &[], &["w"]];
        for yaml in selectors {
            let s = selector(yaml);
            for set in namespace_sets {
                let walked: Vec<usize> = (0..pods.len())
                    .filter(|&i| set.contains(&pods[i].0) && s.matches(&pods[i].1))
                    .collect();
                let searches = [Namespaces::Some(set)]
                    .into_iter()
                    .chain((set.len() == 1).then(|| Namespaces::One(set[0])));
                for namespaces in searches {
                    let picked = index.select(namespaces, &s, |i| pods[i].0, |i| &pods[i].1);
                    assert_eq!(picked, walked, "{yaml} in {namespaces:?}");
                }
            }
        }
        assert_eq!(index.all(), (0..pods.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_selective_label_narrows_the_candidates() {
        // The point of the index: the work is the size of the smallest
        // list, not of the namespace.
        let pods = pods();
        let index = PodIndex::new(pods.iter().map(|(ns, l)| (*ns, l)));
        let everywhere = Namespaces::Some(&["x", "y", "z"]);
        let s = selector("matchLabels: {app: a, tier: web}");
        assert_eq!(index.candidates(everywhere, &s).len(), 9, "app=a's pods");
        assert_eq!(index.candidates(everywhere, &selector("{}")).len(), 27);
        assert_eq!(index.candidates(Namespaces::One("x"), &s).len(), 9);
        let none = selector("matchLabels: {app: c}");
        assert!(index.candidates(Namespaces::One("x"), &none).is_empty());
    }
}
