//! The agent's one event path: cluster objects from any source update the
//! cluster state, and what depends on the changed kinds is recomputed and
//! applied to the kernel.

use tracing::warn;

use crate::{
    cluster::{ClusterState, Event, Kind},
    metrics::Metrics,
    node_sync::NodeSync,
};

pub struct Reconciler {
    state: ClusterState,
    nodes: NodeSync,
    metrics: Metrics,
    /// The last apply failed; retry on the next tick.
    dirty: bool,
}

impl Reconciler {
    pub fn new(state: ClusterState, nodes: NodeSync, metrics: Metrics) -> Self {
        Self {
            state,
            nodes,
            metrics,
            dirty: true,
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub async fn handle(&mut self, event: Event) {
        let changed = self.state.apply(event);
        for kind in Kind::ALL {
            self.metrics
                .datastore_objects
                .with_label_values(&[kind.label()])
                .set(self.state.count(kind) as i64);
        }
        if changed.nodes {
            self.dirty = true;
        }
        self.sync().await;
    }

    /// Applies the node topology if something changed or the last attempt
    /// failed.
    pub async fn sync(&mut self) {
        if !self.dirty {
            return;
        }
        match self.nodes.apply(&self.state.nodes).await {
            Ok(_) => self.dirty = false,
            Err(e) => {
                warn!(error = %e, "applying the node topology failed; retrying");
                self.metrics.sync_errors.with_label_values(&["nodes"]).inc();
            }
        }
        self.metrics
            .node_problems
            .set(self.nodes.problems().len() as i64);
    }
}
