//! The real [`Datapath`]: BPF maps and links plus host routes.

use std::net::{IpAddr, Ipv4Addr};

use sluice_common::{
    api::EndpointSpec,
    endpoint::{EndpointInfo, IpKey},
};

use crate::{
    endpoints::{Datapath, DatapathError},
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
}
