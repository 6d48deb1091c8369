//! `sluice lab explain` against the real dataplane: on upstream
//! conformance cases (deny-all, namespace selectors, ports, named ports,
//! ipBlock with except on egress, ingress and egress together), once a
//! case's last step matched its table, every pair of the model is
//! explained and the verdict must be what the probe saw; a verdict that a
//! policy decided must name it; and every node's maps must agree with the
//! state (the datapath check's agreement path, end to end).

use std::path::Path;
use std::time::Instant;

use sluice_common::explain::{EndRef, ExplainQuery, PortSpec, Protocol, Verdict};
use sluice_lab::conformance::{self, case::Step, Options};
use sluice_lab::matrix::{self, Check, TruthTable};
use sluice_tests::{require_root, teardown, Lab, LabConfig, TestLab};

/// The cases: one feature each, mostly.
const CASES: [&str; 6] = [
    "02-default-deny-all",
    "06-ingress-from-other-ns-by-nsselector",
    "14-ports",
    "17-ingress-one-named-port",
    "27-ingress-and-egress-together",
    "35-egress-cidr-except",
];

struct Cleanup(LabConfig);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = teardown::down(&self.0) {
            eprintln!("removing {}: {e}", self.0.name);
        }
    }
}

fn port_of(check: Check) -> Option<PortSpec> {
    let protocol = match check.protocol {
        matrix::Protocol::Tcp => Protocol::Tcp,
        matrix::Protocol::Udp => Protocol::Udp,
        matrix::Protocol::Icmp => return None,
    };
    Some(PortSpec {
        port: check.port,
        protocol,
    })
}

