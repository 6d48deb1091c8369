//! The CNI Result ("ADD Success") and its per-version JSON forms.
//!
//! Differences between the versions sluice speaks:
//! - 0.4.0: every `ips` entry carries `"version": "4" | "6"`.
//! - 1.0.0: `version` is gone.
//! - 1.1.0: interfaces may carry `mtu`.
//!
//! The result is built once and rendered for the config's version; a
//! `prevResult` in any of these forms decodes into the same type (CHECK).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{config::CniVersion, error::Error};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for interfaces inside the pod; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The JSON shape, borrowed from a [`CniResult`] for one version.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    interfaces: Vec<Interface>,
    ips: Vec<WireIp>,
    #[serde(skip_serializing_if = "<[Route]>::is_empty")]
    routes: &'a [Route],
    dns: &'a Dns,
}

#[derive(Serialize, Deserialize)]
struct WireIp {
    /// 0.4.0 only; ignored when decoding (the address says the family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
}

/// What a `prevResult` decodes from; everything is optional there.
#[derive(Deserialize)]
struct WireIn {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl CniResult {
    /// The result as JSON text for `version`.
    pub fn to_json(&self, version: CniVersion) -> String {
        let wire = Wire {
            cni_version: version.as_str(),
            interfaces: self
                .interfaces
                .iter()
                .map(|i| Interface {
                    mtu: if version >= CniVersion::V1_1_0 {
                        i.mtu
                    } else {
                        None
                    },
                    ..i.clone()
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| WireIp {
                    version: (version == CniVersion::V0_4_0).then(|| {
                        match ip.address {
                            IpNet::V4(_) => "4",
                            IpNet::V6(_) => "6",
                        }
                        .to_string()
                    }),
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: ip.interface,
                })
                .collect(),
            routes: &self.routes,
            dns: &self.dns,
        };
        // Strings, numbers and addresses always serialise.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Decodes a `prevResult` of any supported version.
    pub fn from_prev_result(value: &serde_json::Value) -> Result<Self, Error> {
        let wire = WireIn::deserialize(value)
            .map_err(|e| Error::config(format!("prevResult is not a CNI result: {e}")))?;
        Ok(CniResult {
            interfaces: wire.interfaces,
            ips: wire
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: ip.interface,
                })
                .collect(),
            routes: wire.routes,
            dns: wire.dns.unwrap_or_default(),
        })
    }
}

/// `aa:bb:cc:dd:ee:ff`, as CNI results and iproute2 write MACs.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a MAC in the colon form, any case.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "lxc0123456789a".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/pod".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/32".parse().expect("cidr"),
                gateway: Some("10.244.1.1".parse().expect("ip")),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("cidr"),
                gw: Some("10.244.1.1".parse().expect("ip")),
            }],
            dns: Dns::default(),
        }
    }

    fn rendered(version: CniVersion) -> serde_json::Value {
        serde_json::from_str(&sample().to_json(version)).expect("valid JSON")
    }

    #[test]
    fn v0_4_0_ips_carry_version() {
        assert_eq!(
            rendered(CniVersion::V0_4_0),
            json!({
                "cniVersion": "0.4.0",
                "interfaces": [
                    {"name": "lxc0123456789a", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/var/run/netns/pod"}
                ],
                "ips": [
                    {"version": "4", "address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1}
                ],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn v1_0_0_drops_version_and_mtu() {
        assert_eq!(
            rendered(CniVersion::V1_0_0),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "lxc0123456789a", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/var/run/netns/pod"}
                ],
                "ips": [{"address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn v1_1_0_adds_interface_mtu() {
        assert_eq!(
            rendered(CniVersion::V1_1_0),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "lxc0123456789a", "mac": "02:00:00:00:00:01", "mtu": 1450},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "mtu": 1450, "sandbox": "/var/run/netns/pod"}
                ],
                "ips": [{"address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn ipv6_version_tag() {
        let mut result = sample();
        result.ips[0].address = "fd00::5/128".parse().expect("cidr");
        let json: serde_json::Value =
            serde_json::from_str(&result.to_json(CniVersion::V0_4_0)).expect("JSON");
        assert_eq!(json["ips"][0]["version"], "6");
    }

    #[test]
    fn every_rendering_decodes_back_as_prev_result() {
        for version in [CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0] {
            let back = CniResult::from_prev_result(&rendered(version)).expect("decodes");
            let mut want = sample();
            if version < CniVersion::V1_1_0 {
                for i in &mut want.interfaces {
                    i.mtu = None;
                }
            }
            assert_eq!(back, want, "{version:?}");
        }
    }

    #[test]
    fn garbage_prev_result_is_code_7() {
        let err = CniResult::from_prev_result(&json!({"ips": [{"address": "nope"}]}))
            .expect_err("bad address");
        assert_eq!(err.code(), crate::error::code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn mac_round_trip() {
        let mac = [0x02, 0xab, 0x00, 0x10, 0xff, 0x7e];
        assert_eq!(format_mac(&mac), "02:ab:00:10:ff:7e");
        assert_eq!(parse_mac("02:AB:00:10:ff:7e"), Some(mac));
        assert_eq!(parse_mac("02:ab:00:10:ff"), None);
        assert_eq!(parse_mac("02:ab:00:10:ff:7e:00"), None);
        assert_eq!(parse_mac("2:ab:00:10:ff:7e"), None);
    }
}
