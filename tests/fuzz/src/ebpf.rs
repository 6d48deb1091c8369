//! The eBPF programs' packet parsing on arbitrary bytes: the real object,
//! loaded into the real kernel, run with BPF_PROG_TEST_RUN on the fuzz
//! input as the frame. The judge is the kernel and the programs' contract:
//! the test run must succeed and the program must return one of the TC
//! verdicts it is written to return (OK, SHOT, REDIRECT); anything else is
//! a finding.
//!
//! Everything lives in a network and a mount namespace of the fuzzing
//! process's own (`Harness::new` unshares both): the devices the packets
//! are on, and a private bpffs where the object's maps are pinned. Both go
//! with the process however it ends, a crash or libFuzzer's exit included,
//! so a run leaves no netns, link or pin behind.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use sluice_agent::datastore::{parse_documents, ClusterState, Event};
use sluice_agent::policy::{ports::PortPrefix, PlacedPolicy};
use sluice_agent::services::{self, ServiceIds};
use sluice_common::{
    config::{routing, DataplaneConfig},
    direction::Direction,
    endpoint::EndpointInfo,
    identity,
    ipcache::{flags, RemoteInfo},
    programs,
};
use sluice_lab::bench::test_run::{SkbContext, TestDataplane};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// An Ethernet header: the least BPF_PROG_TEST_RUN takes for an skb.
pub const MIN_FRAME: usize = 14;
/// A full-size frame on a 1500-byte MTU; the kernel takes little more
/// than a page per test run.
pub const MAX_FRAME: usize = 1514;

pub const POD_A: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 2);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 3);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 1);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const A_ENDPOINT: u32 = 1;
const B_ENDPOINT: u32 = 42;
const ID_A: u32 = 300;
const ID_B: u32 = 301;

/// The entry points and the device each runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    FromContainer,
    ToContainer,
    FromOverlay,
    ToOverlay,
    FromNetdev,
    ToNetdev,
}

impl Hook {
    pub const ALL: [Hook; 6] = [
        Hook::FromContainer,
        Hook::ToContainer,
        Hook::FromOverlay,
        Hook::ToOverlay,
        Hook::FromNetdev,
        Hook::ToNetdev,
    ];

    pub fn program(self) -> &'static str {
        match self {
            Hook::FromContainer => programs::FROM_CONTAINER,
            Hook::ToContainer => programs::TO_CONTAINER,
            Hook::FromOverlay => programs::FROM_OVERLAY,
            Hook::ToOverlay => programs::TO_OVERLAY,
            Hook::FromNetdev => programs::FROM_NETDEV,
            Hook::ToNetdev => programs::TO_NETDEV,
        }
    }
}

/// One fuzz input: its first byte picks the hook (low bits) and the
/// routing mode (bit 3: native, else tunnel); the rest is the frame.
pub struct Input<'a> {
    pub hook: Hook,
    pub routing: u32,
    pub frame: &'a [u8],
}

impl<'a> Input<'a> {
    /// `None` for inputs the kernel refuses before any program runs (a
    /// frame shorter than an Ethernet header or longer than a page).
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&selector, frame) = data.split_first()?;
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            return None;
        }
        // The kernel (6.18 here) refuses, with EINVAL, a test run whose
        // frame says IPv4 or IPv6 but is shorter than that header (found
        // by this target; the refusal is before any program runs).
        let l3 = frame.len() - MIN_FRAME;
        match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0800 if l3 < 20 => return None,
            0x86dd if l3 < 40 => return None,
            _ => {}
        }
        let hook = Hook::ALL[usize::from(selector & 0x07) % Hook::ALL.len()];
        let routing = if selector & 0x08 != 0 {
            routing::NATIVE
        } else {
            routing::TUNNEL
        };
        Some(Self {
            hook,
            routing,
            frame,
        })
    }
}

/// The object loaded over minimal state: two local pods (A isolated for
/// egress but for TCP/80 to anyone; B isolated for ingress but from A),
/// another node's pod range behind a tunnel endpoint, and one ClusterIP
/// Service with B behind it, so the parser's every consumer is reached.
pub struct Harness {
    bpf: TestDataplane,
    ifindex: BTreeMap<&'static str, u32>,
    routing: u32,
}

/// What one run gave.
#[derive(Clone, Copy, Debug)]
pub struct Ran {
    pub verdict: u32,
    /// The frame left the program changed (length or bytes).
    pub rewritten: bool,
}

#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> SetupError + '_ {
    move |e| SetupError(format!("{what}: {e}"))
}

impl Harness {
    /// Moves the calling process (which must be single-threaded, as a
    /// fuzzer is when it initialises) into namespaces of its own and loads
    /// the object there. Needs root.
    pub fn new() -> Result<Self, SetupError> {
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)
            .map_err(setup("unsharing the mount and network namespaces (root?)"))?;
        // Nothing mounted from here on propagates back to the host.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(setup("making / private"))?;
        // A bpffs instance of this namespace's own, over the host's.
        mount(
            Some("bpf"),
            "/sys/fs/bpf",
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(setup("mounting a private bpffs"))?;
        // `ip` runs in the namespace the process is in now.
        for args in [
            "link set lo up",
            "link add lxca type veth peer name lxca-p",
            "link add lxcb type veth peer name lxcb-p",
            "link add tun0 type veth peer name tun0-p",
            "link add ul0 type veth peer name ul0-p",
            "link set lxca up",
            "link set lxca-p up",
            "link set lxcb up",
            "link set lxcb-p up",
            "link set ul0 up",
            "link set ul0-p up",
            "addr add 172.31.0.1/24 dev ul0",
            "route add 10.60.0.0/24 via 172.31.0.2 dev ul0",
        ] {
            let status = Command::new("ip")
                .args(args.split(' '))
                .status()
                .map_err(setup("running ip"))?;
            if !status.success() {
                return Err(SetupError(format!("ip {args}: {status}")));
            }
        }
        let mut ifindex = BTreeMap::new();
        for name in ["lxca", "lxcb", "tun0", "ul0"] {
            let index = nix::net::if_::if_nametoindex(name).map_err(setup(name))?;
            ifindex.insert(name, index);
        }
        let bpf = TestDataplane::load("fuzz").map_err(setup("loading the eBPF object"))?;
        let mut harness = Self {
            bpf,
            ifindex,
            routing: routing::NONE,
        };
        harness.fill().map_err(setup("filling the maps"))?;
        Ok(harness)
    }

