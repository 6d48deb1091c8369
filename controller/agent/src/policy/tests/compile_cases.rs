//! The compiler, semantic by semantic: map contents where the layout is
//! the point, the evaluator where the behaviour is.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_common::direction::Direction;
use sluice_common::identity;
use sluice_common::policy::{
    Isolation, PolicyKey, ANY_IDENTITY, ANY_PROTOCOL, KEY_FIXED_BITS, KEY_FULL_BITS,
};

use super::support::*;
use crate::datastore::ClusterState;
use crate::policy::ports::{SCTP, TCP, UDP};
use crate::policy::{compile, DesiredPolicy, IdentityAllocator, LocalEndpoints, LocalPods};

/// A policy `ns/name` with the spec written in YAML.
fn np(ns: &str, name: &str, spec: &str) -> NetworkPolicy {
    let spec: NetworkPolicySpec = serde_yaml::from_str(spec).expect("spec YAML");
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(spec),
    }
}

fn model_with(policies: Vec<NetworkPolicy>) -> ClusterState {
    let mut state = model_state();
    for p in policies {
        add_policy(&mut state, p);
    }
    state
}

fn compiled(state: &ClusterState) -> DesiredPolicy {
    compile(
        state,
        &model_local(),
        &LocalPods::new(),
        &mut IdentityAllocator::new(),
        false,
    )
}

fn ep(pod: &str) -> u32 {
    model_local()[&model_ip(pod)]
}

fn id(d: &DesiredPolicy, pod: &str) -> u32 {
    d.pod_identities[&model_ip(pod)]
}

fn reach(d: &DesiredPolicy, from: &str, to: &str, protocol: u8, port: u16) -> bool {
    let local = model_local();
    Dataplane {
        desired: d,
        local: &local,
    }
    .flow(model_ip(from), model_ip(to), protocol, port)
}

/// `from`'s egress towards an address outside the model.
fn reach_addr(d: &DesiredPolicy, from: &str, to: &str, protocol: u8, port: u16) -> bool {
    let local = model_local();
    let to: Ipv4Addr = to.parse().unwrap();
    Dataplane {
        desired: d,
        local: &local,
    }
    .allowed(ep(from), Direction::Egress, to, protocol, port)
}

/// Rules of one endpoint and direction: (identity, protocol, dport, prefix).
fn rules(d: &DesiredPolicy, pod: &str, dir: Direction) -> BTreeSet<(u32, u8, u16, u32)> {
    d.placed
        .rules()
        .filter(|(k, _)| k.endpoint == ep(pod) && k.direction == dir as u8)
        .map(|(k, bits)| (k.identity, k.protocol, u16::from_be_bytes(k.dport), bits))
        .collect()
}

fn no_rules(d: &DesiredPolicy) -> bool {
    d.placed.rules().next().is_none()
}

fn isolation(ingress: u8, egress: u8) -> Isolation {
    Isolation {
        ingress,
        egress,
        ranges: 0,
        audit: 0,
    }
}

const DENY_INGRESS: &str = "{podSelector: {}, policyTypes: [Ingress]}";

#[test]
fn without_policies_everything_is_open() {
    let d = compiled(&model_state());
    assert!(d.placed.isolation.is_empty() && no_rules(&d) && d.problems.is_empty());
    assert!(d.placed.regions.is_empty());
    assert_eq!(d.pod_identities.len(), 9);
    assert!(reach(&d, "x/a", "y/b", TCP, 80));
}

