//! Host plumbing shared by the CNI plugin, the agent and the lab, each
//! written once: network namespaces ([`netns`]) and what netlink's answers
//! mean ([`netlink`]). `std` only; the `no_std` definitions the eBPF
//! programs share live in `sluice-common`.

pub mod netlink;
pub mod netns;

pub use netns::Netns;
