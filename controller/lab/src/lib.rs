//! Running sluice on one host without Kubernetes. The building blocks
//! (named network namespaces, agent processes inside them, pods wired by
//! the real `sluice-cni`, probes between them) serve the namespace tests;
//! [`cluster`] puts them together into `sluice lab`: several nodes on a
//! fabric, watching a directory of Kubernetes YAML.

pub mod agent_proc;
pub mod apply;
pub mod bench;
pub mod cluster;
pub mod cni;
pub mod conformance;
pub mod error;
pub mod explain;
pub mod fabric;
pub mod inventory;
pub mod kube_proxy;
pub mod manifests;
pub mod matrix;
pub mod model;
pub mod netns;
pub mod objects;
pub mod pods;
pub mod probe;
pub mod procs;
pub mod services;
pub mod teardown;
pub mod topology;
