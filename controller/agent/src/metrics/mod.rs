//! The agent's Prometheus metrics: one struct, one registry, so `/metrics`
//! renders everything the agent knows and tests can build a private set.
//!
//! Cloning is cheap (the registry and the metric vectors are `Arc`s inside),
//! so every component gets its own clone instead of a global.

pub mod http;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::datastore::Kind;

/// `reason` label values of `sluice_datastore_errors_total`.
pub mod reason {
    /// A document that is not valid YAML/JSON or not a valid object.
    pub const MALFORMED: &str = "malformed";
    /// The same object defined twice; the first definition wins.
    pub const CONFLICT: &str = "conflict";
    /// A file or directory that could not be read.
    pub const READ: &str = "read";

    pub const ALL: [&str; 3] = [MALFORMED, CONFLICT, READ];
}

/// `what` label values of `sluice_sync_errors_total`.
pub mod sync {
    /// Routes to other nodes and the masquerade rules.
    pub const NODES: &str = "nodes";
    pub const IPCACHE: &str = "ipcache";
    pub const POLICY: &str = "policy";
    pub const IDENTITIES: &str = "identities";
    /// Service maps and their reject rules.
    pub const SERVICES: &str = "services";

    pub const ALL: [&str; 5] = [NODES, IPCACHE, POLICY, IDENTITIES, SERVICES];
}

/// Frontend id → (`namespace/name`, `port/PROTOCOL`), shared between the
/// reconciler, which knows it, and the scrape, which labels the
/// dataplane's per-frontend counters with it.
#[derive(Clone, Debug, Default)]
pub struct ServiceNames(
    std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<u32, (String, String)>>>,
);

impl ServiceNames {
    pub fn set(&self, names: std::collections::BTreeMap<u32, (String, String)>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
    }

