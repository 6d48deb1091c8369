//! The upstream e2e truth tables (`shared/conformance/cases`) run through
//! the compiler and the test evaluator: every pod local, all 81 pairs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_yaml::Value;

use super::support::{
    model_ip, model_local, model_pods, model_state, namespace_mut, pod_mut, Dataplane,
};
use crate::datastore::ClusterState;
use crate::policy::ports::parse_protocol;
use crate::policy::{compile, IdentityAllocator};

/// `SLUICE_CONFORMANCE_CASES` overrides where the cases live.
fn cases_dir() -> PathBuf {
    std::env::var_os("SLUICE_CONFORMANCE_CASES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/upstream/cases")
        })
}

/// Replaces `{{ip P}}` and `{{net P N}}` with the model's addresses.
fn substitute(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed placeholder") + start;
        let words: Vec<&str> = rest[start + 2..end].split_whitespace().collect();
        match words.as_slice() {
            ["ip", pod] => out.push_str(&model_ip(pod).to_string()),
            ["net", pod, bits] => {
                let net = ipnet::Ipv4Net::new(model_ip(pod), bits.parse().expect("prefix length"))
                    .expect("prefix length in range")
                    .trunc();
                out.push_str(&net.to_string());
            }
            other => panic!("unknown placeholder {other:?}"),
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn merge_labels(state: &mut ClusterState, namespaces: Option<&Value>, pods: Option<&Value>) {
    let labels = |v: &Value| -> BTreeMap<String, String> {
        serde_yaml::from_value(v.clone()).expect("label map")
    };
    for (ns, add) in namespaces.and_then(Value::as_mapping).into_iter().flatten() {
        let ns = namespace_mut(state, ns.as_str().expect("namespace name"));
        ns.metadata
            .labels
            .get_or_insert_default()
            .extend(labels(add));
    }
    for (pod, add) in pods.and_then(Value::as_mapping).into_iter().flatten() {
        let pod = pod_mut(state, pod.as_str().expect("ns/pod"));
        pod.metadata
            .labels
            .get_or_insert_default()
            .extend(labels(add));
    }
}

/// Expected reachability, `(from, to) -> allowed`.
fn parse_table(text: &str) -> BTreeMap<(String, String), bool> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .expect("header")
        .split_whitespace()
        .skip(1)
        .collect();
    let mut table = BTreeMap::new();
    for line in lines {
        let mut cells = line.split_whitespace();
        let from = cells.next().expect("row name");
        for (to, cell) in header.iter().zip(cells) {
            let allowed = match cell {
                "." => true,
                "X" => false,
                other => panic!("bad cell {other:?}"),
            };
            table.insert((from.to_owned(), (*to).to_owned()), allowed);
        }
    }
    table
}

/// Runs one case; returns a description of each wrong cell.
fn run_case(text: &str) -> Vec<String> {
    let case: Value = serde_yaml::from_str(&substitute(text)).expect("case YAML");
    let mut state = model_state();
    let local = model_local();
    let mut ids = IdentityAllocator::new();
    merge_labels(
        &mut state,
        case.get("namespace_labels"),
        case.get("pod_labels"),
    );

    let mut wrong = Vec::new();
    let steps = case["steps"].as_sequence().expect("steps");
    for (n, step) in steps.iter().enumerate() {
        for name in step
            .get("delete")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let (ns, name) = name
                .as_str()
                .and_then(|s| s.split_once('/'))
                .expect("ns/name");
            state.policies.remove(&(ns.to_owned(), name.to_owned()));
        }
        for object in step
            .get("apply")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let json = serde_json::to_value(object).expect("YAML to JSON");
            let policy: NetworkPolicy = serde_json::from_value(json).expect("NetworkPolicy");
            let key = (
                policy.metadata.namespace.clone().expect("namespace"),
                policy.metadata.name.clone().expect("name"),
            );
            state.policies.insert(key, policy);
        }
        merge_labels(
            &mut state,
            step.get("namespace_labels"),
            step.get("pod_labels"),
        );

        let desired = compile(&state, &local, &mut ids);
        assert!(desired.problems.is_empty(), "{:?}", desired.problems);
        let dataplane = Dataplane {
            desired: &desired,
            local: &local,
        };
        for probe in step
            .get("probes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let port = probe["port"].as_u64().expect("port") as u16;
            let proto_name = probe["protocol"].as_str().expect("protocol");
            let protocol = parse_protocol(proto_name).expect("known protocol");
            let expected = parse_table(probe["expect"].as_str().expect("table"));
            for from in model_pods() {
                for to in model_pods() {
                    let want = expected[&(from.clone(), to.clone())];
                    let got = dataplane.flow(model_ip(&from), model_ip(&to), protocol, port);
                    // Upstream never asserts the diagonal; plain semantics
                    // agree with its table there too, so check it as well.
                    if got != want {
                        wrong.push(format!(
                            "step {} {proto_name}/{port} {from} -> {to}: expected {}, got {}",
                            n + 1,
                            verdict(want),
                            verdict(got)
                        ));
                    }
                }
            }
        }
    }
    wrong
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "blocked"
    }
}

#[test]
fn upstream_truth_tables_hold_in_the_evaluator() {
    let dir = cases_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "conformance cases at {}: {e} (set SLUICE_CONFORMANCE_CASES)",
                dir.display()
            )
        })
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 16,
        "expected the 16 cases, found {}",
        files.len()
    );

    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read case");
        let wrong = run_case(&text);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if wrong.is_empty() {
            eprintln!("pass {name}");
        } else {
            failures.push(format!("{name}:\n  {}", wrong.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn placeholders_use_the_model_addresses() {
    assert_eq!(substitute("'{{ip x/b}}/32'"), "'10.244.1.11/32'");
    assert_eq!(
        substitute("cidr: {{net x/b 4}} and {{net y/a 24}}"),
        "cidr: 0.0.0.0/4 and 10.244.2.0/24"
    );
}
