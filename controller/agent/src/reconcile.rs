//! The agent's one event path: cluster objects from any source update the
//! cluster state, and what depends on the changed kinds is recomputed and
//! applied to the kernel: node topology (ipcache, routes, masquerade) and
//! NetworkPolicy (identities, policy maps). After any change that can
//! alter a verdict the policy revision moves, so established flows are
//! checked again with their next packet.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info, warn};

use crate::{
    datastore::{ClusterState, Event, Kind},
    kernel::bpf::{DataplaneError, PolicyMaps},
    kernel::node_sync::NodeSync,
    metrics::{sync, Metrics},
    policy::{
        compile::{compile, LocalEndpoints, PolicyProblem},
        identity::IdentityAllocator,
    },
};

/// The kinds whose complete list `event` carries.
pub fn listed_by(event: &Event) -> Vec<Kind> {
    match event {
        Event::Resync(_) => Kind::ALL.to_vec(),
        Event::ResyncKind(kind, _) => vec![*kind],
        Event::Apply(_) | Event::Delete(_) => Vec::new(),
    }
}

pub struct Reconciler {
    state: ClusterState,
    nodes: NodeSync,
    policy_maps: PolicyMaps,
    identities: IdentityAllocator,
    local: LocalEndpoints,
    pod_identities: BTreeMap<std::net::Ipv4Addr, u32>,
    problems: Vec<PolicyProblem>,
    metrics: Metrics,
    /// What must be (re)applied; stays set while applying fails.
    dirty_nodes: bool,
    dirty_policy: bool,
    /// Kinds whose complete list has arrived. Until every kind has, the
    /// state is partial: applying it would remove pinned entries (open
    /// isolated pods, forget identities) that a restarted agent must keep.
    listed: BTreeSet<Kind>,
    /// See [`Self::applied`].
    policy_filled: bool,
    nodes_filled: bool,
}

impl Reconciler {
    /// `listed`: the kinds `state` already holds complete lists of (all of
    /// them without a source).
    pub fn new(
        state: ClusterState,
        nodes: NodeSync,
        policy_maps: PolicyMaps,
        metrics: Metrics,
        listed: BTreeSet<Kind>,
    ) -> Self {
        Self {
            state,
            nodes,
            policy_maps,
            identities: IdentityAllocator::new(),
            local: LocalEndpoints::new(),
            pod_identities: BTreeMap::new(),
            problems: Vec::new(),
            metrics,
            dirty_nodes: true,
            dirty_policy: true,
            listed,
            policy_filled: false,
            nodes_filled: false,
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub async fn handle(&mut self, event: Event) {
        self.listed.extend(listed_by(&event));
        let changed = self.state.apply(event);
        for kind in Kind::ALL {
            self.metrics
                .datastore_objects
                .with_label_values(&[kind.label()])
                .set(self.state.count(kind) as i64);
        }
        self.dirty_nodes |= changed.nodes;
        self.dirty_policy |= changed.pods || changed.namespaces || changed.policies;
        self.sync().await;
    }

    /// Whether the complete cluster state (every kind listed) has been
    /// written to the maps at least once: policy and the ipcache each
    /// applied, or stopped only by a full map, whose missing entries deny
    /// (fail closed) while the sync retries.
    pub fn applied(&self) -> bool {
        self.policy_filled && self.nodes_filled
    }

    /// The pods registered on this node changed (CNI ADD/DEL).
    pub async fn set_local_endpoints(&mut self, local: LocalEndpoints) {
        if local != self.local {
            self.local = local;
            self.dirty_policy = true;
            self.sync().await;
        }
    }

    /// Applies what changed or failed last time.
    pub async fn sync(&mut self) {
        if self.listed.len() < Kind::ALL.len() {
            return;
        }
        let mut verdicts_may_change = false;
        if self.dirty_policy {
            match self.sync_policy() {
                Ok(changed) => {
                    self.dirty_policy = false;
                    self.policy_filled = true;
                    verdicts_may_change |= changed;
                    // Pod identities live in the ipcache.
                    self.dirty_nodes = true;
                }
                Err(e) => {
                    self.policy_filled |= self.count_full(&e);
                    warn!(error = %e, "applying policy failed; what did not fit denies; retrying");
                    self.metrics
                        .sync_errors
                        .with_label_values(&[sync::POLICY])
                        .inc();
                }
            }
        }
        if self.dirty_nodes {
            match self
                .nodes
                .apply(&self.state.nodes, &self.pod_identities)
                .await
            {
                Ok(_) => {
                    self.dirty_nodes = false;
                    self.nodes_filled = true;
                }
                Err(e) => {
                    // The ipcache is written first: any later failure (a
                    // route, the masquerade rules) leaves it complete.
                    self.nodes_filled |= match &e {
                        crate::kernel::node_sync::NodeSyncError::Dataplane(e) => self.count_full(e),
                        _ => true,
                    };
                    warn!(error = %e, "applying the node topology failed; retrying");
                    self.metrics
                        .sync_errors
                        .with_label_values(&[sync::NODES])
                        .inc();
                }
            }
            self.metrics
                .node_problems
                .set(self.nodes.problems().len() as i64);
        }
        verdicts_may_change |= self.nodes.take_ipcache_changed();
        if verdicts_may_change {
            match self.nodes.bump_policy_revision() {
                Ok(revision) => info!(revision, "policy revision"),
                Err(e) => warn!(error = %e, "bumping the policy revision"),
            }
        }
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

    fn sync_policy(&mut self) -> Result<bool, DataplaneError> {
        let desired = compile(&self.state, &self.local, &mut self.identities);
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
            self.metrics
                .sync_errors
                .with_label_values(&[sync::IDENTITIES])
                .inc();
        }
        self.metrics
            .policy_problems
            .set(desired.problems.len() as i64);
        let synced =
            self.policy_maps
                .sync(&desired.cidr_identities, &desired.rules, &desired.isolation);
        for (map, entries) in self.policy_maps.wanted_entries() {
            self.metrics
                .map_entries
                .with_label_values(&[map])
                .set(entries as i64);
        }
        let stats = synced?;
        let identities_changed = self.pod_identities != desired.pod_identities;
        self.pod_identities = desired.pod_identities;
        if stats.written + stats.removed > 0 {
            info!(
                rules = desired.rules.len(),
                isolated = desired.isolation.len(),
                written = stats.written,
                removed = stats.removed,
                "policy applied"
            );
        }
        Ok(stats.written + stats.removed > 0 || identities_changed)
    }
}
