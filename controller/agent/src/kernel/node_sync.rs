//! Applying the node topology to the kernel: the routing devices and
//! programs once at start, then ipcache entries, routes and masquerade
//! rules whenever Node objects change.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use sluice_common::{
    config::{routing, DataplaneConfig},
    programs,
};
use tracing::info;

use super::{
    bpf::{AttachMode, ConfigMap, Dataplane, DataplaneError},
    masquerade,
    netlink::{Netlink, NetlinkError},
    nft::{self, NftError},
    underlay::{Device, VXLAN_DEVICE},
};
use crate::{
    config::{PrefilterMode, Routing},
    topology::{self, Topology},
};

#[derive(Debug, thiserror::Error)]
pub enum NodeSyncError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("masquerade: {0}")]
    Masquerade(#[from] NftError),
    #[error("no device holds this node's InternalIP {0}")]
    NoUnderlay(Ipv4Addr),
    #[error("reading the node's network namespace cookie: {0}")]
    NetnsCookie(std::io::Error),
}

/// The devices cross-node traffic uses, found or made at start.
#[derive(Debug, Clone)]
pub struct RoutingSetup {
    pub routing: Routing,
    pub underlay: Device,
    /// Where routes to other nodes' pod ranges point: the VXLAN device
    /// (tunnel) or the underlay (native).
    pub route_device: u32,
    /// Where the prefilter runs on the underlay.
    pub prefilter: AttachMode,
}

impl RoutingSetup {
    /// The pod MTU that fits the underlay once encapsulated.
    pub fn pod_mtu(&self) -> u32 {
        self.underlay.mtu - self.routing.overhead()
    }
}

/// Sets up cross-node routing for a node whose InternalIP is `node_ip`:
/// the VXLAN device with its two programs (tunnel), the programs on the
/// underlay (both modes: external Service traffic arrives there), the
/// prefilter (XDP) on it, and the programs' configuration.
pub async fn setup(
    dataplane: &mut Dataplane,
    config_map: &mut ConfigMap,
    netlink: &Netlink,
    mode: Routing,
    node_ip: Ipv4Addr,
    prefilter_mode: PrefilterMode,
) -> Result<RoutingSetup, NodeSyncError> {
    let underlay = netlink
        .device_with_address(node_ip)
        .await?
        .ok_or(NodeSyncError::NoUnderlay(node_ip))?;
    dataplane.attach_program(programs::FROM_NETDEV, &underlay.name, underlay.index)?;
    dataplane.attach_program(programs::TO_NETDEV, &underlay.name, underlay.index)?;
    let wanted = prefilter_mode.on(netlink.is_veth(underlay.index).await?);
    let prefilter = dataplane.attach_prefilter(&underlay.name, underlay.index, wanted)?;
    // The node's sockets are the socket hooks' (the agent runs in the
    // node's network namespace).
    let netns_cookie = sluice_sys::netns::current_cookie().map_err(NodeSyncError::NetnsCookie)?;
    let (route_device, config) = match mode {
        Routing::Tunnel => {
            let vxlan = netlink.ensure_vxlan(underlay.mtu - mode.overhead()).await?;
            dataplane.attach_program(programs::FROM_OVERLAY, VXLAN_DEVICE, vxlan)?;
            dataplane.attach_program(programs::TO_OVERLAY, VXLAN_DEVICE, vxlan)?;
            let config = DataplaneConfig {
                routing: routing::TUNNEL,
                tunnel_ifindex: vxlan,
                netns_cookie,
            };
            (vxlan, config)
        }
        Routing::Native => {
            // Leave nothing of the other mode behind (a cluster switched modes).
            dataplane.detach_program(programs::FROM_OVERLAY, VXLAN_DEVICE)?;
            dataplane.detach_program(programs::TO_OVERLAY, VXLAN_DEVICE)?;
            netlink.delete_link(VXLAN_DEVICE).await?;
            let config = DataplaneConfig {
                routing: routing::NATIVE,
                tunnel_ifindex: 0,
                netns_cookie,
            };
            (underlay.index, config)
        }
    };
    config_map.set(config)?;
    info!(routing = %mode, underlay = %underlay.name, mtu = underlay.mtu, prefilter = %prefilter, "cross-node routing set up");
    Ok(RoutingSetup {
        routing: mode,
        underlay,
        route_device,
        prefilter,
    })
}

/// Keeps the kernel in line with the Node objects.
pub struct NodeSync {
    netlink: Netlink,
    node_name: String,
    pod_cidr: Ipv4Net,
    gateway: Ipv4Addr,
    setup: Option<RoutingSetup>,
    masquerade: bool,
    applied_masquerade: Option<String>,
}

pub struct NodeSyncConfig {
    pub node_name: String,
    pub pod_cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub masquerade: bool,
}

impl NodeSync {
    /// `setup` is `None` on a node without a datastore: no other nodes,
    /// nothing but masquerade to program.
    pub fn new(netlink: Netlink, config: NodeSyncConfig, setup: Option<RoutingSetup>) -> Self {
        Self {
            netlink,
            node_name: config.node_name,
            pod_cidr: config.pod_cidr,
            gateway: config.gateway,
            setup,
            masquerade: config.masquerade,
            applied_masquerade: None,
        }
    }

    /// Programs routes and masquerade for the topology the Node objects
    /// give (`topology::topology`).
    pub async fn apply(&mut self, topo: &Topology) -> Result<(), NodeSyncError> {
        if let Some(setup) = &self.setup {
            let pref_src = (setup.routing == Routing::Tunnel).then_some(self.gateway);
            self.netlink
                .sync_node_routes(&topo.routes(setup.routing), setup.route_device, pref_src)
                .await?;
        }
        let rules = masquerade::ruleset(
            self.masquerade.then_some(self.pod_cidr),
            &topo.cluster_destinations(self.pod_cidr),
        );
        if self.applied_masquerade.as_deref() != Some(rules.as_str()) {
            nft::apply(&rules)?;
            self.applied_masquerade = Some(rules);
        }
        Ok(())
    }

    /// The Node objects as this node sees them: itself and the others.
    pub fn topology(&self, nodes: &BTreeMap<String, Node>) -> Topology {
        topology::topology(nodes, &self.node_name, self.pod_cidr)
    }

    /// This node's gateway address (the `host` identity in the ipcache).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
}
