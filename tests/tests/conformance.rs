//! `sluice lab conformance`: the runner end to end, on fixture cases that
//! hold whether or not policy is enforced (all reachable, SCTP only, a
//! broken file, an impossible expectation).

use std::path::{Path, PathBuf};

use sluice_lab::conformance;
use sluice_tests::{require_root, teardown, unique, Lab, LabConfig, TestLab};

const HEADER: &str = "from\\to x/a x/b x/c y/a y/b y/c z/a z/b z/c";
const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

/// A probe entry whose table expects every pair reachable, except the
/// cells in `blocked` (`(from, to)`).
fn probe(port: u16, protocol: &str, blocked: &[(&str, &str)]) -> String {
    let mut text = format!(
        "      - port: {port}\n        protocol: {protocol}\n        expect: |\n          {HEADER}\n"
    );
    for from in PODS {
        let cells: Vec<&str> = PODS
            .iter()
            .map(|to| {
                if blocked.contains(&(from, *to)) {
                    "X"
                } else {
                    "."
                }
            })
            .collect();
        text.push_str(&format!("          {from}     {}\n", cells.join("   ")));
    }
    text
}

/// Step 1 probes the bare model; step 2 merges labels and applies a policy
/// whose ipBlock (from placeholders) admits every pod; step 3 deletes it.
/// Reachability never changes, enforced or not.
fn all_reachable() -> String {
    format!(
        r#"name: "everything reachable"
source: "sluice fixture"
namespace_labels: {{z: {{team: blue}}}}
pod_labels: {{}}
steps:
  - apply: []
    delete: []
    probes:
{tcp80}{udp81}  - namespace_labels: {{y: {{ns2: updated}}}}
    pod_labels: {{x/b: {{pod: b, pod2: updated}}}}
    apply:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata:
          name: allow-cidr
          namespace: x
        spec:
          podSelector: {{}}
          ingress:
          - from:
            - ipBlock:
                cidr: '{{{{net x/b 4}}}}'
            - ipBlock:
                cidr: '{{{{ip x/b}}}}/32'
          policyTypes:
          - Ingress
    delete: []
    probes:
{tcp81}{sctp80}  - apply: []
    delete: ["x/allow-cidr"]
    probes:
{tcp80}"#,
        tcp80 = probe(80, "TCP", &[]),
        udp81 = probe(81, "UDP", &[]),
        tcp81 = probe(81, "TCP", &[]),
        sctp80 = probe(80, "SCTP", &[]),
    )
}

fn sctp_only() -> String {
    format!(
        "name: \"sctp only\"\nsource: s\nnamespace_labels: {{}}\npod_labels: {{}}\nsteps:\n  - apply: []\n    delete: []\n    probes:\n{}",
        probe(81, "SCTP", &[("x/a", "x/b")])
    )
}

/// Expects a pair blocked without any policy: fails however policy is
/// enforced.
fn impossible() -> String {
    format!(
        "name: \"blocked without a policy\"\nsource: s\nnamespace_labels: {{}}\npod_labels: {{}}\nsteps:\n  - apply: []\n    delete: []\n    probes:\n{}",
        probe(80, "TCP", &[("x/a", "y/b"), ("z/c", "z/c")])
    )
}

/// Removes the runner's own lab and the fixture directory, also when the
/// test fails.
struct Cleanup {
    lab: LabConfig,
    /// Fixture cases written for the test.
    cases: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = teardown::down(&self.lab) {
            eprintln!("removing {}: {e}", self.lab.name);
        }
        if let Some(cases) = &self.cases {
            let _ = std::fs::remove_dir_all(cases);
        }
    }
}

fn write_cases(dir: &Path) {
    std::fs::create_dir_all(dir).expect("fixture dir");
    for (file, text) in [
        ("01-all-reachable.yaml", all_reachable()),
        ("02-sctp-only.yaml", sctp_only()),
        ("03-impossible.yaml", impossible()),
        (
            "04-typo.yaml",
            "name: typo\nsource: s\nnamespace_labels: {}\npod_labels: {}\nstep: []\n".to_owned(),
        ),
    ] {
        std::fs::write(dir.join(file), text).expect("fixture");
    }
}

