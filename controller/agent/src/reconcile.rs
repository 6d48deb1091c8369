//! The agent's one event path: cluster objects from any source update the
//! cluster state, and what depends on the changed kinds is recomputed and
//! applied to the kernel, each output by its own writer:
//!
//! ```text
//! Nodes ──────────► topology ──► routes, masquerade      (NodeSync)
//!                      │
//!                      ├───────► ipcache ◄── pod identities
//! Pods, Namespaces,    │                          │
//! NetworkPolicies ──► compile ─► PlacedPolicy ──► policy maps
//!                                       └──► policy revision (any verdict change)
//! Services,
//! EndpointSlices ───► services::compile ─► frontends, backends ──► service maps
//!                                        └► refused frontends, masquerade ──► ip sluice_services
//! ```
//!
//! After any change that can alter a verdict the policy revision moves, so
//! established flows are checked again with their next packet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use sluice_common::api::{ErrorKind, MapFill, NodeReport, PodRef, Response};
use sluice_common::explain::ExplainQuery;
use tracing::{info, warn};

use crate::{
    datastore::{ClusterState, Event, Kind},
    kernel::{
        bpf::{DataplaneError, Ipcache, KernelPolicy, PolicyMaps, PolicyRevision, ServiceMaps},
        nft,
        node_sync::NodeSync,
        service_nft,
    },
    metrics::{sync, Metrics},
    policy::{
        audit::AuditProblem,
        compile::{compile, IpConflict, LocalEndpoints, PolicyProblem},
        explain::{self, NodeView},
        identity::IdentityAllocator,
        unidentified,
    },
    services::{self, DesiredServices, ServiceIds, ServiceProblem},
    topology::{NodeProblem, Topology},
};

