//! `sluice status`: what a node's agent reports, for people (a block of
//! aligned lines) or for programs (`-o json`: the agent's `AgentStatus`,
//! field names as in `sluice_common::api`).

use std::fmt::Write as _;

use sluice_common::api::AgentStatus;

/// The human form.
pub fn text(status: &AgentStatus) -> String {
    let node = &status.node;
    let mut out = String::new();
    // A continuation line (no label) lines up under the value above.
    let mut line = |label: &str, value: String| {
        let label = if label.is_empty() {
            String::new()
        } else {
            format!("{label}:")
        };
        let _ = writeln!(out, "{label:<18}{value}");
    };
    line("node", status.node_name.clone());
    line("ready", if node.ready { "yes" } else { "no" }.into());
    line(
        "datapath",
        format!(
            "routing {}, kube-proxy replacement {}",
            node.routing,
            if node.kube_proxy_replacement {
                "on"
            } else {
                "off"
            }
        ),
    );
    line("datastore", node.datastore.clone());
    line(
        "pod CIDR",
        format!("{} ({} free)", status.pod_cidr, status.free_addresses),
    );
    line("endpoints", status.endpoints.to_string());
    line("identities", node.identities.to_string());
    let count = |kind: &str| node.objects.get(kind).copied().unwrap_or_default();
    line(
        "cluster",
        format!(
            "{} nodes, {} namespaces, {} pods, {} policies, {} services, {} endpoint slices",
            count("node"),
            count("namespace"),
            count("pod"),
            count("networkpolicy"),
            count("service"),
            count("endpointslice"),
        ),
    );
    line(
        "services",
        format!(
            "{} frontends, {} backend slots",
            node.service_frontends, node.service_backends
        ),
    );
    let ago = |ms: Option<u64>| match ms {
        Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
        None => "never".into(),
    };
    line("last sync", ago(node.last_sync_ms_ago));
    line("last change", ago(node.last_event_ms_ago));
    for (i, map) in node.maps.iter().enumerate() {
        let fill = if map.capacity > 0 {
            format!(
                " ({:.1}%)",
                100.0 * map.entries as f64 / map.capacity as f64
            )
        } else {
            String::new()
        };
        line(
            if i == 0 { "maps" } else { "" },
            format!(
                "{:<26}{:>9} / {}{fill}",
                map.name, map.entries, map.capacity
            ),
        );
    }
    if node.problems.is_empty() {
        line("problems", "none".into());
    }
    for (i, problem) in node.problems.iter().enumerate() {
        line(if i == 0 { "problems" } else { "" }, problem.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::api::{MapFill, NodeReport};

    #[test]
    fn shows_every_part_of_the_report() {
        let status = AgentStatus {
            node_name: "node1".into(),
            pod_cidr: "10.244.1.0/24".into(),
            endpoints: 3,
            free_addresses: 249,
            node: NodeReport {
                ready: true,
                routing: "tunnel".into(),
                kube_proxy_replacement: true,
                datastore: "kubernetes".into(),
                objects: [("pod".to_owned(), 9), ("networkpolicy".to_owned(), 2)].into(),
                identities: 7,
                service_frontends: 4,
                service_backends: 6,
                maps: vec![
                    MapFill {
                        name: "SLUICE_IPCACHE".into(),
                        entries: 512,
                        capacity: 65536,
                    },
                    MapFill {
                        name: "SLUICE_SERVICES".into(),
                        entries: 4,
                        capacity: 65536,
                    },
                ],
                last_sync_ms_ago: Some(400),
                last_event_ms_ago: None,
                problems: vec!["NetworkPolicy x/bad: ...".into()],
                in_sync: true,
                changes: 42,
            },
        };
        let text = text(&status);
        for expected in [
            "node:             node1",
            "ready:            yes",
            "routing tunnel, kube-proxy replacement on",
            "10.244.1.0/24 (249 free)",
            "9 pods, 2 policies",
            "4 frontends, 6 backend slots",
            "last sync:        0.4 s ago",
            "last change:      never",
            "SLUICE_IPCACHE                  512 / 65536 (0.8%)",
            "problems:         NetworkPolicy x/bad",
            "\n                  SLUICE_SERVICES ",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
    }
}
