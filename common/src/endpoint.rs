//! The endpoint map: pod IP -> where and who the pod is.

/// Address family tag of an [`IpKey`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A map key for one IP address of either family.
///
/// IPv4 addresses occupy the first four bytes of `addr` (network order) and
/// the rest stays zero, so both families share one map and IPv6 needs no new
/// layout later.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

impl IpKey {
    pub const fn v4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        Self {
            family: FAMILY_V4,
            _pad: [0; 3],
            addr,
        }
    }

    pub const fn v6(octets: [u8; 16]) -> Self {
        Self {
            family: FAMILY_V6,
            _pad: [0; 3],
            addr: octets,
        }
    }
}

#[cfg(feature = "std")]
impl From<std::net::IpAddr> for IpKey {
    fn from(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(v4) => Self::v4(v4.octets()),
            std::net::IpAddr::V6(v6) => Self::v6(v6.octets()),
        }
    }
}

/// Value of the endpoint map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Agent-assigned endpoint id: what policy keys name.
    pub id: u32,
    /// ifindex of the host side of the pod's veth.
    pub ifindex: u32,
    /// MAC of the pod's own interface (destination of frames sent to it).
    pub pod_mac: [u8; 6],
    /// MAC of the host side of the veth (the pod's gateway MAC).
    pub host_mac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<IpKey>() == 20);
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 20);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::EndpointInfo {}
}
