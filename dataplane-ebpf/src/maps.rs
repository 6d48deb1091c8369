//! The maps, pinned by name so every program load shares them and an agent
//! restart finds them again. Sizes here are defaults; the agent overrides
//! them at load time from its configuration.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use sluice_common::{
    endpoint::{EndpointInfo, IpKey},
    metrics::{self, Counter},
};

#[map(name = "SLUICE_ENDPOINTS")]
pub static ENDPOINTS: HashMap<IpKey, EndpointInfo> = HashMap::pinned(65536, 0);

#[map(name = "SLUICE_METRICS")]
pub static METRICS: PerCpuArray<Counter> = PerCpuArray::pinned(metrics::MAX_ENTRIES, 0);
