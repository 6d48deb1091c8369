//! Conformance case files (`/work/shared/conformance/FORMAT.md`): the
//! serde shape, strict about keys so a typo fails loudly instead of
//! silently dropping a step, and the checks that turn it into a [`Case`].

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{matrix::TruthTable, model, topology::PodName};

pub type Labels = BTreeMap<String, String>;

/// A case file as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    pub name: String,
    pub source: String,
    /// Merged into namespaces before step 1, keyed by namespace.
    pub namespace_labels: BTreeMap<String, Labels>,
    /// Merged into pods before step 1, keyed by `ns/name`.
    pub pod_labels: BTreeMap<String, Labels>,
    pub steps: Vec<StepFile>,
}

/// One step as written; only steps that change labels carry the label keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, Labels>,
    #[serde(default)]
    pub pod_labels: BTreeMap<String, Labels>,
    pub apply: Vec<serde_yaml::Value>,
    pub delete: Vec<String>,
    pub probes: Vec<ProbeFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeFile {
    pub port: u16,
    pub protocol: Protocol,
    pub expect: String,
}

/// Protocols as Kubernetes spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn lower(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// A checked case: pods and namespaces exist in the model, tables list the
/// model's pods in the model's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub name: String,
    pub namespace_labels: Vec<(String, Labels)>,
    pub pod_labels: Vec<(PodName, Labels)>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `(namespace, name)` of NetworkPolicies.
    pub delete: Vec<(String, String)>,
    /// Objects still holding placeholders.
    pub apply: Vec<serde_yaml::Value>,
    pub namespace_labels: Vec<(String, Labels)>,
    pub pod_labels: Vec<(PodName, Labels)>,
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
    pub expect: TruthTable,
}

impl Probe {
    /// `tcp/80`, as cells are reported.
    pub fn label(&self) -> String {
        format!("{}/{}", self.protocol.lower(), self.port)
    }
}