#[test]
fn pod_identities_cover_live_ipv4_pods_only() {
    let pod = |name: &str, status: &str, extra_spec: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}}}}}\nspec: {{containers: [{{name: c}}]{extra_spec}}}\nstatus: {status}\n"
        )
    };
    let docs = [
        pod("running", "{phase: Running, podIP: 10.0.0.1}", ""),
        pod("pending-with-ip", "{phase: Pending, podIP: 10.0.0.2}", ""),
        pod("no-ip", "{phase: Pending}", ""),
        pod("succeeded", "{phase: Succeeded, podIP: 10.0.0.3}", ""),
        pod("failed", "{phase: Failed, podIP: 10.0.0.4}", ""),
        pod(
            "host-net",
            "{phase: Running, podIP: 192.168.0.1}",
            ", hostNetwork: true",
        ),
        pod(
            "v6-only",
            "{phase: Running, podIP: 'fd00::1', podIPs: [{ip: 'fd00::1'}]}",
            "",
        ),
        pod(
            "dual",
            "{phase: Running, podIP: 'fd00::2', podIPs: [{ip: 'fd00::2'}, {ip: 10.0.0.5}]}",
            "",
        ),
    ];
    let state = state(&docs.join("---\n"));
    let d = compile(
        &state,
        &LocalEndpoints::new(),
        &LocalPods::new(),
        &mut IdentityAllocator::new(),
        false,
    );
    let ips: Vec<String> = d.pod_identities.keys().map(|ip| ip.to_string()).collect();
    assert_eq!(ips, ["10.0.0.1", "10.0.0.2", "10.0.0.5"]);
}

#[test]
fn identities_are_per_namespace_and_label_set() {
    let docs = [
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: x, labels: {app: web}}\nstatus: {podIP: 10.0.0.1}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-2, namespace: x, labels: {app: web}}\nstatus: {podIP: 10.0.0.2}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: y, labels: {app: web}}\nstatus: {podIP: 10.0.0.3}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: host, namespace: x, labels: {host: node-a}}\nstatus: {podIP: 10.0.0.4}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: world, namespace: x, labels: {reserved: world}}\nstatus: {podIP: 10.0.0.5}\n",
    ];
    let d = compile(
        &state(&docs.join("---\n")),
        &LocalEndpoints::new(),
        &LocalPods::new(),
        &mut IdentityAllocator::new(),
        false,
    );
    let at = |ip: &str| d.pod_identities[&ip.parse::<Ipv4Addr>().unwrap()];
    assert_eq!(at("10.0.0.1"), at("10.0.0.2"), "replicas share an identity");
    assert_ne!(
        at("10.0.0.1"),
        at("10.0.0.3"),
        "the namespace is part of it"
    );
    // Labels that look like reserved identities are ordinary labels.
    for id in d.pod_identities.values() {
        assert!((identity::FIRST_CLUSTER..identity::FIRST_CIDR).contains(id));
    }
    assert_eq!(d.pod_identities.values().collect::<BTreeSet<_>>().len(), 4);
}

#[test]
fn namespaces_always_carry_their_name_label() {
    // `w` has an object without the name label, `v` has pods but no object.
    let docs = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: w, labels: {team: blue}}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: w, labels: {app: client}}\nstatus: {podIP: 10.0.1.1}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: v, labels: {app: client}}\nstatus: {podIP: 10.0.2.1}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: u, labels: {app: client}}\nstatus: {podIP: 10.0.3.1}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: s, labels: {app: server}}\nstatus: {podIP: 10.0.9.1}\n",
    ];
    let mut state = state(&docs.join("---\n"));
    add_policy(
        &mut state,
        np(
            "s",
            "from-v-w",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [v, w]}]}}]}]}",
        ),
    );
    let server: Ipv4Addr = "10.0.9.1".parse().unwrap();
    let local = LocalEndpoints::from([(server, 7)]);
    let d = compile(
        &state,
        &local,
        &LocalPods::new(),
        &mut IdentityAllocator::new(),
        false,
    );
    let dp = Dataplane {
        desired: &d,
        local: &local,
    };
    assert!(dp.flow("10.0.1.1".parse().unwrap(), server, TCP, 80));
    assert!(dp.flow("10.0.2.1".parse().unwrap(), server, TCP, 80));
    assert!(!dp.flow("10.0.3.1".parse().unwrap(), server, TCP, 80));
}

#[test]
fn default_deny_ingress_isolates_ingress_only() {
    let d = compiled(&model_with(vec![np("x", "deny", DENY_INGRESS)]));
    for pod in ["x/a", "x/b", "x/c"] {
        assert_eq!(d.placed.isolation[&ep(pod)], isolation(1, 0));
    }
    assert_eq!(d.placed.isolation.len(), 3);
    assert!(no_rules(&d));
    assert!(!reach(&d, "y/a", "x/a", TCP, 80));
    assert!(reach(&d, "x/a", "y/a", TCP, 80));
}

