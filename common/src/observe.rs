//! Flows as `sluice observe` shows them: the agent's enriched record of a
//! flow event (its JSON is the `-o json` output, one object per line;
//! field names are stable and listed in the README), and the one filter
//! the agent and the CLI both apply.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What became of a flow: `allowed`, `denied` (by policy), `would-deny`
/// (passed: policy would deny, but the pod is in audit mode), `dropped`
/// (for another reason), `translated` (given a Service backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowVerdict {
    Allowed,
    Denied,
    Dropped,
    Translated,
    #[serde(rename = "would-deny")]
    WouldDeny,
}

impl FlowVerdict {
    pub const ALL: [FlowVerdict; 5] = [
        FlowVerdict::Allowed,
        FlowVerdict::Denied,
        FlowVerdict::Dropped,
        FlowVerdict::Translated,
        FlowVerdict::WouldDeny,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            FlowVerdict::Allowed => "allowed",
            FlowVerdict::Denied => "denied",
            FlowVerdict::Dropped => "dropped",
            FlowVerdict::Translated => "translated",
            FlowVerdict::WouldDeny => "would-deny",
        }
    }
}

impl std::str::FromStr for FlowVerdict {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                format!("unknown verdict {s:?}: want allowed, denied, would-deny, dropped or translated")
            })
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEnd {
    pub ip: Ipv4Addr,
    /// 0 for protocols without ports.
    pub port: u16,
    /// The pod's namespace and name, when the address is a known pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The node the pod runs on, or the node the address belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The identity of the address (node-local numbers): the one policy
    /// judged it by (verdicts), else the agent's; a label set's, or a
    /// reserved one (`1` host, `2` world, `6` remote node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// What the identity stands for (`ns=x pod=a`, a CIDR, `world`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_labels: Option<String>,
}

impl Default for FlowEnd {
    fn default() -> Self {
        Self {
            ip: Ipv4Addr::UNSPECIFIED,
            port: 0,
            namespace: None,
            pod: None,
            labels: Default::default(),
            node: None,
            identity: None,
            identity_labels: None,
        }
    }
}

impl FlowEnd {
    /// `ns/name` of a pod, else the address.
    pub fn name(&self) -> String {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => self.ip.to_string(),
        }
    }
}

/// Policy's decision in one direction of a flow, where this node decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionVerdict {
    /// `open` (no policy isolates the pod), `allowed`, `denied` or
    /// `would-deny` (audit mode let it pass).
    pub decision: String,
    /// `namespace/name` of the NetworkPolicies that select the pod in this
    /// direction (one of them allowed the flow, or none did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// One flow event, enriched by the agent that recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    /// The same instant in nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// The node whose dataplane saw it.
    pub node: String,
    pub verdict: FlowVerdict,
    /// `ingress` or `egress`, seen from the pod whose policy decided (or
    /// whose packet was dropped).
    pub direction: String,
    /// The drop reason (`drop_policy_ingress`, ...), for denied and
    /// dropped flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `TCP`, `UDP`, `ICMP`, `SCTP`, or the protocol number.
    pub protocol: String,
    pub source: FlowEnd,
    pub destination: FlowEnd,
    /// Translated flows: the Service frontend the client addressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<FlowEnd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<DirectionVerdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<DirectionVerdict>,
}

/// What `sluice observe` asks for; every field narrows. The agent applies
/// it to what it recorded and to live flows, the CLI again to the merged
/// streams of several nodes (`--last`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    /// Either end is this pod (`namespace`, `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<(String, String)>,
    /// Either end is a pod of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<FlowVerdict>,
    /// `TCP`, `UDP`, `ICMP`, `SCTP` (any case) or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Either end's port (the destination's is the service port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only flows at or after this time (ns since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_unix_ns: Option<u64>,
    /// Of what is recorded, only the last N that match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
}

impl FlowFilter {
    /// Whether `flow` passes every condition (`last` aside, which counts).
    pub fn matches(&self, flow: &Flow) -> bool {
        let ends = [&flow.source, &flow.destination];
        let is_pod = |end: &FlowEnd, ns: &str, name: &str| {
            end.namespace.as_deref() == Some(ns) && end.pod.as_deref() == Some(name)
        };
        if let Some((ns, name)) = &self.pod {
            if !ends.iter().any(|e| is_pod(e, ns, name)) {
                return false;
            }
        }
        if let Some(ns) = &self.namespace {
            if !ends
                .iter()
                .any(|e| e.namespace.as_deref() == Some(ns.as_str()))
            {
                return false;
            }
        }
        if self.verdict.is_some_and(|v| v != flow.verdict) {
            return false;
        }
        if let Some(protocol) = &self.protocol {
            if !protocol.eq_ignore_ascii_case(&flow.protocol)
                && protocol_number(protocol) != protocol_number(&flow.protocol)
            {
                return false;
            }
        }
        if let Some(port) = self.port {
            let service_port = flow.service.as_ref().map(|s| s.port);
            if flow.source.port != port
                && flow.destination.port != port
                && service_port != Some(port)
            {
                return false;
            }
        }
        if self.since_unix_ns.is_some_and(|t| flow.time_unix_ns < t) {
            return false;
        }
        true
    }

