//! Agent configuration: command-line flags, optionally on top of a YAML
//! file. A flag given on the command line wins over the file.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use crate::kernel::bpf::PodAttachment;
use crate::kernel::bpf::{AttachMode, MapSizes};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/sluice";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// Pod MTU when nothing else decides it (no underlay known).
pub const DEFAULT_MTU: u32 = 1500;
/// Where the agent serves `/metrics` unless configured otherwise.
pub const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:9965";

/// Where the agent learns cluster objects (Nodes, Namespaces, Pods,
/// NetworkPolicies) from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datastore {
    /// A directory of Kubernetes YAML manifests, watched like the API (the lab).
    Dir(PathBuf),
    /// The Kubernetes API server: in-cluster service account credentials,
    /// or those of a kubeconfig file.
    Kubernetes { kubeconfig: Option<PathBuf> },
}

impl std::str::FromStr for Datastore {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("dir", path)) if !path.is_empty() => Ok(Self::Dir(path.into())),
            Some(("kubernetes", path)) if !path.is_empty() => Ok(Self::Kubernetes {
                kubeconfig: Some(path.into()),
            }),
            None if s == "kubernetes" => Ok(Self::Kubernetes { kubeconfig: None }),
            _ => Err(format!(
                "invalid datastore {s:?}: want dir:PATH, kubernetes or kubernetes:KUBECONFIG"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Datastore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How packets reach pods on other nodes; one choice per cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// VXLAN (collect-metadata device) between nodes; works on any underlay.
    #[default]
    Tunnel,
    /// Plain routing on the underlay: every node routes the others' pod CIDRs.
    Native,
}

impl Routing {
    /// Bytes the encapsulation adds to every packet (outer IPv4 + UDP +
    /// VXLAN + inner Ethernet).
    pub fn overhead(self) -> u32 {
        match self {
            Routing::Tunnel => 50,
            Routing::Native => 0,
        }
    }
}

impl std::fmt::Display for PrefilterMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrefilterMode::Auto => "auto",
            PrefilterMode::Native => "native",
            PrefilterMode::Generic => "generic",
        })
    }
}

impl std::fmt::Display for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Routing::Tunnel => "tunnel",
            Routing::Native => "native",
        })
    }
}

/// The config file; every key optional.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub node_name: Option<String>,
    pub pod_cidr: Option<Ipv4Net>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    pub mtu: Option<u32>,
    pub map_sizes: Option<MapSizes>,
    /// Deprecated spelling of `mapSizes.endpoints`, still read so that
    /// existing config files keep working.
    pub max_endpoints: Option<u32>,
    pub datastore: Option<Datastore>,
    pub routing: Option<Routing>,
    pub masquerade: Option<bool>,
    pub metrics_address: Option<SocketAddr>,
    pub kube_proxy_replacement: Option<bool>,
    pub log_level: Option<String>,
    pub cgroup_root: Option<PathBuf>,
    pub prefilter: Option<PrefilterConfig>,
    pub pod_attachment: Option<PodAttachment>,
    pub policy_audit_mode: Option<bool>,
    pub flows: Option<FlowsFileConfig>,
}

/// When the datapath emits flow events (`flows.record`, `--flows-record`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum FlowRecord {
    /// Only while a client follows them (`sluice observe --follow`):
    /// nothing is recorded otherwise, and new flows cost one map lookup
    /// more.
    #[default]
    OnDemand,
    /// Always, into the agent's history (the lab's choice).
    Always,
}

/// As the agent's `--flows-record` takes it.
impl std::fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowRecord::OnDemand => "on-demand",
            FlowRecord::Always => "always",
        })
    }
}

/// The config file's `flows` key.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowsFileConfig {
    pub record: Option<FlowRecord>,
    /// Flows the agent keeps for `sluice observe` [default: 4096].
    pub history: Option<usize>,
    /// Flow events per second each CPU may emit, sustained and in a burst
    /// [default: 1000].
    pub rate: Option<u32>,
}

