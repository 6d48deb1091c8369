//! What a NetworkPolicy that cannot be taken still isolates.
//!
//! A policy that does not decode, that the API server would reject, or
//! that is defined twice allows nothing; but it keeps its pods isolated in
//! every direction it could have named, so that breaking a policy never
//! opens what it closed. Read from the object as JSON, piece by piece, so
//! that a broken rule does not hide a good podSelector.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::selector::Selector;
use super::validate;

/// The part of a broken policy that can still be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    /// What its podSelector selects; `None` if that cannot be read.
    pub selector: Option<Selector>,
    pub ingress: bool,
    pub egress: bool,
}

impl Isolation {
    /// From a NetworkPolicy as JSON (whole object).
    pub fn of(policy: &Value) -> Self {
        let spec = policy.get("spec").filter(|s| !s.is_null());
        let field = |name: &str| spec.and_then(|s| s.get(name)).filter(|v| !v.is_null());
        let selector = match field("podSelector") {
            // An absent podSelector is the empty one: every pod.
            None => Some(Selector::default()),
            Some(raw) => serde_json::from_value::<LabelSelector>(raw.clone())
                .ok()
                .filter(|s| validate::label_selector(Some(s), "spec.podSelector").is_empty())
                .and_then(|s| Selector::parse(&s).ok()),
        };
        let types = field("policyTypes").map(|raw| {
            serde_json::from_value::<Vec<String>>(raw.clone())
                .ok()
                .filter(|t| validate::policy_types(t).is_empty())
        });
        // The API server's defaulting: Ingress, and Egress if the policy
        // has egress rules (or anything in their place).
        let defaulted = || {
            let egress =
                field("egress").is_some_and(|e| e.as_array().is_none_or(|a| !a.is_empty()));
            (true, egress)
        };
        let (ingress, egress) = match types {
            None => defaulted(),
            Some(Some(types)) if types.is_empty() => defaulted(),
            Some(Some(types)) => (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            ),
            // Unreadable: it could have named either.
            Some(None) => (true, true),
        };
        Isolation {
            selector,
            ingress,
            egress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(spec: &str) -> Isolation {
        let spec: Value = serde_yaml::from_str(spec).expect("YAML");
        Isolation::of(&serde_json::json!({ "spec": spec }))
    }

    fn selects(iso: &Isolation, labels: &[(&str, &str)]) -> Option<bool> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        iso.selector.as_ref().map(|s| s.matches(&labels))
    }

    #[test]
    fn a_readable_pod_selector_survives_broken_rules() {
        let iso = of("{podSelector: {matchLabels: {app: server}}, ingress: [{from: 7}]}");
        assert_eq!(selects(&iso, &[("app", "server")]), Some(true));
        assert_eq!(selects(&iso, &[("app", "client")]), Some(false));
        assert!(iso.ingress && !iso.egress);
    }

    #[test]
    fn an_invalid_pod_selector_is_unknown() {
        for bad in [
            "{podSelector: {matchExpressions: [{key: app, operator: Equals, values: [x]}]}}",
            "{podSelector: {matchExpressions: [{key: app, operator: In}]}}",
            "{podSelector: {matchLabels: {app: -x}}}",
            "{podSelector: [app]}",
        ] {
            assert_eq!(of(bad).selector, None, "{bad}");
        }
        assert_eq!(of("{}").selector, Some(Selector::default()));
        assert_eq!(
            Isolation::of(&serde_json::json!({})).selector,
            Some(Selector::default())
        );
    }

    #[test]
    fn directions_follow_policy_types_or_both_when_unreadable() {
        let dirs = |spec: &str| {
            let iso = of(spec);
            (iso.ingress, iso.egress)
        };
        assert_eq!(dirs("{policyTypes: [Egress]}"), (false, true));
        assert_eq!(dirs("{policyTypes: [Ingress]}"), (true, false));
        assert_eq!(dirs("{policyTypes: []}"), (true, false));
        assert_eq!(dirs("{}"), (true, false));
        assert_eq!(dirs("{egress: [{}]}"), (true, true));
        assert_eq!(dirs("{egress: []}"), (true, false));
        assert_eq!(dirs("{egress: broken}"), (true, true));
        assert_eq!(dirs("{policyTypes: [Ingress, Sideways]}"), (true, true));
        assert_eq!(
            dirs("{policyTypes: [Ingress, Egress, Ingress]}"),
            (true, true)
        );
        assert_eq!(dirs("{policyTypes: Ingress}"), (true, true));
    }
}
