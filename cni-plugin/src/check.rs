//! CHECK: is the attachment still what ADD made of it?
//!
//! Three views are compared: the `prevResult` (what ADD reported), the
//! agent's record, and the kernel ([`Observed`]). The comparison is a pure
//! function; only gathering the views does I/O.

use ipnet::IpNet;
use sluice_common::api::{EndpointSpec, EndpointState};

use crate::{
    client::Agent,
    commands::{attachment, open_netns},
    config::NetConf,
    dataplane::{Dataplane, Observed},
    env::Target,
    error::Error,
    result::{format_mac, parse_mac, CniResult, Route},
    veth,
};

pub fn check(
    target: &Target,
    conf: &NetConf,
    agent: &impl Agent,
    dataplane: &mut impl Dataplane,
) -> Result<(), Error> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::config("CHECK needs a prevResult"))?;
    let prev = CniResult::from_prev_result(prev)?;
    let host_ifname = veth::host_ifname(&target.container_id, &target.ifname);
    let expected = Expected::from_prev_result(&prev, &target.ifname, &host_ifname)?;

    let state = agent.get(&attachment(&target.container_id, &target.ifname))?;
    let netns = open_netns(&target.netns)?;
    let observed = dataplane.observe(&host_ifname, &netns, &target.ifname)?;
    compare(&expected, &state, &observed)
}

/// What the `prevResult` says about our attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub ifname: String,
    pub host_ifname: String,
    pub address: IpNet,
    pub pod_mac: Option<[u8; 6]>,
    pub host_mac: Option<[u8; 6]>,
    /// Routes of the result that go through our interface's gateway.
    pub routes: Vec<Route>,
}

impl Expected {
    pub fn from_prev_result(
        prev: &CniResult,
        ifname: &str,
        host_ifname: &str,
    ) -> Result<Self, Error> {
        let pod_index = prev
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
            .ok_or_else(|| Error::check(format!("prevResult lists no pod interface {ifname}")))?;
        let ip = prev
            .ips
            .iter()
            .find(|ip| ip.interface == Some(pod_index))
            .ok_or_else(|| Error::check(format!("prevResult has no address on {ifname}")))?;
        let mac_of = |name: &str| {
            prev.interfaces
                .iter()
                .find(|i| i.name == name)
                .and_then(|i| i.mac.as_deref())
                .and_then(parse_mac)
        };
        let gateway = ip.gateway;
        Ok(Expected {
            ifname: ifname.to_string(),
            host_ifname: host_ifname.to_string(),
            address: ip.address,
            pod_mac: mac_of(ifname),
            host_mac: mac_of(host_ifname),
            // Later plugins may add routes of their own; only the ones via
            // our gateway (or without a gateway) are ours to check.
            routes: prev
                .routes
                .iter()
                .filter(|r| r.gw.is_none() || r.gw == gateway)
                .filter(|r| r.dst.addr().is_ipv4() == ip.address.addr().is_ipv4())
                .map(|r| Route {
                    dst: r.dst,
                    gw: r.gw.or(gateway),
                })
                .collect(),
        })
    }
}