impl Case {
    pub fn probes(&self) -> impl Iterator<Item = &Probe> {
        self.steps.iter().flat_map(|s| &s.probes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("not a valid case file: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Parses and checks a case file.
pub fn parse(text: &str) -> Result<Case, CaseError> {
    let file: CaseFile = serde_yaml::from_str(text)?;
    check(file).map_err(CaseError::Invalid)
}

fn check(file: CaseFile) -> Result<Case, String> {
    if file.name.trim().is_empty() {
        return Err("name is empty".into());
    }
    if file.steps.is_empty() {
        return Err("no steps".into());
    }
    let steps = file
        .steps
        .into_iter()
        .enumerate()
        .map(|(i, step)| check_step(step).map_err(|e| format!("step {}: {e}", i + 1)))
        .collect::<Result<_, _>>()?;
    Ok(Case {
        name: file.name,
        namespace_labels: namespace_labels(file.namespace_labels)
            .map_err(|e| format!("namespace_labels: {e}"))?,
        pod_labels: pod_labels(file.pod_labels).map_err(|e| format!("pod_labels: {e}"))?,
        steps,
    })
}

fn check_step(step: StepFile) -> Result<Step, String> {
    let delete = step
        .delete
        .iter()
        .map(|entry| match entry.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((ns.to_owned(), name.to_owned()))
            }
            _ => Err(format!("delete: {entry:?} is not namespace/name")),
        })
        .collect::<Result<_, _>>()?;
    let probes = step
        .probes
        .into_iter()
        .enumerate()
        .map(|(i, p)| check_probe(p).map_err(|e| format!("probe {}: {e}", i + 1)))
        .collect::<Result<_, _>>()?;
    Ok(Step {
        delete,
        apply: step.apply,
        namespace_labels: namespace_labels(step.namespace_labels)
            .map_err(|e| format!("namespace_labels: {e}"))?,
        pod_labels: pod_labels(step.pod_labels).map_err(|e| format!("pod_labels: {e}"))?,
        probes,
    })
}

fn check_probe(probe: ProbeFile) -> Result<Probe, String> {
    if probe.port == 0 {
        return Err("port 0".into());
    }
    let expect = TruthTable::parse(&probe.expect).map_err(|e| format!("expect: {e}"))?;
    let pods = model::pod_names();
    if expect.froms != pods || expect.tos != pods {
        return Err(format!(
            "expect: rows and columns must be {} in this order",
            pods.join(" ")
        ));
    }
    Ok(Probe {
        port: probe.port,
        protocol: probe.protocol,
        expect,
    })
}

fn namespace_labels(labels: BTreeMap<String, Labels>) -> Result<Vec<(String, Labels)>, String> {
    labels
        .into_iter()
        .map(|(ns, l)| {
            if model::NAMESPACES.contains(&ns.as_str()) {
                Ok((ns, l))
            } else {
                Err(format!("no namespace {ns:?} in the model"))
            }
        })
        .collect()
}

fn pod_labels(labels: BTreeMap<String, Labels>) -> Result<Vec<(PodName, Labels)>, String> {
    let pods = model::pod_names();
    labels
        .into_iter()
        .map(|(pod, l)| {
            if !pods.contains(&pod) {
                return Err(format!("no pod {pod:?} in the model (want ns/name)"));
            }
            let name: PodName = pod.parse().map_err(|e| format!("{pod:?}: {e}"))?;
            Ok((name, l))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "from\\to x/a x/b x/c y/a y/b y/c z/a z/b z/c
          x/a     X   X   X   .   .   .   .   .   .
          x/b     X   X   X   .   .   .   .   .   .
          x/c     X   X   X   .   .   .   .   .   .
          y/a     X   X   X   .   .   .   .   .   .
          y/b     X   X   X   .   .   .   .   .   .
          y/c     X   X   X   .   .   .   .   .   .
          z/a     X   X   X   .   .   .   .   .   .
          z/b     X   X   X   .   .   .   .   .   .
          z/c     X   X   X   .   .   .   .   .   .
";

    fn indent(text: &str, by: usize) -> String {
        text.lines()
            .map(|l| format!("{}{}\n", " ".repeat(by), l.trim()))
            .collect()
    }

    /// Shaped like case 21: a policy, then a label change in step 2.
    fn case_text() -> String {
        format!(
            r#"name: "should allow ingress access from updated namespace"
source: "kubernetes test/e2e/network/netpol/network_policy.go"
# upstream context: comment
namespace_labels: {{}}
pod_labels: {{}}
steps:
  - apply:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata:
          name: deny-ingress
          namespace: x
        spec:
          podSelector: {{}}
          ingress: []
          policyTypes:
          - Ingress
    delete: []
    probes:
      - port: 80
        protocol: TCP
        expect: |
{table}  - namespace_labels:
      y:
        ns2: updated
    pod_labels: {{x/b: {{pod: b, pod2: updated}}}}
    apply: []
    delete: ["x/deny-ingress"]
    probes:
      - port: 81
        protocol: UDP
        expect: |
{table}      - port: 80
        protocol: SCTP
        expect: |
{table}"#,
            table = indent(TABLE, 10)
        )
    }

    #[test]
    fn parses_the_documented_layout() {
        let case = parse(&case_text()).expect("parse");
        assert_eq!(
            case.name,
            "should allow ingress access from updated namespace"
        );
        assert!(case.namespace_labels.is_empty() && case.pod_labels.is_empty());
        assert_eq!(case.steps.len(), 2);
        let first = &case.steps[0];
        assert_eq!(first.apply.len(), 1);
        assert_eq!(first.apply[0]["metadata"]["name"], "deny-ingress");
        assert!(first.delete.is_empty() && first.namespace_labels.is_empty());
        assert_eq!(first.probes[0].label(), "tcp/80");
        assert_eq!(first.probes[0].expect.get("y/a", "x/b"), Some(false));
        assert_eq!(first.probes[0].expect.get("x/a", "y/b"), Some(true));
        let second = &case.steps[1];
        assert_eq!(second.delete, [("x".to_owned(), "deny-ingress".to_owned())]);
        assert_eq!(
            second.namespace_labels,
            [(
                "y".to_owned(),
                Labels::from([("ns2".into(), "updated".into())])
            )]
        );
        assert_eq!(second.pod_labels[0].0.to_string(), "x/b");
        assert_eq!(second.pod_labels[0].1.len(), 2);
        let protocols: Vec<Protocol> = case.probes().map(|p| p.protocol).collect();
        assert_eq!(protocols, [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    }

    #[test]
    fn every_case_file_of_the_repository_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance");
        let mut parsed = 0;
        for dir in ["upstream/cases", "sluice"] {
            let dir = root.join(dir);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("case directory {}: {e}", dir.display()));
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).expect("read");
                if let Err(e) = parse(&text) {
                    panic!("{}: {e}", entry.path().display());
                }
                parsed += 1;
            }
        }
        assert!(parsed >= 48, "only {parsed} case files found");
    }

    #[test]
    fn unknown_and_missing_keys_are_rejected() {
        let text = case_text();
        let cases = [
            (
                text.replacen("source:", "sauce:", 1),
                "unknown field `sauce`",
            ),
            (
                text.replacen("pod_labels: {}\n", "", 1),
                "missing field `pod_labels`",
            ),
            (
                text.replacen("    delete: []\n", "    delete: []\n    wait: 5\n", 1),
                "unknown field `wait`",
            ),
            (
                text.replacen("    delete: []\n", "", 1),
                "missing field `delete`",
            ),
            (
                text.replacen("protocol: TCP", "protocol: tcp", 1),
                "unknown variant `tcp`",
            ),
            (
                text.replacen("protocol: TCP", "protocol: TCP\n        timeout: 3", 1),
                "unknown field `timeout`",
            ),
            (text.replacen("port: 80", "port: 70000", 1), "port"),
        ];
        for (bad, want) in cases {
            let err = parse(&bad).expect_err(want).to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn references_and_tables_are_checked() {
        let text = case_text();
        let cases = [
            (
                text.replacen("      y:\n", "      w:\n", 1),
                "step 2: namespace_labels: no namespace \"w\"",
            ),
            (
                text.replacen("{x/b: {pod: b", "{x/d: {pod: b", 1),
                "step 2: pod_labels: no pod \"x/d\"",
            ),
            (
                text.replacen("[\"x/deny-ingress\"]", "[\"deny-ingress\"]", 1),
                "step 2: delete: \"deny-ingress\" is not namespace/name",
            ),
            (
                text.replacen("port: 80", "port: 0", 1),
                "step 1: probe 1: port 0",
            ),
            (
                text.replacen("x/a     X   X   X", "x/a     X   ?   X", 1),
                "step 1: probe 1: expect: row x/a",
            ),
            (
                text.replacen("from\\to x/a x/b", "from\\to x/b x/a", 1),
                "must be x/a x/b",
            ),
            (
                text.replacen(
                    "          z/c     X   X   X   .   .   .   .   .   .\n",
                    "",
                    1,
                ),
                "must be x/a x/b",
            ),
        ];
        for (bad, want) in &cases {
            let err = parse(bad).expect_err(want).to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let no_steps = "name: n\nsource: s\nnamespace_labels: {}\npod_labels: {}\nsteps: []\n";
        assert!(parse(no_steps)
            .expect_err("no steps")
            .to_string()
            .contains("no steps"));
        let top_labels = text
            .replacen(
                "namespace_labels: {}",
                "namespace_labels: {z: {team: a}}",
                1,
            )
            .replacen("pod_labels: {}", "pod_labels: {y/c: {pod: c, extra: e}}", 1);
        let case = parse(&top_labels).expect("top-level labels");
        assert_eq!(case.namespace_labels[0].0, "z");
        assert_eq!(case.pod_labels[0].0.to_string(), "y/c");
    }
}
