//! Building blocks for running sluice on one host without Kubernetes:
//! named network namespaces, agent processes inside them, pods wired by the
//! real `sluice-cni`, and probes between them. The demo (`sluice demo`) and
//! the namespace tests both use these, so there is one way to do each.

pub mod agent_proc;
pub mod cni;
pub mod netns;
pub mod probe;
