//! The CNI commands, over the [`Agent`] and [`Dataplane`] traits so their
//! logic (ordering, rollback, what is idempotent) is tested without a kernel
//! or an agent.

use std::{net::IpAddr, path::Path};

use ipnet::IpNet;
use sluice_common::api::{Allocation, Attachment, EndpointSpec, PodRef};
use sluice_sys::Netns;

use crate::{
    client::Agent,
    config::{requested_version, NetConf, SUPPORTED_VERSIONS},
    dataplane::{Dataplane, WireRequest, Wired},
    env::Target,
    error::Error,
    result::{format_mac, CniResult, Interface, IpConfig, Route},
    veth,
};

/// VERSION: the requested version echoed, and what this plugin speaks.
/// The pod's network namespace as `CNI_NETNS` names it; anything wrong with
/// it is the runtime's bad reference (code 4).
pub(crate) fn open_netns(path: &Path) -> Result<Netns, Error> {
    Netns::open(path).map_err(|e| Error::bad_netns(path, e))
}

pub fn version(stdin: &[u8]) -> Result<String, Error> {
    let requested = requested_version(stdin)?;
    Ok(serde_json::json!({
        "cniVersion": requested,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string())
}

/// ADD: allocate, wire, register; print the result. Anything that fails
/// after the allocation is undone before the error is returned.
/// `pod`: the Pod kubelet named, which the agent ties the endpoint to.
pub fn add(
    target: &Target,
    pod: Option<PodRef>,
    conf: &NetConf,
    agent: &impl Agent,
    dataplane: &mut impl Dataplane,
) -> Result<String, Error> {
    if conf.prev_result.is_some() {
        // sluice creates the pod's interface; there is nothing before it to
        // pass through, and silently dropping another plugin's result would
        // hide interfaces from the runtime.
        return Err(Error::config(
            "sluice-cni must be the first plugin in a chain (got a prevResult)",
        ));
    }
    let netns = open_netns(&target.netns)?;
    let attachment = attachment(&target.container_id, &target.ifname);
    let host_ifname = veth::host_ifname(&target.container_id, &target.ifname);

    let allocation = agent.allocate(&attachment)?;
    let mtu = Mtu::of(conf.mtu, &allocation);
    let wired = wire_and_register(target, pod, agent, dataplane, &netns, &allocation, mtu)
        .map_err(|err| rollback(err, &attachment, &host_ifname, agent, dataplane))?;

    Ok(add_result(target, &host_ifname, &allocation, mtu, &wired).to_json(conf.cni_version))
}

/// The pod's MTUs: its device's, and a lower one for routes off the node
/// when the agent says same-node traffic may be larger (tunnel mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mtu {
    pub device: u32,
    pub off_node: Option<u32>,
}

impl Mtu {
    /// An `mtu` in the network config is the one MTU for everything.
    pub fn of(configured: Option<u32>, allocation: &Allocation) -> Self {
        match (configured, allocation.local_mtu) {
            (Some(mtu), _) => Mtu {
                device: mtu,
                off_node: None,
            },
            (None, Some(local)) if local > allocation.mtu => Mtu {
                device: local,
                off_node: Some(allocation.mtu),
            },
            (None, _) => Mtu {
                device: allocation.mtu,
                off_node: None,
            },
        }
    }
}

/// The node's pod CIDR, which the pod reaches at its device's MTU.
fn node_pods(allocation: &Allocation) -> Option<IpNet> {
    IpNet::new(allocation.ip, allocation.cidr_prefix_len)
        .ok()
        .map(|net| net.trunc())
}

fn wire_and_register(
    target: &Target,
    pod: Option<PodRef>,
    agent: &impl Agent,
    dataplane: &mut impl Dataplane,
    netns: &Netns,
    allocation: &Allocation,
    mtu: Mtu,
) -> Result<Wired, Error> {
    validate_allocation(allocation, mtu.device)?;
    let host_ifname = veth::host_ifname(&target.container_id, &target.ifname);
    let wired = dataplane.wire(&WireRequest {
        netns,
        ifname: &target.ifname,
        host_ifname: &host_ifname,
        ip: allocation.ip,
        gateway: allocation.gateway,
        mtu: mtu.device,
        off_node: mtu.off_node.zip(node_pods(allocation)),
    })?;
    agent.register(&EndpointSpec {
        attachment: attachment(&target.container_id, &target.ifname),
        netns: target.netns.to_string_lossy().into_owned(),
        host_ifname,
        host_ifindex: wired.host_ifindex,
        host_mac: wired.host_mac,
        pod_mac: wired.pod_mac,
        ip: allocation.ip,
        pod,
    })?;
    Ok(wired)
}

/// An allocation the pod cannot be configured with is the agent's bug, not
/// the config's; refuse it before touching the kernel.
fn validate_allocation(a: &Allocation, mtu: u32) -> Result<(), Error> {
    let problem = if a.ip.is_ipv4() != a.gateway.is_ipv4() {
        Some(format!(
            "address {} and gateway {} differ in family",
            a.ip, a.gateway
        ))
    } else if a.ip == a.gateway {
        Some(format!("address {} is the gateway", a.ip))
    } else if a.cidr_prefix_len > veth::host_prefix_len(a.ip) {
        Some(format!(
            "prefix length /{} is impossible",
            a.cidr_prefix_len
        ))
    } else if mtu < 68 {
        // Only reachable with the agent's MTU: the config's is validated.
        Some(format!("MTU {mtu} is below 68"))
    } else {
        None
    };
    match problem {
        Some(detail) => Err(Error::AgentProtocol {
            op: "allocate an address",
            detail,
        }),
        None => Ok(()),
    }
}

/// Undoes a failed ADD in reverse order: the veth (and with it everything
/// inside the pod), then the address. Returns the original error, noting
/// any step that failed in its details.
fn rollback(
    err: Error,
    attachment: &Attachment,
    host_ifname: &str,
    agent: &impl Agent,
    dataplane: &mut impl Dataplane,
) -> Error {
    let mut failures = Vec::new();
    if let Err(e) = dataplane.unwire(host_ifname) {
        failures.push(format!("deleting {host_ifname}: {}", e.details()));
    }
    if let Err(e) = agent.release(attachment) {
        failures.push(format!("releasing the address: {}", e.details()));
    }
    if failures.is_empty() {
        err
    } else {
        tracing::warn!(?attachment, ?failures, "ADD rollback incomplete");
        Error::RollbackIncomplete {
            source: Box::new(err),
            failures,
        }
    }
}

fn add_result(
    target: &Target,
    host_ifname: &str,
    allocation: &Allocation,
    mtu: Mtu,
    wired: &Wired,
) -> CniResult {
    let prefix_len = veth::host_prefix_len(allocation.ip);
    let default_dst = match allocation.gateway {
        IpAddr::V4(_) => IpNet::V4(Default::default()),
        IpAddr::V6(_) => IpNet::V6(Default::default()),
    };
    CniResult {
        interfaces: vec![
            Interface {
                name: host_ifname.to_string(),
                mac: Some(format_mac(&wired.host_mac)),
                mtu: Some(mtu.device),
                sandbox: None,
            },
            Interface {
                name: target.ifname.clone(),
                mac: Some(format_mac(&wired.pod_mac)),
                mtu: Some(mtu.device),
                sandbox: Some(target.netns.to_string_lossy().into_owned()),
            },
        ],
        ips: vec![IpConfig {
            // validate_allocation made sure the prefix length fits.
            address: IpNet::new(allocation.ip, prefix_len)
                .unwrap_or_else(|_| IpNet::from(allocation.ip)),
            gateway: Some(allocation.gateway),
            interface: Some(1),
        }],
        routes: std::iter::once(default_dst)
            .chain(mtu.off_node.and(node_pods(allocation)))
            .map(|dst| Route {
                dst,
                gw: Some(allocation.gateway),
            })
            .collect(),
        dns: Default::default(),
    }
}

/// DEL: remove the veth if present, then release at the agent. Idempotent;
/// needs neither the pod's namespace nor a previous result. With the agent
/// down (restarting, upgrading), DEL still succeeds once what the plugin
/// made itself, the veth, is gone: a failed DEL would leave the sandbox
/// stuck until the agent returns, and the agent releases the address of an
/// endpoint whose veth is gone on its own (its reclaim, at start and
/// periodically).
pub fn del(
    container_id: &str,
    ifname: &str,
    agent: &impl Agent,
    dataplane: &mut impl Dataplane,
) -> Result<(), Error> {
    let host_ifname = veth::host_ifname(container_id, ifname);
    if dataplane.unwire(&host_ifname)? {
        tracing::info!(%host_ifname, "deleted veth");
    }
    match agent.release(&attachment(container_id, ifname)) {
        Err(Error::AgentUnreachable { source, .. })
            if source.kind() != std::io::ErrorKind::PermissionDenied =>
        {
            tracing::warn!(
                error = %source,
                "agent unreachable: the veth is gone, the agent releases the address when it is back"
            );
            Ok(())
        }
        other => other,
    }
}

/// STATUS: ready means the agent answers and can hand out an address.
pub fn status(agent: &impl Agent) -> Result<(), Error> {
    let status = agent.status().map_err(|e| Error::NotAvailable {
        reason: e.details(),
    })?;
    if status.free_addresses == 0 {
        // The spec asks for an error when a limited resource is exhausted
        // and no ADD could succeed.
        return Err(Error::NotAvailable {
            reason: format!("no free address left in pod CIDR {}", status.pod_cidr),
        });
    }
    Ok(())
}

/// GC: the agent releases (and unwires) every attachment not listed.
pub fn gc(conf: &NetConf, agent: &impl Agent) -> Result<(), Error> {
    // Without the list, "release everything not listed" would wipe every
    // pod of the node; refuse rather than guess.
    let valid = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| Error::config("GC without \"cni.dev/valid-attachments\""))?;
    let released = agent.gc(valid)?;
    if !released.is_empty() {
        tracing::info!(?released, "GC released stale attachments");
    }
    Ok(())
}