#[test]
fn conformance_runner_judges_fixture_cases() {
    require_root!();
    let base = TestLab::new("cf");
    let cleanup = Cleanup {
        lab: conformance::lab_config(&base.config).expect("runner lab config"),
        cases: Some(std::env::temp_dir().join(unique("sluice-cases"))),
    };
    let cases = cleanup.cases.clone().expect("fixture dir");
    write_cases(&cases);
    let cases = cases.display().to_string();

    let out = base.sluice(&["conformance", &cases, "--wait", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "a failed case must fail the run\n{context}"
    );
    for want in [
        "PASS 01-all-reachable.yaml — everything reachable (",
        "note: step 2 of 3: sctp/80 skipped: ",
        "SKIP 02-sctp-only.yaml — sctp only (",
        "every probe is SCTP, skipped: ",
        "FAIL 03-impossible.yaml — blocked without a policy (",
        "step 1 of 1: 1 cell(s) differ after ",
        "    x/a -> y/b tcp/80: expected X, got .\n",
        "note: step 1 of 1: diagonal, not judged: z/c -> z/c tcp/80: expected X, got .",
        "FAIL 04-typo.yaml (",
        "unknown field `step`",
    ] {
        assert!(stdout.contains(want), "missing {want:?}\n{context}");
    }
    assert_eq!(
        stdout.lines().last(),
        Some("1 passed, 2 failed, 1 skipped"),
        "{context}"
    );
    assert!(
        Lab::open(cleanup.lab.clone()).is_err(),
        "the runner's lab must be gone without --keep"
    );

    // One case by name, its lab kept as the case left it.
    let out = base.sluice(&["conformance", &cases, "--case", "everything", "--keep"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("1 passed, 0 failed, 0 skipped"));
    let kept = Lab::open(cleanup.lab.clone()).expect("--keep leaves the lab up");
    assert_eq!(kept.state().pods.len(), 9);
    let labels = &kept
        .state()
        .pods
        .iter()
        .find(|p| p.namespace == "x" && p.name == "b")
        .expect("x/b")
        .labels;
    assert_eq!(labels.get("pod2").map(String::as_str), Some("updated"));
    let policy = cleanup
        .lab
        .manifests()
        .object_path("NetworkPolicy", Some("x"), "allow-cidr");
    assert!(!policy.exists(), "step 3 deleted {}", policy.display());
}

/// Every policy case passes on the real dataplane: the 48 upstream cases
/// (`tests/conformance/upstream`) through the tunnel, this repository's own
/// (port ranges, named ports, label updates, ipBlock with ranges;
/// `tests/conformance/sluice`) with native routing. Only SCTP may be
/// skipped, and only for the kernel.
#[test]
fn policy_cases_pass_end_to_end() {
    require_root!();
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/sluice");
    let upstream = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/upstream/cases");
    for (dir, routing) in [(upstream, "tunnel"), (own, "native")] {
        if !dir.is_dir() {
            panic!("no conformance cases at {}", dir.display());
        }
        let base = TestLab::new("cp");
        let _cleanup = Cleanup {
            lab: conformance::lab_config(&base.config).expect("runner lab config"),
            cases: None,
        };
        let dir = dir.display().to_string();
        let out = base.sluice(&["conformance", &dir, "--routing", routing]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let context = format!(
            "stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{dir} ({routing})\n{context}");
        let summary = stdout.lines().last().unwrap_or_default();
        let counts: Vec<usize> = summary
            .split(", ")
            .filter_map(|part| part.split(' ').next()?.parse().ok())
            .collect();
        let cases = std::fs::read_dir(&dir)
            .expect("case dir")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
            .count();
        assert!(
            matches!(counts[..], [passed, 0, skipped] if passed > 0 && passed + skipped == cases),
            "{dir}: {summary}, {cases} case files\n{context}"
        );
        for skipped in stdout.lines().filter(|l| l.starts_with("SKIP ")) {
            assert!(skipped.contains("sctp"), "{skipped}\n{context}");
        }
        eprintln!("{dir} ({routing}): {summary}");
    }
}