    /// Of `flows` (oldest first), those that match, the last `last` of
    /// them.
    pub fn select<'a, F: std::borrow::Borrow<Flow>>(
        &self,
        flows: impl IntoIterator<Item = &'a F>,
    ) -> Vec<&'a F> {
        let mut out: Vec<&F> = flows
            .into_iter()
            .filter(|f| self.matches((*f).borrow()))
            .collect();
        if let Some(last) = self.last {
            let skip = out.len().saturating_sub(last);
            out.drain(..skip);
        }
        out
    }
}

/// The IP protocol number of a name or number (`TCP`, `6`).
pub fn protocol_number(protocol: &str) -> Option<u8> {
    match protocol.to_ascii_uppercase().as_str() {
        "ICMP" => Some(1),
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        other => other.parse().ok(),
    }
}

/// The name `observe` shows for a protocol number.
pub fn protocol_name(number: u8) -> String {
    match number {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

/// `unix_ns` as RFC 3339 in UTC with microseconds
/// (`2026-12-06T05:40:01.123456Z`).
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(ip: [u8; 4], port: u16, pod: Option<(&str, &str)>) -> FlowEnd {
        FlowEnd {
            ip: ip.into(),
            port,
            namespace: pod.map(|p| p.0.to_owned()),
            pod: pod.map(|p| p.1.to_owned()),
            ..FlowEnd::default()
        }
    }

    fn flow(verdict: FlowVerdict, from: (&str, &str), to: (&str, &str), port: u16) -> Flow {
        Flow {
            time: rfc3339(1_000),
            time_unix_ns: 1_000,
            node: "node1".into(),
            verdict,
            direction: "ingress".into(),
            reason: None,
            protocol: "TCP".into(),
            source: end([10, 0, 0, 1], 40000, Some(from)),
            destination: end([10, 0, 0, 2], port, Some(to)),
            service: None,
            egress: None,
            ingress: None,
        }
    }

    #[test]
    fn every_condition_narrows_and_either_end_counts() {
        let f = flow(FlowVerdict::Denied, ("x", "a"), ("y", "b"), 80);
        assert!(FlowFilter::default().matches(&f));
        let only = |filter: FlowFilter| filter.matches(&f);
        assert!(only(FlowFilter {
            pod: Some(("y".into(), "b".into())),
            ..Default::default()
        }));
        assert!(!only(FlowFilter {
            pod: Some(("x".into(), "b".into())),
            ..Default::default()
        }));
        assert!(only(FlowFilter {
            namespace: Some("x".into()),
            ..Default::default()
        }));
        assert!(!only(FlowFilter {
            namespace: Some("z".into()),
            ..Default::default()
        }));
        assert!(only(FlowFilter {
            verdict: Some(FlowVerdict::Denied),
            ..Default::default()
        }));
        assert!(!only(FlowFilter {
            verdict: Some(FlowVerdict::Allowed),
            ..Default::default()
        }));
        for p in ["tcp", "TCP", "6"] {
            assert!(only(FlowFilter {
                protocol: Some(p.into()),
                ..Default::default()
            }));
        }
        assert!(!only(FlowFilter {
            protocol: Some("udp".into()),
            ..Default::default()
        }));
        assert!(only(FlowFilter {
            port: Some(80),
            ..Default::default()
        }));
        assert!(!only(FlowFilter {
            port: Some(81),
            ..Default::default()
        }));
        assert!(only(FlowFilter {
            since_unix_ns: Some(1_000),
            ..Default::default()
        }));
        assert!(!only(FlowFilter {
            since_unix_ns: Some(1_001),
            ..Default::default()
        }));
    }

    #[test]
    fn a_service_port_matches_translated_flows() {
        let mut f = flow(FlowVerdict::Translated, ("x", "a"), ("y", "b"), 8080);
        f.service = Some(end([10, 96, 0, 1], 80, None));
        assert!(FlowFilter {
            port: Some(80),
            ..Default::default()
        }
        .matches(&f));
    }

    #[test]
    fn last_keeps_the_newest_matches() {
        let flows: Vec<Flow> = (0..10u16)
            .map(|i| {
                let verdict = if i % 2 == 0 {
                    FlowVerdict::Allowed
                } else {
                    FlowVerdict::Denied
                };
                flow(verdict, ("x", "a"), ("y", "b"), i)
            })
            .collect();
        let filter = FlowFilter {
            verdict: Some(FlowVerdict::Denied),
            last: Some(2),
            ..Default::default()
        };
        let ports: Vec<u16> = filter
            .select(&flows)
            .iter()
            .map(|f| f.destination.port)
            .collect();
        assert_eq!(ports, [7, 9]);
    }

    #[test]
    fn json_keeps_the_documented_field_names() {
        let f = flow(FlowVerdict::Denied, ("x", "a"), ("y", "b"), 80);
        let value: serde_json::Value = serde_json::to_value(&f).expect("serialize");
        for field in [
            "time",
            "time_unix_ns",
            "node",
            "verdict",
            "direction",
            "protocol",
            "source",
            "destination",
        ] {
            assert!(value.get(field).is_some(), "{field} missing in {value}");
        }
        assert_eq!(value["verdict"], "denied");
        assert_eq!(value["source"]["namespace"], "x");
        assert_eq!(value["destination"]["port"], 80);
        let back: Flow = serde_json::from_value(value).expect("deserialize");
        assert_eq!(back, f);
    }

    #[test]
    fn rfc3339_is_utc_with_microseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2026-12-06T05:40:01.123456Z
        assert_eq!(
            rfc3339(1_796_535_601_123_456_789),
            "2026-12-06T05:40:01.123456Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
