//! The `ports` of a NetworkPolicy rule: validated, and turned into the
//! (protocol, port prefix) pairs the policy map's LPM key can express.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_common::policy::ANY_PROTOCOL;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("unknown protocol {0:?} (TCP, UDP or SCTP)")]
    UnknownProtocol(String),
    #[error("port {0} is out of range 1-65535")]
    OutOfRange(i32),
    #[error("endPort {0} is out of range 1-65535")]
    EndOutOfRange(i32),
    #[error("endPort {end} is below port {port}")]
    EndBelowPort { port: u16, end: i32 },
    #[error("endPort needs a numeric port")]
    EndWithoutNumber,
    #[error("{0:?} is not a valid port name (IANA_SVC_NAME)")]
    InvalidName(String),
}

/// One validated entry of `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// Every port of the protocol (`ANY_PROTOCOL` for "any protocol").
    All { protocol: u8 },
    /// `port` or `port..=endPort`.
    Range { protocol: u8, first: u16, last: u16 },
    /// A container port name, resolved against the destination pod.
    Named { protocol: u8, name: String },
}

/// A port prefix: the top `bits` bits of `port` (lower bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortPrefix {
    pub port: u16,
    pub bits: u32,
}

/// An absent or empty `ports` list: every protocol, every port.
pub const ALL_TRAFFIC: PortMatch = PortMatch::All {
    protocol: ANY_PROTOCOL,
};

/// Validates a rule's `ports`; an empty result never happens (no ports means
/// [`ALL_TRAFFIC`]).
pub fn parse_ports(ports: Option<&[NetworkPolicyPort]>) -> Result<Vec<PortMatch>, PortError> {
    match ports {
        None | Some([]) => Ok(vec![ALL_TRAFFIC]),
        Some(ports) => ports.iter().map(parse_port).collect(),
    }
}

fn parse_port(port: &NetworkPolicyPort) -> Result<PortMatch, PortError> {
    // The API server defaults a missing protocol to TCP.
    let protocol = parse_protocol(port.protocol.as_deref().unwrap_or("TCP"))?;
    match (&port.port, port.end_port) {
        (None, None) => Ok(PortMatch::All { protocol }),
        (None, Some(_)) => Err(PortError::EndWithoutNumber),
        (Some(IntOrString::String(name)), None) => {
            if is_iana_svc_name(name) {
                Ok(PortMatch::Named {
                    protocol,
                    name: name.clone(),
                })
            } else {
                Err(PortError::InvalidName(name.clone()))
            }
        }
        (Some(IntOrString::String(_)), Some(_)) => Err(PortError::EndWithoutNumber),
        (Some(IntOrString::Int(first)), end) => {
            let first = u16::try_from(*first)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(PortError::OutOfRange(*first))?;
            let last = match end {
                None => first,
                Some(end) => {
                    let last = u16::try_from(end)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or(PortError::EndOutOfRange(end))?;
                    if last < first {
                        return Err(PortError::EndBelowPort { port: first, end });
                    }
                    last
                }
            };
            Ok(PortMatch::Range {
                protocol,
                first,
                last,
            })
        }
    }
}

/// Protocol names as the API accepts them (case matters there too).
pub fn parse_protocol(name: &str) -> Result<u8, PortError> {
    match name {
        "TCP" => Ok(TCP),
        "UDP" => Ok(UDP),
        "SCTP" => Ok(SCTP),
        other => Err(PortError::UnknownProtocol(other.to_owned())),
    }
}

/// IANA_SVC_NAME (RFC 6335): 1-15 of `[a-z0-9-]`, at least one letter, no
/// hyphen at either end or next to another.
pub fn is_iana_svc_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--")
}

/// The number of container port `name`/`protocol` in `pod`, if it has one.
pub fn resolve_named(pod: &Pod, name: &str, protocol: u8) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name)
                && parse_protocol(p.protocol.as_deref().unwrap_or("TCP")).ok() == Some(protocol)
        })
        .and_then(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
}

/// Every name the pod's container ports give, with its protocol, and the
/// number [`resolve_named`] resolves it to.
pub fn named_ports(pod: &Pod) -> BTreeMap<(String, u8), u16> {
    let names: BTreeSet<(&str, u8)> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let protocol = parse_protocol(p.protocol.as_deref().unwrap_or("TCP")).ok()?;
            Some((p.name.as_deref()?, protocol))
        })
        .collect();
    names
        .into_iter()
        .filter_map(|(name, protocol)| {
            let number = resolve_named(pod, name, protocol)?;
            Some(((name.to_owned(), protocol), number))
        })
        .collect()
}