    pub fn get(&self) -> std::collections::BTreeMap<u32, (String, String)> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The maps the agent fills from the cluster, which can overflow.
pub const FILLED_MAPS: [&str; 7] = [
    sluice_common::maps::POLICY_EXACT.name,
    sluice_common::maps::POLICY_RANGES.name,
    sluice_common::maps::ISOLATION.name,
    sluice_common::maps::CIDR_IDENTITY.name,
    sluice_common::maps::IPCACHE.name,
    sluice_common::maps::SERVICES.name,
    sluice_common::maps::SERVICE_BACKENDS.name,
];

#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// `sluice_datastore_errors_total{reason}`: problems with the cluster
    /// object source that were skipped over (see [`reason`]).
    pub datastore_errors: IntCounterVec,
    /// `sluice_datastore_objects{kind}`: objects currently known, by kind.
    pub datastore_objects: IntGaugeVec,
    /// `sluice_sync_errors_total{what}`: failed attempts to apply desired
    /// state to the kernel (retried).
    pub sync_errors: IntCounterVec,
    /// `sluice_node_problems`: Node objects skipped as unusable.
    pub node_problems: IntGauge,
    /// `sluice_policy_problems`: NetworkPolicy rules that could not be
    /// compiled and allow nothing.
    pub policy_problems: IntGauge,
    /// `sluice_policy_audit_problems`: audit mode annotations of this
    /// node's pods (or their namespaces) that could not be read.
    pub policy_audit_problems: IntGauge,
    /// `sluice_pod_ip_conflicts`: pod addresses claimed by more than one
    /// live Pod, which belong to none of them.
    pub pod_ip_conflicts: IntGauge,
    /// `sluice_kube_watch_errors_total{kind}`: failed list/watch calls to
    /// the Kubernetes API (retried with backoff).
    pub kube_watch_errors: IntCounterVec,
    /// `sluice_bpf_map_capacity{map}`: configured capacity of each sized map.
    pub map_capacity: IntGaugeVec,
    /// `sluice_bpf_map_entries{map}`: entries the agent wants in each
    /// policy map.
    pub map_entries: IntGaugeVec,
    /// `sluice_bpf_map_full_total{map}`: sync attempts that found the map
    /// full (what did not fit denies; raise `mapSizes`).
    pub map_full: IntCounterVec,
    /// `sluice_service_frontends{state}`: Service frontends (ClusterIP
    /// ports) programmed, `ready` (with backends) or `refused` (none).
    pub service_frontends: IntGaugeVec,
    /// `sluice_service_backends`: backend slots of all frontends.
    pub service_backends: IntGauge,
    /// `sluice_service_problems`: Service ports skipped or refused as
    /// unservable.
    pub service_problems: IntGauge,
    /// Which Service port each frontend id is, for the dataplane's
    /// per-frontend counters; written by the reconciler.
    pub service_names: ServiceNames,
    /// `sluice_bpf_map_pressure{map}`: entries wanted / capacity of each
    /// map the agent fills (1 or more: full, see `map_full`).
    pub map_pressure: GaugeVec,
    /// `sluice_policy_implementation_delay_seconds`: from a cluster object
    /// change reaching the agent to the maps holding its consequences
    /// (policy, ipcache, Services), retries included.
    pub implementation_delay: Histogram,
    /// `sluice_endpoints`: pods wired on this node.
    pub endpoints: IntGauge,
    /// `sluice_endpoints_unidentified`: local endpoints whose Pod the agent
    /// does not know (yet), isolated in both directions meanwhile.
    pub unidentified_endpoints: IntGauge,
    /// `sluice_endpoint_policy_wait_seconds{result}`: how long CNI ADD
    /// waited for the endpoint's policy to be in the maps (`ready`), or
    /// until it gave up (`unidentified`).
    pub policy_wait: HistogramVec,
    /// `sluice_bpf_map_occupancy{map}`: entries the endpoint map and the
    /// maps the datapath fills itself (conntrack, Service flows,
    /// fragments) hold, counted every 30 s.
    pub map_occupancy: IntGaugeVec,
    /// `sluice_conntrack_evictions_total`: tracked flows the full table
    /// evicted (their next packet is checked against policy again).
    pub conntrack_evictions: IntCounter,
    /// `sluice_endpoint_leftovers_removed_total{what}`: kernel state of no
    /// registered endpoint (a crash between steps) that the agent removed:
    /// `map_entry`, `link`, `route`.
    pub leftovers_removed: IntCounterVec,
    /// `sluice_identities{kind}`: security identities allocated, for label
    /// sets (`labels`) and ipBlock regions (`cidr`).
    pub identities: IntGaugeVec,
    /// `sluice_datastore_last_event_timestamp_seconds`: when the last
    /// cluster object change arrived.
    pub last_event: Gauge,
    /// `sluice_datastore_changes_total`: cluster object changes taken in
    /// (added, changed, removed; a full list counts each object).
    pub datastore_changes: IntCounter,
    /// `sluice_last_sync_timestamp_seconds`: when the maps last matched the
    /// cluster state the agent knows (checked every 2 s); `time()` minus
    /// it is how stale the datapath may be.
    pub last_sync: Gauge,
    /// `sluice_flow_events_received_total`: flow events the agent read
    /// from the datapath and recorded.
    pub flow_events_received: IntCounter,
    /// `sluice_flow_events_undecodable_total`: ring buffer records that
    /// were no flow event (skipped).
    pub flow_events_undecodable: IntCounter,
    /// `sluice_flow_followers`: clients following live flows now.
    pub flow_followers: IntGauge,
    /// `sluice_flow_verdicts_total{source_namespace,
    /// destination_namespace, verdict}`: recorded flows by namespace pair
    /// (bounded, see `flows::verdict_metrics`).
    pub flow_verdicts: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let datastore_errors = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_datastore_errors_total",
                    "Cluster objects or files skipped by the datastore, by reason.",
                ),
                &["reason"],
            ),
        );
        let datastore_objects = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "sluice_datastore_objects",
                    "Cluster objects currently known to the agent, by kind.",
                ),
                &["kind"],
            ),
        );
        let sync_errors = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_sync_errors_total",
                    "Failed attempts to apply desired state to the kernel, by what was applied.",
                ),
                &["what"],
            ),
        );
        let node_problems = register(
            &registry,
            IntGauge::new(
                "sluice_node_problems",
                "Node objects skipped because they cannot be used (no InternalIP, bad or overlapping pod CIDR).",
            ),
        );
        let kube_watch_errors = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_kube_watch_errors_total",
                    "Failed list or watch calls to the Kubernetes API (retried with backoff), by kind.",
                ),
                &["kind"],
            ),
        );
        let policy_problems = register(
            &registry,
            IntGauge::new(
                "sluice_policy_problems",
                "NetworkPolicies, or rules of them, that could not be taken; each allows nothing and a rejected policy keeps isolating (fails closed).",
            ),
        );
        let policy_audit_problems = register(
            &registry,
            IntGauge::new(
                "sluice_policy_audit_problems",
                "policy.sluice.io/audit-mode annotations of this node's pods or their namespaces that could not be read; those pods are enforced (fail closed).",
            ),
        );
        let pod_ip_conflicts = register(
            &registry,
            IntGauge::new(
                "sluice_pod_ip_conflicts",
                "Pod IPs claimed by more than one live Pod; such an address belongs to none of them (no identity, no podSelector matches it).",
            ),
        );

        let map_capacity = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "sluice_bpf_map_capacity",
                    "Configured capacity of the dataplane's maps (mapSizes), by map.",
                ),
                &["map"],
            ),
        );
        let map_entries = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "sluice_bpf_map_entries",
                    "Entries the agent wants in each NetworkPolicy map (rules, peer marks, isolation, ipBlock regions), by map.",
                ),
                &["map"],
            ),
        );
        let map_full = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_bpf_map_full_total",
                    "Sync attempts (retried every 2 s) that found a dataplane map full; what did not fit denies. By map.",
                ),
                &["map"],
            ),
        );

        // Export every series from the start: a counter that appears only on
        // its first increment breaks `rate()` and "is it zero?" alerts.
        for reason in reason::ALL {
            datastore_errors.with_label_values(&[reason]);
        }
        for kind in Kind::ALL {
            datastore_objects.with_label_values(&[kind.label()]);
            kube_watch_errors.with_label_values(&[kind.label()]);
        }
        for what in sync::ALL {
            sync_errors.with_label_values(&[what]);
        }
        for map in FILLED_MAPS {
            map_full.with_label_values(&[map]);
        }

        let service_frontends = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "sluice_service_frontends",
                    "Service frontends (ClusterIP ports) programmed: ready (with backends) or refused (without: their connections are rejected).",
                ),
                &["state"],
            ),
        );
        for state in ["ready", "refused"] {
            service_frontends.with_label_values(&[state]);
        }
        let service_backends = register(
            &registry,
            IntGauge::new(
                "sluice_service_backends",
                "Backend slots of all Service frontends (a backend of two ports counts twice).",
            ),
        );
        let service_problems = register(
            &registry,
            IntGauge::new(
                "sluice_service_problems",
                "Service ports skipped or refused as unservable (e.g. SCTP with a different targetPort).",
            ),
        );

        let map_pressure = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "sluice_bpf_map_pressure",
                    "Entries the agent wants in a map it fills, over the map's capacity (1: full; raise mapSizes), by map.",
                ),
                &["map"],
            ),
        );
        let implementation_delay = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_policy_implementation_delay_seconds",
                    "From a cluster object change reaching the agent to the maps holding its consequences (policy, ipcache, Services), retries included.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ]),
            ),
        );
        let endpoints = register(
            &registry,
            IntGauge::new("sluice_endpoints", "Pods wired on this node."),
        );
        let unidentified_endpoints = register(
            &registry,
            IntGauge::new(
                "sluice_endpoints_unidentified",
                "Pods wired on this node whose Pod object the agent does not know (yet): isolated in both directions until it does.",
            ),
        );
        let policy_wait = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "sluice_endpoint_policy_wait_seconds",
                    "How long CNI ADD waited for the pod's policy to be in the maps (result ready), or until it gave up on an unknown Pod (unidentified).",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["result"],
            ),
        );
        for result in ["ready", "unidentified"] {
            policy_wait.with_label_values(&[result]);
        }
        let map_occupancy = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "sluice_bpf_map_occupancy",
                    "Entries held by the endpoint map and the maps the datapath fills itself (connection tracking, Service flows, fragments; LRU maps evict their oldest entries when full), counted every 30 s.",
                ),
                &["map"],
            ),
        );
        let conntrack_evictions = register(
            &registry,
            IntCounter::new(
                "sluice_conntrack_evictions_total",
                "Tracked flows the connection tracking table evicted to make room (it is full: raise mapSizes.conntrack); the next packet of such a flow is checked against policy again. Counted every 30 s, from the flows the datapath added and those the table holds.",
            ),
        );
        let leftovers_removed = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_endpoint_leftovers_removed_total",
                    "Kernel state of no registered endpoint (left by a crash between the steps of ADD or DEL) that the agent removed: map_entry, link, route.",
                ),
                &["what"],
            ),
        );
        for what in ["map_entry", "link", "route"] {
            leftovers_removed.with_label_values(&[what]);
        }
        let identities = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "sluice_identities",
                    "Security identities allocated: for pod label sets (labels) and ipBlock regions (cidr).",
                ),
                &["kind"],
            ),
        );
        for kind in ["labels", "cidr"] {
            identities.with_label_values(&[kind]);
        }
        let last_event = register(
            &registry,
            Gauge::new(
                "sluice_datastore_last_event_timestamp_seconds",
                "Unix time the last cluster object change reached the agent (0: none yet).",
            ),
        );
        let datastore_changes = register(
            &registry,
            IntCounter::new(
                "sluice_datastore_changes_total",
                "Cluster object changes the agent took in: objects added, changed or removed (a full list counts each of its objects).",
            ),
        );
        let last_sync = register(
            &registry,
            Gauge::new(
                "sluice_last_sync_timestamp_seconds",
                "Unix time the maps last matched the cluster state the agent knows (checked every 2 s; 0: not yet). time() minus it: how stale the datapath may be.",
            ),
        );

        let flow_events_received = register(
            &registry,
            IntCounter::new(
                "sluice_flow_events_received_total",
                "Flow events the agent read from the datapath and recorded.",
            ),
        );
        let flow_events_undecodable = register(
            &registry,
            IntCounter::new(
                "sluice_flow_events_undecodable_total",
                "Ring buffer records that were no flow event (skipped).",
            ),
        );
        let flow_followers = register(
            &registry,
            IntGauge::new(
                "sluice_flow_followers",
                "Clients following live flows now (the datapath emits flow events while there are any, or always if so configured).",
            ),
        );
        let flow_verdicts = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_flow_verdicts_total",
                    "Recorded flows by source and destination namespace (\"\": not a pod) and verdict (allowed, denied, would-deny, dropped, translated); pairs beyond the first 1000 count as other/other.",
                ),
                &["source_namespace", "destination_namespace", "verdict"],
            ),
        );
        // The family exists from the start, as every other: flows between
        // ends that are no pods.
        for verdict in sluice_common::observe::FlowVerdict::ALL {
            flow_verdicts.with_label_values(&["", "", verdict.name()]);
        }

        Metrics {
            registry,
            datastore_errors,
            datastore_objects,
            sync_errors,
            node_problems,
            policy_problems,
            policy_audit_problems,
            pod_ip_conflicts,
            kube_watch_errors,
            map_capacity,
            map_entries,
            map_full,
            service_frontends,
            service_backends,
            service_problems,
            service_names: ServiceNames::default(),
            map_pressure,
            implementation_delay,
            endpoints,
            unidentified_endpoints,
            policy_wait,
            map_occupancy,
            conntrack_evictions,
            leftovers_removed,
            identities,
            last_event,
            datastore_changes,
            last_sync,
            flow_events_received,
            flow_events_undecodable,
            flow_followers,
            flow_verdicts,
        }
    }

    /// The entries the agent wants in `map`: `sluice_bpf_map_entries` and
    /// its pressure against the configured capacity.
    pub fn set_map_entries(&self, map: &str, entries: usize) {
        self.map_entries
            .with_label_values(&[map])
            .set(entries as i64);
        let capacity = self.map_capacity.with_label_values(&[map]).get();
        if capacity > 0 {
            self.map_pressure
                .with_label_values(&[map])
                .set(entries as f64 / capacity as f64);
        }
    }

    /// Brings `sluice_conntrack_evictions_total` up to what the table's
    /// counts say: flows `inserted` since the maps were created, minus the
    /// `held` ones. Never down: a walk of a table that changes under it may
    /// count a flow twice.
    pub fn count_evictions(&self, inserted: u64, held: u64) {
        let evicted = inserted.saturating_sub(held);
        let counted = self.conntrack_evictions.get();
        if evicted > counted {
            self.conntrack_evictions.inc_by(evicted - counted);
        }
    }

    /// Adds the dataplane's own counters (packets by reason, policy
    /// verdicts), read from the maps pinned in `pin_dir` at each scrape.
    /// Fails when called twice for one registry.
    pub fn register_dataplane(&self, pin_dir: &std::path::Path) -> prometheus::Result<()> {
        let collector =
            crate::kernel::counters::Collector::new(pin_dir, self.service_names.clone())?;
        self.registry.register(Box::new(collector))
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String fails only on a metric family without
        // metrics or similar misuse, impossible with the fixed set above;
        // a partial page beats no page, so log and return what there is.
        if let Err(error) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "rendering metrics");
        }
        out
    }
}