/// Compares the three views; the first difference is the error.
pub fn compare(
    expected: &Expected,
    state: &EndpointState,
    observed: &Observed,
) -> Result<(), Error> {
    let ip = expected.address.addr();
    if state.allocation.ip != ip {
        return Err(Error::check(format!(
            "agent holds {} for this attachment, prevResult says {ip}",
            state.allocation.ip
        )));
    }
    let endpoint: &EndpointSpec = state.endpoint.as_ref().ok_or_else(|| {
        Error::check("agent has the address allocated but no endpoint registered")
    })?;
    if endpoint.host_ifname != expected.host_ifname {
        return Err(Error::check(format!(
            "agent has host interface {}, expected {}",
            endpoint.host_ifname, expected.host_ifname
        )));
    }

    let host = observed.host.as_ref().ok_or_else(|| {
        Error::check(format!(
            "host interface {} is missing",
            expected.host_ifname
        ))
    })?;
    if !host.up {
        return Err(Error::check(format!("{} is down", expected.host_ifname)));
    }
    if host.ifindex != endpoint.host_ifindex {
        return Err(Error::check(format!(
            "{} has ifindex {}, the agent registered {}",
            expected.host_ifname, host.ifindex, endpoint.host_ifindex
        )));
    }
    check_mac(
        &expected.host_ifname,
        host.mac,
        endpoint.host_mac,
        expected.host_mac,
    )?;

    let pod = observed.pod.as_ref().ok_or_else(|| {
        Error::check(format!(
            "{} is missing in the pod's namespace",
            expected.ifname
        ))
    })?;
    if !pod.link.up {
        return Err(Error::check(format!("{} is down", expected.ifname)));
    }
    check_mac(
        &expected.ifname,
        pod.link.mac,
        endpoint.pod_mac,
        expected.pod_mac,
    )?;
    if !pod.addresses.contains(&expected.address) {
        return Err(Error::check(format!(
            "{} lacks address {} (has {})",
            expected.ifname,
            expected.address,
            list(&pod.addresses)
        )));
    }
    for route in &expected.routes {
        let present = pod.routes.iter().any(|r| {
            r.dst == route.dst
                && r.oif == Some(pod.link.ifindex)
                && (route.gw.is_none() || r.gateway == route.gw)
        });
        if !present {
            return Err(Error::check(format!(
                "route {}{} dev {} is missing",
                route.dst,
                route.gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                expected.ifname
            )));
        }
    }
    Ok(())
}

fn check_mac(
    ifname: &str,
    actual: Option<[u8; 6]>,
    registered: [u8; 6],
    reported: Option<[u8; 6]>,
) -> Result<(), Error> {
    let actual = actual.ok_or_else(|| Error::check(format!("{ifname} has no MAC address")))?;
    if actual != registered {
        return Err(Error::check(format!(
            "{ifname} has MAC {}, the agent registered {}",
            format_mac(&actual),
            format_mac(&registered)
        )));
    }
    if let Some(reported) = reported.filter(|r| *r != actual) {
        return Err(Error::check(format!(
            "{ifname} has MAC {}, prevResult says {}",
            format_mac(&actual),
            format_mac(&reported)
        )));
    }
    Ok(())
}

