//! Writing the Service frontends and their backends, in an order that
//! never lets a program read a slot that is not there: backends first,
//! then the frontends with their counts, then the slots no count covers.

use aya::maps::{HashMap, MapData};
use sluice_common::{
    maps,
    services::{Backend, BackendSlot, ServiceInfo, ServiceKey},
};

use super::{
    diff::{self, Hash},
    DataplaneError, SyncStats,
};
use crate::services::DesiredServices;

pub struct ServiceMaps {
    frontends: Hash<ServiceKey, ServiceInfo>,
    backends: Hash<BackendSlot, Backend>,
}

impl ServiceMaps {
    pub fn new(
        frontends: HashMap<MapData, ServiceKey, ServiceInfo>,
        backends: HashMap<MapData, BackendSlot, Backend>,
    ) -> Self {
        Self {
            frontends: Hash {
                name: maps::SERVICES.name,
                map: frontends,
            },
            backends: Hash {
                name: maps::SERVICE_BACKENDS.name,
                map: backends,
            },
        }
    }

    /// Makes the maps hold exactly `desired`, writing only differences. A
    /// full map stops nothing else; the first error is reported after.
    pub fn apply(&mut self, desired: &DesiredServices) -> Result<SyncStats, DataplaneError> {
        let mut stats = SyncStats::default();
        let (written, backends_error) = diff::write(&mut self.backends, &desired.backends);
        stats.written += written;
        // A frontend whose backends did not all fit would send connections
        // to empty slots (the programs refuse those, as they do a frontend
        // without backends): counted and reported below.
        let (written, frontends_error) = diff::write(&mut self.frontends, &desired.frontends);
        stats.written += written;
        stats.removed +=
            diff::remove_stale(&mut self.frontends, |k| desired.frontends.contains_key(k))?;
        stats.removed +=
            diff::remove_stale(&mut self.backends, |k| desired.backends.contains_key(k))?;
        match backends_error.or(frontends_error) {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}