#[test]
fn policy_types_default_as_the_api_server_does() {
    let cases = [
        // (spec, isolates ingress, isolates egress)
        ("{podSelector: {}}", 1, 0),
        ("{podSelector: {}, egress: []}", 1, 0),
        ("{podSelector: {}, egress: [{}]}", 1, 1),
        ("{podSelector: {}, policyTypes: [], egress: [{}]}", 1, 1),
        (
            "{podSelector: {}, policyTypes: [Egress], ingress: [{}]}",
            0,
            1,
        ),
        (
            "{podSelector: {}, policyTypes: [Ingress], egress: [{}]}",
            1,
            0,
        ),
        ("{podSelector: {}, policyTypes: [Egress, Ingress]}", 1, 1),
    ];
    for (spec, ingress, egress) in cases {
        let d = compiled(&model_with(vec![np("x", "p", spec)]));
        assert_eq!(
            d.placed.isolation[&ep("x/a")],
            isolation(ingress, egress),
            "{spec}"
        );
    }
    // Rules of a direction the policy does not isolate are ignored.
    let d = compiled(&model_with(vec![np(
        "x",
        "p",
        "{podSelector: {}, policyTypes: [Egress], ingress: [{}]}",
    )]));
    assert!(no_rules(&d));
}

#[test]
fn allow_all_rule_is_one_wildcard_entry() {
    let d = compiled(&model_with(vec![np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{}]}",
    )]));
    let key = PolicyKey {
        endpoint: ep("x/a"),
        identity: ANY_IDENTITY,
        direction: Direction::Ingress as u8,
        protocol: ANY_PROTOCOL,
        dport: [0, 0],
    };
    assert_eq!(
        d.placed.rules().collect::<Vec<_>>(),
        vec![(key, KEY_FIXED_BITS)]
    );
    assert_eq!(
        d.placed.exact[&key].flags,
        sluice_common::policy::entry::ALLOW
    );
    assert!(reach(&d, "z/c", "x/a", UDP, 1234));
}

#[test]
fn pod_selector_peer_is_the_policy_namespace_only() {
    let d = compiled(&model_with(vec![np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    )]));
    let want = BTreeSet::from([(id(&d, "x/b"), ANY_PROTOCOL, 0, KEY_FIXED_BITS)]);
    assert_eq!(rules(&d, "x/a", Direction::Ingress), want);
    assert!(reach(&d, "x/b", "x/a", TCP, 80));
    assert!(!reach(&d, "y/b", "x/a", TCP, 80));
    assert!(!reach(&d, "x/c", "x/a", TCP, 80));
}

#[test]
fn namespace_selectors_alone_and_combined() {
    let ns_only =
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", ns_only)]));
    let ids: BTreeSet<u32> = rules(&d, "x/a", Direction::Ingress)
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        ids,
        ["y/a", "y/b", "y/c"].iter().map(|p| id(&d, p)).collect()
    );

    let both = "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", both)]));
    let ids: BTreeSet<u32> = rules(&d, "x/a", Direction::Ingress)
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(ids, BTreeSet::from([id(&d, "y/c")]));

    // An empty namespaceSelector is every namespace.
    let all = "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", all)]));
    for from in ["x/c", "y/c", "z/c"] {
        assert!(reach(&d, from, "x/a", TCP, 80));
    }
    assert!(!reach(&d, "z/b", "x/a", TCP, 80));
}

#[test]
fn peers_are_ored_and_policies_unioned() {
    let p1 = "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: z}}}]}]}";
    let p2 = "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}], ports: [{port: 81}]}]}";
    let d = compiled(&model_with(vec![np("x", "p1", p1), np("x", "p2", p2)]));
    assert!(reach(&d, "x/b", "x/a", TCP, 80));
    assert!(reach(&d, "z/b", "x/a", TCP, 80));
    assert!(reach(&d, "y/a", "x/a", TCP, 81));
    assert!(!reach(&d, "y/a", "x/a", TCP, 80));
    assert!(!reach(&d, "x/c", "x/a", TCP, 81));
    assert!(reach(&d, "x/c", "x/b", TCP, 80), "x/b is not selected");
}

