//! Reading the dataplane's per-CPU counters from the pinned maps: packets
//! by reason and direction, and policy verdicts.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use sluice_common::{
    counters::{
        index,
        verdict::{self, Verdict},
        Counter,
    },
    direction::Direction,
    maps,
    reason::Reason,
    services::ServiceCounter,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRow {
    pub reason: Reason,
    pub direction: Direction,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("opening pinned map {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading counter {index}: {source}")]
    Read {
        index: u32,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Policy decisions for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRow {
    pub direction: Direction,
    pub verdict: Verdict,
    pub count: u64,
}

fn open<T: aya::Pod>(
    pin_dir: &Path,
    map: maps::MapDef,
) -> Result<PerCpuArray<MapData, T>, CountersError> {
    let path = pin_dir.join(map.name);
    let open = |source| CountersError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open)?;
    PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(open)
}

/// Sums every CPU's counters, one row per (reason, direction).
pub fn read(pin_dir: &Path) -> Result<Vec<CounterRow>, CountersError> {
    let array = open::<Counter>(pin_dir, maps::PACKET_COUNTERS)?;
    let mut rows = Vec::new();
    for reason in Reason::ALL {
        for direction in Direction::ALL {
            let i = index(reason, direction);
            let per_cpu = array
                .get(&i, 0)
                .map_err(|source| CountersError::Read { index: i, source })?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            rows.push(CounterRow {
                reason,
                direction,
                packets,
                bytes,
            });
        }
    }
    Ok(rows)
}

/// Sums every CPU's policy verdicts, one row per (direction, verdict).
pub fn read_verdicts(pin_dir: &Path) -> Result<Vec<VerdictRow>, CountersError> {
    let array = open::<u64>(pin_dir, maps::POLICY_VERDICTS)?;
    let mut rows = Vec::new();
    for direction in Direction::ALL {
        for v in Verdict::ALL {
            let i = verdict::index(v, direction);
            let per_cpu = array
                .get(&i, 0)
                .map_err(|source| CountersError::Read { index: i, source })?;
            rows.push(VerdictRow {
                direction,
                verdict: v,
                count: per_cpu.iter().sum(),
            });
        }
    }
    Ok(rows)
}

/// The datapath's flow event counts, summed over CPUs, by result
/// (`emitted`, `lost`, `rate_limited`).
pub fn read_flow_events(pin_dir: &Path) -> Result<Vec<(&'static str, u64)>, CountersError> {
    let array = open::<u64>(pin_dir, maps::FLOW_EVENT_COUNTERS)?;
    sluice_common::flow::counters::ALL
        .iter()
        .map(|&(i, name)| {
            let per_cpu = array
                .get(&i, 0)
                .map_err(|source| CountersError::Read { index: i, source })?;
            Ok((name, per_cpu.iter().sum()))
        })
        .collect()
}

/// The count of one (direction, verdict) pair.
pub fn verdicts(rows: &[VerdictRow], direction: Direction, verdict: Verdict) -> u64 {
    rows.iter()
        .filter(|r| r.direction == direction && r.verdict == verdict)
        .map(|r| r.count)
        .sum()
}

/// Packets counted for one reason, both directions.
pub fn packets(rows: &[CounterRow], reason: Reason) -> u64 {
    rows.iter()
        .filter(|r| r.reason == reason)
        .map(|r| r.packets)
        .sum()
}

/// Exports the dataplane's counters to Prometheus, read from the pinned
/// maps at each scrape (the kernel keeps the totals; nothing is cached):
/// `sluice_datapath_packets_total` and `sluice_datapath_bytes_total` by
/// reason and direction, `sluice_policy_verdicts_total` by policy
/// direction and verdict.
pub struct Collector {
    pin_dir: std::path::PathBuf,
    service_names: crate::metrics::ServiceNames,
    service_connections: prometheus::IntCounterVec,
    service_refused: prometheus::IntCounterVec,
    packets: prometheus::IntCounterVec,
    bytes: prometheus::IntCounterVec,
    verdicts: prometheus::IntCounterVec,
    flow_events: prometheus::IntCounterVec,
    /// Scrapes may overlap; each fills the vectors from zero.
    scrape: std::sync::Mutex<()>,
}

