//! Reading the dataplane's per-CPU counters from the pinned map.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use sluice_common::{
    maps,
    metrics::{dir, index, reason, Counter},
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

/// Sums every CPU's counters, one row per (reason, direction).
pub fn read(pin_dir: &Path) -> Result<Vec<CounterRow>, CountersError> {
    let path = pin_dir.join(maps::METRICS);
    let open = |source| CountersError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open)?;
    let array: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(open)?;
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

/// Packets counted for one reason, both directions.
pub fn packets(rows: &[CounterRow], reason: &str) -> u64 {
    rows.iter()
        .filter(|r| r.reason == reason)
        .map(|r| r.packets)
        .sum()
}