/// The config file's `prefilter` key: the underlay prefilter's initial
/// deny list (`sluice prefilter` adds to it while the agent runs).
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrefilterConfig {
    /// Source CIDRs dropped by XDP on the underlay.
    #[serde(rename = "denyCIDRs", default)]
    pub deny_cidrs: Vec<Ipv4Net>,
    #[serde(default)]
    pub mode: PrefilterMode,
}

/// The config's `prefilter.mode` (`--prefilter-mode`): where the prefilter
/// should run.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PrefilterMode {
    /// Native, except on a veth underlay (a kind-style or lab node), where
    /// native XDP takes GSO from the peer and costs TCP through it 3-4x
    /// (README), while its skb-free win needs a NIC driver: generic there.
    #[default]
    Auto,
    /// In the driver (generic where the driver refuses).
    Native,
    /// In the stack, on the skb.
    Generic,
}

impl PrefilterMode {
    /// The mode to attach with on an underlay of this kind.
    pub fn on(self, underlay_is_veth: bool) -> AttachMode {
        match self {
            PrefilterMode::Auto if underlay_is_veth => AttachMode::Generic,
            PrefilterMode::Auto | PrefilterMode::Native => AttachMode::Native,
            PrefilterMode::Generic => AttachMode::Generic,
        }
    }
}

/// Flags as given; `None` when absent.
#[derive(Debug, Default, Clone)]
pub struct FlagConfig {
    pub node_name: Option<String>,
    pub pod_cidr: Option<Ipv4Net>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    pub mtu: Option<u32>,
    pub datastore: Option<Datastore>,
    pub routing: Option<Routing>,
    pub masquerade: Option<bool>,
    pub metrics_address: Option<SocketAddr>,
    pub kube_proxy_replacement: Option<bool>,
    pub log_level: Option<String>,
    pub prefilter_mode: Option<PrefilterMode>,
    pub pod_attachment: Option<PodAttachment>,
    pub policy_audit_mode: Option<bool>,
    pub flows_record: Option<FlowRecord>,
    pub flows_history: Option<usize>,
    pub flows_rate: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    /// `None`: the own Node object's `spec.podCIDR(s)` decides (only with
    /// a datastore, which has it).
    pub pod_cidr: Option<Ipv4Net>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Where bpffs is (or gets) mounted.
    pub bpffs: PathBuf,
    /// Pod MTU; `None`: the underlay's MTU minus the routing overhead.
    pub mtu: Option<u32>,
    pub map_sizes: MapSizes,
    pub datastore: Option<Datastore>,
    pub routing: Routing,
    /// SNAT pod traffic leaving the cluster to the node's address.
    pub masquerade: bool,
    /// Where `/metrics` and `/healthz` are served.
    pub metrics_address: SocketAddr,
    /// Serve ClusterIP Services in eBPF (Cilium's name for it). Off: the
    /// host stack (kube-proxy) translates them, and the dataplane only
    /// sends replies back through it.
    pub kube_proxy_replacement: bool,
    /// A `tracing` filter directive (`info`, `sluice_agent=debug,info`);
    /// `RUST_LOG`, when set, wins. `None`: `info`.
    pub log_level: Option<String>,
    /// The host's cgroup v2 root, where the socket hooks attach (the host's
    /// `/sys/fs/cgroup`, mounted elsewhere in a container). `None`: the
    /// first cgroup2 mount the agent sees.
    pub cgroup_root: Option<PathBuf>,
    /// The config file's `prefilter.denyCIDRs`.
    pub prefilter_deny: Vec<Ipv4Net>,
    /// The config file's `prefilter.mode`.
    pub prefilter_mode: PrefilterMode,
    /// How the pod programs attach to pods' veths (`podAttachment`).
    pub pod_attachment: PodAttachment,
    /// Policy audit mode for this node's pods that no annotation decides
    /// (`policyAuditMode`; see `policy::audit`).
    pub policy_audit_mode: bool,
    /// Flow events: when they are recorded, how many are kept, how fast.
    pub flows: crate::flows::FlowsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{0} is required (flag or config file)")]
    Missing(&'static str),
    #[error(
        "invalid node name {0:?}: want 1-63 characters of [a-z0-9.-] (it names the pin directory)"
    )]
    NodeName(String),
    #[error("mtu {0} out of range 576..=65535")]
    Mtu(u32),
    #[error(
        "mapSizes.{key} {size} out of range {}..={}",
        MapSizes::MIN,
        MapSizes::MAX
    )]
    MapSize { key: &'static str, size: u32 },
    #[error("config keys {0} and {1} both set; keep {1}")]
    Conflict(&'static str, &'static str),
    #[error("--pod-cidr is required without a datastore (with one, the node's own Node object gives it)")]
    PodCidr,
    #[error("prefilter.denyCIDRs: {cidr} has host bits set; the network is {network}")]
    PrefilterCidr { cidr: Ipv4Net, network: Ipv4Net },
    #[error("flows.history {0} out of range 1..=1000000")]
    FlowsHistory(usize),
    #[error("flows.rate {0} out of range 1..=10000000")]
    FlowsRate(u32),
    #[error("invalid logLevel {level:?}: {reason}")]
    LogLevel { level: String, reason: String },
}

