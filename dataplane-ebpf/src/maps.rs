//! The maps, pinned by name so every program load shares them and an agent
//! restart finds them again. Names and default capacities come from the
//! one table in `sluice_common::maps`; the agent overrides capacities at
//! load time from its configuration.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sluice_common::{
    bpf_map,
    config::DataplaneConfig,
    conntrack::{CtEntry, CtKey},
    counters::Counter,
    endpoint::{EndpointInfo, IpKey},
    flow::{EventConfig, TokenBucket},
    fragment::{FragEntry, FragKey},
    ipcache::{Ipv4Prefix, RemoteInfo},
    policy::{Isolation, PolicyEntry, PolicyKey},
    services::{
        Affinity, AffinityKey, Backend, BackendSlot, Frontend, ServiceCounter, ServiceFlow,
        ServiceInfo, ServiceKey, SockFrontend, SockKey,
    },
};

bpf_map!(ENDPOINTS: HashMap<IpKey, EndpointInfo>);
bpf_map!(PACKET_COUNTERS: PerCpuArray<Counter>);
bpf_map!(POLICY_VERDICTS: PerCpuArray<u64>);
bpf_map!(IPCACHE: LpmTrie<Ipv4Prefix, RemoteInfo>);
bpf_map!(CONFIG: Array<DataplaneConfig>);
bpf_map!(POLICY_REVISION: Array<u32>);
bpf_map!(POLICY_EXACT: HashMap<PolicyKey, PolicyEntry>);
bpf_map!(POLICY_RANGES: LpmTrie<PolicyKey, PolicyEntry>);
bpf_map!(ISOLATION: HashMap<u32, Isolation>);
bpf_map!(CIDR_IDENTITY: LpmTrie<Ipv4Prefix, u32>);
bpf_map!(CONNTRACK: LruHashMap<CtKey, CtEntry>);
bpf_map!(STATEFUL_ENDPOINTS: Array<u64>);
bpf_map!(SERVICES: HashMap<ServiceKey, ServiceInfo>);
bpf_map!(SERVICE_BACKENDS: HashMap<BackendSlot, Backend>);
bpf_map!(SERVICE_FLOWS: LruHashMap<CtKey, ServiceFlow>);
bpf_map!(SERVICE_REVERSE: LruHashMap<CtKey, Frontend>);
bpf_map!(SERVICE_AFFINITY: LruHashMap<AffinityKey, Affinity>);
bpf_map!(SERVICE_COUNTERS: PerCpuArray<ServiceCounter>);
bpf_map!(SOCK_REVERSE: LruHashMap<SockKey, SockFrontend>);
bpf_map!(FRAGMENTS: LruHashMap<FragKey, FragEntry>);
bpf_map!(TABLE_INSERTS: PerCpuArray<u64>);
bpf_map!(PREFILTER_DENY: LpmTrie<Ipv4Prefix, u32>);
bpf_map!(FLOW_EVENTS: RingBuf);
bpf_map!(FLOW_EVENT_CONFIG: Array<EventConfig>);
bpf_map!(FLOW_EVENT_BUCKETS: PerCpuArray<TokenBucket>);
bpf_map!(FLOW_EVENT_COUNTERS: PerCpuArray<u64>);