pub(crate) fn attachment(container_id: &str, ifname: &str) -> Attachment {
    Attachment {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod fakes {
    //! In-memory stand-ins for the agent and the kernel.

    use std::cell::RefCell;

    use sluice_common::api::{AgentStatus, EndpointState, ErrorKind, Request, Response};

    use super::*;
    use crate::dataplane::Observed;

    /// Answers from a script, one per request kind, and records requests.
    #[derive(Default)]
    pub struct FakeAgent {
        pub requests: RefCell<Vec<Request>>,
        pub allocation: Option<Allocation>,
        pub register: Option<Response>,
        pub release: Option<Response>,
        pub get: Option<Response>,
        pub status: Option<Response>,
        /// Every request fails as if the socket were missing.
        pub unreachable: bool,
    }

    impl FakeAgent {
        pub fn allocating(ip: &str, gateway: &str) -> Self {
            FakeAgent {
                allocation: Some(Allocation {
                    ip: ip.parse().expect("ip"),
                    cidr_prefix_len: 24,
                    gateway: gateway.parse().expect("gateway"),
                    mtu: 1500,
                    local_mtu: None,
                }),
                ..Default::default()
            }
        }

        pub fn ops(&self) -> Vec<&'static str> {
            self.requests
                .borrow()
                .iter()
                .map(|r| match r {
                    Request::Allocate { .. } => "allocate",
                    Request::Register { .. } => "register",
                    Request::Release { .. } => "release",
                    Request::Get { .. } => "get",
                    Request::Gc { .. } => "gc",
                    Request::Status => "status",
                    Request::Prefilter { .. } => "prefilter",
                    Request::Explain { .. } => "explain",
                    Request::Flows { .. } => "flows",
                })
                .collect()
        }
    }

    impl Agent for FakeAgent {
        fn exchange(&self, request: &Request) -> Result<Response, Error> {
            self.requests.borrow_mut().push(request.clone());
            if self.unreachable {
                return Err(Error::AgentUnreachable {
                    socket: "/fake.sock".into(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            let not_found = || Response::Error {
                kind: ErrorKind::NotFound,
                message: "unknown".into(),
            };
            Ok(match request {
                Request::Allocate { .. } => match &self.allocation {
                    Some(allocation) => Response::Allocated {
                        allocation: allocation.clone(),
                    },
                    None => Response::Error {
                        kind: ErrorKind::Exhausted,
                        message: "full".into(),
                    },
                },
                Request::Register { .. } => self.register.clone().unwrap_or(Response::Ok),
                Request::Release { .. } => self.release.clone().unwrap_or(Response::Ok),
                Request::Get { .. } => self.get.clone().unwrap_or_else(not_found),
                Request::Gc { .. } => Response::Collected { released: vec![] },
                Request::Status => self.status.clone().unwrap_or(Response::Status {
                    status: AgentStatus {
                        node_name: "n".into(),
                        pod_cidr: "10.244.1.0/24".into(),
                        endpoints: 0,
                        free_addresses: 250,
                        ..Default::default()
                    },
                }),
                // The plugin never asks these.
                Request::Prefilter { .. } | Request::Explain { .. } | Request::Flows { .. } => {
                    Response::Error {
                        kind: ErrorKind::Invalid,
                        message: "not the plugin's".into(),
                    }
                }
            })
        }
    }

    pub fn endpoint_state(state: EndpointState) -> Response {
        Response::Endpoint { state }
    }

    /// Records calls; fails `wire` on demand.
    #[derive(Default)]
    pub struct FakeDataplane {
        pub calls: Vec<String>,
        pub wire_error: Option<String>,
        pub unwire_error: Option<String>,
        /// Whether a host veth "exists" for `unwire`.
        pub present: bool,
        pub observed: Observed,
    }

    pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    impl Dataplane for FakeDataplane {
        fn wire(&mut self, request: &WireRequest<'_>) -> Result<Wired, Error> {
            self.calls.push(format!(
                "wire {} {} {} via {} mtu {}{}",
                request.host_ifname,
                request.ifname,
                request.ip,
                request.gateway,
                request.mtu,
                request
                    .off_node
                    .map(|(mtu, pods)| format!(" (off node {mtu}, not to {pods})"))
                    .unwrap_or_default()
            ));
            self.present = true;
            match &self.wire_error {
                Some(message) => Err(Error::Wiring {
                    message: message.clone(),
                }),
                None => Ok(Wired {
                    host_ifindex: 42,
                    host_mac: HOST_MAC,
                    pod_mac: POD_MAC,
                }),
            }
        }

        fn unwire(&mut self, host_ifname: &str) -> Result<bool, Error> {
            self.calls.push(format!("unwire {host_ifname}"));
            if let Some(message) = &self.unwire_error {
                return Err(Error::Wiring {
                    message: message.clone(),
                });
            }
            Ok(std::mem::take(&mut self.present))
        }

        fn observe(
            &mut self,
            host_ifname: &str,
            _netns: &Netns,
            ifname: &str,
        ) -> Result<Observed, Error> {
            self.calls.push(format!("observe {host_ifname} {ifname}"));
            Ok(self.observed.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fakes::*;
    use super::*;
    use crate::error::code;
    use sluice_common::api::{ErrorKind, Request, Response};

    /// A namespace any test can open: its own.
    const OWN_NETNS: &str = "/proc/self/ns/net";

    #[test]
    fn a_bad_netns_is_code_4_and_names_cni_netns() {
        for path in [
            "/nonexistent/netns",
            "/proc/self/status",
            "/proc/self/ns/uts",
        ] {
            let err = open_netns(Path::new(path)).expect_err(path);
            assert_eq!(err.code(), code::INVALID_ENVIRONMENT, "{path}");
            assert!(err.to_string().contains("CNI_NETNS"), "{err}");
        }
        open_netns(Path::new(OWN_NETNS)).expect("own netns");
    }

    fn target() -> Target {
        Target {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            netns: OWN_NETNS.into(),
        }
    }

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"sluice","type":"sluice-cni"{extra}}}"#)
                .as_bytes(),
        )
        .expect("valid config")
    }

    #[test]
    fn version_echoes_the_request() {
        let out: serde_json::Value =
            serde_json::from_str(&version(br#"{"cniVersion":"0.4.0"}"#).expect("ok"))
                .expect("JSON");
        assert_eq!(
            out,
            serde_json::json!({"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }

    #[test]
    fn add_allocates_wires_registers_and_reports() {
        let agent = FakeAgent::allocating("10.244.1.5", "10.244.1.1");
        let mut dp = FakeDataplane::default();
        let pod = PodRef {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: None,
        };
        let out = add(&target(), Some(pod.clone()), &conf(""), &agent, &mut dp).expect("ADD");
        assert_eq!(agent.ops(), ["allocate", "register"]);
        let host = veth::host_ifname("c0ffee", "eth0");
        assert_eq!(
            dp.calls,
            [format!(
                "wire {host} eth0 10.244.1.5 via 10.244.1.1 mtu 1500"
            )]
        );
        let Request::Register { endpoint } = &agent.requests.borrow()[1] else {
            panic!("second request is not Register");
        };
        assert_eq!(endpoint.host_ifname, host);
        assert_eq!(endpoint.host_ifindex, 42);
        assert_eq!(endpoint.host_mac, HOST_MAC);
        assert_eq!(endpoint.pod_mac, POD_MAC);
        assert_eq!(endpoint.netns, OWN_NETNS);
        assert_eq!(endpoint.pod, Some(pod), "the Pod kubelet named");

        let out: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(
            out,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": host, "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": OWN_NETNS}
                ],
                "ips": [{"address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn add_config_mtu_overrides_the_agent() {
        let agent = FakeAgent::allocating("10.244.1.5", "10.244.1.1");
        let mut dp = FakeDataplane::default();
        add(&target(), None, &conf(r#","mtu":1400"#), &agent, &mut dp).expect("ADD");
        assert!(dp.calls[0].ends_with("mtu 1400"), "{:?}", dp.calls);
    }

    #[test]
    fn same_node_pods_get_the_local_mtu_and_the_rest_the_tunnels() {
        let mut agent = FakeAgent::allocating("10.244.1.5", "10.244.1.1");
        if let Some(a) = agent.allocation.as_mut() {
            a.mtu = 1450;
            a.local_mtu = Some(1500);
        }
        let mut dp = FakeDataplane::default();
        let mut v1_1 = conf("");
        v1_1.cni_version = crate::config::CniVersion::V1_1_0;
        let out = add(&target(), None, &v1_1, &agent, &mut dp).expect("ADD");
        assert!(
            dp.calls[0].ends_with("mtu 1500 (off node 1450, not to 10.244.1.0/24)"),
            "{:?}",
            dp.calls
        );
        let result: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(result["interfaces"][1]["mtu"], 1500);
        assert_eq!(
            result["routes"],
            serde_json::json!([
                {"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
                {"dst": "10.244.1.0/24", "gw": "10.244.1.1"},
            ])
        );
    }

    #[test]
    fn one_mtu_when_configured_or_when_the_agent_gives_one() {
        let mut allocation = FakeAgent::allocating("10.244.1.5", "10.244.1.1")
            .allocation
            .expect("allocation");
        allocation.mtu = 1450;
        assert_eq!(
            Mtu::of(
                Some(1400),
                &Allocation {
                    local_mtu: Some(1500),
                    ..allocation.clone()
                }
            ),
            Mtu {
                device: 1400,
                off_node: None
            }
        );
        assert_eq!(
            Mtu::of(None, &allocation),
            Mtu {
                device: 1450,
                off_node: None
            }
        );
        assert_eq!(
            Mtu::of(
                None,
                &Allocation {
                    local_mtu: Some(1450),
                    ..allocation
                }
            ),
            Mtu {
                device: 1450,
                off_node: None
            }
        );
    }

    #[test]
    fn add_wiring_failure_rolls_back_in_reverse() {
        let agent = FakeAgent::allocating("10.244.1.5", "10.244.1.1");
        let mut dp = FakeDataplane {
            wire_error: Some("eth0 exists".into()),
            ..Default::default()
        };
        let err = add(&target(), None, &conf(""), &agent, &mut dp).expect_err("wire fails");
        assert_eq!(err.code(), code::NETLINK);
        assert_eq!(err.to_string(), "eth0 exists");
        assert_eq!(agent.ops(), ["allocate", "release"]);
        assert_eq!(dp.calls.len(), 2);
        assert!(dp.calls[1].starts_with("unwire lxc"), "{:?}", dp.calls);
    }

    #[test]
    fn add_register_failure_rolls_back_too() {
        let agent = FakeAgent {
            register: Some(Response::Error {
                kind: ErrorKind::Internal,
                message: "tc attach failed".into(),
            }),
            ..FakeAgent::allocating("10.244.1.5", "10.244.1.1")
        };
        let mut dp = FakeDataplane::default();
        let err = add(&target(), None, &conf(""), &agent, &mut dp).expect_err("register fails");
        assert_eq!(err.code(), code::TRY_AGAIN_LATER);
        assert_eq!(agent.ops(), ["allocate", "register", "release"]);
        assert!(dp.calls[1].starts_with("unwire"), "{:?}", dp.calls);
        assert!(!dp.present, "veth left behind");
    }

    #[test]
    fn incomplete_rollback_is_reported_with_the_original_code() {
        let agent = FakeAgent {
            register: Some(Response::Error {
                kind: ErrorKind::Invalid,
                message: "bad".into(),
            }),
            release: Some(Response::Error {
                kind: ErrorKind::Internal,
                message: "disk full".into(),
            }),
            ..FakeAgent::allocating("10.244.1.5", "10.244.1.1")
        };
        let mut dp = FakeDataplane::default();
        let err = add(&target(), None, &conf(""), &agent, &mut dp).expect_err("fails");
        assert_eq!(err.code(), code::AGENT_REJECTED);
        assert!(err.details().contains("disk full"), "{}", err.details());
    }

    #[test]
    fn add_bad_allocation_is_released_without_wiring() {
        let agent = FakeAgent::allocating("10.244.1.5", "fd00::1");
        let mut dp = FakeDataplane::default();
        let err = add(&target(), None, &conf(""), &agent, &mut dp).expect_err("mixed families");
        assert_eq!(err.code(), code::AGENT_PROTOCOL);
        assert_eq!(agent.ops(), ["allocate", "release"]);
        assert!(
            dp.calls.iter().all(|c| !c.starts_with("wire")),
            "{:?}",
            dp.calls
        );
    }

    #[test]
    fn add_without_agent_is_try_again_and_touches_nothing() {
        let agent = FakeAgent {
            unreachable: true,
            ..Default::default()
        };
        let mut dp = FakeDataplane::default();
        let err = add(&target(), None, &conf(""), &agent, &mut dp).expect_err("no agent");
        assert_eq!(err.code(), code::TRY_AGAIN_LATER);
        assert!(dp.calls.is_empty(), "{:?}", dp.calls);
    }

    #[test]
    fn add_exhausted_is_code_101() {
        let agent = FakeAgent::default();
        let mut dp = FakeDataplane::default();
        let err = add(&target(), None, &conf(""), &agent, &mut dp).expect_err("exhausted");
        assert_eq!(err.code(), code::ADDRESS_EXHAUSTED);
        assert!(dp.calls.is_empty());
    }

    #[test]
    fn add_checks_netns_before_allocating() {
        let agent = FakeAgent::allocating("10.244.1.5", "10.244.1.1");
        let mut dp = FakeDataplane::default();
        let mut t = target();
        t.netns = "/nonexistent/netns".into();
        let err = add(&t, None, &conf(""), &agent, &mut dp).expect_err("bad netns");
        assert_eq!(err.code(), code::INVALID_ENVIRONMENT);
        assert!(agent.ops().is_empty());
    }

    #[test]
    fn add_refuses_a_prev_result() {
        let agent = FakeAgent::allocating("10.244.1.5", "10.244.1.1");
        let mut dp = FakeDataplane::default();
        let err = add(
            &target(),
            None,
            &conf(r#","prevResult":{"ips":[]}"#),
            &agent,
            &mut dp,
        )
        .expect_err("chained");
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG);
        assert!(agent.ops().is_empty());
    }

    #[test]
    fn del_is_idempotent() {
        let agent = FakeAgent::default();
        let mut dp = FakeDataplane {
            present: true,
            ..Default::default()
        };
        del("c0ffee", "eth0", &agent, &mut dp).expect("first DEL");
        del("c0ffee", "eth0", &agent, &mut dp).expect("second DEL");
        assert_eq!(agent.ops(), ["release", "release"]);
        let host = veth::host_ifname("c0ffee", "eth0");
        assert_eq!(
            dp.calls,
            [format!("unwire {host}"), format!("unwire {host}")]
        );
    }

    #[test]
    fn del_without_agent_removes_the_veth_and_succeeds() {
        let agent = FakeAgent {
            unreachable: true,
            ..Default::default()
        };
        let mut dp = FakeDataplane::default();
        del("c0ffee", "eth0", &agent, &mut dp).expect("no agent: still done");
        let host = veth::host_ifname("c0ffee", "eth0");
        assert_eq!(dp.calls, [format!("unwire {host}")]);
    }

    #[test]
    fn status_maps_everything_to_50() {
        status(&FakeAgent::default()).expect("ready");
        let down = FakeAgent {
            unreachable: true,
            ..Default::default()
        };
        assert_eq!(
            status(&down).expect_err("down").code(),
            code::PLUGIN_NOT_AVAILABLE
        );
        let full = FakeAgent {
            status: Some(Response::Status {
                status: sluice_common::api::AgentStatus {
                    node_name: "n".into(),
                    pod_cidr: "10.244.1.0/30".into(),
                    endpoints: 1,
                    free_addresses: 0,
                    ..Default::default()
                },
            }),
            ..Default::default()
        };
        assert_eq!(
            status(&full).expect_err("full").code(),
            code::PLUGIN_NOT_AVAILABLE
        );
    }

    #[test]
    fn gc_sends_the_valid_list_and_requires_it() {
        let agent = FakeAgent::default();
        gc(
            &conf(r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]"#),
            &agent,
        )
        .expect("GC");
        assert_eq!(
            agent.requests.borrow()[0],
            Request::Gc {
                valid: vec![attachment("a", "eth0")]
            }
        );
        let err = gc(&conf(""), &agent).expect_err("no list");
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG);
    }
}
