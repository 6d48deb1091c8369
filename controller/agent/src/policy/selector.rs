//! Kubernetes LabelSelectors, validated once and then matched many times.
//!
//! Validation follows the API server's rules: a selector it would reject
//! must not silently select something here, so it is an error the caller
//! turns into "this rule allows nothing".

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unknown operator {0:?}")]
    UnknownOperator(String),
    #[error("operator {operator} on key {key:?} needs at least one value")]
    MissingValues { operator: &'static str, key: String },
    #[error("operator {operator} on key {key:?} takes no values")]
    UnexpectedValues { operator: &'static str, key: String },
    #[error("invalid label key {0:?}")]
    InvalidKey(String),
    #[error("invalid label value {value:?} for key {key:?}")]
    InvalidValue { key: String, value: String },
}

/// A selector that passed validation. `Default` is the empty selector,
/// which matches every label set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    pub fn parse(selector: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            check_key(key)?;
            check_value(key, value)?;
            requirements.push(Requirement::In(key.clone(), vec![value.clone()]));
        }
        for expr in selector.match_expressions.iter().flatten() {
            check_key(&expr.key)?;
            let key = expr.key.clone();
            let values = expr.values.clone().unwrap_or_default();
            for value in &values {
                check_value(&key, value)?;
            }
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::MissingValues {
                        operator: if expr.operator == "In" { "In" } else { "NotIn" },
                        key,
                    })
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::UnexpectedValues {
                        operator: if expr.operator == "Exists" {
                            "Exists"
                        } else {
                            "DoesNotExist"
                        },
                        key,
                    })
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => return Err(SelectorError::UnknownOperator(other.to_owned())),
            };
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    /// An absent selector field means "everything" wherever NetworkPolicy
    /// allows one to be absent.
    pub fn parse_optional(selector: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        selector.map_or(Ok(Selector::default()), Selector::parse)
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The keys a matching label set must have, each with the values it
    /// may have there (matchLabels and `In`): what an index of label sets
    /// can narrow a search by.
    pub fn required_values(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.requirements.iter().filter_map(|r| match r {
            Requirement::In(key, values) => Some((key.as_str(), values.as_slice())),
            _ => None,
        })
    }
}

/// The label-selector syntax of `kubectl get -l` (`a=b,c in (d,e),!f`);
/// `{}` for the empty selector, which matches everything.
impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::In(key, values) if values.len() == 1 => {
                    write!(f, "{key}={}", values[0])?
                }
                Requirement::In(key, values) => write!(f, "{key} in ({})", values.join(","))?,
                Requirement::NotIn(key, values) => write!(f, "{key} notin ({})", values.join(","))?,
                Requirement::Exists(key) => f.write_str(key)?,
                Requirement::DoesNotExist(key) => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

/// A qualified name: `[prefix/]name`, prefix a DNS subdomain.
fn check_key(key: &str) -> Result<(), SelectorError> {
    let invalid = || SelectorError::InvalidKey(key.to_owned());
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return Err(invalid());
            }
            name
        }
        None => key,
    };
    if name.is_empty() || !is_label_name(name) {
        return Err(invalid());
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), SelectorError> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(SelectorError::InvalidValue {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// At most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
                && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> Result<Selector, SelectorError> {
        let raw: LabelSelector = serde_yaml::from_str(yaml).expect("selector YAML");
        Selector::parse(&raw)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_print_as_kubectl_writes_them() {
        let s = selector(
            "matchLabels: {ns: y}\nmatchExpressions:\n- {key: pod, operator: In, values: [a, b]}\n- {key: x, operator: NotIn, values: [c]}\n- {key: e, operator: Exists}\n- {key: d, operator: DoesNotExist}",
        )
        .unwrap();
        assert_eq!(s.to_string(), "ns=y,pod in (a,b),x notin (c),e,!d");
        assert_eq!(Selector::default().to_string(), "{}");
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = selector("{}").unwrap();
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("pod", "a")])));
        assert!(Selector::parse_optional(None)
            .unwrap()
            .matches(&labels(&[])));
        let s = selector("matchLabels: {}\nmatchExpressions: []").unwrap();
        assert!(s.matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = selector("matchLabels: {pod: a, tier: web}").unwrap();
        assert!(s.matches(&labels(&[("pod", "a"), ("tier", "web"), ("x", "1")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(!s.matches(&labels(&[("pod", "a"), ("tier", "db")])));
    }

    #[test]
    fn in_and_not_in() {
        let s = selector("matchExpressions: [{key: pod, operator: In, values: [a, b]}]").unwrap();
        assert!(s.matches(&labels(&[("pod", "a")])));
        assert!(s.matches(&labels(&[("pod", "b")])));
        assert!(!s.matches(&labels(&[("pod", "c")])));
        assert!(!s.matches(&labels(&[])), "In needs the key");

        let s =
            selector("matchExpressions: [{key: pod, operator: NotIn, values: [a, b]}]").unwrap();
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(s.matches(&labels(&[("pod", "c")])));
        assert!(
            s.matches(&labels(&[])),
            "NotIn matches pods without the key"
        );
    }

    #[test]
    fn exists_and_does_not_exist() {
        let s = selector("matchExpressions: [{key: pod, operator: Exists}]").unwrap();
        assert!(s.matches(&labels(&[("pod", "")])));
        assert!(!s.matches(&labels(&[("other", "a")])));
        let s = selector("matchExpressions: [{key: pod, operator: DoesNotExist}]").unwrap();
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(s.matches(&labels(&[("other", "a")])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = selector(
            "matchLabels: {ns: x}\nmatchExpressions: [{key: pod, operator: NotIn, values: [a]}]",
        )
        .unwrap();
        assert!(s.matches(&labels(&[("ns", "x"), ("pod", "b")])));
        assert!(!s.matches(&labels(&[("ns", "x"), ("pod", "a")])));
        assert!(!s.matches(&labels(&[("ns", "y"), ("pod", "b")])));
    }

    #[test]
    fn invalid_selectors_are_errors() {
        let cases = [
            "matchExpressions: [{key: pod, operator: Within, values: [a]}]",
            "matchExpressions: [{key: pod, operator: in, values: [a]}]",
            "matchExpressions: [{key: pod, operator: In, values: []}]",
            "matchExpressions: [{key: pod, operator: In}]",
            "matchExpressions: [{key: pod, operator: NotIn, values: []}]",
            "matchExpressions: [{key: pod, operator: Exists, values: [a]}]",
            "matchExpressions: [{key: pod, operator: DoesNotExist, values: [a]}]",
            "matchLabels: {'bad key!': a}",
            "matchLabels: {'': a}",
            "matchLabels: {'Example.com/x': a}",
            "matchLabels: {pod: 'not ok'}",
            "matchExpressions: [{key: '-pod', operator: Exists}]",
        ];
        for yaml in cases {
            assert!(selector(yaml).is_err(), "{yaml} should be rejected");
        }
    }

    #[test]
    fn qualified_keys_and_empty_values_are_valid() {
        let s = selector("matchLabels: {kubernetes.io/metadata.name: x, empty: ''}").unwrap();
        assert!(s.matches(&labels(&[
            ("kubernetes.io/metadata.name", "x"),
            ("empty", "")
        ])));
    }
}