fn list(addresses: &[IpNet]) -> String {
    if addresses.is_empty() {
        return "none".to_string();
    }
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        commands::fakes::*,
        dataplane::{LinkState, PodState, RouteState},
        error::code,
    };
    use sluice_common::api::Allocation;

    const NETNS: &str = "/proc/self/ns/net";

    fn host_ifname() -> String {
        veth::host_ifname("c0ffee", "eth0")
    }

    fn prev_result() -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": host_ifname(), "mac": "02:00:00:00:00:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": NETNS}
            ],
            "ips": [{"version": "4", "address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "192.0.2.0/24", "gw": "10.244.1.99"}],
            "dns": {}
        })
    }

    fn state() -> EndpointState {
        EndpointState {
            allocation: Allocation {
                ip: "10.244.1.5".parse().expect("ip"),
                cidr_prefix_len: 24,
                gateway: "10.244.1.1".parse().expect("ip"),
                mtu: 1500,
                local_mtu: None,
            },
            endpoint: Some(EndpointSpec {
                attachment: attachment("c0ffee", "eth0"),
                netns: NETNS.into(),
                host_ifname: host_ifname(),
                host_ifindex: 42,
                host_mac: HOST_MAC,
                pod_mac: POD_MAC,
                ip: "10.244.1.5".parse().expect("ip"),
                pod: None,
            }),
        }
    }

    fn observed() -> Observed {
        Observed {
            host: Some(LinkState {
                ifindex: 42,
                mac: Some(HOST_MAC),
                up: true,
            }),
            pod: Some(PodState {
                link: LinkState {
                    ifindex: 2,
                    mac: Some(POD_MAC),
                    up: true,
                },
                addresses: vec!["10.244.1.5/32".parse().expect("cidr")],
                routes: vec![
                    RouteState {
                        dst: "10.244.1.1/32".parse().expect("cidr"),
                        gateway: None,
                        oif: Some(2),
                    },
                    RouteState {
                        dst: "0.0.0.0/0".parse().expect("cidr"),
                        gateway: Some("10.244.1.1".parse().expect("ip")),
                        oif: Some(2),
                    },
                ],
            }),
        }
    }

    fn expected() -> Expected {
        let prev = CniResult::from_prev_result(&prev_result()).expect("decodes");
        Expected::from_prev_result(&prev, "eth0", &host_ifname()).expect("expected")
    }

    fn target() -> Target {
        Target {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            netns: NETNS.into(),
        }
    }

    fn conf(prev: Option<serde_json::Value>) -> NetConf {
        let mut json =
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "sluice-cni"});
        if let Some(prev) = prev {
            json["prevResult"] = prev;
        }
        NetConf::parse(json.to_string().as_bytes()).expect("config")
    }

    #[test]
    fn expected_ignores_routes_of_other_gateways() {
        let e = expected();
        assert_eq!(e.address, "10.244.1.5/32".parse::<IpNet>().expect("cidr"));
        assert_eq!(e.routes.len(), 1, "{:?}", e.routes);
        assert_eq!(e.pod_mac, Some(POD_MAC));
        assert_eq!(e.host_mac, Some(HOST_MAC));
    }

    #[test]
    fn healthy_attachment_passes() {
        compare(&expected(), &state(), &observed()).expect("healthy");
    }

    #[test]
    fn each_difference_fails_with_code_120() {
        type Breakage = fn(&mut EndpointState, &mut Observed);
        let cases: [(&str, Breakage); 9] = [
            ("agent ip", |s, _| {
                s.allocation.ip = "10.244.1.6".parse().expect("ip")
            }),
            ("not registered", |s, _| s.endpoint = None),
            ("host veth gone", |_, o| o.host = None),
            ("host down", |_, o| {
                o.host.as_mut().expect("host").up = false
            }),
            ("rewired", |_, o| {
                o.host.as_mut().expect("host").ifindex = 43
            }),
            ("pod iface gone", |_, o| o.pod = None),
            ("pod mac", |_, o| {
                o.pod.as_mut().expect("pod").link.mac = Some([2, 0, 0, 0, 0, 9])
            }),
            ("address gone", |_, o| {
                o.pod.as_mut().expect("pod").addresses.clear()
            }),
            ("default route gone", |_, o| {
                o.pod.as_mut().expect("pod").routes.truncate(1)
            }),
        ];
        for (name, breakage) in cases {
            let (mut s, mut o) = (state(), observed());
            breakage(&mut s, &mut o);
            let err = compare(&expected(), &s, &o).expect_err(name);
            assert_eq!(err.code(), code::CHECK_FAILED, "{name}: {err}");
        }
    }

    #[test]
    fn check_without_prev_result_is_code_7() {
        let err = check(
            &target(),
            &conf(None),
            &FakeAgent::default(),
            &mut FakeDataplane::default(),
        )
        .expect_err("no prevResult");
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn check_end_to_end_over_fakes() {
        let agent = FakeAgent {
            get: Some(endpoint_state(state())),
            ..Default::default()
        };
        let mut dp = FakeDataplane {
            observed: observed(),
            ..Default::default()
        };
        check(&target(), &conf(Some(prev_result())), &agent, &mut dp).expect("healthy");
        assert_eq!(agent.ops(), ["get"]);
    }

    #[test]
    fn check_unknown_to_agent_fails() {
        let mut dp = FakeDataplane {
            observed: observed(),
            ..Default::default()
        };
        let err = check(
            &target(),
            &conf(Some(prev_result())),
            &FakeAgent::default(),
            &mut dp,
        )
        .expect_err("unknown");
        assert_eq!(err.code(), code::AGENT_NOT_FOUND);
    }
}
