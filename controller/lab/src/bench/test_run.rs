//! The real programs on crafted packets: the kernel runs them
//! (BPF_PROG_TEST_RUN) over maps filled by the agent's own writers, from
//! the same layouts the agent writes (a [`PlacedPolicy`], ipcache entries),
//! so a test or a benchmark never writes map entries by hand. Shared by
//! the eBPF unit tests and the per-packet cost benchmark.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::programs::{TestRun as _, TestRunOptions};
use ipnet::Ipv4Net;
use sluice_agent::{
    config::DEFAULT_BPFFS,
    flows::{decode, DecodeError, RawFlow},
    kernel::{
        bpf::{self, Dataplane, DataplaneError, DenyList, FlowMaps, MapSizes, SyncMaps},
        bpffs,
    },
    policy::PlacedPolicy,
    services::DesiredServices,
};
use sluice_common::{
    config::DataplaneConfig,
    endpoint::{EndpointInfo, IpKey},
    flow::EventConfig,
    ipcache::RemoteInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("test run of {program}: {source}")]
    Run {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{0}")]
    Setup(String),
}

/// What the packet's `__sk_buff` says where it is: the device it is on
/// (`ifindex`, which must exist in the calling thread's network namespace
/// when above 1) and the one it arrived on. Zero: the kernel's default,
/// loopback.
#[derive(Clone, Copy, Debug, Default)]
pub struct SkbContext {
    pub ifindex: u32,
    pub ingress_ifindex: u32,
}

/// Offset of `mark` in a `struct __sk_buff`.
const MARK_OFFSET: usize = 8;

impl SkbContext {
    /// The leading part of a `struct __sk_buff` (uapi/linux/bpf.h) up to
    /// `tc_index`, with this `mark`; the kernel zero-fills the rest.
    /// Offsets: `mark` 8, `priority` 32, `ingress_ifindex` 36, `ifindex` 40.
    fn bytes(&self, mark: u32) -> [u8; 48] {
        let mut ctx = [0u8; 48];
        ctx[MARK_OFFSET..MARK_OFFSET + 4].copy_from_slice(&mark.to_ne_bytes());
        ctx[36..40].copy_from_slice(&self.ingress_ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&self.ifindex.to_ne_bytes());
        ctx
    }
}

/// The object loaded over a private pin directory (removed on drop), with
/// the agent's map writers.
pub struct TestDataplane {
    dataplane: Dataplane,
    maps: SyncMaps,
    deny: DenyList,
    flows: FlowMaps,
    pin_dir: PathBuf,
}

impl TestDataplane {
    /// Loads the object with default map sizes; `tag` names the pin
    /// directory (made unique per process and call).
    pub fn load(tag: &str) -> Result<Self, TestRunError> {
        Self::load_sized(tag, MapSizes::default())
    }

