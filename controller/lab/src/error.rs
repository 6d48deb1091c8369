//! Everything that can go wrong running a lab, each with what to do about
//! it where there is something to do.

use std::{io, path::PathBuf};

use super::{
    fabric::FabricError, inventory::StateError, objects::ObjectError, topology::PodName,
    topology::TopologyError,
};
use sluice_agent::kernel::bpffs;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("wiring the fabric: {0}")]
    Fabric(#[from] FabricError),
    #[error(transparent)]
    Objects(#[from] ObjectError),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} not found: build it (cargo xtask build) or point --bin-dir at it")]
    Binary(PathBuf),
    #[error("no lab {name} in {dir}: start one with `sluice lab up`")]
    NotUp { name: String, dir: PathBuf },
    #[error("{dir} holds lab {found}, not {wanted}: pass --name {found}, or another --dir")]
    OtherLab {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    #[error(
        "lab {name} is up with {running}; run `sluice lab down` first to start it with {wanted}"
    )]
    Mismatch {
        name: String,
        running: String,
        wanted: String,
    },
    #[error("an earlier lab {name} left things behind ({}): run `sluice lab down` first", what.join(", "))]
    Leftovers { name: String, what: Vec<String> },
    #[error("lab {name} is broken: {reason}; run `sluice lab down`, then `up` again")]
    Broken { name: String, reason: String },
    #[error("the agent of {node} did not come up: {detail}")]
    Agent { node: String, detail: String },
    #[error("no node {node} in lab {lab} (nodes: {})", nodes.join(", "))]
    UnknownNode {
        lab: String,
        node: String,
        nodes: Vec<String>,
    },
    #[error("{service}: {reason}")]
    Service { service: String, reason: String },
    #[error("no pod {0} in the lab")]
    UnknownPod(PodName),
    #[error("explain{}: {message}", node.as_ref().map(|n| format!(" (agent of {n})")).unwrap_or_default())]
    Explain {
        node: Option<String>,
        message: String,
    },
    #[error("pod {0} already exists")]
    PodExists(PodName),
    #[error("pod {pod} would share netns {netns} with pod {other}: choose another name")]
    NetnsClash {
        pod: PodName,
        other: PodName,
        netns: String,
    },
    #[error("invalid ports {0:?}: want 1 to 16 distinct ports in 1-65535")]
    Ports(Vec<u16>),
    #[error("sluice-cni {command} for pod {pod} failed: {output}")]
    Cni {
        pod: PodName,
        command: &'static str,
        output: String,
    },
    #[error("the server of pod {pod} did not come up: {detail}")]
    Server { pod: PodName, detail: String },
    #[error("namespace {namespace} still has pods ({}): delete them first with `sluice lab pod del`", pods.join(", "))]
    NamespaceInUse {
        namespace: String,
        pods: Vec<String>,
    },
    #[error("{path} holds {existing}, which {new} would replace (their file names collide): rename one of them")]
    Conflict {
        path: PathBuf,
        existing: String,
        new: String,
    },
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("removing namespaces failed: {}", .0.join("; "))]
    Netns(Vec<String>),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}
