//! The upstream NetworkPolicy e2e cluster model: namespaces x, y and z,
//! pods a, b and c in each, every pod serving TCP and UDP on 80 and 81.
//! Their Pod objects also declare SCTP on both ports (`serve-80-sctp`, ...,
//! see [`manifests::pod_object`](super::manifests::pod_object)), as the
//! upstream model does, though nothing serves SCTP. The demo shows it, and
//! the conformance cases are written against it.

use std::collections::BTreeMap;

use super::{
    cluster::{Lab, LabError, PodSpec},
    inventory::PodState,
    matrix::Check,
    topology::PodName,
};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];
/// What the model's matrices probe, in upstream's order of interest.
pub const CHECKS: [Check; 4] = [
    Check::tcp(80),
    Check::tcp(81),
    Check::udp(80),
    Check::udp(81),
];

/// The model's pods, spread over `nodes` in turn (x/a on the first, x/b on
/// the second, ...), so that most pairs cross nodes.
pub fn pods(nodes: &[String]) -> Vec<PodSpec> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |pod| (*ns, *pod)))
        .enumerate()
        .filter_map(|(i, (ns, pod))| {
            let node = nodes.get(i % nodes.len().max(1))?;
            let name = PodName::new(ns, pod).ok()?;
            let mut spec = PodSpec::new(name, node).label("pod", pod);
            spec.ports = PORTS.to_vec();
            Some(spec)
        })
        .collect()
}

/// The model's pods as `ns/name`, in the order truth tables list them.
pub fn pod_names() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |pod| format!("{ns}/{pod}")))
        .collect()
}

/// Labels of the model's namespaces (the API server adds
/// `kubernetes.io/metadata.name` on its own).
pub fn namespace_labels(namespace: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("ns".to_owned(), namespace.to_owned())])
}

/// Creates the model's namespaces and pods in `lab`.
pub fn create(lab: &mut Lab) -> Result<Vec<PodState>, LabError> {
    for ns in NAMESPACES {
        lab.label_namespace(ns, &namespace_labels(ns))?;
    }
    let nodes: Vec<String> = lab.state().nodes.iter().map(|n| n.name.clone()).collect();
    pods(&nodes).iter().map(|spec| lab.pod_add(spec)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_pods_alternate_over_the_nodes() {
        let nodes = vec!["node1".to_owned(), "node2".to_owned()];
        let placed: Vec<String> = pods(&nodes)
            .iter()
            .map(|s| format!("{}@{}", s.pod, s.node))
            .collect();
        assert_eq!(
            placed,
            [
                "x/a@node1",
                "x/b@node2",
                "x/c@node1",
                "y/a@node2",
                "y/b@node1",
                "y/c@node2",
                "z/a@node1",
                "z/b@node2",
                "z/c@node1"
            ]
        );
        let first = &pods(&nodes)[0];
        assert_eq!(first.labels.get("pod").map(String::as_str), Some("a"));
        assert_eq!(first.ports, [80, 81]);
        assert!(pods(&[]).is_empty());
        assert_eq!(pod_names()[..4], ["x/a", "x/b", "x/c", "y/a"]);
        assert_eq!(pod_names().len(), 9);
    }
}