    fn fill(&mut self) -> Result<(), sluice_lab::bench::test_run::TestRunError> {
        for (ip, id, dev, mac) in [
            (POD_A, A_ENDPOINT, "lxca", 0xaa),
            (POD_B, B_ENDPOINT, "lxcb", 0xbb),
        ] {
            let info = EndpointInfo {
                id,
                ifindex: self.ifindex[dev],
                pod_mac: [0x02, mac, 0, 0, 0, 1],
                host_mac: [0x02, mac, 0, 0, 0, 2],
            };
            self.bpf.add_endpoint(ip, info)?;
        }
        let entry = |identity, tunnel_endpoint: Ipv4Addr, flags| RemoteInfo {
            identity,
            tunnel_endpoint: tunnel_endpoint.octets(),
            flags,
            _pad: 0,
        };
        let none = Ipv4Addr::UNSPECIFIED;
        let ipcache: BTreeMap<Ipv4Net, RemoteInfo> = [
            (Ipv4Net::from(POD_A), entry(ID_A, none, 0)),
            (Ipv4Net::from(POD_B), entry(ID_B, none, 0)),
            (Ipv4Net::from(GATEWAY), entry(identity::HOST, none, 0)),
            (
                Ipv4Net::new(Ipv4Addr::new(10, 60, 0, 0), 24).expect("prefix"),
                entry(identity::UNKNOWN, REMOTE_NODE, flags::REMOTE_POD_CIDR),
            ),
            (
                Ipv4Net::from(REMOTE_NODE),
                entry(identity::REMOTE_NODE, REMOTE_NODE, flags::NODE),
            ),
        ]
        .into_iter()
        .collect();
        self.bpf.set_ipcache(&ipcache)?;

        let mut policy = PlacedPolicy::default();
        policy.isolate(A_ENDPOINT, Direction::Egress);
        let http = PortPrefix { port: 80, bits: 16 };
        policy.allow(
            A_ENDPOINT,
            Direction::Egress,
            sluice_common::policy::ANY_IDENTITY,
            6,
            Some(http),
        );
        policy.isolate(B_ENDPOINT, Direction::Ingress);
        policy.allow(B_ENDPOINT, Direction::Ingress, ID_A, 6, None);
        self.bpf.apply_policy(&policy)?;
        self.bpf.bump_revision()?;

        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec:\n  clusterIP: {VIP}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n- {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n- addresses: [{POD_B}]\n  conditions: {{ready: true}}\n"
        );
        let mut state = ClusterState::default();
        for resource in parse_documents(&yaml).into_iter().flatten() {
            state.apply(Event::Apply(resource));
        }
        let desired = services::compile(&state, "node-0", None, &mut ServiceIds::new());
        self.bpf.apply_services(&desired)
    }

    /// Runs one input. Panics (a finding) if the kernel refuses the run or
    /// the program returns a verdict it has no business returning.
    pub fn run(&mut self, input: &Input) -> Ran {
        if input.routing != self.routing {
            let config = DataplaneConfig {
                routing: input.routing,
                tunnel_ifindex: self.ifindex["tun0"],
                netns_cookie: 0,
            };
            self.bpf
                .set_config(config)
                .expect("setting the routing mode");
            self.routing = input.routing;
        }
        let (a, b) = (self.ifindex["lxca"], self.ifindex["lxcb"]);
        let (tun, ul) = (self.ifindex["tun0"], self.ifindex["ul0"]);
        let skb = match input.hook {
            Hook::FromContainer => SkbContext {
                ifindex: a,
                ingress_ifindex: a,
            },
            Hook::ToContainer => SkbContext {
                ifindex: b,
                ingress_ifindex: ul,
            },
            Hook::FromOverlay => SkbContext {
                ifindex: tun,
                ingress_ifindex: tun,
            },
            Hook::ToOverlay => SkbContext {
                ifindex: tun,
                ingress_ifindex: a,
            },
            Hook::FromNetdev => SkbContext {
                ifindex: ul,
                ingress_ifindex: ul,
            },
            Hook::ToNetdev => SkbContext {
                ifindex: ul,
                ingress_ifindex: a,
            },
        };
        let program = input.hook.program();
        let (verdict, out) = self
            .bpf
            .run(program, input.frame, skb)
            .unwrap_or_else(|e| panic!("{program}: the kernel refused the test run: {e}"));
        assert!(
            matches!(verdict, TC_ACT_OK | TC_ACT_SHOT | TC_ACT_REDIRECT),
            "{program} returned {verdict}, not a TC verdict it returns (OK, SHOT, REDIRECT)"
        );
        Ran {
            verdict,
            rewritten: out != input.frame,
        }
    }
}
