//! `sluice lab explain`: `sluice policy explain` across the lab's nodes.
//! Each node's maps hold only its own pods' policy, so the source pod's
//! node answers for egress and the destination pod's node for ingress;
//! the two answers become one.

use std::time::Duration;

use sluice_common::api::{self, Request, Response};
use sluice_common::explain::{EndRef, ExplainQuery, Explanation};

use super::cluster::Lab;
use super::error::LabError;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the node(s) deciding each direction of the flow and combines their
/// answers: egress from the source's node, ingress from the destination's
/// (an end that is no lab pod is decided nowhere; the other end's node
/// answers for it).
pub fn explain(lab: &Lab, query: &ExplainQuery) -> Result<Explanation, LabError> {
    let source = node_of(lab, &query.from)?;
    let destination = node_of(lab, &query.to)?;
    let first_node = || {
        lab.state()
            .nodes
            .first()
            .map(|n| n.name.clone())
            .ok_or_else(|| LabError::Broken {
                name: lab.config().name.clone(),
                reason: "it has no node".into(),
            })
    };
    let egress_node = match (&source, &destination) {
        (Some(node), _) | (None, Some(node)) => node.clone(),
        (None, None) => first_node()?,
    };
    let ingress_node = destination.unwrap_or_else(|| egress_node.clone());
    let mut combined = ask(lab, &egress_node, query)?;
    if ingress_node != egress_node {
        let other = ask(lab, &ingress_node, query)?;
        combined.ingress = other.ingress;
        combined.node = format!("{egress_node} (egress), {ingress_node} (ingress)");
    }
    Ok(combined)
}

/// The node of the lab pod at `end`; `None` for an address no lab pod has.
fn node_of(lab: &Lab, end: &EndRef) -> Result<Option<String>, LabError> {
    let pods = &lab.state().pods;
    match end {
        EndRef::Pod { namespace, name } => pods
            .iter()
            .find(|p| &p.namespace == namespace && &p.name == name)
            .map(|p| Some(p.node.clone()))
            .ok_or_else(|| LabError::Explain {
                node: None,
                message: format!("no pod {end} in lab {}", lab.config().name),
            }),
        EndRef::Ip { ip } => Ok(pods
            .iter()
            .find(|p| p.ip == std::net::IpAddr::V4(*ip))
            .map(|p| p.node.clone())),
    }
}

fn ask(lab: &Lab, node: &str, query: &ExplainQuery) -> Result<Explanation, LabError> {
    let socket = lab.config().agent_socket(node);
    let error = |message: String| LabError::Explain {
        node: Some(node.to_owned()),
        message,
    };
    let request = Request::Explain {
        query: query.clone(),
    };
    match api::call(&socket, &request, TIMEOUT) {
        Ok(Response::Explained { explanation }) => Ok(*explanation),
        Ok(Response::Error { message, .. }) => Err(error(message)),
        Ok(other) => Err(error(format!("unexpected answer {other:?}"))),
        Err(e) => Err(error(e.to_string())),
    }
}
