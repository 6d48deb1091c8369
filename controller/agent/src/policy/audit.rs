//! Policy audit mode (as Cilium's `policy-audit-mode`): policy still
//! decides a pod's flows, but what it would deny passes and is reported as
//! `would-deny` (flow events, verdict counters). Operators roll out a
//! default-deny this way, watch what it would break, then enforce.
//!
//! A pod is in audit mode when its own annotation says so, else when its
//! namespace's does, else when the node's `policyAuditMode` is on. A value
//! that cannot be read enforces (audit mode weakens policy, so doubt
//! fails closed) and is reported.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Pod};

/// The annotation, on a Pod or a Namespace: `enabled` or `disabled`
/// (`true` and `false` are taken too).
pub const ANNOTATION: &str = "policy.sluice.io/audit-mode";

/// An annotation whose value is none of the accepted ones.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditProblem {
    /// `Pod ns/name` or `Namespace ns`.
    pub object: String,
    pub value: String,
}

impl fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: annotation {ANNOTATION}={:?} is neither \"enabled\" nor \"disabled\"; policy is enforced",
            self.object, self.value
        )
    }
}

/// What an annotation value asks for; `None` when it cannot be read.
fn parse(value: &str) -> Option<bool> {
    match value.trim() {
        "enabled" | "true" => Some(true),
        "disabled" | "false" => Some(false),
        _ => None,
    }
}

/// What an object's annotation asks for: `None` without one, `Err` when
/// it cannot be read.
fn annotated(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    object: impl FnOnce() -> String,
) -> Option<Result<bool, AuditProblem>> {
    let value = annotations?.get(ANNOTATION)?;
    Some(parse(value).ok_or_else(|| AuditProblem {
        object: object(),
        value: value.clone(),
    }))
}

/// What put a pod in audit mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditedBy {
    Pod,
    Namespace,
    Node,
}

impl AuditedBy {
    pub const fn describe(self) -> &'static str {
        match self {
            AuditedBy::Pod => "the Pod's policy.sluice.io/audit-mode annotation",
            AuditedBy::Namespace => "its Namespace's policy.sluice.io/audit-mode annotation",
            AuditedBy::Node => "the node's policyAuditMode",
        }
    }
}

/// What a pod's annotations (its own, else its namespace's) say of audit
/// mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Annotation {
    /// In audit mode, by the Pod's or the Namespace's annotation.
    Audits(AuditedBy),
    /// Enforced: `disabled`, or a value that cannot be read.
    Enforces,
    /// Neither annotates it: the node's default decides.
    Absent,
}

/// What the annotations of `pod` (of `namespace`, whose object may be
/// unknown) say; an unreadable one on the way is added to `problems` and
/// enforces.
pub fn annotation(
    pod: &Pod,
    namespace: &str,
    namespace_object: Option<&Namespace>,
    problems: &mut BTreeSet<AuditProblem>,
) -> Annotation {
    let own = annotated(pod.metadata.annotations.as_ref(), || {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        format!("Pod {namespace}/{name}")
    })
    .map(|mode| (mode, AuditedBy::Pod));
    let inherited = || {
        annotated(
            namespace_object.and_then(|ns| ns.metadata.annotations.as_ref()),
            || format!("Namespace {namespace}"),
        )
        .map(|mode| (mode, AuditedBy::Namespace))
    };
    match own.or_else(inherited) {
        None => Annotation::Absent,
        Some((Ok(true), by)) => Annotation::Audits(by),
        Some((Ok(false), _)) => Annotation::Enforces,
        Some((Err(problem), _)) => {
            problems.insert(problem);
            Annotation::Enforces
        }
    }
}

/// Whether `pod` is in audit mode, and what says so: its [`annotation`],
/// else `node_default`, the node-wide setting.
pub fn audited(
    pod: &Pod,
    namespace: &str,
    namespace_object: Option<&Namespace>,
    node_default: bool,
    problems: &mut BTreeSet<AuditProblem>,
) -> Option<AuditedBy> {
    match annotation(pod, namespace, namespace_object, problems) {
        Annotation::Audits(by) => Some(by),
        Annotation::Enforces => None,
        Annotation::Absent => node_default.then_some(AuditedBy::Node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotation: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("a".into());
        pod.metadata.annotations =
            annotation.map(|v| [(ANNOTATION.to_owned(), v.to_owned())].into());
        pod
    }

    fn namespace(annotation: Option<&str>) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.annotations =
            annotation.map(|v| [(ANNOTATION.to_owned(), v.to_owned())].into());
        ns
    }

    fn mode(
        pod_value: Option<&str>,
        ns_value: Option<&str>,
        node: bool,
    ) -> (Option<AuditedBy>, Vec<String>) {
        let mut problems = BTreeSet::new();
        let ns = namespace(ns_value);
        let audit = audited(&pod(pod_value), "x", Some(&ns), node, &mut problems);
        (audit, problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn the_pod_decides_then_its_namespace_then_the_node() {
        use AuditedBy::*;
        assert_eq!(mode(None, None, false), (None, vec![]));
        assert_eq!(mode(None, None, true), (Some(Node), vec![]));
        assert_eq!(
            mode(None, Some("enabled"), false),
            (Some(Namespace), vec![])
        );
        assert_eq!(mode(None, Some("disabled"), true), (None, vec![]));
        assert_eq!(
            mode(Some("disabled"), Some("enabled"), true),
            (None, vec![])
        );
        assert_eq!(
            mode(Some("true"), Some("false"), false),
            (Some(Pod), vec![])
        );
        let mut problems = BTreeSet::new();
        assert_eq!(
            audited(&pod(None), "x", None, true, &mut problems),
            Some(Node)
        );
        // What the annotations alone say: the node's default is left out.
        let ns = namespace(None);
        let said = |p: &k8s_openapi::api::core::v1::Pod, problems: &mut _| {
            annotation(p, "x", Some(&ns), problems)
        };
        assert_eq!(said(&pod(None), &mut problems), Annotation::Absent);
        assert_eq!(
            said(&pod(Some("disabled")), &mut problems),
            Annotation::Enforces
        );
        assert_eq!(said(&pod(Some("?")), &mut problems), Annotation::Enforces);
        assert_eq!(
            said(&pod(Some("enabled")), &mut problems),
            Annotation::Audits(Pod)
        );
        assert_eq!(problems.len(), 1, "the unreadable one");
    }

    #[test]
    fn an_unreadable_value_enforces_and_is_reported() {
        let (audit, problems) = mode(Some("yes please"), Some("enabled"), true);
        assert_eq!(audit, None);
        assert_eq!(
            problems,
            [
                "Pod x/a: annotation policy.sluice.io/audit-mode=\"yes please\" is neither \"enabled\" nor \"disabled\"; policy is enforced"
            ]
        );
        let (audit, problems) = mode(None, Some("Enabled!"), true);
        assert_eq!(audit, None);
        assert!(problems[0].starts_with("Namespace x: "), "{problems:?}");
    }
}
