//! The real [`Datapath`]: BPF maps and links plus host routes.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use sluice_common::{
    api::EndpointSpec,
    endpoint::{EndpointInfo, IpKey},
};

use crate::{
    endpoints::{Datapath, DatapathError, Swept},
    kernel::bpf::{Dataplane, DataplaneError},
    kernel::netlink::{Netlink, NetlinkError},
};

pub struct KernelDatapath {
    pub dataplane: Dataplane,
    pub netlink: Netlink,
    pub gateway: Ipv4Addr,
}

impl From<DataplaneError> for DatapathError {
    fn from(e: DataplaneError) -> Self {
        Self::Bpf(e.to_string())
    }
}

impl From<NetlinkError> for DatapathError {
    fn from(e: NetlinkError) -> Self {
        Self::Netlink(e.to_string())
    }
}

fn v4(ip: IpAddr) -> Result<Ipv4Addr, DatapathError> {
    match ip {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(v6) => Err(DatapathError::Netlink(format!(
            "IPv6 endpoint {v6}: not supported yet"
        ))),
    }
}

impl Datapath for KernelDatapath {
    async fn install(
        &mut self,
        ep: &EndpointSpec,
        info: &EndpointInfo,
    ) -> Result<(), DatapathError> {
        let ip = v4(ep.ip)?;
        // The ifindex the plugin reported must still name the veth it wired.
        match self.netlink.link_index(&ep.host_ifname).await? {
            Some(index) if index == ep.host_ifindex => {}
            _ => return Err(DatapathError::NoSuchLink(ep.host_ifname.clone())),
        }
        self.dataplane.set_endpoint(IpKey::from(ep.ip), *info)?;
        self.dataplane.attach(&ep.host_ifname, ep.host_ifindex)?;
        self.netlink
            .add_pod_route(ep.host_ifindex, ip, ep.pod_mac, self.gateway)
            .await?;
        Ok(())
    }

    async fn remove(&mut self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        self.dataplane.remove_endpoint(&IpKey::from(ep.ip))?;
        self.dataplane.detach(&ep.host_ifname)?;
        self.netlink
            .del_pod_route(ep.host_ifindex, v4(ep.ip)?)
            .await?;
        Ok(())
    }

    async fn delete_link(&mut self, ifname: &str) -> Result<(), DatapathError> {
        Ok(self.netlink.delete_link(ifname).await?)
    }

    async fn link_exists(&mut self, ifname: &str) -> Result<bool, DatapathError> {
        Ok(self.netlink.link_index(ifname).await?.is_some())
    }

    async fn sweep(
        &mut self,
        keep: &[EndpointSpec],
        pod_cidr: ipnet::Ipv4Net,
    ) -> Result<Swept, DatapathError> {
        let mut swept = Swept::default();
        let addresses: BTreeSet<IpKey> = keep.iter().map(|ep| IpKey::from(ep.ip)).collect();
        for key in self.dataplane.endpoint_keys()? {
            if !addresses.contains(&key) {
                self.dataplane.remove_endpoint(&key)?;
                swept.map_entries += 1;
            }
        }
        let links: BTreeSet<&str> = keep.iter().map(|ep| ep.host_ifname.as_str()).collect();
        for ifname in self.dataplane.pod_links()? {
            if !links.contains(ifname.as_str()) {
                self.dataplane.detach(&ifname)?;
                swept.links += 1;
            }
        }
        let routes: BTreeSet<(Ipv4Addr, u32)> = keep
            .iter()
            .filter_map(|ep| match ep.ip {
                IpAddr::V4(v4) => Some((v4, ep.host_ifindex)),
                IpAddr::V6(_) => None,
            })
            .collect();
        for (ip, oif) in self.netlink.pod_routes(pod_cidr).await? {
            if !routes.contains(&(ip, oif)) {
                self.netlink.del_pod_route(oif, ip).await?;
                swept.routes += 1;
            }
        }
        Ok(swept)
    }
}
