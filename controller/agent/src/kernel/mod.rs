//! Everything that talks to the kernel: the eBPF object, its pinned maps
//! and links ([`bpf`]), reading the dataplane's counters, bpffs, netlink
//! (the host device, pod routes, the underlay and VXLAN devices), the
//! nftables tables (masquerade, refused Services), and the syncers that
//! apply desired state.

pub mod bpf;
pub mod bpffs;
pub mod counters;
pub mod datapath;
pub mod flow_events;
pub mod masquerade;
pub mod netlink;
pub mod nft;
pub mod node_sync;
pub mod service_nft;
pub mod underlay;
