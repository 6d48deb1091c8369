//! `explain`: what it says case by case, that its verdicts are the
//! compiled maps' verdicts (the dataplane's decision over them) for every
//! pair of the model, and that the datapath check notices maps that do
//! not hold what the state asks for.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_common::direction::Direction;
use sluice_common::explain::{EndRef, ExplainQuery, Explanation, PortSpec, Protocol, Verdict};
use sluice_common::ipcache::RemoteInfo;
use sluice_common::policy::decide;

use super::support::*;
use crate::datastore::ClusterState;
use crate::policy::explain::{check_datapath, explain, ExplainError, NodeView};
use crate::policy::{compile, DesiredPolicy, IdentityAllocator, InMemory, LocalPods};
use crate::topology::Topology;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

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

/// The model, every pod local, with these policies, compiled.
struct World {
    state: ClusterState,
    desired: DesiredPolicy,
    ipcache: BTreeMap<Ipv4Net, RemoteInfo>,
}

impl World {
    fn new(policies: Vec<NetworkPolicy>) -> Self {
        let mut state = model_state();
        for p in policies {
            add_policy(&mut state, p);
        }
        let desired = compile(
            &state,
            &model_local(),
            &LocalPods::new(),
            &mut IdentityAllocator::new(),
            false,
        );
        let ipcache = Topology::default().ipcache_with_pods(&desired.pod_identities, GATEWAY);
        World {
            state,
            desired,
            ipcache,
        }
    }

    fn explain(&self, from: &str, to: &str, port: &str) -> Result<Explanation, ExplainError> {
        let local = model_local();
        let local_pods = LocalPods::new();
        let view = NodeView {
            node: "node1",
            state: &self.state,
            local: &local,
            local_pods: &local_pods,
            identities: &self.desired.pod_identities,
            hosts: &[GATEWAY],
            audit_default: false,
        };
        let query = ExplainQuery {
            from: from.parse().expect("from"),
            to: to.parse().expect("to"),
            port: port.parse().expect("port"),
        };
        let mut explanation = explain(&view, &query)?;
        let maps = InMemory {
            policy: &self.desired.placed,
            ipcache: &self.ipcache,
        };
        check_datapath(&mut explanation, &local, &maps);
        Ok(explanation)
    }

    fn ok(&self, from: &str, to: &str, port: &str) -> Explanation {
        let e = self
            .explain(from, to, port)
            .unwrap_or_else(|err| panic!("{from} -> {to} {port}: {err}"));
        assert_eq!(
            e.disagreements().count(),
            0,
            "the maps compiled from the same state must agree: {e:#?}"
        );
        e
    }
}

fn rules(e: &sluice_common::explain::DirectionExplanation) -> Vec<String> {
    e.allowed_by.iter().map(ToString::to_string).collect()
}

#[test]
fn a_pod_no_policy_selects_is_not_isolated() {
    let world = World::new(vec![]);
    let e = world.ok("x/a", "y/b", "80/TCP");
    assert!(e.allowed());
    assert_eq!(e.egress.verdict, Verdict::NotIsolated);
    assert_eq!(e.ingress.verdict, Verdict::NotIsolated);
    assert_eq!(e.egress.pod.as_deref(), Some("x/a"));
    assert_eq!(e.ingress.pod.as_deref(), Some("y/b"));
    assert!(e.ingress.isolated_by.is_empty());
    let check = e.ingress.datapath.as_ref().expect("local pod checked");
    assert_eq!(check.verdict, Verdict::NotIsolated);
    assert_eq!(check.lookups.len(), 1, "one isolation miss: {check:?}");
}

#[test]
fn isolated_with_no_rule_matching_is_denied_and_names_the_policy() {
    let world = World::new(vec![np("y", "deny-all", "podSelector: {}")]);
    let e = world.ok("x/a", "y/b", "80/TCP");
    assert!(!e.allowed());
    assert_eq!(e.egress.verdict, Verdict::NotIsolated);
    assert_eq!(e.ingress.verdict, Verdict::Denied);
    assert_eq!(e.ingress.isolated_by, ["y/deny-all"]);
    assert!(e.ingress.allowed_by.is_empty());
    assert!(
        e.ingress
            .notes
            .iter()
            .any(|n| n.contains("no rule of y/deny-all")),
        "{:?}",
        e.ingress.notes
    );
}