/// Registers a freshly defined metric. Both steps fail only on a bad or
/// duplicate definition, a bug in [`Metrics::new`] that its unit test
/// (rendering them all) catches.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("fixed, valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_from_the_start() {
        let text = Metrics::new().render();
        for reason in reason::ALL {
            let line = format!("sluice_datastore_errors_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        for kind in Kind::ALL {
            let line = format!("sluice_datastore_objects{{kind=\"{}\"}} 0", kind.label());
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
            let line = format!(
                "sluice_kube_watch_errors_total{{kind=\"{}\"}} 0",
                kind.label()
            );
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE sluice_datastore_errors_total counter"));
        assert!(text.contains("# TYPE sluice_datastore_objects gauge"));
    }

    #[test]
    fn clones_share_the_registry() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        clone
            .datastore_errors
            .with_label_values(&[reason::CONFLICT])
            .inc();
        clone
            .datastore_objects
            .with_label_values(&[Kind::Pod.label()])
            .set(3);
        let text = metrics.render();
        assert!(text.contains("sluice_datastore_errors_total{reason=\"conflict\"} 1"));
        assert!(text.contains("sluice_datastore_objects{kind=\"pod\"} 3"));
    }

    #[test]
    fn separate_instances_are_independent() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.datastore_errors.with_label_values(&[reason::READ]).inc();
        assert_eq!(
            b.datastore_errors.with_label_values(&[reason::READ]).get(),
            0
        );
    }

    #[test]
    fn evictions_are_what_was_added_and_is_gone_and_never_go_down() {
        let metrics = Metrics::new();
        metrics.count_evictions(10, 10);
        assert_eq!(metrics.conntrack_evictions.get(), 0);
        metrics.count_evictions(300, 64);
        assert_eq!(metrics.conntrack_evictions.get(), 236);
        metrics.count_evictions(300, 70);
        assert_eq!(
            metrics.conntrack_evictions.get(),
            236,
            "a walk that counted some twice"
        );
        metrics.count_evictions(400, 64);
        assert_eq!(metrics.conntrack_evictions.get(), 336);
    }
}