#[test]
fn ports_protocols_and_ranges() {
    let spec = "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: UDP}, {port: 80}, {protocol: TCP, port: 1000, endPort: 1003}, {protocol: SCTP, port: 81}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", spec)]));
    let want = BTreeSet::from([
        (ANY_IDENTITY, UDP, 0, KEY_FIXED_BITS),
        (ANY_IDENTITY, TCP, 80, KEY_FULL_BITS),
        (ANY_IDENTITY, TCP, 1000, KEY_FULL_BITS - 2),
        (ANY_IDENTITY, SCTP, 81, KEY_FULL_BITS),
    ]);
    assert_eq!(rules(&d, "x/a", Direction::Ingress), want);
    assert!(reach(&d, "y/b", "x/a", UDP, 5353));
    assert!(reach(&d, "y/b", "x/a", TCP, 80));
    assert!(!reach(&d, "y/b", "x/a", TCP, 81));
    assert!(!reach(&d, "y/b", "x/a", TCP, 999));
    assert!(reach(&d, "y/b", "x/a", TCP, 1003));
    assert!(!reach(&d, "y/b", "x/a", TCP, 1004));
    assert!(reach(&d, "y/b", "x/a", SCTP, 81));
    assert!(!reach(&d, "y/b", "x/a", SCTP, 80));

    let wide =
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 81, endPort: 65535}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", wide)]));
    for (port, ok) in [
        (80, false),
        (81, true),
        (1024, true),
        (65535, true),
        (1, false),
    ] {
        assert_eq!(reach(&d, "y/b", "x/a", TCP, port), ok, "port {port}");
    }
}

#[test]
fn sctp_in_a_policy_does_not_open_tcp() {
    // Upstream: a plugin without SCTP must still enforce the rest.
    let spec = "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: SCTP, port: 80}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", spec)]));
    assert!(!reach(&d, "x/b", "x/a", TCP, 80));
    assert!(!reach(&d, "x/b", "x/a", UDP, 80));
    assert!(reach(&d, "x/b", "x/a", SCTP, 80));
}

#[test]
fn named_ports_resolve_against_the_destination() {
    let mut state = model_with(vec![
        np("x", "in", "{podSelector: {}, ingress: [{ports: [{port: serve-80-tcp}, {port: serve-81-udp, protocol: UDP}]}]}"),
        np("z", "out", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: serve-81-udp, protocol: UDP}]}]}"),
    ]);
    // x/b serves its "serve-80-tcp" on 8080 and its "serve-81-udp" on 9001.
    let spec = pod_mut(&mut state, "x/b").spec.as_mut().unwrap();
    for c in &mut spec.containers {
        for p in c.ports.iter_mut().flatten() {
            match p.name.as_deref() {
                Some("serve-80-tcp") => p.container_port = 8080,
                Some("serve-81-udp") => p.container_port = 9001,
                _ => {}
            }
        }
    }
    let d = compiled(&state);
    // Ingress: each local pod's own number.
    assert_eq!(
        rules(&d, "x/a", Direction::Ingress),
        BTreeSet::from([
            (ANY_IDENTITY, TCP, 80, KEY_FULL_BITS),
            (ANY_IDENTITY, UDP, 81, KEY_FULL_BITS)
        ])
    );
    assert_eq!(
        rules(&d, "x/b", Direction::Ingress),
        BTreeSet::from([
            (ANY_IDENTITY, TCP, 8080, KEY_FULL_BITS),
            (ANY_IDENTITY, UDP, 9001, KEY_FULL_BITS)
        ])
    );
    assert!(reach(&d, "y/a", "x/b", TCP, 8080));
    assert!(!reach(&d, "y/a", "x/b", TCP, 80));
    // Egress: each peer pod's own number, under that pod's identity.
    let want = BTreeSet::from([
        (id(&d, "x/a"), UDP, 81, KEY_FULL_BITS),
        (id(&d, "x/b"), UDP, 9001, KEY_FULL_BITS),
        (id(&d, "x/c"), UDP, 81, KEY_FULL_BITS),
    ]);
    assert_eq!(rules(&d, "z/a", Direction::Egress), want);
    assert!(reach(&d, "z/a", "x/c", UDP, 81));
    assert!(reach(&d, "z/a", "x/b", UDP, 9001));
    assert!(!reach(&d, "z/a", "x/b", UDP, 81));
    assert!(!reach(&d, "z/a", "y/a", UDP, 81));
}