#[test]
fn an_allowing_rule_is_named_with_its_peer_and_port() {
    let world = World::new(vec![np(
        "y",
        "allow-from-x",
        "podSelector: {matchLabels: {pod: b}}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: c}}\n  - namespaceSelector: {matchLabels: {ns: x}}\n  ports:\n  - port: 80\n",
    )]);
    let e = world.ok("x/a", "y/b", "80/TCP");
    assert!(e.allowed());
    assert_eq!(e.ingress.verdict, Verdict::Allowed);
    assert_eq!(
        rules(&e.ingress),
        ["y/allow-from-x ingress[0] from[1] (namespaceSelector ns=x) port 80/TCP"]
    );
    assert_eq!(
        world.ok("x/a", "y/b", "81/TCP").ingress.verdict,
        Verdict::Denied
    );
    assert_eq!(
        world.ok("x/a", "y/b", "80/UDP").ingress.verdict,
        Verdict::Denied
    );
    assert_eq!(
        world.ok("x/a", "y/a", "80/TCP").ingress.verdict,
        Verdict::NotIsolated,
        "y/a is not selected"
    );
}

#[test]
fn of_several_policies_the_one_that_allows_is_named() {
    let world = World::new(vec![
        np("y", "deny-all", "podSelector: {}"),
        np(
            "y",
            "allow-81-from-z",
            "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: z}}\n  ports:\n  - {port: 81, protocol: TCP}\n",
        ),
        np(
            "y",
            "allow-any-from-z-c",
            "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: z}}\n    podSelector: {matchLabels: {pod: c}}\n",
        ),
    ]);
    let e = world.ok("z/a", "y/b", "81/TCP");
    assert_eq!(e.ingress.verdict, Verdict::Allowed);
    assert_eq!(
        e.ingress.isolated_by,
        ["y/allow-81-from-z", "y/allow-any-from-z-c", "y/deny-all"]
    );
    assert_eq!(
        rules(&e.ingress),
        ["y/allow-81-from-z ingress[0] from[0] (namespaceSelector ns=z) port 81/TCP"]
    );
    let both = world.ok("z/c", "y/b", "81/TCP");
    assert_eq!(
        rules(&both.ingress),
        [
            "y/allow-81-from-z ingress[0] from[0] (namespaceSelector ns=z) port 81/TCP",
            "y/allow-any-from-z-c ingress[0] from[0] (namespaceSelector ns=z, podSelector pod=c) any port",
        ]
    );
    assert_eq!(
        world.ok("z/a", "y/b", "80/TCP").ingress.verdict,
        Verdict::Denied
    );
}

#[test]
fn ip_blocks_honour_their_excepts_for_pods_and_other_addresses() {
    // Model addresses: x in 10.244.1.0/24, y in .2, z in .3.
    let world = World::new(vec![np(
        "x",
        "egress-to-block",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}\n",
    )]);
    let to_z = world.ok("x/a", "z/b", "80/TCP");
    assert_eq!(to_z.egress.verdict, Verdict::Allowed);
    assert_eq!(
        rules(&to_z.egress),
        ["x/egress-to-block egress[0] to[0] (ipBlock 10.244.0.0/16 except 10.244.2.0/24) any port"]
    );
    assert_eq!(
        world.ok("x/a", "y/b", "80/TCP").egress.verdict,
        Verdict::Denied
    );
    let outside = world.ok("x/a", "10.244.9.9", "443/TCP");
    assert_eq!(outside.egress.verdict, Verdict::Allowed);
    assert_eq!(outside.ingress.verdict, Verdict::NotApplicable);
    assert!(outside.to.pod.is_none());
    let excepted = world.ok("x/a", "10.244.2.200", "443/TCP");
    assert_eq!(excepted.egress.verdict, Verdict::Denied);
    assert_eq!(
        world.ok("x/a", "192.0.2.1", "80/TCP").egress.verdict,
        Verdict::Denied
    );
    // A pod given by its address is that pod.
    let by_ip = world.ok("x/a", &model_ip("z/b").to_string(), "80/TCP");
    assert_eq!(by_ip.to.pod.as_deref(), Some("z/b"));
}

#[test]
fn named_ports_resolve_against_the_destination_pod() {
    let world = World::new(vec![
        np(
            "y",
            "ingress-named",
            "podSelector: {}\ningress:\n- ports:\n  - {port: serve-81-udp, protocol: UDP}\n",
        ),
        np(
            "x",
            "egress-named",
            "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock: {cidr: 10.0.0.0/8}\n  ports:\n  - port: serve-80-tcp\n",
        ),
    ]);
    let e = world.ok("z/a", "y/a", "81/UDP");
    assert_eq!(
        rules(&e.ingress),
        ["y/ingress-named ingress[0] (any peer) port serve-81-udp/UDP (= 81)"]
    );
    assert_eq!(
        world.ok("z/a", "y/a", "81/TCP").ingress.verdict,
        Verdict::Denied
    );
    let egress = world.ok("x/a", "z/c", "80/TCP");
    assert_eq!(
        rules(&egress.egress),
        ["x/egress-named egress[0] to[0] (ipBlock 10.0.0.0/8) port serve-80-tcp/TCP (= 80)"]
    );
    // An address that is no pod has no named ports.
    assert_eq!(
        world.ok("x/a", "10.9.9.9", "80/TCP").egress.verdict,
        Verdict::Denied
    );
}

