//! Per-packet cost of policy enforcement with 0 and with N rules, measured
//! by the kernel itself (BPF_PROG_TEST_RUN, many repeats, average ns per
//! run) on the real `from_container` program: lookups are hash/LPM only,
//! so the cost must not grow with the rule count.
//!
//! Two packets from local pod A to pod B elsewhere (so the program leaves
//! the packet unmodified and the kernel can rerun it as is), A isolated for
//! egress:
//! - a TCP SYN that B's policy denies: never enters conntrack, so every
//!   run does the full evaluation (all identity × protocol lookups miss);
//!   A's policy denies it;
//! - a TCP packet of an allowed, established flow: a conntrack hit.
//!
//! The N rules allow A to reach other identities on many ports; none
//! matches B, as in a cluster with many policies.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use super::frame;

use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, MapData},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    Ebpf, EbpfLoader,
};
use sluice_common::{
    endpoint::{flags, EndpointInfo, IpKey},
    ipcache::{Ipv4Prefix, RemoteInfo},
    maps,
    policy::{direction, entry, peer_mark, Isolation, PolicyEntry, PolicyKey},
    programs,
};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
const ID_A: u32 = 300;
const ID_B: u32 = 301;
const ENDPOINT_A: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("{0}")]
    Setup(String),
}

/// Average cost per packet of each case.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub rules: usize,
    pub denied_new_flow: Duration,
    pub established: Duration,
}

struct Loaded {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = sluice_agent::kernel::bpf::remove_pins(&self.pin_dir);
    }
}

impl Loaded {
    fn prog(&mut self) -> Result<&mut SchedClassifier, CostError> {
        let prog = self
            .ebpf
            .program_mut(programs::FROM_CONTAINER)
            .ok_or_else(|| CostError::Setup("from_container missing".into()))?;
        Ok(prog.try_into()?)
    }

    /// Average ns per run over `repeat` runs of `pkt`.
    fn time(&mut self, pkt: &[u8], repeat: u32) -> Result<(u32, Duration), CostError> {
        let mut out = vec![0u8; pkt.len() + 256];
        let res = self.prog()?.test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok((res.return_value, res.duration))
    }
}