/// Every off-diagonal pair of every observed table, explained: how many,
/// and the problems found, one line each.
fn explain_every_pair(
    lab: &Lab,
    _step: &Step,
    observed: &[(Check, TruthTable)],
) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut explained = 0;
    for (check, table) in observed {
        let Some(port) = port_of(*check) else {
            continue;
        };
        for (f, from) in table.froms.iter().enumerate() {
            for (t, to) in table.tos.iter().enumerate() {
                // A pod reaching itself never leaves it: not judged.
                if from == to {
                    continue;
                }
                let query = ExplainQuery {
                    from: from.parse::<EndRef>().expect("model pod"),
                    to: to.parse::<EndRef>().expect("model pod"),
                    port,
                };
                let at = format!("{from} -> {to} {port}");
                let e = match sluice_lab::explain::explain(lab, &query) {
                    Ok(e) => e,
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        continue;
                    }
                };
                explained += 1;
                let probed = table.cells[f][t];
                if e.allowed() != probed {
                    problems.push(format!(
                        "{at}: explain says {}, the probe {}:\n{e:#?}",
                        if e.allowed() { "allowed" } else { "denied" },
                        if probed { "got through" } else { "did not" },
                    ));
                }
                for d in [&e.egress, &e.ingress] {
                    match d.verdict {
                        Verdict::Denied if d.isolated_by.is_empty() => {
                            problems.push(format!("{at}: {} denied by no policy", d.direction))
                        }
                        Verdict::Allowed if d.allowed_by.is_empty() => {
                            problems.push(format!("{at}: {} allowed by no rule", d.direction))
                        }
                        _ => {}
                    }
                    match &d.datapath {
                        Some(check) if !check.agrees => problems.push(format!(
                            "{at}: {}: the maps of {} disagree: {:?}",
                            d.direction, check.node, check.lookups
                        )),
                        // Both ends are lab pods: each direction is
                        // answered by the node that holds it.
                        None => problems.push(format!(
                            "{at}: {} was not checked against any node's maps",
                            d.direction
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    (explained, problems)
}

#[test]
fn explain_agrees_with_probes_on_conformance_cases() {
    require_root!();
    let base = TestLab::new("ex");
    let _cleanup = Cleanup(conformance::lab_config(&base.config).expect("runner lab config"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/upstream/cases");
    let started = Instant::now();
    let mut explained = 0;
    for case in CASES {
        let options = Options {
            filter: Some(case.to_owned()),
            ..Options::default()
        };
        let mut reports = Vec::new();
        let summary = conformance::run_inspecting(
            &base.config,
            &dir,
            &options,
            &mut |lab, step, observed| {
                let (n, problems) = explain_every_pair(lab, step, observed);
                explained += n;
                problems
            },
            |report| reports.push(report.to_string()),
        )
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(
            summary.success() && summary.passed == 1,
            "{case}:\n{}",
            reports.join("\n")
        );
    }
    // Every case probes TCP/80 at least: 72 pairs each.
    assert!(explained >= CASES.len() * 72, "{explained} flows explained");
    eprintln!(
        "{} cases, {explained} flows explained and probed, in {:.1} s",
        CASES.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The CLI end to end on one lab: the text answer names the deciding rule
/// and the nodes' maps agree; `-o json` parses; bad input is refused with
/// a clear message.
#[test]
fn lab_explain_cli_names_the_rule_and_checks_the_maps() {
    require_root!();
    let lab = TestLab::up("exc", 2, "tunnel");
    lab.pod_add("x/a", "node1");
    lab.pod_add("y/b", "node2");
    lab.apply_yaml(
        "policy",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-from-x, namespace: y}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: x}}\n    ports:\n    - port: 80\n",
    );
    let wanted =
        "allowed by: y/allow-from-x ingress[0] from[0] (namespaceSelector ns=x) port 80/TCP";
    // The agents take the pods' addresses and the policy in
    // asynchronously: until then explain fails ("no IPv4 address yet") or
    // names no rule.
    let args = [
        "explain", "--from", "x/a", "--to", "y/b", "--port", "80/TCP",
    ];
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let out = lab.sluice(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains(wanted) {
            break text;
        }
        if Instant::now() > deadline {
            break lab.sluice_ok(&args);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(text.contains(wanted), "{text}");
    assert!(text.starts_with("x/a ("), "{text}");
    assert!(text.contains("80/TCP: ALLOWED"), "{text}");
    assert!(text.contains("datapath (node1 maps, endpoint"), "{text}");
    assert!(text.contains("datapath (node2 maps, endpoint"), "{text}");
    assert!(!text.contains("DISAGREE"), "{text}");
    assert!(
        text.contains("answered by node1 (egress), node2 (ingress)"),
        "{text}"
    );

    let denied = lab.sluice_ok(&[
        "explain", "--from", "x/a", "--to", "y/b", "--port", "81/TCP",
    ]);
    assert!(denied.contains("81/TCP: DENIED"), "{denied}");
    assert!(
        denied.contains("no rule of y/allow-from-x allows from x/a"),
        "{denied}"
    );

    let json = lab.sluice_ok(&[
        "explain",
        "--from",
        "x/a",
        "--to",
        "y/b",
        "--port",
        "80",
        "-o",
        "json",
        "--lookups",
    ]);
    let value: serde_json::Value = serde_json::from_str(&json).expect("one JSON object");
    assert_eq!(value["ingress"]["verdict"], "allowed", "{json}");
    assert_eq!(value["ingress"]["datapath"]["agrees"], true, "{json}");
    assert_eq!(value["ingress"]["datapath"]["node"], "node2", "{json}");
    assert_eq!(value["egress"]["verdict"], "not_isolated", "{json}");
    assert_eq!(
        value["ingress"]["allowed_by"][0]["policy"],
        "y/allow-from-x"
    );

    for (args, message) in [
        (
            ["--from", "x/nope", "--to", "y/b", "--port", "80"],
            "no pod x/nope in lab",
        ),
        (
            ["--from", "x/a", "--to", "y/b", "--port", "80/ICMP"],
            "protocol \"ICMP\" is not TCP, UDP or SCTP",
        ),
        (
            ["--from", "x", "--to", "y/b", "--port", "80"],
            "\"x\" is neither NAMESPACE/POD nor an IPv4 address",
        ),
    ] {
        let mut all = vec!["explain"];
        all.extend(args);
        let out = lab.sluice(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
