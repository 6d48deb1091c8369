//! Issue 12's reproductions, on the compiler: a policy that cannot be
//! taken, in whatever way, never opens the pods it isolated, and an
//! address two Pods claim lets neither through.

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::support::*;
use crate::datastore::{parse_documents, ClusterState, Event, Kind, ObjectKey, Rejected, Resource};
use crate::policy::ports::{TCP, UDP};
use crate::policy::{compile, DesiredPolicy, IdentityAllocator, IpConflict, LocalPods};

fn compiled(state: &ClusterState) -> DesiredPolicy {
    compile(
        state,
        &model_local(),
        &LocalPods::new(),
        &mut IdentityAllocator::new(),
        false,
    )
}

fn reach(d: &DesiredPolicy, from: &str, to: &str, protocol: u8, port: u16) -> bool {
    let local = model_local();
    Dataplane {
        desired: d,
        local: &local,
    }
    .flow(model_ip(from), model_ip(to), protocol, port)
}

/// Whether `from` reaches `to` on any of a spread of ports and both
/// protocols.
fn reaches_any_port(d: &DesiredPolicy, from: &str, to: &str) -> bool {
    [TCP, UDP].into_iter().any(|proto| {
        [1, 22, 80, 81, 443, 8080, 65535]
            .into_iter()
            .any(|port| reach(d, from, to, proto, port))
    })
}

/// The server x/a allows only x/b on port 80 (ingress), as YAML.
fn manifest(spec_tail: &str, selector: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server, namespace: x}}\nspec:\n  podSelector: {selector}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{{port: 80}}]}}]\n{spec_tail}"
    )
}

const SERVER: &str = "{matchLabels: {pod: a}}";

/// The state after applying manifests in order, as the datastore sees them.
fn applied(manifests: &[String]) -> ClusterState {
    let mut state = model_state();
    for text in manifests {
        for resource in parse_documents(text) {
            state.apply(Event::Apply(resource.expect("has a kind and a name")));
        }
    }
    state
}

fn key() -> ObjectKey {
    ObjectKey::namespaced(Kind::NetworkPolicy, "x", "server")
}

#[test]
fn the_good_policy_isolates_the_server_from_the_denied_client() {
    let d = compiled(&applied(&[manifest("", SERVER)]));
    assert!(reach(&d, "x/b", "x/a", TCP, 80));
    assert!(!reaches_any_port(&d, "x/c", "x/a"));
    assert!(d.problems.is_empty());
}

#[test]
fn each_broken_variant_keeps_the_denied_client_out_on_every_port() {
    let variants = [
        // An invalid podSelector: Equals, In without values, a bad value.
        manifest(
            "",
            "{matchExpressions: [{key: pod, operator: Equals, values: [a]}]}",
        ),
        manifest("", "{matchExpressions: [{key: pod, operator: In}]}"),
        manifest("", "{matchLabels: {pod: -a}}"),
        // An unknown policyTypes entry.
        manifest("  policyTypes: [Ingress, Sideways]\n", SERVER),
        // One that does not even decode.
        manifest("  policyTypes: 7\n", SERVER),
        manifest("", "[pod, a]"),
    ];
    for variant in &variants {
        let rejected = &parse_documents(variant)[0];
        assert!(
            matches!(rejected, Ok(Resource::Rejected(_))),
            "{variant}: {rejected:?}"
        );
        // Replacing the good version, and with none before it.
        for manifests in [
            vec![manifest("", SERVER), variant.clone()],
            vec![variant.clone()],
        ] {
            let d = compiled(&applied(&manifests));
            assert!(!reaches_any_port(&d, "x/c", "x/a"), "{variant}");
            assert!(
                !reaches_any_port(&d, "x/b", "x/a"),
                "allows nothing: {variant}"
            );
            assert_eq!(d.problems.len(), 1, "{variant}: {:?}", d.problems);
            assert!(
                d.problems[0].reason.contains("allows nothing"),
                "{:?}",
                d.problems
            );
        }
    }
}

#[test]
fn an_unreadable_selector_keeps_the_last_good_selection_else_the_namespace() {
    let broken = manifest(
        "",
        "{matchExpressions: [{key: pod, operator: Equals, values: [a]}]}",
    );
    // With a last good version: what it selected (x/a) stays isolated,
    // the rest of the namespace is not touched.
    let d = compiled(&applied(&[manifest("", SERVER), broken.clone()]));
    assert!(d
        .placed
        .isolation
        .contains_key(&model_local()[&model_ip("x/a")]));
    assert!(reach(&d, "x/a", "x/c", TCP, 80), "x/c was never selected");
    // Without one: the whole namespace, in the direction it names.
    let d = compiled(&applied(&[broken]));
    for pod in ["x/a", "x/b", "x/c"] {
        assert!(!reach(&d, "y/a", pod, TCP, 80), "{pod}");
        assert!(reach(&d, pod, "y/a", TCP, 80), "{pod}: ingress only");
    }
    assert!(reach(&d, "x/a", "y/b", UDP, 53));
    // An unknown policyTypes entry: both directions of what it selects.
    let d = compiled(&applied(&[manifest(
        "  policyTypes: [Ingress, Sideways]\n",
        SERVER,
    )]));
    assert!(!reach(&d, "x/a", "y/a", TCP, 80), "egress too");
    assert!(reach(&d, "x/b", "y/a", TCP, 80));
}