#[test]
fn egress_and_ingress_are_decided_apart() {
    let world = World::new(vec![
        np(
            "x",
            "no-egress-to-y",
            "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector: {matchLabels: {ns: z}}\n",
        ),
        np(
            "z",
            "only-from-y",
            "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n",
        ),
    ]);
    let to_y = world.ok("x/a", "y/a", "80/TCP");
    assert_eq!(
        (to_y.egress.verdict, to_y.ingress.verdict),
        (Verdict::Denied, Verdict::NotIsolated)
    );
    assert!(!to_y.allowed());
    let to_z = world.ok("x/a", "z/a", "80/TCP");
    assert_eq!(
        (to_z.egress.verdict, to_z.ingress.verdict),
        (Verdict::Allowed, Verdict::Denied)
    );
    assert!(!to_z.allowed());
    let y_to_z = world.ok("y/a", "z/a", "80/TCP");
    assert!(y_to_z.allowed());
    assert_eq!(y_to_z.egress.verdict, Verdict::NotIsolated);
}

#[test]
fn an_invalid_policy_fails_closed_and_is_reported() {
    let world = World::new(vec![np(
        "y",
        "half-broken",
        "podSelector: {}\ningress:\n- from:\n  - podSelector: {matchExpressions: [{key: pod, operator: In, values: []}]}\n- from:\n  - namespaceSelector: {}\n",
    )]);
    let e = world.ok("x/a", "y/a", "80/TCP");
    assert_eq!(
        e.ingress.verdict,
        Verdict::Denied,
        "the whole policy fails closed"
    );
    assert_eq!(e.ingress.isolated_by, ["y/half-broken"]);
    assert!(
        e.ingress
            .notes
            .iter()
            .any(|n| n.starts_with("NetworkPolicy y/half-broken: ")),
        "{:?}",
        e.ingress.notes
    );
}

#[test]
fn rules_and_peers_keep_their_positions_in_the_policy() {
    // An IPv6 ipBlock compiles to nothing; the peer after it is still to[1].
    let world = World::new(vec![np(
        "y",
        "positions",
        "podSelector: {}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: none}}\n- from:\n  - ipBlock: {cidr: 'fd00::/8'}\n  - namespaceSelector: {matchLabels: {ns: x}}\n",
    )]);
    let e = world.ok("x/a", "y/a", "80/TCP");
    assert_eq!(
        rules(&e.ingress),
        ["y/positions ingress[1] from[1] (namespaceSelector ns=x) any port"]
    );
}

#[test]
fn the_pods_node_always_passes() {
    let world = World::new(vec![np("y", "deny-all", "podSelector: {}")]);
    let e = world.ok(&GATEWAY.to_string(), "y/a", "80/TCP");
    assert_eq!(e.ingress.verdict, Verdict::Allowed);
    assert!(e.ingress.notes.iter().any(|n| n.contains("own node")));
}

#[test]
fn unknown_pods_and_pods_without_an_address_are_errors() {
    let mut world = World::new(vec![]);
    assert_eq!(
        world.explain("x/nope", "y/a", "80").err(),
        Some(ExplainError::UnknownPod("x/nope".into()))
    );
    pod_mut(&mut world.state, "x/b").status = None;
    assert!(matches!(
        world.explain("y/a", "x/b", "80"),
        Err(ExplainError::NoAddress { .. })
    ));
}