/// The fewest prefixes that cover exactly `first..=last`.
pub fn range_prefixes(first: u16, last: u16) -> Vec<PortPrefix> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    while lo <= hi {
        // The largest aligned block starting at `lo` that stays within `hi`.
        let mut size = 1u32 << lo.trailing_zeros().min(16);
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push(PortPrefix {
            port: lo as u16,
            bits: 16 - size.trailing_zeros(),
        });
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(yaml: &str) -> Result<PortMatch, PortError> {
        parse_port(&serde_yaml::from_str(yaml).expect("port YAML"))
    }

    fn covered(prefixes: &[PortPrefix]) -> Vec<u16> {
        (0..=u16::MAX)
            .filter(|p| {
                prefixes
                    .iter()
                    .any(|x| x.bits == 0 || (p >> (16 - x.bits)) == (x.port >> (16 - x.bits)))
            })
            .collect()
    }

    #[test]
    fn protocol_defaults_to_tcp_and_must_be_known() {
        assert_eq!(
            port("port: 80"),
            Ok(PortMatch::Range {
                protocol: TCP,
                first: 80,
                last: 80
            })
        );
        assert_eq!(port("protocol: UDP"), Ok(PortMatch::All { protocol: UDP }));
        assert_eq!(
            port("protocol: SCTP\nport: 81").unwrap(),
            PortMatch::Range {
                protocol: SCTP,
                first: 81,
                last: 81
            }
        );
        assert!(matches!(
            port("protocol: ICMP"),
            Err(PortError::UnknownProtocol(_))
        ));
        assert!(matches!(
            port("protocol: tcp"),
            Err(PortError::UnknownProtocol(_))
        ));
    }

    #[test]
    fn numeric_ports_and_ranges_are_validated() {
        assert_eq!(port("port: 0"), Err(PortError::OutOfRange(0)));
        assert_eq!(port("port: 65536"), Err(PortError::OutOfRange(65536)));
        assert_eq!(port("port: -1"), Err(PortError::OutOfRange(-1)));
        assert_eq!(
            port("port: 65535").unwrap(),
            PortMatch::Range {
                protocol: TCP,
                first: 65535,
                last: 65535
            }
        );
        assert_eq!(
            port("port: 80\nendPort: 79"),
            Err(PortError::EndBelowPort { port: 80, end: 79 })
        );
        assert_eq!(
            port("port: 80\nendPort: 70000"),
            Err(PortError::EndOutOfRange(70000))
        );
        assert_eq!(port("endPort: 90"), Err(PortError::EndWithoutNumber));
        assert_eq!(
            port("port: http\nendPort: 90"),
            Err(PortError::EndWithoutNumber)
        );
        assert_eq!(
            port("port: 80\nendPort: 80").unwrap(),
            PortMatch::Range {
                protocol: TCP,
                first: 80,
                last: 80
            }
        );
    }

    #[test]
    fn port_names_must_be_iana_service_names() {
        assert_eq!(
            port("port: serve-80-tcp").unwrap(),
            PortMatch::Named {
                protocol: TCP,
                name: "serve-80-tcp".into()
            }
        );
        for bad in [
            "'80'",
            "HTTP",
            "-http",
            "http-",
            "ht--tp",
            "a-very-long-name-x",
            "'h_t'",
            "''",
        ] {
            assert!(
                matches!(
                    port(&format!("port: {bad}")),
                    Err(PortError::InvalidName(_))
                ),
                "{bad}"
            );
        }
        assert!(is_iana_svc_name("h2c") && is_iana_svc_name("a-b-c"));
    }

    #[test]
    fn empty_ports_mean_all_traffic() {
        assert_eq!(parse_ports(None), Ok(vec![ALL_TRAFFIC]));
        assert_eq!(parse_ports(Some(&[])), Ok(vec![ALL_TRAFFIC]));
    }

    #[test]
    fn ranges_become_minimal_exact_prefix_sets() {
        assert_eq!(
            range_prefixes(80, 80),
            vec![PortPrefix { port: 80, bits: 16 }]
        );
        assert_eq!(
            range_prefixes(0, 65535),
            vec![PortPrefix { port: 0, bits: 0 }]
        );
        assert_eq!(range_prefixes(1, 65535).len(), 16);
        assert_eq!(
            range_prefixes(8000, 8003),
            vec![PortPrefix {
                port: 8000,
                bits: 14
            }]
        );
        assert_eq!(
            range_prefixes(65535, 65535),
            vec![PortPrefix {
                port: 65535,
                bits: 16
            }]
        );
        for (first, last) in [
            (1, 65535),
            (80, 81),
            (81, 90),
            (1000, 2047),
            (9090, 9099),
            (32768, 65535),
            (3, 65534),
        ] {
            let prefixes = range_prefixes(first, last);
            assert_eq!(
                covered(&prefixes),
                (first..=last).collect::<Vec<_>>(),
                "{first}-{last}"
            );
            for x in &prefixes {
                assert_eq!(
                    x.port & !(u16::MAX.checked_shl(16 - x.bits).unwrap_or(0)),
                    0,
                    "low bits zero"
                );
            }
        }
    }

    #[test]
    fn named_ports_resolve_by_name_and_protocol() {
        let pod: Pod = serde_yaml::from_str(
            "spec:\n  containers:\n  - name: c\n    ports:\n    - {name: serve-80-tcp, containerPort: 80}\n    - {name: serve-80-udp, containerPort: 8080, protocol: UDP}\n",
        )
        .unwrap();
        assert_eq!(resolve_named(&pod, "serve-80-tcp", TCP), Some(80));
        assert_eq!(resolve_named(&pod, "serve-80-udp", UDP), Some(8080));
        assert_eq!(resolve_named(&pod, "serve-80-udp", TCP), None);
        assert_eq!(resolve_named(&pod, "nope", TCP), None);
    }
}