#[derive(Debug, thiserror::Error)]
enum ServiceSyncError {
    #[error(transparent)]
    Maps(#[from] DataplaneError),
    #[error("the Services' nftables table: {0}")]
    Nft(#[from] nft::NftError),
}

/// The kinds whose complete list `event` carries.
pub fn listed_by(event: &Event) -> Vec<Kind> {
    match event {
        Event::Resync(_) => Kind::ALL.to_vec(),
        Event::ResyncKind(kind, _) => vec![*kind],
        Event::Apply(_) | Event::Delete(_) => Vec::new(),
    }
}

/// The maps the reconciler writes, one writer each.
pub struct ReconcilerMaps {
    pub policy: PolicyMaps,
    pub revision: PolicyRevision,
    pub ipcache: Ipcache,
    pub services: ServiceMaps,
}

/// How this node serves Services.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    /// kube-proxy replacement: translate ClusterIPs in eBPF. Off: the maps
    /// are kept empty and kube-proxy does it in the host stack.
    pub enabled: bool,
    /// This node's name, for `internalTrafficPolicy: Local`.
    pub node_name: String,
}

pub struct Reconciler {
    state: ClusterState,
    nodes: NodeSync,
    maps: ReconcilerMaps,
    services: ServicesConfig,
    service_ids: ServiceIds,
    service_problems: Vec<ServiceProblem>,
    /// The Services' nftables ruleset last applied.
    applied_service_nft: Option<String>,
    identities: IdentityAllocator,
    local: LocalEndpoints,
    /// The Pods the local endpoints were wired for, as CNI ADD named them.
    local_pods: BTreeMap<Ipv4Addr, PodRef>,
    /// Local endpoints whose Pod is unknown are isolated (there is a
    /// datastore to learn it from).
    identify_endpoints: bool,
    /// The node-wide policy audit mode (`policyAuditMode`).
    audit_default: bool,
    /// The identity allocator has taken over the pinned maps' numbers.
    identities_seeded: bool,
    topology: Topology,
    pod_identities: BTreeMap<Ipv4Addr, u32>,
    problems: Vec<PolicyProblem>,
    /// Unreadable audit mode annotations, as last logged.
    audit_problems: Vec<AuditProblem>,
    /// The address conflicts last reported, so each is logged once.
    ip_conflicts: Vec<IpConflict>,
    node_problems: Vec<NodeProblem>,
    metrics: Metrics,
    /// What must be recomputed or (re)applied; stays set while applying
    /// fails.
    dirty_topology: bool,
    dirty_routes: bool,
    dirty_policy: bool,
    dirty_ipcache: bool,
    dirty_services: bool,
    /// Kinds whose complete list has arrived. Until every kind has, the
    /// state is partial: applying it would remove pinned entries (open
    /// isolated pods, forget identities) that a restarted agent must keep.
    listed: BTreeSet<Kind>,
    /// See [`Self::applied`].
    policy_filled: bool,
    ipcache_filled: bool,
    /// When the oldest change not yet fully applied arrived (for the
    /// implementation delay).
    pending_since: Option<std::time::Instant>,
    /// When the maps last matched the state, and the last change arrived.
    last_sync: Option<std::time::Instant>,
    last_event: Option<std::time::Instant>,
    /// Service frontends and backend slots last applied.
    service_counts: (usize, usize),
    /// Object changes taken in (see [`NodeReport::changes`]).
    changes: u64,
}

impl Reconciler {
    /// `listed`: the kinds `state` already holds complete lists of (all of
    /// them without a source).
    pub fn new(
        state: ClusterState,
        nodes: NodeSync,
        maps: ReconcilerMaps,
        services: ServicesConfig,
        metrics: Metrics,
        listed: BTreeSet<Kind>,
    ) -> Self {
        Self {
            state,
            nodes,
            maps,
            services,
            service_ids: ServiceIds::new(),
            service_problems: Vec::new(),
            applied_service_nft: None,
            identities: IdentityAllocator::new(),
            local: LocalEndpoints::new(),
            local_pods: BTreeMap::new(),
            identify_endpoints: false,
            audit_default: false,
            identities_seeded: false,
            topology: Topology::default(),
            pod_identities: BTreeMap::new(),
            problems: Vec::new(),
            audit_problems: Vec::new(),
            ip_conflicts: Vec::new(),
            node_problems: Vec::new(),
            metrics,
            dirty_topology: true,
            dirty_routes: true,
            dirty_policy: true,
            dirty_ipcache: true,
            dirty_services: true,
            listed,
            policy_filled: false,
            ipcache_filled: false,
            pending_since: None,
            last_sync: None,
            last_event: None,
            service_counts: (0, 0),
            changes: 0,
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Pod addresses → their label identities, as last compiled.
    pub fn pod_identities(&self) -> &BTreeMap<Ipv4Addr, u32> {
        &self.pod_identities
    }

    /// The identities allocated (what each stands for).
    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    /// Applies `events` to the cluster state, then syncs once: a burst of
    /// changes (a list, many objects applied at once) costs one sync, not
    /// one per object.
    pub async fn handle(&mut self, events: impl IntoIterator<Item = Event>) {
        let before = self.object_count();
        let mut any = false;
        for event in events {
            any |= self.apply_event(event);
        }
        // After the sync below: it frees the removed objects' compiled
        // state too.
        let trim = should_trim(before, self.object_count());
        if any {
            self.last_event = Some(std::time::Instant::now());
            self.metrics.last_event.set(unix_now());
            self.pending_since
                .get_or_insert_with(std::time::Instant::now);
        }
        self.sync().await;
        if trim {
            trim_heap();
        }
    }

    /// Returns whether the event changed the cluster state.
    fn apply_event(&mut self, event: Event) -> bool {
        self.listed.extend(listed_by(&event));
        let objects = match &event {
            Event::Resync(list) | Event::ResyncKind(_, list) => list.len() as u64,
            Event::Apply(_) | Event::Delete(_) => 1,
        };
        let changed = self.state.apply(event);
        for kind in Kind::ALL {
            self.metrics
                .datastore_objects
                .with_label_values(&[kind.label()])
                .set(self.state.count(kind) as i64);
        }
        let any = changed.nodes
            || changed.pods
            || changed.namespaces
            || changed.policies
            || changed.services
            || changed.endpoint_slices;
        if any {
            self.changes += objects;
            self.metrics.datastore_changes.inc_by(objects);
        }
        self.dirty_topology |= changed.nodes;
        self.dirty_policy |= changed.pods || changed.namespaces || changed.policies;
        self.dirty_services |= changed.services || changed.endpoint_slices;
        any
    }

    fn object_count(&self) -> usize {
        Kind::ALL.iter().map(|k| self.state.count(*k)).sum()
    }

    /// Whether the complete cluster state (every kind listed) has been
    /// written to the maps at least once: policy and the ipcache each
    /// applied, or stopped only by a full map, whose missing entries deny
    /// (fail closed) while the sync retries.
    pub fn applied(&self) -> bool {
        self.policy_filled && self.ipcache_filled
    }

    /// With a datastore, endpoints are tied to their Pods, and isolated
    /// until they are (see [`unidentified`]); without one there is no
    /// policy to apply.
    pub fn identifying_endpoints(mut self, on: bool) -> Self {
        self.identify_endpoints = on;
        self
    }

    pub fn identifies_endpoints(&self) -> bool {
        self.identify_endpoints
    }

    /// Puts this node's pods that no annotation decides in policy audit
    /// mode (see [`crate::policy::audit`]).
    pub fn auditing_policy(mut self, on: bool) -> Self {
        self.audit_default = on;
        self
    }

    /// Whether the policy maps hold what the known state and the local
    /// endpoints ask for.
    pub fn policy_written(&self) -> bool {
        self.policy_filled && !self.dirty_policy
    }

    /// Whether the endpoint at `ip` has its Pod's policy in the maps: its
    /// Pod known (it has an identity), and policy and the ipcache applied
    /// since. Always, without a datastore.
    pub fn endpoint_ready(&self, ip: Ipv4Addr) -> bool {
        if !self.identify_endpoints {
            return true;
        }
        self.applied()
            && self.policy_written()
            && !self.dirty_ipcache
            && self.pod_identities.contains_key(&ip)
    }

    /// The pods registered on this node changed (CNI ADD/DEL), with the
    /// Pods they were wired for.
    pub async fn set_local_endpoints(
        &mut self,
        local: LocalEndpoints,
        pods: BTreeMap<Ipv4Addr, PodRef>,
    ) {
        if local != self.local || pods != self.local_pods {
            self.metrics.endpoints.set(local.len() as i64);
            self.pending_since
                .get_or_insert_with(std::time::Instant::now);
            self.local = local;
            self.local_pods = pods;
            self.dirty_policy = true;
            self.sync().await;
        }
    }

    /// Applies what changed or failed last time.
    pub async fn sync(&mut self) {
        if self.listed.len() < Kind::ALL.len() {
            return;
        }
        if self.dirty_topology {
            self.refresh_topology();
        }
        let mut verdicts_may_change = false;
        if self.dirty_policy {
            match self.sync_policy() {
                Ok(changed) => {
                    self.dirty_policy = false;
                    self.policy_filled = true;
                    verdicts_may_change |= changed;
                }
                Err(e) => {
                    self.policy_filled |= self.count_full(&e);
                    warn!(error = %e, "applying policy failed; what did not fit denies; retrying");
                    self.count_error(sync::POLICY);
                }
            }
        }
        if self.dirty_ipcache {
            let desired = self
                .topology
                .ipcache_with_pods(&self.pod_identities, self.nodes.gateway());
            self.metrics
                .set_map_entries(sluice_common::maps::IPCACHE.name, desired.len());
            match self.maps.ipcache.sync(&desired) {
                Ok(stats) => {
                    self.dirty_ipcache = false;
                    self.ipcache_filled = true;
                    // Identities live here: a changed entry can change a
                    // verdict.
                    verdicts_may_change |= stats.changed();
                    if stats.changed() {
                        info!(
                            entries = desired.len(),
                            written = stats.written,
                            removed = stats.removed,
                            "ipcache applied"
                        );
                    }
                }
                Err(e) => {
                    self.ipcache_filled |= self.count_full(&e);
                    warn!(error = %e, "applying the ipcache failed; retrying");
                    self.count_error(sync::IPCACHE);
                }
            }
        }
        if self.dirty_services {
            match self.sync_services() {
                Ok(()) => self.dirty_services = false,
                Err(e) => {
                    warn!(error = %e, "applying Services failed; retrying");
                    self.count_error(sync::SERVICES);
                }
            }
        }
        if self.dirty_routes {
            match self.nodes.apply(&self.topology).await {
                Ok(()) => self.dirty_routes = false,
                Err(e) => {
                    warn!(error = %e, "applying routes and masquerade failed; retrying");
                    self.count_error(sync::NODES);
                }
            }
        }
        if verdicts_may_change {
            match self.maps.revision.bump() {
                Ok(revision) => info!(revision, "policy revision"),
                Err(e) => warn!(error = %e, "bumping the policy revision"),
            }
        }
        let in_sync = !(self.dirty_topology
            || self.dirty_policy
            || self.dirty_ipcache
            || self.dirty_services
            || self.dirty_routes);
        if in_sync {
            self.last_sync = Some(std::time::Instant::now());
            self.metrics.last_sync.set(unix_now());
            if let Some(since) = self.pending_since.take() {
                self.metrics
                    .implementation_delay
                    .observe(since.elapsed().as_secs_f64());
            }
        }
    }

    /// The reconciler's part of `sluice status`: what it knows and
    /// applied, how fresh, and what it had to skip.
    pub fn report(&self) -> NodeReport {
        let ago = |at: Option<std::time::Instant>| {
            at.map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
        };
        let maps = crate::metrics::FILLED_MAPS
            .iter()
            .map(|map| MapFill {
                name: (*map).to_owned(),
                entries: self.metrics.map_entries.with_label_values(&[map]).get() as u64,
                capacity: self.metrics.map_capacity.with_label_values(&[map]).get() as u64,
            })
            .collect();
        let problems = self
            .node_problems
            .iter()
            .map(|p| format!("Node {}: {}", p.node, p.reason))
            .chain(self.problems.iter().map(ToString::to_string))
            .chain(self.audit_problems.iter().map(ToString::to_string))
            .chain(self.service_problems.iter().map(ToString::to_string))
            .collect();
        NodeReport {
            objects: Kind::ALL
                .iter()
                .map(|kind| (kind.label().to_owned(), self.state.count(*kind)))
                .collect(),
            identities: self.identities.labels().count() + self.identities.cidrs().count(),
            service_frontends: self.service_counts.0,
            service_backends: self.service_counts.1,
            maps,
            last_sync_ms_ago: ago(self.last_sync),
            last_event_ms_ago: ago(self.last_event),
            problems,
            // Set only when a sync found nothing left to apply after the
            // last change (see `sync`).
            in_sync: self.last_sync.is_some() && self.pending_since.is_none(),
            changes: self.changes,
            ..NodeReport::default()
        }
    }

    /// `sluice policy explain`: the verdict of a flow computed from the
    /// state this agent holds, checked against what its maps hold for its
    /// own pods.
    pub fn explain(&self, query: &ExplainQuery) -> Response {
        let local_pods = unidentified::tie_to_pods(&self.local_pods, &self.state);
        let hosts: Vec<Ipv4Addr> = std::iter::once(self.nodes.gateway())
            .chain(self.topology.own.as_ref().map(|n| n.ip))
            .collect();
        let view = NodeView {
            node: &self.services.node_name,
            state: &self.state,
            local: &self.local,
            local_pods: &local_pods,
            identities: &self.pod_identities,
            hosts: &hosts,
            audit_default: self.audit_default,
        };
        match explain::explain(&view, query) {
            Ok(mut explanation) => {
                let maps = KernelPolicy {
                    policy: &self.maps.policy,
                    ipcache: &self.maps.ipcache,
                };
                explain::check_datapath(&mut explanation, &self.local, &maps);
                for wrong in explanation.disagreements() {
                    warn!(direction = %wrong.direction, pod = ?wrong.pod, "policy maps disagree with the cluster state");
                }
                Response::Explained {
                    explanation: Box::new(explanation),
                }
            }
            Err(e) => Response::Error {
                kind: ErrorKind::NotFound,
                message: e.to_string(),
            },
        }
    }

    /// The Node objects changed: what this node makes of them.
    fn refresh_topology(&mut self) {
        let topology = self.nodes.topology(&self.state.nodes);
        if topology.problems != self.node_problems {
            for p in &topology.problems {
                warn!(node = %p.node, reason = %p.reason, "skipping Node object");
            }
            self.node_problems = topology.problems.clone();
        }
        self.metrics
            .node_problems
            .set(self.node_problems.len() as i64);
        if topology != self.topology {
            info!(
                remote_nodes = topology.remotes.len(),
                "node topology changed"
            );
            self.topology = topology;
            self.dirty_ipcache = true;
            self.dirty_routes = true;
            // NodePorts are on this node's address.
            self.dirty_services = true;
        }
        self.dirty_topology = false;
    }

    fn count_error(&self, what: &str) {
        self.metrics.sync_errors.with_label_values(&[what]).inc();
    }

    /// Counts a full map; returns whether `error` is one.
    fn count_full(&self, error: &DataplaneError) -> bool {
        let Some(map) = error.full_map() else {
            return false;
        };
        warn!(
            map,
            "eBPF map full: raise its mapSizes entry in the agent config"
        );
        self.metrics.map_full.with_label_values(&[map]).inc();
        true
    }

    /// Compiles the Services and writes their maps and nftables table.
    fn sync_services(&mut self) -> Result<(), ServiceSyncError> {
        let desired = if self.services.enabled {
            services::compile(
                &self.state,
                &self.services.node_name,
                self.topology.own.as_ref().map(|n| n.ip),
                &mut self.service_ids,
            )
        } else {
            DesiredServices::default()
        };
        if desired.problems != self.service_problems {
            for p in &desired.problems {
                warn!(service = %p.service, reason = %p.reason, "Service port skipped or refused");
            }
            self.service_problems = desired.problems.clone();
        }
        // Refused frontends first: until their reject rules are in, their
        // packets (handed to the stack) would be routed out instead.
        let masquerade = desired
            .frontends
            .values()
            .any(|f| f.flags & sluice_common::services::service_flags::MASQUERADE != 0);
        let ruleset = service_nft::ruleset(&desired.without_backends, masquerade);
        if self.applied_service_nft.as_deref() != Some(ruleset.as_str()) {
            nft::apply(&ruleset)?;
            self.applied_service_nft = Some(ruleset);
        }
        let applied = self.maps.services.apply(&desired);
        if let Err(e) = &applied {
            self.count_full(e);
        }
        let stats = applied?;
        let refused = desired.without_backends.len();
        self.metrics
            .service_frontends
            .with_label_values(&["ready"])
            .set((desired.frontends.len() - refused) as i64);
        self.metrics
            .service_frontends
            .with_label_values(&["refused"])
            .set(refused as i64);
        self.metrics
            .service_backends
            .set(desired.backends.len() as i64);
        self.metrics
            .service_problems
            .set(desired.problems.len() as i64);
        for (map, entries) in [
            (sluice_common::maps::SERVICES.name, desired.frontends.len()),
            (
                sluice_common::maps::SERVICE_BACKENDS.name,
                desired.backends.len(),
            ),
        ] {
            self.metrics.set_map_entries(map, entries);
        }
        self.metrics.service_names.set(desired.names.clone());
        self.service_counts = (desired.frontends.len(), desired.backends.len());
        if stats.changed() {
            info!(
                frontends = desired.frontends.len(),
                backends = desired.backends.len(),
                refused = desired.without_backends.len(),
                written = stats.written,
                removed = stats.removed,
                "Services applied"
            );
        }
        Ok(())
    }

    /// Compiles and writes policy; returns whether the maps changed.
    /// Before the first compile: number label sets and regions as the
    /// pinned maps (a previous agent's) already do, so no rule is written
    /// for a number the pinned ipcache still gives to someone else. The
    /// complete state is known by then.
    fn seed_identities(&mut self, local_pods: &crate::policy::LocalPods) {
        if self.identities_seeded {
            return;
        }
        self.identities_seeded = true;
        let (ipcache, regions) = match (
            self.maps.ipcache.pinned(),
            self.maps.policy.pinned_regions(),
        ) {
            (Ok(ipcache), Ok(regions)) => (ipcache, regions),
            (Err(e), _) | (_, Err(e)) => {
                // Fresh numbers then, past none: the old maps are replaced
                // within this sync.
                warn!(error = %e, "reading the pinned identities");
                return;
            }
        };
        let pods: BTreeMap<Ipv4Addr, u32> = ipcache
            .iter()
            .filter(|(net, _)| net.prefix_len() == 32)
            .map(|(net, info)| (net.addr(), info.identity))
            .collect();
        let keys = crate::policy::compile::pod_label_keys(&self.state, local_pods);
        let labels = crate::policy::identity::seeds(&pods, &keys);
        let cidrs: Vec<(ipnet::Ipv4Net, u32)> = regions.iter().map(|(n, i)| (*n, *i)).collect();
        let pinned = ipcache
            .values()
            .map(|info| info.identity)
            .chain(regions.values().copied());
        self.identities.seed(&labels, &cidrs, pinned);
        if !labels.is_empty() || !cidrs.is_empty() {
            info!(
                labels = labels.len(),
                cidrs = cidrs.len(),
                "identities taken over from the pinned maps"
            );
        }
    }

    fn sync_policy(&mut self) -> Result<bool, DataplaneError> {
        let local_pods = unidentified::tie_to_pods(&self.local_pods, &self.state);
        self.seed_identities(&local_pods);
        let mut desired = compile(
            &self.state,
            &self.local,
            &local_pods,
            &mut self.identities,
            self.audit_default,
        );
        if self.identify_endpoints {
            let waiting = unidentified::isolate_unidentified(
                &mut desired.placed,
                &self.local,
                &desired.pod_identities,
            );
            self.metrics.unidentified_endpoints.set(waiting as i64);
        }
        if desired.problems != self.problems {
            for p in &desired.problems {
                warn!(policy = %p.policy, reason = %p.reason, "policy rule allows nothing (fails closed)");
            }
            self.problems = desired.problems.clone();
        }
        for e in &desired.identity_errors {
            // The pods concerned get no identity: peers' rules cannot name
            // them (fail closed), and the next change retries.
            warn!(error = %e, "identity allocation failed");
            self.count_error(sync::IDENTITIES);
        }
        self.metrics
            .policy_problems
            .set(desired.problems.len() as i64);
        if desired.audit_problems != self.audit_problems {
            for p in &desired.audit_problems {
                warn!(object = %p.object, value = %p.value, "unreadable policy audit mode annotation; policy is enforced");
            }
            self.audit_problems = desired.audit_problems.clone();
        }
        self.metrics
            .policy_audit_problems
            .set(desired.audit_problems.len() as i64);
        if desired.ip_conflicts != self.ip_conflicts {
            for c in &desired.ip_conflicts {
                warn!(ip = %c.ip, pods = ?c.pods, "Pod IP claimed by more than one Pod; it belongs to none of them");
            }
            self.ip_conflicts = desired.ip_conflicts.clone();
        }
        self.metrics
            .pod_ip_conflicts
            .set(desired.ip_conflicts.len() as i64);
        if self.pod_identities != desired.pod_identities {
            self.pod_identities = desired.pod_identities;
            self.dirty_ipcache = true;
        }
        self.metrics
            .identities
            .with_label_values(&["labels"])
            .set(self.identities.labels().count() as i64);
        self.metrics
            .identities
            .with_label_values(&["cidr"])
            .set(self.identities.cidrs().count() as i64);
        let applied = self.maps.policy.apply(&desired.placed);
        for (map, entries) in self.maps.policy.wanted_entries() {
            self.metrics.set_map_entries(map, entries);
        }
        let stats = applied?;
        if stats.changed() {
            info!(
                isolated = desired.placed.isolation.len(),
                written = stats.written,
                removed = stats.removed,
                "policy applied"
            );
        }
        Ok(stats.changed())
    }
}

/// Objects a batch must remove before the heap is trimmed: below this
/// the freed memory is small and reused soon.
const TRIM_AFTER: usize = 500;

/// Whether a batch that took the cluster from `before` to `after` objects
/// freed enough to give memory back: many objects, or a quarter of them.
fn should_trim(before: usize, after: usize) -> bool {
    let removed = before.saturating_sub(after);
    removed >= TRIM_AFTER || (removed > 0 && removed * 4 >= before && before >= 100)
}

/// Returns the allocator's free memory to the system. glibc keeps freed
/// chunks in its arenas (and the top of the heap) for reuse, so an agent
/// whose cluster shrank would otherwise hold its peak for good.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Seconds since the Unix epoch, for the timestamp gauges.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_is_trimmed_after_large_removals_only() {
        assert!(should_trim(100_000, 99_000));
        assert!(should_trim(400, 300));
        assert!(!should_trim(400, 399));
        assert!(!should_trim(10, 0), "a small cluster frees little");
        assert!(!should_trim(1_000, 1_200), "growth");
        assert!(!should_trim(0, 0));
    }
}