    /// Loads the object with the maps sized as `sizes` says.
    pub fn load_sized(tag: &str, sizes: MapSizes) -> Result<Self, TestRunError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let bpffs = Path::new(DEFAULT_BPFFS);
        bpffs::ensure_mounted(bpffs).map_err(|e| TestRunError::Setup(e.to_string()))?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pin_dir = bpffs
            .join("sluice")
            .join(format!("{tag}-{}-{n}", std::process::id()));
        // A load that fails (a program the verifier refuses) has pinned
        // maps already: they go with it.
        let mut dataplane = Dataplane::load(&pin_dir, sizes).inspect_err(|_| {
            let _ = bpf::remove_pins(&pin_dir);
        })?;
        let maps = dataplane
            .take_sync_maps()
            .ok_or_else(|| TestRunError::Setup("sync maps taken".into()))?;
        let deny = dataplane.take_deny_list()?;
        let flows = dataplane.take_flow_maps()?;
        Ok(Self {
            dataplane,
            maps,
            deny,
            flows,
            pin_dir,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn add_endpoint(&mut self, ip: Ipv4Addr, info: EndpointInfo) -> Result<(), TestRunError> {
        Ok(self.dataplane.set_endpoint(IpKey::v4(ip.octets()), info)?)
    }

    /// Makes the policy maps hold `policy`, as the agent's syncer does.
    pub fn apply_policy(&mut self, policy: &PlacedPolicy) -> Result<(), TestRunError> {
        self.maps.policy.apply(policy)?;
        Ok(())
    }

    /// Makes the ipcache hold `entries`.
    pub fn set_ipcache(
        &mut self,
        entries: &BTreeMap<Ipv4Net, RemoteInfo>,
    ) -> Result<(), TestRunError> {
        self.maps.ipcache.sync(entries)?;
        Ok(())
    }

    /// Makes the service maps hold `services`, as the agent's syncer does.
    pub fn apply_services(&mut self, services: &DesiredServices) -> Result<(), TestRunError> {
        self.maps.services.apply(services)?;
        Ok(())
    }

    /// Makes the prefilter deny exactly `cidrs`, as the agent does.
    pub fn set_deny_list(&mut self, cidrs: &[Ipv4Net]) -> Result<(), TestRunError> {
        self.deny.sync(cidrs)?;
        Ok(())
    }

    /// The loaded object, for attaching its programs (the benchmarks).
    pub fn dataplane(&mut self) -> &mut Dataplane {
        &mut self.dataplane
    }

    /// Runs the prefilter (XDP) once on `pkt`, as arriving on loopback:
    /// (XDP action, packet as it left).
    pub fn run_prefilter(&mut self, pkt: &[u8]) -> Result<(u32, Vec<u8>), TestRunError> {
        let program = sluice_common::programs::PREFILTER;
        let mut out = vec![0u8; pkt.len() + 256];
        let res = self
            .dataplane
            .prefilter_program()?
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .map_err(|source| TestRunError::Run { program, source })?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Switches flow events on (`rate` per second per CPU, and as many at
    /// once) or off, as the agent does.
    pub fn set_flow_events(&mut self, on: bool, rate: u32) -> Result<(), TestRunError> {
        let config = EventConfig {
            enabled: on.into(),
            rate,
            burst: rate,
            _pad: 0,
        };
        Ok(self.flows.switch.set(config)?)
    }

    /// Takes every flow event waiting in the ring buffer, decoded.
    pub fn take_flow_events(&mut self) -> Vec<Result<RawFlow, DecodeError>> {
        let mut out = Vec::new();
        while let Some(item) = self.flows.ring.next() {
            out.push(decode(&item));
        }
        out
    }

    pub fn set_config(&mut self, config: DataplaneConfig) -> Result<(), TestRunError> {
        Ok(self.maps.config.set(config)?)
    }

    /// What the agent does after every policy change.
    pub fn bump_revision(&mut self) -> Result<u32, TestRunError> {
        Ok(self.maps.revision.bump()?)
    }

    /// Runs `program` once on `pkt`: (return code, packet as it left).
    pub fn run(
        &mut self,
        program: &'static str,
        pkt: &[u8],
        skb: SkbContext,
    ) -> Result<(u32, Vec<u8>), TestRunError> {
        let (verdict, out, _, _) = self.test_run(program, pkt, Some((skb, 0)), 1)?;
        Ok((verdict, out))
    }

    /// [`Self::run`] on a packet carrying `mark` (`skb->mark`): (verdict,
    /// output packet, the mark as the program left it).
    pub fn run_marked(
        &mut self,
        program: &'static str,
        pkt: &[u8],
        skb: SkbContext,
        mark: u32,
    ) -> Result<(u32, Vec<u8>, u32), TestRunError> {
        let (verdict, out, _, mark) = self.test_run(program, pkt, Some((skb, mark)), 1)?;
        Ok((verdict, out, mark))
    }

    /// Runs `program` `repeat` times on `pkt` (the kernel reruns the
    /// packet as it came in, on loopback): (return code, average time per
    /// run).
    pub fn time(
        &mut self,
        program: &'static str,
        pkt: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), TestRunError> {
        let (verdict, _, duration, _) = self.test_run(program, pkt, None, repeat)?;
        Ok((verdict, duration))
    }

    fn test_run(
        &mut self,
        program: &'static str,
        pkt: &[u8],
        skb: Option<(SkbContext, u32)>,
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, Duration, u32), TestRunError> {
        let mut out = vec![0u8; pkt.len() + 256];
        let ctx = skb.map(|(s, mark)| s.bytes(mark));
        // The kernel writes back a whole `struct __sk_buff` (ENOSPC into
        // less): 192 bytes today, room for it to grow.
        let mut ctx_out = [0u8; 512];
        let res = self
            .dataplane
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ctx_in: ctx.as_ref().map(|c| c.as_slice()),
                ctx_out: ctx.is_some().then_some(&mut ctx_out[..]),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|source| TestRunError::Run { program, source })?;
        out.truncate(res.data_size_out as usize);
        let mark = u32::from_ne_bytes(
            ctx_out[MARK_OFFSET..MARK_OFFSET + 4]
                .try_into()
                .expect("four bytes"),
        );
        Ok((res.return_value, out, res.duration, mark))
    }
}

impl Drop for TestDataplane {
    fn drop(&mut self) {
        let _ = bpf::remove_pins(&self.pin_dir);
    }
}