/// Every pair of the model (and two addresses that are no pod), on every
/// port the model serves: each direction's computed verdict is the one the
/// dataplane's decision makes over the compiled maps.
#[test]
fn verdicts_are_the_compiled_maps_verdicts_for_every_pair() {
    let sets = vec![
        vec![np("x", "deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]")],
        vec![np(
            "y",
            "mixed",
            "podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}\ningress:\n- from:\n  - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [x, z]}]}\n    podSelector: {matchLabels: {pod: a}}\n  ports:\n  - {port: 80, endPort: 81, protocol: TCP}\n- from:\n  - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.10/32]}\n  ports:\n  - {port: serve-81-udp, protocol: UDP}\negress:\n- to:\n  - podSelector: {}\n",
        )],
        vec![
            np(
                "z",
                "egress",
                "podSelector: {matchLabels: {pod: b}}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector: {}\n  ports:\n  - {protocol: UDP}\n",
            ),
            np("z", "all", "podSelector: {}\ningress:\n- {}\n"),
        ],
    ];
    let ports = ["80/TCP", "81/TCP", "80/UDP", "81/UDP"];
    let mut checked = 0;
    for set in sets {
        let world = World::new(set);
        let local = model_local();
        let maps = InMemory {
            policy: &world.desired.placed,
            ipcache: &world.ipcache,
        };
        let ends: Vec<String> = model_pods()
            .into_iter()
            .chain(["10.244.2.99".to_owned(), "192.0.2.7".to_owned()])
            .collect();
        for from in &ends {
            for to in &ends {
                for port in ports {
                    let e = world.ok(from, to, port);
                    let spec: PortSpec = port.parse().unwrap();
                    for (direction, own, peer, explained) in [
                        (Direction::Egress, &e.from, &e.to, &e.egress),
                        (Direction::Ingress, &e.to, &e.from, &e.ingress),
                    ] {
                        let (Some(own), Some(peer)) = (own.ip, peer.ip) else {
                            continue;
                        };
                        let Some(&endpoint) = local.get(&own) else {
                            assert_eq!(explained.verdict, Verdict::NotApplicable);
                            continue;
                        };
                        let want = Verdict::from(decide(
                            &maps,
                            endpoint,
                            direction,
                            peer.octets(),
                            spec.protocol.number(),
                            spec.port,
                        ));
                        assert_eq!(
                            explained.verdict, want,
                            "{from} -> {to} {port} {direction:?}: {e:#?}"
                        );
                        if want == Verdict::Allowed {
                            assert!(
                                !explained.allowed_by.is_empty() || !explained.notes.is_empty()
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 500, "{checked}");
}

#[test]
fn the_datapath_check_says_when_the_maps_disagree() {
    let world = World::new(vec![np(
        "y",
        "allow-from-x",
        "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: x}}\n",
    )]);
    let local = model_local();
    let local_pods = LocalPods::new();
    let view = NodeView {
        node: "node1",
        state: &world.state,
        local: &local,
        local_pods: &local_pods,
        identities: &world.desired.pod_identities,
        hosts: &[GATEWAY],
        audit_default: false,
    };
    let query = ExplainQuery {
        from: EndRef::Pod {
            namespace: "x".into(),
            name: "a".into(),
        },
        to: "y/b".parse().unwrap(),
        port: PortSpec {
            port: 80,
            protocol: Protocol::Tcp,
        },
    };
    // Maps that lost y/b's rules: isolated, nothing allowed.
    let mut broken = world.desired.placed.clone();
    let yb = local[&model_ip("y/b")];
    broken.exact.retain(|k, _| k.endpoint != yb);
    let maps = InMemory {
        policy: &broken,
        ipcache: &world.ipcache,
    };
    let mut e = explain(&view, &query).expect("explain");
    check_datapath(&mut e, &local, &maps);
    assert_eq!(e.ingress.verdict, Verdict::Allowed);
    let check = e.ingress.datapath.as_ref().expect("checked");
    assert_eq!(check.verdict, Verdict::Denied);
    assert!(!check.agrees);
    assert_eq!(check.endpoint, yb);
    assert!(
        check.lookups[0].starts_with(&format!("isolation[{yb}]")),
        "{:?}",
        check.lookups
    );
    assert!(
        check.lookups.iter().any(|l| l.contains("ipcache[")),
        "{:?}",
        check.lookups
    );
    let wrong: Vec<&str> = e.disagreements().map(|d| d.direction.as_str()).collect();
    assert_eq!(wrong, ["ingress"]);
    assert!(e.egress.datapath.as_ref().expect("checked").agrees);
    // Maps that allow what the state denies are as wrong.
    let mut open = world.desired.placed.clone();
    open.isolation.remove(&yb);
    let maps = InMemory {
        policy: &open,
        ipcache: &world.ipcache,
    };
    let query = ExplainQuery {
        from: "z/a".parse().unwrap(),
        ..query
    };
    let mut e = explain(&view, &query).expect("explain");
    check_datapath(&mut e, &local, &maps);
    assert_eq!(e.ingress.verdict, Verdict::Denied);
    assert!(!e.ingress.datapath.as_ref().unwrap().agrees);
    // A pod of another node is not checked here.
    let mut e = explain(&view, &query).expect("explain");
    check_datapath(&mut e, &BTreeMap::new(), &maps);
    assert!(e.ingress.datapath.is_none() && e.egress.datapath.is_none());
}