#[test]
fn a_named_port_nobody_serves_allows_nothing_but_isolates() {
    let d = compiled(&model_with(vec![np("x", "p", "{podSelector: {}, ingress: [{ports: [{port: nope}]}], egress: [{ports: [{port: serve-80-tcp, protocol: UDP}]}]}")]));
    assert!(d.problems.is_empty());
    assert!(no_rules(&d));
    assert_eq!(d.placed.isolation[&ep("x/a")], isolation(1, 1));
}

#[test]
fn egress_named_port_with_any_peer_uses_each_pod() {
    let d = compiled(&model_with(vec![np("x", "p", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{ports: [{port: serve-81-tcp}]}]}")]));
    assert!(reach(&d, "x/a", "z/c", TCP, 81));
    assert!(!reach(&d, "x/a", "z/c", TCP, 80));
    assert!(
        !reach_addr(&d, "x/a", "8.8.8.8", TCP, 81),
        "no pod there, no named port"
    );
}

/// Pods with the same labels may name their ports differently (a rollout
/// changing them, or a hand-made pod): an egress named port reaches each
/// at the number it names, and one that does not name it not at all.
#[test]
fn egress_named_port_follows_each_pod_even_with_the_same_labels() {
    let mut state = model_with(vec![np("x", "p", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{ports: [{port: serve-81-tcp}]}]}")]);
    let twin = pod_mut(&mut state, "z/b");
    twin.metadata.labels = Some([("pod".to_owned(), "c".to_owned())].into());
    if let Some(spec) = twin.spec.as_mut() {
        for container in &mut spec.containers {
            container.ports = None;
        }
    }
    let d = compiled(&state);
    assert!(reach(&d, "x/a", "z/c", TCP, 81));
    assert!(!reach(&d, "x/a", "z/b", TCP, 81), "z/b names no port");
}

#[test]
fn ipblock_regions_and_excepts() {
    let spec = "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.244.0.0/16, 10.9.9.9/32]}}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", spec)]));
    let regions: Vec<String> = d.placed.regions.keys().map(|n| n.to_string()).collect();
    assert_eq!(regions, ["10.0.0.0/8", "10.9.9.9/32", "10.244.0.0/16"]);
    for id in d.placed.regions.values() {
        assert!((identity::FIRST_CIDR..=identity::MAX).contains(id));
    }
    let want = BTreeSet::from([(cidr_id(&d, "10.0.0.0/8"), ANY_PROTOCOL, 0, KEY_FIXED_BITS)]);
    assert_eq!(rules(&d, "x/a", Direction::Egress), want);
    for (addr, ok) in [
        ("10.1.2.3", true),
        ("10.244.3.3", false),
        ("10.9.9.9", false),
        ("10.9.9.8", true),
        ("11.0.0.1", false),
    ] {
        assert_eq!(reach_addr(&d, "x/a", addr, TCP, 443), ok, "{addr}");
    }
    assert!(!reach(&d, "x/a", "y/b", TCP, 80), "pods are in the except");
}

#[test]
fn ipblock_everything_and_except_equal_to_cidr() {
    let all = "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", all)]));
    assert!(reach_addr(&d, "x/a", "8.8.8.8", UDP, 53));
    assert!(reach_addr(&d, "x/a", "0.0.0.0", UDP, 53));
    assert!(
        reach(&d, "x/a", "z/c", TCP, 80),
        "pod addresses are in 0.0.0.0/0"
    );

    let nothing = "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", nothing)]));
    // The API server rejects it: an except must be a strict subset.
    assert_eq!(d.problems.len(), 1);
    assert!(d.problems[0]
        .reason
        .contains("must be a strict subset of `cidr`"));
    assert!(rules(&d, "x/a", Direction::Egress).is_empty());
    assert!(!reach_addr(&d, "x/a", "10.1.1.1", TCP, 80));
}

