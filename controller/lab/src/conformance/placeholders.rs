//! The placeholders of ipBlock cases: `{{ip x/b}}` is pod x/b's address,
//! `{{net x/b 4}}` the /4 network around it in canonical form. Pod IPs
//! exist only once the lab runs, so case files cannot spell them out.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde_yaml::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("{0:?}: `{{{{` without `}}}}`")]
    Unclosed(String),
    #[error("unknown placeholder {{{{{0}}}}} (want `ip NS/POD` or `net NS/POD BITS`)")]
    Unknown(String),
    #[error("placeholder {{{{{placeholder}}}}}: no pod {pod}")]
    NoPod { placeholder: String, pod: String },
    #[error("placeholder {{{{{0}}}}}: invalid prefix length")]
    Prefix(String),
}

/// Replaces placeholders in every string of `value` (keys stay as they
/// are: placeholders only stand for addresses).
pub fn substitute_value(
    value: &mut Value,
    ips: &BTreeMap<String, IpAddr>,
) -> Result<(), PlaceholderError> {
    match value {
        Value::String(s) => *s = substitute(s, ips)?,
        Value::Sequence(items) => {
            for item in items {
                substitute_value(item, ips)?;
            }
        }
        Value::Mapping(map) => {
            for (_, item) in map.iter_mut() {
                substitute_value(item, ips)?;
            }
        }
        Value::Tagged(tagged) => substitute_value(&mut tagged.value, ips)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Replaces placeholders in `text`; `ips` maps `ns/name` to pod IPs.
pub fn substitute(text: &str, ips: &BTreeMap<String, IpAddr>) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| PlaceholderError::Unclosed(text.to_owned()))?;
        let inner = after[..end].trim();
        rest = &after[end + 2..];
        let lookup = |pod: &str| {
            ips.get(pod)
                .copied()
                .ok_or_else(|| PlaceholderError::NoPod {
                    placeholder: inner.to_owned(),
                    pod: pod.to_owned(),
                })
        };
        match inner.split_whitespace().collect::<Vec<_>>()[..] {
            ["ip", pod] => {
                let ip = lookup(pod)?;
                out.push_str(&ip.to_string());
                // Cases write the host mask as IPv4's; upstream picks it
                // by address family.
                if ip.is_ipv6() {
                    if let Some(after_mask) = rest.strip_prefix("/32") {
                        out.push_str("/128");
                        rest = after_mask;
                    }
                }
            }
            ["net", pod, bits] => {
                let ip = lookup(pod)?;
                let bits: u8 = bits
                    .parse()
                    .map_err(|_| PlaceholderError::Prefix(inner.to_owned()))?;
                let net =
                    IpNet::new(ip, bits).map_err(|_| PlaceholderError::Prefix(inner.to_owned()))?;
                out.push_str(&net.trunc().to_string());
            }
            _ => return Err(PlaceholderError::Unknown(inner.to_owned())),
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips() -> BTreeMap<String, IpAddr> {
        BTreeMap::from([
            ("x/a".to_owned(), "10.244.1.5".parse().expect("ip")),
            ("x/b".to_owned(), "10.244.2.7".parse().expect("ip")),
            ("y/a".to_owned(), "fd00::1:7".parse().expect("ip")),
        ])
    }

    #[test]
    fn ips_and_networks() {
        let ips = ips();
        assert_eq!(
            substitute("{{ip x/b}}/32", &ips),
            Ok("10.244.2.7/32".into())
        );
        assert_eq!(substitute("{{net x/b 4}}", &ips), Ok("0.0.0.0/4".into()));
        assert_eq!(
            substitute("{{net x/a 24}}", &ips),
            Ok("10.244.1.0/24".into())
        );
        assert_eq!(
            substitute("{{ net x/a 32 }}", &ips),
            Ok("10.244.1.5/32".into())
        );
        assert_eq!(
            substitute("a {{ip x/a}} b {{ip x/b}}/32 c", &ips),
            Ok("a 10.244.1.5 b 10.244.2.7/32 c".into())
        );
        assert_eq!(
            substitute("no placeholders", &ips),
            Ok("no placeholders".into())
        );
        // IPv6: the host mask follows the address family.
        assert_eq!(
            substitute("{{ip y/a}}/32", &ips),
            Ok("fd00::1:7/128".into())
        );
        assert_eq!(substitute("{{net y/a 4}}", &ips), Ok("f000::/4".into()));
    }

    #[test]
    fn mistakes_are_reported() {
        let ips = ips();
        assert!(matches!(
            substitute("{{ip x/b", &ips),
            Err(PlaceholderError::Unclosed(_))
        ));
        assert!(matches!(
            substitute("{{addr x/b}}", &ips),
            Err(PlaceholderError::Unknown(_))
        ));
        assert!(matches!(
            substitute("{{net x/b}}", &ips),
            Err(PlaceholderError::Unknown(_))
        ));
        assert_eq!(
            substitute("{{ip z/c}}", &ips),
            Err(PlaceholderError::NoPod {
                placeholder: "ip z/c".into(),
                pod: "z/c".into()
            })
        );
        for bad in ["{{net x/b 33}}", "{{net x/b -1}}", "{{net x/b four}}"] {
            assert!(
                matches!(substitute(bad, &ips), Err(PlaceholderError::Prefix(_))),
                "{bad}"
            );
        }
        assert_eq!(
            PlaceholderError::Unknown("addr x/b".into()).to_string(),
            "unknown placeholder {{addr x/b}} (want `ip NS/POD` or `net NS/POD BITS`)"
        );
    }

    #[test]
    fn every_string_of_a_policy_is_substituted() {
        let mut policy: Value = serde_yaml::from_str(
            "spec:\n  egress:\n  - to:\n    - ipBlock:\n        cidr: '{{net x/b 4}}'\n        except:\n        - '{{ip x/b}}/32'\n    ports: [{port: 80}]\n",
        )
        .expect("yaml");
        substitute_value(&mut policy, &ips()).expect("substitute");
        let block = &policy["spec"]["egress"][0]["to"][0]["ipBlock"];
        assert_eq!(block["cidr"], "0.0.0.0/4");
        assert_eq!(block["except"][0], "10.244.2.7/32");
        assert_eq!(policy["spec"]["egress"][0]["ports"][0]["port"], 80);
        let mut bad: Value = serde_yaml::from_str("a: ['{{ip q/q}}']").expect("yaml");
        assert!(substitute_value(&mut bad, &ips()).is_err());
    }
}