#[test]
fn an_invalid_edit_releases_nothing_the_last_good_version_isolated() {
    // The good version isolates x/a's ingress; the edit selects x/b for
    // egress only, with a rule the API server would refuse.
    let edit = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: matchLabels}]}]}\n".to_owned();
    let d = compiled(&applied(&[manifest("", SERVER), edit]));
    assert!(
        !reaches_any_port(&d, "y/a", "x/a"),
        "x/a's ingress stays isolated"
    );
    assert!(!reaches_any_port(&d, "x/b", "x/a"), "and allows nothing");
    assert!(
        !reaches_any_port(&d, "x/b", "y/a"),
        "x/b's egress is isolated"
    );
    assert!(reach(&d, "y/a", "x/c", TCP, 80), "x/c was never selected");
}

#[test]
fn a_policy_defined_twice_isolates_both_selections_and_allows_nothing() {
    let allow_all = |selector: &str| {
        let text = format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server, namespace: x}}\nspec: {{podSelector: {selector}, ingress: [{{}}]}}\n");
        let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        value
    };
    let mut state = model_state();
    let rejected = Rejected::new(
        &key(),
        vec![allow_all(SERVER), allow_all("{matchLabels: {pod: b}}")],
        "defined more than once: a.yaml, b.yaml".into(),
    );
    state.apply(Event::Apply(Resource::Rejected(Box::new(rejected))));
    let d = compiled(&state);
    for pod in ["x/a", "x/b"] {
        assert!(!reaches_any_port(&d, "y/a", pod), "{pod}");
    }
    assert!(reach(&d, "y/a", "x/c", TCP, 80));
    assert!(d.problems[0].reason.contains("defined more than once"));
}

#[test]
fn an_invalid_policy_in_the_state_fails_closed_too() {
    // A state built by hand (or by a source that skipped admission).
    let policy: NetworkPolicy =
        serde_yaml::from_str(&manifest("", "{matchLabels: {pod: -a}}")).unwrap();
    let mut state = model_state();
    add_policy(&mut state, policy);
    let d = compiled(&state);
    assert!(!reaches_any_port(&d, "x/c", "x/a"));
    assert!(
        !reaches_any_port(&d, "x/b", "x/c"),
        "the namespace: the selector is unreadable"
    );
    assert!(d.problems[0]
        .reason
        .contains("spec.podSelector.matchLabels: Invalid value: \"-a\""));
}

#[test]
fn an_address_two_pods_claim_belongs_to_neither() {
    // x/a admits y's pod=a only; y/b is denied. A second Pod object with
    // y/b's address and pod=a, named to sort first, must not let y/b in.
    let server = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]}]}\n".to_owned();
    let impostor = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: aaa-impostor, namespace: y, labels: {{pod: a}}}}\nstatus: {{phase: Running, podIP: {}}}\n",
        model_ip("y/b")
    );
    let d = compiled(&applied(std::slice::from_ref(&server)));
    assert!(reach(&d, "y/a", "x/a", TCP, 80));
    assert!(!reach(&d, "y/b", "x/a", TCP, 80));
    assert!(d.ip_conflicts.is_empty());

    let d = compiled(&applied(&[server, impostor]));
    assert!(!reaches_any_port(&d, "y/b", "x/a"));
    assert!(
        reach(&d, "y/a", "x/a", TCP, 80),
        "the real pod=a still gets in"
    );
    assert!(!d.pod_identities.contains_key(&model_ip("y/b")));
    assert_eq!(
        d.ip_conflicts,
        [IpConflict {
            ip: model_ip("y/b"),
            pods: vec!["y/aaa-impostor".into(), "y/b".into()],
        }]
    );
}

#[test]
fn a_local_pod_whose_address_is_disputed_stays_isolated() {
    // x/a is isolated both ways; a Pod object in an unisolated namespace
    // claims its address. The endpoint behind the address is one of the
    // two (this node cannot tell which without CNI's pod name), so it
    // keeps every isolation either would have, and nothing is allowed.
    let server = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Egress], ingress: [{from: [{podSelector: {}}]}], egress: [{to: [{podSelector: {}}]}]}\n".to_owned();
    let claimant = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: claimant, namespace: z, labels: {{pod: z}}}}\nstatus: {{phase: Running, podIP: {}}}\n",
        model_ip("x/a")
    );
    let d = compiled(&applied(std::slice::from_ref(&server)));
    assert!(reach(&d, "x/b", "x/a", TCP, 80));
    assert!(!reach(&d, "y/a", "x/a", TCP, 80));
    assert!(!reach(&d, "x/a", "y/a", TCP, 80));

    let d = compiled(&applied(&[server, claimant]));
    for peer in ["y/a", "y/b", "x/b", "x/c"] {
        assert!(!reaches_any_port(&d, peer, "x/a"), "{peer} -> x/a");
        assert!(!reaches_any_port(&d, "x/a", peer), "x/a -> {peer}");
    }
    assert!(reach(&d, "y/a", "x/b", TCP, 80), "others are unaffected");
    assert_eq!(d.ip_conflicts.len(), 1);
}
