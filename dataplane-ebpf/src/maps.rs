//! The maps, pinned by name so every program load shares them and an agent
//! restart finds them again. Sizes here are defaults; the agent overrides
//! them at load time from its configuration.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use sluice_common::{
    conntrack::{CtEntry, CtKey},
    endpoint::{EndpointInfo, IpKey},
    ipcache::{DataplaneConfig, Ipv4Prefix, RemoteInfo},
    metrics::{self, Counter},
    policy::{Isolation, PolicyEntry, PolicyKey},
};

#[map(name = "SLUICE_ENDPOINTS")]
pub static ENDPOINTS: HashMap<IpKey, EndpointInfo> = HashMap::pinned(65536, 0);

#[map(name = "SLUICE_METRICS")]
pub static METRICS: PerCpuArray<Counter> = PerCpuArray::pinned(metrics::MAX_ENTRIES, 0);

#[map(name = "SLUICE_POLICY_VERDICTS")]
pub static POLICY_VERDICTS: PerCpuArray<u64> =
    PerCpuArray::pinned(metrics::verdict::MAX_ENTRIES, 0);

#[map(name = "SLUICE_IPCACHE")]
pub static IPCACHE: LpmTrie<Ipv4Prefix, RemoteInfo> = LpmTrie::pinned(16384, 0);

#[map(name = "SLUICE_CONFIG")]
pub static CONFIG: Array<DataplaneConfig> = Array::pinned(1, 0);

#[map(name = "SLUICE_POLICY_EXACT")]
pub static POLICY_EXACT: HashMap<PolicyKey, PolicyEntry> = HashMap::pinned(65536, 0);

#[map(name = "SLUICE_POLICY_RANGES")]
pub static POLICY_RANGES: LpmTrie<PolicyKey, PolicyEntry> = LpmTrie::pinned(65536, 0);

#[map(name = "SLUICE_ISOLATION")]
pub static ISOLATION: HashMap<u32, Isolation> = HashMap::pinned(65536, 0);

#[map(name = "SLUICE_CIDR_IDENTITY")]
pub static CIDR_IDENTITY: LpmTrie<Ipv4Prefix, u32> = LpmTrie::pinned(16384, 0);

#[map(name = "SLUICE_CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(262144, 0);
