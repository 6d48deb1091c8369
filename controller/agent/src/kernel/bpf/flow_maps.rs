//! The flow event maps the agent owns: the ring buffer it reads and the
//! switch (with the rate bounds) it writes.

use aya::maps::{Array, MapData, RingBuf};
use sluice_common::{flow::EventConfig, maps};

use super::{map_error, Dataplane, DataplaneError};

/// The ring buffer and the switch, handed out once.
pub struct FlowMaps {
    pub ring: RingBuf<MapData>,
    pub switch: FlowSwitch,
}

/// Writes [`EventConfig`] (index 0 of `SLUICE_FLOW_EVENT_CONFIG`).
pub struct FlowSwitch {
    map: Array<MapData, EventConfig>,
}

impl FlowSwitch {
    pub fn set(&mut self, config: EventConfig) -> Result<(), DataplaneError> {
        self.map
            .set(0, config, 0)
            .map_err(map_error(maps::FLOW_EVENT_CONFIG.name))
    }
}

impl Dataplane {
    pub fn take_flow_maps(&mut self) -> Result<FlowMaps, DataplaneError> {
        let mut take = |map: maps::MapDef| {
            self.ebpf
                .take_map(map.name)
                .ok_or(DataplaneError::Missing(map.name))
        };
        let ring = take(maps::FLOW_EVENTS)?;
        let switch = take(maps::FLOW_EVENT_CONFIG)?;
        Ok(FlowMaps {
            ring: RingBuf::try_from(ring).map_err(map_error(maps::FLOW_EVENTS.name))?,
            switch: FlowSwitch {
                map: Array::try_from(switch).map_err(map_error(maps::FLOW_EVENT_CONFIG.name))?,
            },
        })
    }
}
