//! The policy revision: every conntrack entry is stamped with the revision
//! it was checked at, so moving it makes the next packet of every flow be
//! checked again. Owned by whoever applies policy and identities.

use aya::maps::{Array, MapData};
use sluice_common::maps;

use super::{map_error, DataplaneError};

pub struct PolicyRevision(Array<MapData, u32>);

impl PolicyRevision {
    pub fn new(map: Array<MapData, u32>) -> Self {
        Self(map)
    }

    pub fn current(&self) -> u32 {
        self.0.get(&0, 0).unwrap_or(0)
    }

    /// Marks every conntrack entry as checked against outdated policy;
    /// returns the new revision.
    pub fn bump(&mut self) -> Result<u32, DataplaneError> {
        let next = self.current().wrapping_add(1);
        self.0
            .set(0, next, 0)
            .map_err(map_error(maps::POLICY_REVISION.name))?;
        Ok(next)
    }
}