#[test]
fn ipblock_matches_pod_addresses_and_overlapping_blocks_union() {
    // Upstream case 36: one policy excepts x/b, another allows exactly it.
    let xb = model_ip("x/b");
    let p1 = "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 0.0.0.0/4, except: [XB/32]}}]}]}".replace("XB", &xb.to_string());
    let p2 = "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: XB/32}}]}]}".replace("XB", &xb.to_string());
    let d = compiled(&model_with(vec![np("x", "p1", &p1)]));
    assert!(!reach(&d, "x/a", "x/b", TCP, 80));
    assert!(reach(&d, "x/a", "x/c", TCP, 80));
    let d = compiled(&model_with(vec![np("x", "p1", &p1), np("x", "p2", &p2)]));
    assert!(reach(&d, "x/a", "x/b", TCP, 80));
    assert!(reach(&d, "x/a", "x/c", TCP, 80));
    assert!(!reach_addr(&d, "x/a", "16.0.0.1", TCP, 80));
}

#[test]
fn egress_named_port_through_an_ipblock_is_per_address() {
    let spec = "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.244.2.0/24, except: [10.244.2.12/32]}}], ports: [{port: serve-81-tcp}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", spec)]));
    assert!(reach(&d, "x/a", "y/a", TCP, 81));
    assert!(reach(&d, "x/a", "y/b", TCP, 81));
    assert!(!reach(&d, "x/a", "y/c", TCP, 81), "excepted");
    assert!(!reach(&d, "x/a", "y/a", TCP, 80));
    assert!(!reach(&d, "x/a", "z/a", TCP, 81), "outside the block");
    assert!(
        !reach_addr(&d, "x/a", "10.244.2.99", TCP, 81),
        "not a pod: no named port"
    );
}

#[test]
fn ipv6_ipblocks_compile_to_nothing() {
    let spec = "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 'fd00::/8'}}]}]}";
    let d = compiled(&model_with(vec![np("x", "p", spec)]));
    assert!(d.problems.is_empty() && d.placed.regions.is_empty() && no_rules(&d));
    assert_eq!(d.placed.isolation[&ep("x/a")], isolation(0, 1));
}

#[test]
fn a_rule_the_api_server_rejects_makes_its_policy_allow_nothing() {
    let good = "{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}";
    let bad_rules = [
        ("{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}", "must be a valid CIDR value"),
        ("{from: [{ipBlock: {cidr: nonsense}}]}", "must be a valid CIDR value"),
        ("{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}", "must be a strict subset of `cidr`"),
        ("{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [nonsense]}}]}", "must be a valid CIDR value"),
        ("{ports: [{protocol: ICMP}]}", "Unsupported value: \"ICMP\""),
        ("{ports: [{port: 80}, {protocol: tcp, port: 81}]}", "Unsupported value: \"tcp\""),
        ("{ports: [{port: Serve_80}]}", "must contain only alpha-numeric characters"),
        ("{ports: [{port: '80'}]}", "must contain at least one letter (a-z)"),
        ("{ports: [{port: 0}]}", "must be between 1 and 65535, inclusive"),
        ("{ports: [{port: 65536}]}", "must be between 1 and 65535, inclusive"),
        ("{ports: [{port: serve-80-tcp, endPort: 90}]}", "may not be specified when `port` is non-numeric"),
        ("{ports: [{endPort: 90}]}", "may not be specified when `port` is not specified"),
        ("{ports: [{port: 90, endPort: 80}]}", "must be greater than or equal to `port`"),
        ("{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: []}]}}]}", "Required value: must be specified when `operator` is 'In' or 'NotIn'"),
        ("{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: Has}]}}]}", "Invalid value: \"Has\": not a valid selector operator"),
        ("{from: [{podSelector: {matchExpressions: [{key: pod, operator: Exists, values: [a]}]}}]}", "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"),
        ("{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}", "Forbidden: may not specify both ipBlock and another peer"),
        ("{from: [{}]}", "Required value: must specify a peer"),
    ];
    for (bad, reason) in bad_rules {
        let spec =
            format!("{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{bad}, {good}]}}");
        let other = np(
            "y",
            "q",
            "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
        );
        let d = compiled(&model_with(vec![np("x", "p", &spec), other]));
        assert_eq!(d.problems.len(), 1, "{bad}: {:?}", d.problems);
        assert_eq!(d.problems[0].policy, "x/p");
        let message = &d.problems[0].reason;
        assert!(
            message
                .starts_with("NetworkPolicy.networking.k8s.io \"p\" is invalid: spec.ingress[0]"),
            "{message}"
        );
        assert!(message.contains(reason), "{bad}: {message}");
        // Still isolated, now with nothing allowed, not even the good rule.
        assert_eq!(d.placed.isolation[&ep("x/a")], isolation(1, 0), "{bad}");
        assert!(rules(&d, "x/a", Direction::Ingress).is_empty(), "{bad}");
        assert!(!reach(&d, "x/b", "x/a", TCP, 80), "{bad}");
        assert!(d.placed.regions.is_empty(), "{bad}");
        assert!(!d.placed.isolation.contains_key(&ep("x/b")), "{bad}");
        // The other policy is untouched.
        assert!(
            reach(&d, "y/c", "y/a", TCP, 80) && !reach(&d, "x/c", "y/a", TCP, 80),
            "{bad}"
        );
    }
}