impl Config {
    pub fn resolve(flags: FlagConfig, file: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                serde_yaml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        Self::merge(flags, file)
    }

    pub fn merge(flags: FlagConfig, file: FileConfig) -> Result<Self, ConfigError> {
        let node_name = flags
            .node_name
            .or(file.node_name)
            .ok_or(ConfigError::Missing("--node-name"))?;
        let name_ok = !node_name.is_empty()
            && node_name.len() <= 63
            && node_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !node_name.starts_with('.');
        if !name_ok {
            return Err(ConfigError::NodeName(node_name));
        }
        let mut map_sizes = file.map_sizes.unwrap_or_default();
        if let Some(endpoints) = file.max_endpoints {
            if file
                .map_sizes
                .is_some_and(|m| m.endpoints != MapSizes::default().endpoints)
            {
                return Err(ConfigError::Conflict("maxEndpoints", "mapSizes.endpoints"));
            }
            tracing::warn!("config key maxEndpoints is deprecated: use mapSizes.endpoints");
            map_sizes.endpoints = endpoints;
        }
        if let Some((key, size)) = map_sizes.invalid() {
            return Err(ConfigError::MapSize { key, size });
        }
        let mtu = flags.mtu.or(file.mtu);
        if let Some(mtu) = mtu.filter(|m| !(576..=65535).contains(m)) {
            return Err(ConfigError::Mtu(mtu));
        }
        let datastore = flags.datastore.or(file.datastore);
        let pod_cidr = flags.pod_cidr.or(file.pod_cidr).map(|c| c.trunc());
        if pod_cidr.is_none() && datastore.is_none() {
            return Err(ConfigError::PodCidr);
        }
        let log_level = flags.log_level.or(file.log_level);
        if let Some(level) = &log_level {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
                return Err(ConfigError::LogLevel {
                    level: level.clone(),
                    reason: e.to_string(),
                });
            }
        }
        let PrefilterConfig {
            deny_cidrs: prefilter_deny,
            mode: file_prefilter_mode,
        } = file.prefilter.unwrap_or_default();
        let prefilter_mode = flags.prefilter_mode.unwrap_or(file_prefilter_mode);
        if let Some(cidr) = prefilter_deny.iter().find(|c| c.trunc() != **c) {
            return Err(ConfigError::PrefilterCidr {
                cidr: *cidr,
                network: cidr.trunc(),
            });
        }
        let flows_file = file.flows.unwrap_or_default();
        let defaults = crate::flows::FlowsConfig::default();
        let history = flags
            .flows_history
            .or(flows_file.history)
            .unwrap_or(defaults.history);
        if !(1..=1_000_000).contains(&history) {
            return Err(ConfigError::FlowsHistory(history));
        }
        let rate = flags
            .flows_rate
            .or(flows_file.rate)
            .unwrap_or(defaults.rate);
        if !(1..=10_000_000).contains(&rate) {
            return Err(ConfigError::FlowsRate(rate));
        }
        let flows = crate::flows::FlowsConfig {
            always: flags.flows_record.or(flows_file.record).unwrap_or_default()
                == FlowRecord::Always,
            history,
            rate,
            burst: rate,
        };
        Ok(Self {
            node_name,
            pod_cidr,
            state_dir: flags
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            socket: flags
                .socket
                .or(file.socket)
                .unwrap_or_else(|| sluice_common::api::DEFAULT_SOCKET.into()),
            bpffs: flags
                .bpffs
                .or(file.bpffs)
                .unwrap_or_else(|| DEFAULT_BPFFS.into()),
            mtu,
            map_sizes,
            datastore,
            routing: flags.routing.or(file.routing).unwrap_or_default(),
            masquerade: flags.masquerade.or(file.masquerade).unwrap_or(true),
            metrics_address: flags
                .metrics_address
                .or(file.metrics_address)
                .unwrap_or_else(|| DEFAULT_METRICS_ADDRESS.parse().expect("literal address")),
            kube_proxy_replacement: flags
                .kube_proxy_replacement
                .or(file.kube_proxy_replacement)
                .unwrap_or(true),
            log_level,
            cgroup_root: file.cgroup_root,
            prefilter_deny,
            prefilter_mode,
            pod_attachment: flags
                .pod_attachment
                .or(file.pod_attachment)
                .unwrap_or_default(),
            policy_audit_mode: flags
                .policy_audit_mode
                .or(file.policy_audit_mode)
                .unwrap_or(false),
            flows,
        })
    }

    /// `<bpffs>/sluice/<node-name>`: one directory per node, so several
    /// agents on one host (the lab) never share pins.
    pub fn pin_dir(&self) -> PathBuf {
        crate::kernel::bpf::pin_dir(&self.bpffs.join("sluice"), &self.node_name)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn flags() -> FlagConfig {
        FlagConfig {
            node_name: Some("node-1".into()),
            pod_cidr: Some("10.1.2.0/24".parse().expect("cidr")),
            ..FlagConfig::default()
        }
    }

    #[test]
    fn defaults_fill_the_rest() {
        let cfg = Config::merge(flags(), FileConfig::default()).expect("config");
        assert_eq!(cfg.socket, PathBuf::from("/var/run/sluice/sluice.sock"));
        assert_eq!(cfg.pin_dir(), PathBuf::from("/sys/fs/bpf/sluice/node-1"));
        assert_eq!(cfg.mtu, None);
        assert_eq!(cfg.routing, Routing::Tunnel);
        assert!(cfg.masquerade);
        assert_eq!(cfg.datastore, None);
    }

    #[test]
    fn flags_win_over_file() {
        let file: FileConfig =
            serde_yaml::from_str("nodeName: from-file\nmtu: 1400\nmapSizes: {endpoints: 128, conntrack: 1048576}\nrouting: native\ndatastore: dir:/etc/sluice/manifests\nmasquerade: false\n")
                .expect("yaml");
        let cfg = Config::merge(flags(), file).expect("config");
        assert_eq!(cfg.node_name, "node-1");
        assert_eq!(cfg.mtu, Some(1400));
        assert_eq!(cfg.map_sizes.endpoints, 128);
        assert_eq!(cfg.map_sizes.conntrack, 1 << 20);
        // Keys not given keep their defaults.
        assert_eq!(cfg.map_sizes.policy, MapSizes::default().policy);
        assert_eq!(cfg.routing, Routing::Native);
        assert!(!cfg.masquerade);
        assert_eq!(
            cfg.datastore,
            Some(Datastore::Dir("/etc/sluice/manifests".into()))
        );
    }

    #[test]
    fn missing_and_invalid_values_are_named() {
        let err = Config::merge(FlagConfig::default(), FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("--node-name"), "{err}");
        let mut bad = flags();
        bad.node_name = Some("../etc".into());
        assert!(matches!(
            Config::merge(bad, FileConfig::default()),
            Err(ConfigError::NodeName(_))
        ));
        assert!(serde_yaml::from_str::<FileConfig>("nodeNam: typo\n").is_err());
        assert!(serde_yaml::from_str::<FileConfig>("routing: vxlan\n").is_err());
        assert!(serde_yaml::from_str::<FileConfig>("mapSizes: {polcy: 10}\n").is_err());
        let mut no_cidr = flags();
        no_cidr.pod_cidr = None;
        assert!(matches!(
            Config::merge(no_cidr.clone(), FileConfig::default()),
            Err(ConfigError::PodCidr)
        ));
        no_cidr.datastore = Some(Datastore::Kubernetes { kubeconfig: None });
        let cfg = Config::merge(no_cidr, FileConfig::default()).expect("the Node gives it");
        assert_eq!(cfg.pod_cidr, None);
        let level: FileConfig = serde_yaml::from_str("logLevel: \"info,[\"\n").expect("yaml");
        let err = Config::merge(flags(), level).unwrap_err();
        assert!(matches!(err, ConfigError::LogLevel { .. }), "{err}");
        let level: FileConfig =
            serde_yaml::from_str("logLevel: sluice_agent=debug,info\n").expect("yaml");
        let cfg = Config::merge(flags(), level).expect("a valid directive");
        assert_eq!(cfg.log_level.as_deref(), Some("sluice_agent=debug,info"));
        let old: FileConfig = serde_yaml::from_str("maxEndpoints: 256\n").expect("yaml");
        let cfg = Config::merge(flags(), old).expect("the deprecated key still works");
        assert_eq!(cfg.map_sizes.endpoints, 256);
        let both: FileConfig =
            serde_yaml::from_str("maxEndpoints: 256\nmapSizes: {endpoints: 512}\n").expect("yaml");
        assert!(matches!(
            Config::merge(flags(), both),
            Err(ConfigError::Conflict(..))
        ));
        let file: FileConfig = serde_yaml::from_str("mapSizes: {policy: 10}\n").expect("yaml");
        let err = Config::merge(flags(), file).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mapSizes.policy 10 out of range 64..=16777216"
        );
        assert!("file:/x".parse::<Datastore>().is_err());
        assert!("dir:".parse::<Datastore>().is_err());
        assert!("kubernetes:".parse::<Datastore>().is_err());
        assert!("kube".parse::<Datastore>().is_err());
    }

    #[test]
    fn flows_default_on_demand_and_flags_win() {
        let config = Config::merge(flags(), FileConfig::default()).expect("config");
        assert_eq!(config.flows, crate::flows::FlowsConfig::default());
        assert!(!config.flows.always);
        let file: FileConfig =
            serde_yaml::from_str("flows: {record: always, history: 100, rate: 50}\n")
                .expect("yaml");
        let config = Config::merge(flags(), file).expect("config");
        assert!(config.flows.always);
        assert_eq!((config.flows.history, config.flows.rate), (100, 50));
        let file: FileConfig = serde_yaml::from_str("flows: {record: always}\n").expect("yaml");
        let mut flags = flags();
        flags.flows_record = Some(FlowRecord::OnDemand);
        assert!(!Config::merge(flags, file).expect("config").flows.always);
        let file: FileConfig = serde_yaml::from_str("flows: {history: 0}\n").expect("yaml");
        assert!(matches!(
            Config::merge(self::flags(), file),
            Err(ConfigError::FlowsHistory(0))
        ));
        assert!(serde_yaml::from_str::<FileConfig>("flows: {record: sometimes}\n").is_err());
    }

    #[test]
    fn policy_audit_mode_is_off_unless_asked_and_flags_win() {
        let config = Config::merge(flags(), FileConfig::default()).expect("config");
        assert!(!config.policy_audit_mode, "enforcing by default");
        let file: FileConfig = serde_yaml::from_str("policyAuditMode: true\n").expect("yaml");
        assert!(
            Config::merge(flags(), file)
                .expect("config")
                .policy_audit_mode
        );
        let file: FileConfig = serde_yaml::from_str("policyAuditMode: true\n").expect("yaml");
        let mut flags = flags();
        flags.policy_audit_mode = Some(false);
        assert!(
            !Config::merge(flags, file)
                .expect("config")
                .policy_audit_mode
        );
        assert!(serde_yaml::from_str::<FileConfig>("policyAuditMode: sometimes\n").is_err());
    }

    #[test]
    fn auto_runs_the_prefilter_generic_on_veth_only() {
        use PrefilterMode::*;
        assert_eq!(Auto.on(true), AttachMode::Generic);
        assert_eq!(Auto.on(false), AttachMode::Native);
        assert_eq!(Native.on(true), AttachMode::Native);
        assert_eq!(Generic.on(false), AttachMode::Generic);
    }

    #[test]
    fn the_prefilter_deny_list_comes_from_the_file_and_must_name_networks() {
        let file: FileConfig =
            serde_yaml::from_str("prefilter: {denyCIDRs: [198.18.0.0/15, 203.0.113.7/32]}\n")
                .expect("yaml");
        let cfg = Config::merge(flags(), file).expect("config");
        assert_eq!(
            cfg.prefilter_deny,
            ["198.18.0.0/15", "203.0.113.7/32"]
                .map(|c| c.parse::<Ipv4Net>().expect("cidr"))
                .to_vec()
        );
        assert_eq!(cfg.prefilter_mode, PrefilterMode::Auto);
        let cfg = Config::merge(flags(), FileConfig::default()).expect("config");
        assert!(cfg.prefilter_deny.is_empty());
        let file: FileConfig = serde_yaml::from_str("prefilter: {mode: generic}\n").expect("yaml");
        let cfg = Config::merge(flags(), file).expect("config");
        assert_eq!(cfg.prefilter_mode, PrefilterMode::Generic);
        let native = FlagConfig {
            prefilter_mode: Some(PrefilterMode::Native),
            ..flags()
        };
        let file: FileConfig = serde_yaml::from_str("prefilter: {mode: generic}\n").expect("yaml");
        let cfg = Config::merge(native, file).expect("config");
        assert_eq!(cfg.prefilter_mode, PrefilterMode::Native, "the flag wins");
        assert!(serde_yaml::from_str::<FileConfig>("prefilter: {mode: offload}\n").is_err());
        let file: FileConfig =
            serde_yaml::from_str("prefilter: {denyCIDRs: [10.1.2.3/8]}\n").expect("yaml");
        let err = Config::merge(flags(), file).unwrap_err();
        assert_eq!(
            err.to_string(),
            "prefilter.denyCIDRs: 10.1.2.3/8 has host bits set; the network is 10.0.0.0/8"
        );
        assert!(serde_yaml::from_str::<FileConfig>("prefilter: {denyCidrs: []}\n").is_err());
        assert!(serde_yaml::from_str::<FileConfig>("prefilter: {denyCIDRs: [nope]}\n").is_err());
    }

    #[test]
    fn kubernetes_datastore_with_and_without_kubeconfig() {
        assert_eq!(
            "kubernetes".parse::<Datastore>(),
            Ok(Datastore::Kubernetes { kubeconfig: None })
        );
        assert_eq!(
            "kubernetes:/etc/sluice/kubeconfig".parse::<Datastore>(),
            Ok(Datastore::Kubernetes {
                kubeconfig: Some("/etc/sluice/kubeconfig".into())
            })
        );
        let file: FileConfig =
            serde_yaml::from_str("datastore: kubernetes:/root/.kube/config\n").expect("yaml");
        assert_eq!(
            file.datastore,
            Some(Datastore::Kubernetes {
                kubeconfig: Some("/root/.kube/config".into())
            })
        );
        // A flag wins over the file here too.
        let mut flags = flags();
        flags.datastore = Some(Datastore::Kubernetes { kubeconfig: None });
        let cfg = Config::merge(flags, file).expect("config");
        assert_eq!(
            cfg.datastore,
            Some(Datastore::Kubernetes { kubeconfig: None })
        );
    }
}
