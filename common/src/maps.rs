//! Every map of the eBPF object, defined once: its name (in the object and
//! under the pin directory, `<bpffs>/sluice/<node>/<NAME>`) and its default
//! capacity. User space reads the table ([`ALL`] and the constants); the
//! eBPF crate declares each map through [`bpf_map!`](crate::bpf_map), which
//! this table generates, so the two sides cannot name a map differently.
//! The agent overrides capacities at load time from its `mapSizes`.

/// One map of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub name: &'static str,
    /// Entries when nothing overrides it at load.
    pub capacity: u32,
}

/// Defines the constants, [`ALL`] and the `bpf_map!` macro from one table.
/// `$d` is a literal `$`, so the generated macro can have metavariables of
/// its own.
macro_rules! map_table {
    ($d:tt $( $(#[$doc:meta])* $id:ident = $name:literal, $capacity:expr; )*) => {
        $( $(#[$doc])* pub const $id: MapDef = MapDef { name: $name, capacity: $capacity }; )*

        /// Every map of the object.
        pub const ALL: &[MapDef] = &[$($id),*];

        /// Declares one map of the table in the eBPF crate, pinned by name
        /// with the table's default capacity:
        /// `bpf_map!(ENDPOINTS: HashMap<IpKey, EndpointInfo>);` declares
        /// `pub static ENDPOINTS` (the `map` attribute of `aya_ebpf` must be
        /// in scope).
        #[macro_export]
        macro_rules! bpf_map {
            $( ($id : $d ty:ty) => {
                #[map(name = $name)]
                pub static $id: $d ty = <$d ty>::pinned($capacity, 0);
            }; )*
        }
    };
}

map_table! { $
    /// Local pods: IP → endpoint (hash).
    ENDPOINTS = "SLUICE_ENDPOINTS", 65536;
    /// Packets and bytes by (reason, direction) (per-CPU array).
    PACKET_COUNTERS = "SLUICE_PACKET_COUNTERS", 256;
    /// Policy decisions by (verdict, direction) (per-CPU array).
    POLICY_VERDICTS = "SLUICE_POLICY_VERDICTS", 6;
    /// Addresses that are not local pods: other nodes, their pod CIDRs,
    /// every pod's identity (LPM trie).
    IPCACHE = "SLUICE_IPCACHE", 65536;
    /// Node-wide settings (one-entry array).
    CONFIG = "SLUICE_CONFIG", 1;
    /// The policy revision conntrack entries are checked against (one-entry
    /// array), written by the policy syncer.
    POLICY_REVISION = "SLUICE_POLICY_REVISION", 1;
    /// Rules on one port or all ports, and peer marks (hash).
    POLICY_EXACT = "SLUICE_POLICY_EXACT", 65536;
    /// Rules on port ranges (LPM trie).
    POLICY_RANGES = "SLUICE_POLICY_RANGES", 65536;
    /// Which directions policy isolates, per endpoint (hash).
    ISOLATION = "SLUICE_ISOLATION", 65536;
    /// ipBlock regions: address → CIDR identity (LPM trie).
    CIDR_IDENTITY = "SLUICE_CIDR_IDENTITY", 16384;
    /// Tracked flows (LRU hash).
    CONNTRACK = "SLUICE_CONNTRACK", 262144;
    /// Per local pod (by endpoint id, modulo the capacity): until when its
    /// flows go through conntrack because one of them needs its entry to
    /// be forwarded right (array of coarse-clock ns, written by the
    /// dataplane only).
    STATEFUL_ENDPOINTS = "SLUICE_STATEFUL_ENDPOINTS", 65536;
    /// Service frontends (hash).
    SERVICES = "SLUICE_SERVICES", 65536;
    /// Their backends, by (service, slot) (hash).
    SERVICE_BACKENDS = "SLUICE_SERVICE_BACKENDS", 262144;
    /// The backend each connection to a Service was given (LRU hash).
    SERVICE_FLOWS = "SLUICE_SERVICE_FLOWS", 262144;
    /// The frontend translated connections' replies come from (LRU hash).
    SERVICE_REVERSE = "SLUICE_SERVICE_REVERSE", 262144;
    /// Connections and refusals per frontend id (per-CPU array), sized
    /// like the frontends.
    SERVICE_COUNTERS = "SLUICE_SERVICE_COUNTERS", 65536;
    /// Session affinity: (client, service) → backend (LRU hash).
    SERVICE_AFFINITY = "SLUICE_SERVICE_AFFINITY", 65536;
    /// Node sockets given a backend by the socket hooks → the frontend
    /// they addressed (LRU hash).
    SOCK_REVERSE = "SLUICE_SOCK_REVERSE", 65536;
    /// IPv4 datagrams whose first fragment was seen: (addresses, protocol,
    /// IP id) → its ports and verdict (LRU hash; entries live seconds).
    FRAGMENTS = "SLUICE_FRAGMENTS", 16384;
    /// New entries the datapath put into its LRU tables, by table
    /// ([`crate::counters::inserts`]; per-CPU array): with what a table
    /// holds, how many it evicted.
    TABLE_INSERTS = "SLUICE_TABLE_INSERTS", 8;
    /// The prefilter's deny list: source CIDRs XDP drops on the underlay
    /// (LPM trie; the value is unused).
    PREFILTER_DENY = "SLUICE_PREFILTER_DENY", 16384;
    /// Flow events for `sluice observe` (ring buffer; the capacity is its
    /// size in bytes, a power of two of pages: 4096 events of 48 bytes
    /// with their 8-byte headers fit 256 KiB).
    FLOW_EVENTS = "SLUICE_FLOW_EVENTS", 256 * 1024;
    /// Whether and how fast to emit flow events (one-entry array),
    /// written by the agent ([`crate::flow::EventConfig`]).
    FLOW_EVENT_CONFIG = "SLUICE_FLOW_EVENT_CONFIG", 1;
    /// Each CPU's token bucket for flow events (per-CPU array).
    FLOW_EVENT_BUCKETS = "SLUICE_FLOW_EVENT_BUCKETS", 1;
    /// Flow events emitted, lost, rate-limited
    /// ([`crate::flow::counters`]; per-CPU array).
    FLOW_EVENT_COUNTERS = "SLUICE_FLOW_EVENT_COUNTERS", 4;
}

/// The map called `name`, if the object has one.
pub fn by_name(name: &str) -> Option<MapDef> {
    ALL.iter().copied().find(|m| m.name == name)
}
