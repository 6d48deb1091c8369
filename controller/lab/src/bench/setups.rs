//! Setups the same-node suites share: a one-node sluice lab, a plain veth
//! pair, and what removes a crashed run's leftovers before a new one.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use sluice_agent::config::{FlowRecord, PodAttachment};
use tracing::warn;

use super::throughput::{BenchError, BenchOptions};
use crate::{
    cluster::{Lab, LabConfig, UpOptions},
    netns::{self, Netns},
    pods::PodSpec,
    teardown,
    topology::PodName,
};

/// The pods' Kubernetes namespace in the bench's labs.
pub const NAMESPACE: &str = "bench";

/// Takes a bench's lab down when dropped: on every exit path, panics
/// included.
pub struct LabDown(pub LabConfig);

impl Drop for LabDown {
    fn drop(&mut self) {
        if let Err(e) = teardown::down(&self.0) {
            warn!(error = %e, lab = %self.0.name, "removing the bench's lab");
        }
    }
}

/// Lab `<options.name>-<tag>` in `<options.dir>/<that name>`, after taking
/// down whatever a killed run left under that name; the guard takes it
/// down again (also when bringing it up fails half-way).
pub fn fresh_lab(
    options: &BenchOptions,
    tag: &str,
    up: &UpOptions,
) -> Result<(Lab, LabDown), BenchError> {
    let name = format!("{}-{tag}", options.name);
    let config = LabConfig::new(options.dir.join(&name), &name, &options.bin_dir)?;
    let _ = teardown::down(&config);
    let down = LabDown(config.clone());
    let lab = Lab::up(config, &bench_up(up))?;
    Ok((lab, down))
}

/// A bench lab's shape: `up`, its agents recording flows on demand as a
/// cluster's do (nobody follows, so the datapath emits nothing), not
/// always as the lab's do by default.
pub fn bench_up(up: &UpOptions) -> UpOptions {
    UpOptions {
        flows_record: FlowRecord::OnDemand,
        ..up.clone()
    }
}

/// Applies `yaml` to `lab` as `lab apply -f` would, through a file
/// `<dir>/<lab name>-<file>` that goes again once applied.
pub fn apply_yaml(lab: &mut Lab, dir: &Path, file: &str, yaml: &str) -> Result<(), BenchError> {
    let io = |path: &Path| {
        let what = format!("writing {}", path.display());
        move |source| BenchError::Io { what, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(format!("{}-{file}", lab.config().name));
    std::fs::write(&path, yaml).map_err(io(&path))?;
    let applied = lab.apply(std::slice::from_ref(&path));
    let _ = std::fs::remove_file(&path);
    applied?;
    Ok(())
}

/// A one-node sluice lab; taken down on drop, on every exit path.
pub struct SluiceNode {
    lab: Lab,
    _down: LabDown,
}

impl SluiceNode {
    pub fn up(options: &BenchOptions, tag: &str) -> Result<Self, BenchError> {
        Self::up_with(options, tag, PodAttachment::default())
    }

    /// [`Self::up`] with the agent attaching the pod programs this way.
    pub fn up_with(
        options: &BenchOptions,
        tag: &str,
        pod_attachment: PodAttachment,
    ) -> Result<Self, BenchError> {
        let (lab, down) = fresh_lab(
            options,
            tag,
            &UpOptions {
                nodes: 1,
                pod_attachment,
                ..UpOptions::default()
            },
        )?;
        Ok(Self { lab, _down: down })
    }

    /// Adds pod `bench/<name>` with `labels`; its namespace and address.
    pub fn pod(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<(Netns, Ipv4Addr), BenchError> {
        let pod = PodName::new(NAMESPACE, name).map_err(|e| BenchError::Failed(e.to_string()))?;
        let spec = labels
            .iter()
            .fold(PodSpec::new(pod.clone(), "node1"), |spec, (k, v)| {
                spec.label(k, v)
            });
        let state = self.lab.pod_add(&spec)?;
        let IpAddr::V4(ip) = state.ip else {
            return Err(BenchError::Failed(format!("pod {pod} has no IPv4")));
        };
        Ok((self.lab.pod_netns(&pod)?, ip))
    }

    pub fn lab(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

/// Two namespaces `<prefix>-client` and `<prefix>-server` joined by one
/// veth pair (`eth0` on both sides) in 172.31.250.0/24, an address range
/// that exists only inside them; both go (and the veth with them) on drop.
pub struct VethPair {
    pub client: Netns,
    pub server: Netns,
}

pub const VETH_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 250, 1);
pub const VETH_SERVER_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 250, 2);

impl VethPair {
    pub fn create(prefix: &str) -> Result<Self, BenchError> {
        let create = |name: String| {
            Netns::create(&name).map_err(|source| BenchError::Io {
                what: format!("creating netns {name}"),
                source,
            })
        };
        let client = create(format!("{prefix}-client"))?;
        let server = create(format!("{prefix}-server"))?;
        let ip =
            |ns: &Netns, args: &str| ns.ip(args).map_err(|e| BenchError::Failed(e.to_string()));
        ip(
            &client,
            &format!(
                "link add eth0 type veth peer name eth0 netns {}",
                server.name()
            ),
        )?;
        for (ns, addr) in [(&client, VETH_CLIENT_IP), (&server, VETH_SERVER_IP)] {
            ip(ns, &format!("addr add {addr}/24 dev eth0"))?;
            ip(ns, "link set eth0 up")?;
        }
        Ok(Self { client, server })
    }
}

/// Deletes the namespaces a killed run of a suite left behind: those
/// named `<prefix>-...` (a lab's are taken down by [`SluiceNode::up`]).
pub fn remove_leftovers(prefix: &str) {
    for name in netns::list(&format!("{prefix}-")) {
        let _ = netns::delete(Netns::existing(&name).path());
    }
}
