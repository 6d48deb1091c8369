//! Where flows meet their readers: the history, the live stream, and
//! whether the datapath should emit at all (someone follows, or the agent
//! records always). Shared by the ring buffer reader, the API and the main
//! loop (which keeps the directory current); cheap to clone.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc, Mutex, RwLock,
};

use sluice_common::observe::{Flow, FlowFilter};
use tokio::sync::{broadcast, watch};

use super::{
    decode::{Clock, RawFlow},
    verdict_metrics::VerdictPairs,
    Directory, History,
};
use crate::metrics::Metrics;

/// Live flows a slow follower may fall behind by before it misses some.
const LIVE_QUEUE: usize = 1024;

/// The `flows` part of the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowsConfig {
    /// Record flows whether or not anyone follows them (the datapath emits
    /// for every new flow and drop, within the rate bounds).
    pub always: bool,
    /// Flows kept for `sluice observe` without `--follow`.
    pub history: usize,
    /// Events per second each CPU may emit, and its burst.
    pub rate: u32,
    pub burst: u32,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            always: false,
            history: 4096,
            rate: 1000,
            burst: 1000,
        }
    }
}

#[derive(Clone)]
pub struct FlowHub {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    config: FlowsConfig,
    clock: Clock,
    history: Mutex<History>,
    live: broadcast::Sender<Arc<Flow>>,
    followers: AtomicUsize,
    /// Whether the datapath should emit; the reader writes it to the
    /// switch.
    wanted: watch::Sender<bool>,
    directory: RwLock<Arc<Directory>>,
    /// The cluster changed since the directory was built.
    stale: AtomicBool,
    /// The agent is leaving: emission stays off.
    stopped: AtomicBool,
    metrics: Metrics,
    pairs: Mutex<VerdictPairs>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FlowHub {
    pub fn new(node: &str, config: FlowsConfig, metrics: Metrics) -> Self {
        let (live, _) = broadcast::channel(LIVE_QUEUE);
        let (wanted, _) = watch::channel(config.always);
        Self {
            inner: Arc::new(Inner {
                node: node.to_owned(),
                config,
                clock: Clock::now(),
                history: Mutex::new(History::new(config.history)),
                live,
                followers: AtomicUsize::new(0),
                wanted,
                directory: RwLock::new(Arc::new(Directory::default())),
                stale: AtomicBool::new(true),
                stopped: AtomicBool::new(false),
                metrics,
                pairs: Mutex::new(VerdictPairs::default()),
            }),
        }
    }

    pub fn config(&self) -> FlowsConfig {
        self.inner.config
    }

    /// Whether flows are being recorded now.
    pub fn recording(&self) -> bool {
        *self.inner.wanted.borrow()
    }

    /// Follows whether the datapath should emit.
    pub fn wanted(&self) -> watch::Receiver<bool> {
        self.inner.wanted.subscribe()
    }

    /// The cluster state changed: the directory is rebuilt before it is
    /// needed next ([`Self::needs_directory`]).
    pub fn mark_stale(&self) {
        self.inner.stale.store(true, Ordering::Relaxed);
    }

    /// Whether the directory should be rebuilt now: stale, and flows are
    /// recorded (nobody pays for names nobody reads).
    pub fn needs_directory(&self) -> bool {
        self.recording() && self.inner.stale.load(Ordering::Relaxed)
    }

    pub fn set_directory(&self, directory: Directory) {
        self.inner.stale.store(false, Ordering::Relaxed);
        *self
            .inner
            .directory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(directory);
    }

    /// Names, records and publishes one decoded event.
    pub fn ingest(&self, raw: &RawFlow) {
        let directory = self
            .inner
            .directory
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let flow = Arc::new(directory.enrich(raw, &self.inner.node, &self.inner.clock));
        self.inner.metrics.flow_events_received.inc();
        lock(&self.inner.pairs).count(&self.inner.metrics.flow_verdicts, &flow);
        lock(&self.inner.history).push(flow.clone());
        // No receiver is no error: nobody follows.
        let _ = self.inner.live.send(flow);
    }

    /// The recorded flows `filter` selects, oldest first, and how many are
    /// recorded in all.
    pub fn recorded(&self, filter: &FlowFilter) -> (Vec<Arc<Flow>>, usize) {
        let history = lock(&self.inner.history);
        (history.select(filter), history.len())
    }

    /// A new follower: the datapath emits while it lives. Subscribed before
    /// the history is read, so nothing falls between the two.
    pub fn follow(&self) -> Follower {
        let live = self.inner.live.subscribe();
        self.inner.followers.fetch_add(1, Ordering::Relaxed);
        self.update_wanted();
        Follower {
            hub: self.clone(),
            live,
        }
    }

    fn update_wanted(&self) {
        let want = !self.stopped()
            && (self.inner.config.always || self.inner.followers.load(Ordering::Relaxed) > 0);
        self.inner.wanted.send_if_modified(|w| {
            let changed = *w != want;
            *w = want;
            changed
        });
        self.inner
            .metrics
            .flow_followers
            .set(self.inner.followers.load(Ordering::Relaxed) as i64);
    }

    /// Stops emission for good (the agent is leaving): the reader turns the
    /// switch off.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.wanted.send_replace(false);
    }

    pub fn stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Relaxed)
    }

    /// Counts a ring buffer record that was no flow event.
    pub fn undecodable(&self) {
        self.inner.metrics.flow_events_undecodable.inc();
    }
}

/// A client following live flows; emission stays on while one lives.
pub struct Follower {
    hub: FlowHub,
    pub live: broadcast::Receiver<Arc<Flow>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.hub.inner.followers.fetch_sub(1, Ordering::Relaxed);
        self.hub.update_wanted();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::decode::{decode, tests as fixtures};

    fn raw() -> RawFlow {
        decode(&fixtures::bytes(&fixtures::denied_ingress())).expect("decode")
    }

    #[test]
    fn followers_switch_emission_on_and_off() {
        let hub = FlowHub::new("node1", FlowsConfig::default(), Metrics::new());
        let wanted = hub.wanted();
        assert!(!*wanted.borrow());
        let a = hub.follow();
        let b = hub.follow();
        assert!(*wanted.borrow());
        drop(a);
        assert!(*wanted.borrow(), "one still follows");
        drop(b);
        assert!(!*wanted.borrow());
        let always = FlowHub::new(
            "node1",
            FlowsConfig {
                always: true,
                ..FlowsConfig::default()
            },
            Metrics::new(),
        );
        drop(always.follow());
        assert!(always.recording());
        always.stop();
        assert!(!always.recording());
    }

    #[tokio::test]
    async fn ingested_flows_are_recorded_bounded_and_sent_live() {
        let hub = FlowHub::new(
            "node1",
            FlowsConfig {
                history: 2,
                ..FlowsConfig::default()
            },
            Metrics::new(),
        );
        let mut follower = hub.follow();
        for _ in 0..3 {
            hub.ingest(&raw());
        }
        let (flows, recorded) = hub.recorded(&FlowFilter::default());
        assert_eq!((flows.len(), recorded), (2, 2));
        assert_eq!(flows[0].node, "node1");
        let live = follower.live.recv().await.expect("a live flow");
        assert_eq!(live.destination.port, 80);
        assert!(hub
            .inner
            .metrics
            .render()
            .contains("sluice_flow_events_received_total 3"));
    }
}