fn load(tag: &str) -> Result<Loaded, CostError> {
    sluice_agent::kernel::bpffs::ensure_mounted(std::path::Path::new(
        sluice_agent::config::DEFAULT_BPFFS,
    ))
    .map_err(|e| CostError::Setup(e.to_string()))?;
    let pin_dir = PathBuf::from(sluice_agent::config::DEFAULT_BPFFS)
        .join("sluice")
        .join(format!("bench-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&pin_dir).map_err(|e| CostError::Setup(e.to_string()))?;
    let mut loaded = Loaded {
        ebpf: EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load(sluice_agent::EBPF_OBJECT)?,
        pin_dir,
    };
    loaded.prog()?.load()?;
    Ok(loaded)
}

fn endpoint(id: u32, ifindex: u32, identity: u32) -> EndpointInfo {
    EndpointInfo {
        id,
        ifindex,
        identity,
        flags: flags::LOCAL_POD,
        pod_mac: [2, 0, 0, 0, 0, id as u8],
        host_mac: [2, 0, 0, 0, 1, id as u8],
        _pad: [0; 4],
    }
}

/// Fills the maps: A local (test runs see ifindex 1, A's veth) and
/// isolated for egress, B known by identity only, A allowed to B on port
/// 8080 only, plus `rules` rules for other identities.
fn populate(loaded: &mut Loaded, rules: usize) -> Result<(), CostError> {
    let mut eps: HashMap<&mut MapData, IpKey, EndpointInfo> =
        HashMap::try_from(loaded.ebpf.map_mut(maps::ENDPOINTS).expect("endpoints"))?;
    eps.insert(IpKey::v4(POD_A.octets()), endpoint(ENDPOINT_A, 1, ID_A), 0)?;
    let mut ipcache: LpmTrie<&mut MapData, Ipv4Prefix, RemoteInfo> =
        LpmTrie::try_from(loaded.ebpf.map_mut(maps::IPCACHE).expect("ipcache"))?;
    for (ip, id) in [(POD_A, ID_A), (POD_B, ID_B)] {
        let info = RemoteInfo {
            identity: id,
            tunnel_endpoint: [0; 4],
            flags: 0,
            _pad: 0,
        };
        ipcache.insert(&Key::new(32, Ipv4Prefix { addr: ip.octets() }), info, 0)?;
    }
    let mut iso: HashMap<&mut MapData, u32, Isolation> =
        HashMap::try_from(loaded.ebpf.map_mut(maps::ISOLATION).expect("isolation"))?;
    iso.insert(
        ENDPOINT_A,
        Isolation {
            ingress: 0,
            egress: 1,
            ranges: 0,
            _pad: 0,
        },
        0,
    )?;
    // Rules on single ports, as most are: the exact-port hash.
    let mut policy: HashMap<&mut MapData, PolicyKey, PolicyEntry> =
        HashMap::try_from(loaded.ebpf.map_mut(maps::POLICY_EXACT).expect("policy"))?;
    let allow = PolicyEntry {
        flags: entry::ALLOW,
        _pad: 0,
    };
    let key = |identity: u32, port: u16| PolicyKey {
        endpoint: ENDPOINT_A,
        identity,
        direction: direction::EGRESS,
        protocol: 6,
        dport: port.to_be_bytes(),
    };
    // B is marked as named by a rule (the 8080 one), so the denied SYN to
    // port 80 takes the longest path: mark hit, then every rule shape.
    policy.insert(key(ID_B, 8080), allow, 0)?;
    policy.insert(peer_mark(ENDPOINT_A, ID_B, direction::EGRESS), allow, 0)?;
    for i in 0..rules {
        // 100 ports for each of rules/100 other identities.
        let identity = 1000 + (i / 100) as u32;
        policy.insert(key(identity, 1 + (i % 100) as u16), allow, 0)?;
        policy.insert(peer_mark(ENDPOINT_A, identity, direction::EGRESS), allow, 0)?;
    }
    Ok(())
}

/// A TCP segment from A to B (no options, checksum left zero: the program
/// does not verify it).
fn tcp(dport: u16, flags: u8) -> Vec<u8> {
    let mut l4 = 40000u16.to_be_bytes().to_vec();
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    frame::ipv4(POD_A, POD_B, 6, 64, 0, &l4)
}

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// Measures both cases with `rules` extra rules, `repeat` runs each.
pub fn measure(rules: usize, repeat: u32) -> Result<Cost, CostError> {
    let mut loaded = load(&rules.to_string())?;
    populate(&mut loaded, rules)?;
    let (verdict, denied) = loaded.time(&tcp(80, 0x02), repeat)?;
    if verdict != TC_ACT_SHOT {
        return Err(CostError::Setup(format!(
            "the denied SYN got verdict {verdict}, not drop"
        )));
    }
    // The first run opens the flow; the timed runs hit conntrack.
    loaded.time(&tcp(8080, 0x02), 1)?;
    let (verdict, established) = loaded.time(&tcp(8080, 0x10), repeat)?;
    if verdict != TC_ACT_OK {
        return Err(CostError::Setup(format!(
            "the established packet got verdict {verdict}, not pass"
        )));
    }
    Ok(Cost {
        rules,
        denied_new_flow: denied,
        established,
    })
}

/// The table `cargo xtask bench` prints.
pub fn report(costs: &[Cost]) -> String {
    let mut out = format!(
        "{:<12} {:>26} {:>26}\n",
        "rules", "new flow, denied (ns/pkt)", "established (ns/pkt)"
    );
    for c in costs {
        out.push_str(&format!(
            "{:<12} {:>26} {:>26}\n",
            c.rules,
            c.denied_new_flow.as_nanos(),
            c.established.as_nanos()
        ));
    }
    out
}