#[test]
fn a_bad_pod_selector_isolates_its_whole_namespace() {
    let bad = np(
        "x",
        "bad",
        "{podSelector: {matchExpressions: [{key: pod, operator: Near, values: [a]}]}, ingress: [{}]}",
    );
    let good = np("y", "good", DENY_INGRESS);
    let d = compiled(&model_with(vec![bad, good]));
    assert_eq!(d.problems.len(), 1);
    assert_eq!(d.problems[0].policy, "x/bad");
    assert!(d.problems[0]
        .reason
        .contains("spec.podSelector.matchExpressions[0].operator: Invalid value: \"Near\": not a valid selector operator"));
    for pod in ["x/a", "x/b", "x/c"] {
        assert_eq!(d.placed.isolation[&ep(pod)], isolation(1, 0), "{pod}");
    }
    assert!(
        !reach(&d, "z/a", "x/b", TCP, 80),
        "its allow-all rule is not taken"
    );
    assert!(d.placed.isolation.contains_key(&ep("y/a")));
    assert!(!d.placed.isolation.contains_key(&ep("z/a")));
}

#[test]
fn an_unknown_policy_type_isolates_both_directions() {
    let d = compiled(&model_with(vec![np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Sideways], ingress: [{}]}",
    )]));
    assert_eq!(d.problems.len(), 1);
    assert!(d.problems[0].reason.contains(
        "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\""
    ));
    assert_eq!(d.placed.isolation[&ep("x/a")], isolation(1, 1));
    assert!(no_rules(&d));
}

#[test]
fn only_local_endpoints_get_isolation_and_rules() {
    let state = model_with(vec![np("x", "p", "{podSelector: {}, ingress: [{}]}")]);
    let local = LocalEndpoints::from([(model_ip("x/b"), 42), (model_ip("y/b"), 43)]);
    let d = compile(
        &state,
        &local,
        &LocalPods::new(),
        &mut IdentityAllocator::new(),
        false,
    );
    assert_eq!(d.placed.isolation.keys().collect::<Vec<_>>(), [&42]);
    assert!(d.placed.rules().all(|(k, _)| k.endpoint == 42));
    assert_eq!(d.pod_identities.len(), 9, "identities cover every node");
}

#[test]
fn finished_pods_are_neither_selected_nor_peers() {
    let mut state = model_with(vec![np(
        "x",
        "p",
        "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    )]);
    for pod in ["x/a", "x/b"] {
        pod_mut(&mut state, pod).status.as_mut().unwrap().phase = Some("Succeeded".into());
    }
    let d = compiled(&state);
    assert!(!d.placed.isolation.contains_key(&ep("x/a")));
    assert!(d.placed.isolation.contains_key(&ep("x/c")));
    assert!(
        rules(&d, "x/c", Direction::Ingress).is_empty(),
        "the only pod=b is done"
    );
}

#[test]
fn output_is_deterministic_and_identities_stable() {
    let state = model_with(vec![
        np("x", "p", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.244.1.0/24]}}]}]}"),
        np("y", "q", DENY_INGRESS),
    ]);
    let mut ids = IdentityAllocator::new();
    let first = compile(&state, &model_local(), &LocalPods::new(), &mut ids, false);
    assert_eq!(
        compile(&state, &model_local(), &LocalPods::new(), &mut ids, false),
        first
    );
    assert_eq!(
        compile(
            &state,
            &model_local(),
            &LocalPods::new(),
            &mut IdentityAllocator::new(),
            false
        ),
        first
    );

    // A new pod elsewhere changes nobody else's identity.
    let mut grown = state.clone();
    let mut extra = grown.pods[&("z".to_owned(), "a".to_owned())].clone();
    extra.metadata.name = Some("d".into());
    extra.metadata.labels = Some([("pod".to_string(), "d".to_string())].into());
    extra.status.as_mut().unwrap().pod_ip = Some("10.244.3.99".into());
    grown.pods.insert(("z".into(), "d".into()), extra);
    let second = compile(&grown, &model_local(), &LocalPods::new(), &mut ids, false);
    for (ip, id) in &first.pod_identities {
        assert_eq!(second.pod_identities[ip], *id);
    }
    assert_eq!(second.placed.regions, first.placed.regions);
    assert_eq!(second.pod_identities.len(), 10);
}