impl Collector {
    /// Every family it exports, in one place for `desc` and `collect`.
    fn families(&self) -> [&prometheus::IntCounterVec; 6] {
        [
            &self.packets,
            &self.bytes,
            &self.verdicts,
            &self.flow_events,
            &self.service_connections,
            &self.service_refused,
        ]
    }

    pub fn new(
        pin_dir: &Path,
        service_names: crate::metrics::ServiceNames,
    ) -> prometheus::Result<Self> {
        use prometheus::{IntCounterVec, Opts};
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            service_names,
            service_connections: IntCounterVec::new(
                Opts::new(
                    "sluice_service_connections_total",
                    "New connections to a Service port the dataplane gave a backend, by Service (namespace/name) and port.",
                ),
                &["service", "port"],
            )?,
            service_refused: IntCounterVec::new(
                Opts::new(
                    "sluice_service_refused_total",
                    "Connection attempts to a Service port without a ready backend (rejected), by Service and port.",
                ),
                &["service", "port"],
            )?,
            packets: IntCounterVec::new(
                Opts::new(
                    "sluice_datapath_packets_total",
                    "Packets the eBPF dataplane forwarded or dropped, by reason and direction (seen from the pod).",
                ),
                &["reason", "direction"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "sluice_datapath_bytes_total",
                    "Bytes the eBPF dataplane forwarded or dropped, by reason and direction (seen from the pod).",
                ),
                &["reason", "direction"],
            )?,
            verdicts: IntCounterVec::new(
                Opts::new(
                    "sluice_policy_verdicts_total",
                    "Decisions of NetworkPolicies isolating a pod, by policy direction: allowed counts flows admitted (first packet, and again after a policy change; in audit mode, new flows only), denied counts refused packets, for the direction that refused them; would-deny counts new flows that audit mode let through.",
                ),
                &["direction", "verdict"],
            )?,
            flow_events: IntCounterVec::new(
                Opts::new(
                    "sluice_flow_events_total",
                    "Flow events of the datapath by result: emitted into the ring buffer, lost (the ring was full), rate_limited (over the per-CPU rate).",
                ),
                &["result"],
            )?,
            scrape: std::sync::Mutex::new(()),
        })
    }

    fn fill(&self) -> Result<(), CountersError> {
        let rows = read(&self.pin_dir)?;
        let verdicts = read_verdicts(&self.pin_dir)?;
        self.packets.reset();
        self.bytes.reset();
        self.verdicts.reset();
        for row in rows {
            let labels = [row.reason.name(), row.direction.name()];
            self.packets.with_label_values(&labels).inc_by(row.packets);
            self.bytes.with_label_values(&labels).inc_by(row.bytes);
        }
        self.flow_events.reset();
        for (result, count) in read_flow_events(&self.pin_dir)? {
            self.flow_events.with_label_values(&[result]).inc_by(count);
        }
        for row in verdicts {
            self.verdicts
                .with_label_values(&[row.direction.name(), row.verdict.name()])
                .inc_by(row.count);
        }
        self.service_connections.reset();
        self.service_refused.reset();
        let names = self.service_names.get();
        if !names.is_empty() {
            let counters = open::<ServiceCounter>(&self.pin_dir, maps::SERVICE_COUNTERS)?;
            for (id, (service, port)) in names {
                let per_cpu = counters
                    .get(&id, 0)
                    .map_err(|source| CountersError::Read { index: id, source })?;
                let (connections, refused) = per_cpu
                    .iter()
                    .fold((0, 0), |(c, r), s| (c + s.connections, r + s.refused));
                let labels = [service.as_str(), port.as_str()];
                self.service_connections
                    .with_label_values(&labels)
                    .inc_by(connections);
                self.service_refused
                    .with_label_values(&labels)
                    .inc_by(refused);
            }
        }
        Ok(())
    }
}

impl prometheus::core::Collector for Collector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.families().into_iter().flat_map(|v| v.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _scrape = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(error) = self.fill() {
            // The maps are pinned for the agent's whole life; failing to
            // read them is worth a log line, and the scrape goes on
            // without these families rather than with stale numbers.
            tracing::warn!(%error, "reading the dataplane counters");
            return Vec::new();
        }
        self.families()
            .into_iter()
            .flat_map(|v| v.collect())
            .collect()
    }
}
