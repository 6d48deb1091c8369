//! Reading the dataplane's per-CPU counters from the pinned maps: packets
//! by reason and direction, and policy verdicts.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use sluice_common::{
    maps,
    metrics::{dir, index, reason, verdict, Counter},
    policy::direction,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRow {
    pub reason: &'static str,
    pub direction: &'static str,
    pub drop: bool,
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

fn direction_name(d: u32) -> &'static str {
    if d == dir::INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

/// Policy decisions for one policy direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRow {
    pub direction: &'static str,
    pub verdict: &'static str,
    pub count: u64,
}

fn open<T: aya::Pod>(pin_dir: &Path, name: &str) -> Result<PerCpuArray<MapData, T>, CountersError> {
    let path = pin_dir.join(name);
    let open = |source| CountersError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open)?;
    PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(open)
}

/// Sums every CPU's counters, one row per (reason, direction).
pub fn read(pin_dir: &Path) -> Result<Vec<CounterRow>, CountersError> {
    let array = open::<Counter>(pin_dir, maps::METRICS)?;
    let mut rows = Vec::new();
    for r in 0..reason::COUNT {
        for d in 0..dir::COUNT {
            let i = index(r, d);
            let per_cpu = array
                .get(&i, 0)
                .map_err(|source| CountersError::Read { index: i, source })?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            rows.push(CounterRow {
                reason: reason::name(r),
                direction: direction_name(d),
                drop: reason::is_drop(r),
                packets,
                bytes,
            });
        }
    }
    Ok(rows)
}

/// Sums every CPU's policy verdicts, one row per (policy direction,
/// verdict).
pub fn read_verdicts(pin_dir: &Path) -> Result<Vec<VerdictRow>, CountersError> {
    let array = open::<u64>(pin_dir, maps::POLICY_VERDICTS)?;
    let mut rows = Vec::new();
    for d in verdict::DIRECTIONS {
        for v in [verdict::ALLOWED, verdict::DENIED] {
            let i = verdict::index(v, d);
            let per_cpu = array
                .get(&i, 0)
                .map_err(|source| CountersError::Read { index: i, source })?;
            rows.push(VerdictRow {
                direction: policy_direction_name(d),
                verdict: verdict::name(v),
                count: per_cpu.iter().sum(),
            });
        }
    }
    Ok(rows)
}

fn policy_direction_name(d: u8) -> &'static str {
    if d == direction::INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

/// The count of one (policy direction, verdict) pair.
pub fn verdicts(rows: &[VerdictRow], direction: &str, verdict: &str) -> u64 {
    rows.iter()
        .filter(|r| r.direction == direction && r.verdict == verdict)
        .map(|r| r.count)
        .sum()
}

/// Packets counted for one reason, both directions.
pub fn packets(rows: &[CounterRow], reason: &str) -> u64 {
    rows.iter()
        .filter(|r| r.reason == reason)
        .map(|r| r.packets)
        .sum()
}