#[test]
fn relabelled_pods_move_and_unused_identities_are_released() {
    let mut state = model_with(vec![np(
        "x",
        "p",
        "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod2: updated}}}]}]}",
    )]);
    let mut ids = IdentityAllocator::new();
    let before = compile(&state, &model_local(), &LocalPods::new(), &mut ids, false);
    assert!(!reach(&before, "x/b", "x/a", TCP, 80));
    let old = id(&before, "x/b");
    pod_mut(&mut state, "x/b")
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("pod2".into(), "updated".into());
    let after = compile(&state, &model_local(), &LocalPods::new(), &mut ids, false);
    assert_ne!(id(&after, "x/b"), old);
    assert!(reach(&after, "x/b", "x/a", TCP, 80));
    assert!(
        ids.labels().all(|(_, n)| n != old),
        "no pod has the old key"
    );
    assert_eq!(ids.labels().count(), 9);
}

#[test]
fn identity_exhaustion_is_reported_not_fatal() {
    let state = model_with(vec![np(
        "x",
        "p",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}",
    )]);
    let mut ids = IdentityAllocator::with_ranges(256..=258, identity::FIRST_CIDR..=identity::MAX);
    let d = compile(&state, &model_local(), &LocalPods::new(), &mut ids, false);
    assert_eq!(d.identity_errors.len(), 6);
    assert_eq!(d.pod_identities.len(), 3);
    // Pods without an identity are never let in as someone else.
    assert_eq!(rules(&d, "x/a", Direction::Ingress).len(), 3);
    assert_eq!(d.placed.isolation.len(), 3);
}

/// A pod this node wired is known by the name kubelet gave CNI ADD: its
/// policy applies from the endpoint's address even before its object
/// reports the IP, and another Pod object claiming that address is not
/// believed (it would otherwise lend the address its labels).
#[test]
fn local_endpoints_are_tied_to_their_pods_by_name() {
    let docs = [
        // The server's object has no IP yet; a squatter claims it.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: s, labels: {app: server}}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: aaa-squatter, namespace: s, labels: {app: open}}\nstatus: {podIP: 10.0.9.1}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: c, labels: {app: client}}\nstatus: {podIP: 10.0.1.1}\n",
    ];
    let mut state = state(&docs.join("---\n"));
    add_policy(
        &mut state,
        np(
            "s",
            "deny-server",
            "{podSelector: {matchLabels: {app: server}}, policyTypes: [Ingress]}",
        ),
    );
    let server: Ipv4Addr = "10.0.9.1".parse().unwrap();
    let local = LocalEndpoints::from([(server, 7)]);
    let pods = LocalPods::from([(server, ("s".to_owned(), "server".to_owned()))]);
    let d = compile(&state, &local, &pods, &mut IdentityAllocator::new(), false);
    let dp = Dataplane {
        desired: &d,
        local: &local,
    };
    assert!(
        !dp.flow("10.0.1.1".parse().unwrap(), server, TCP, 80),
        "the server is isolated by its own policy, not opened by the squatter"
    );
    // By address alone (no name from CNI ADD), the squatter's object wins:
    // what the name prevents.
    let d = compile(
        &state,
        &local,
        &LocalPods::new(),
        &mut IdentityAllocator::new(),
        false,
    );
    let dp = Dataplane {
        desired: &d,
        local: &local,
    };
    assert!(dp.flow("10.0.1.1".parse().unwrap(), server, TCP, 80));
}
