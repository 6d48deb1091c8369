//! Host plumbing shared by the CNI plugin, the agent and the lab, each
//! written once: network namespaces ([`netns`]), what netlink's answers
//! mean ([`netlink`]) and files replaced under their readers ([`fs`]). `std` only; the `no_std` definitions the eBPF
//! programs share live in `sluice-common`.

pub mod fs;
pub mod netlink;
pub mod netns;

pub use netns::Netns;
