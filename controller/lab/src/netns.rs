//! The lab's network namespaces are `sluice_sys`'s: named ones under
//! /run/netns, made and removed the way iproute2 does.
pub use sluice_sys::netns::{command_in, delete, list, Netns, NETNS_DIR};
