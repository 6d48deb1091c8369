//! The API server's validation of a NetworkPolicy, with its messages.
//!
//! What the API server would reject must not take effect here either: a
//! manifest directory has no admission step, and an API server of another
//! version may let through what this one would not. The checks and the
//! wording follow Kubernetes' `ValidateNetworkPolicySpec`
//! (`pkg/apis/networking/validation`), `ValidateLabelSelector`
//! (`apimachinery/pkg/apis/meta/v1/validation`) and the name, label, port
//! and CIDR checks of `apimachinery/pkg/util/validation`, so an error reads
//! as `kubectl apply` would have printed it.

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// One of the API server's `field.Error`s: `{field}: {body}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The path, as `spec.ingress[0].from[1].podSelector`.
    pub field: String,
    /// `Invalid value: "x": detail`, `Required value: detail`, ...
    pub body: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

impl FieldError {
    fn invalid(field: &str, value: impl Quoted, detail: &str) -> Self {
        FieldError {
            field: field.to_owned(),
            body: format!("Invalid value: {}: {detail}", value.quoted()),
        }
    }

    fn required(field: &str, detail: &str) -> Self {
        let body = if detail.is_empty() {
            "Required value".to_owned()
        } else {
            format!("Required value: {detail}")
        };
        FieldError {
            field: field.to_owned(),
            body,
        }
    }

    fn forbidden(field: &str, detail: &str) -> Self {
        FieldError {
            field: field.to_owned(),
            body: format!("Forbidden: {detail}"),
        }
    }

    fn not_supported(field: &str, value: &str, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            field: field.to_owned(),
            body: format!(
                "Unsupported value: {value:?}: supported values: {}",
                supported.join(", ")
            ),
        }
    }

    /// Whether the error is about `field` or something inside it.
    pub fn is_within(&self, field: &str) -> bool {
        self.field
            .strip_prefix(field)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    }
}

/// How Go's `%q` / `%v` print the offending value.
trait Quoted {
    fn quoted(&self) -> String;
}

impl Quoted for &str {
    fn quoted(&self) -> String {
        // Go's %q and Rust's {:?} agree on printable ASCII, which is what
        // every accepted name consists of.
        format!("{self:?}")
    }
}

impl Quoted for i32 {
    fn quoted(&self) -> String {
        self.to_string()
    }
}

/// The API server's status message for a rejected object, as in
/// `NetworkPolicy.networking.k8s.io "deny" is invalid: spec.podSelector...`.
pub fn rejection(what: &str, name: &str, errors: &[FieldError]) -> String {
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let list = match &list[..] {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    format!("{what} {name:?} is invalid: {list}")
}

/// The fields of `raw` (a NetworkPolicy as it came) under `spec` that its
/// type does not have, as paths: what the API server's strict field
/// validation (kubectl's default) refuses with `strict decoding error:
/// unknown field "spec.ingress[0].form"`. `known` is the decoded policy
/// serialized again; values are not compared, only which fields exist, and
/// a null counts as absent.
pub fn unknown_fields(raw: &Value, known: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let (Some(raw), Some(known)) = (raw.get("spec"), known.get("spec")) {
        walk(raw, known, "spec", &mut unknown);
    } else if raw.get("spec").is_some_and(|s| !s.is_null()) {
        unknown.push("spec".to_owned());
    }
    unknown
}

fn walk(raw: &Value, known: &Value, path: &str, unknown: &mut Vec<String>) {
    match (raw, known) {
        (Value::Object(raw), Value::Object(known)) => {
            for (key, value) in raw {
                let path = format!("{path}.{key}");
                match known.get(key) {
                    _ if value.is_null() => {}
                    None => unknown.push(path),
                    Some(known) => walk(value, known, &path, unknown),
                }
            }
        }
        (Value::Array(raw), Value::Array(known)) => {
            for (i, (raw, known)) in raw.iter().zip(known).enumerate() {
                walk(raw, known, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// The API server's answer to unknown fields under strict validation.
pub fn strict_decoding(unknown: &[String]) -> String {
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    format!(
        "NetworkPolicy in version \"v1\" cannot be handled as a NetworkPolicy: strict decoding error: {}",
        fields.join(", ")
    )
}

/// `ValidateNetworkPolicySpec`: every error, in the API server's order.
pub fn network_policy(policy: &NetworkPolicy) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(spec) = &policy.spec else {
        // An absent spec is the zero value: nothing to reject.
        return errors;
    };
    errors.extend(label_selector(
        spec.pod_selector.as_ref(),
        "spec.podSelector",
    ));
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let path = format!("spec.ingress[{i}]");
        rule_errors(
            &mut errors,
            &path,
            rule.ports.as_deref(),
            rule.from.as_deref(),
            "from",
        );
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let path = format!("spec.egress[{i}]");
        rule_errors(
            &mut errors,
            &path,
            rule.ports.as_deref(),
            rule.to.as_deref(),
            "to",
        );
    }
    if let Some(types) = &spec.policy_types {
        errors.extend(policy_types(types));
    }
    errors
}

fn rule_errors(
    errors: &mut Vec<FieldError>,
    path: &str,
    ports: Option<&[NetworkPolicyPort]>,
    peers: Option<&[NetworkPolicyPeer]>,
    peer_field: &str,
) {
    for (i, port) in ports.into_iter().flatten().enumerate() {
        errors.extend(network_policy_port(port, &format!("{path}.ports[{i}]")));
    }
    for (i, peer) in peers.into_iter().flatten().enumerate() {
        errors.extend(network_policy_peer(
            peer,
            &format!("{path}.{peer_field}[{i}]"),
        ));
    }
}

/// The policyTypes part of `ValidateNetworkPolicySpec`.
pub fn policy_types(types: &[String]) -> Vec<FieldError> {
    const ALLOWED: [&str; 2] = ["Ingress", "Egress"];
    if types.len() > ALLOWED.len() {
        let list: Vec<String> = types.iter().map(|t| format!("{t:?}")).collect();
        // Go prints the offending slice with %#v.
        return vec![FieldError {
            field: "spec.policyTypes".into(),
            body: format!(
                "Invalid value: []networking.PolicyType{{{}}}: may not specify more than two policyTypes",
                list.join(", ")
            ),
        }];
    }
    types
        .iter()
        .enumerate()
        .filter(|(_, t)| !ALLOWED.contains(&t.as_str()))
        .map(|(i, t)| FieldError::not_supported(&format!("spec.policyTypes[{i}]"), t, &ALLOWED))
        .collect()
}

/// `ValidateNetworkPolicyPort`.
fn network_policy_port(port: &NetworkPolicyPort, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(protocol) = &port.protocol {
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            errors.push(FieldError::not_supported(
                &format!("{path}.protocol"),
                protocol,
                &["TCP", "UDP", "SCTP"],
            ));
        }
    }
    let end_path = format!("{path}.endPort");
    match &port.port {
        Some(IntOrString::Int(number)) => {
            if let Some(msg) = port_number(*number) {
                errors.push(FieldError::invalid(&format!("{path}.port"), *number, msg));
            }
            if let Some(end) = port.end_port {
                if end < *number {
                    // Sic: the API server names `port`'s value here.
                    errors.push(FieldError::invalid(
                        &end_path,
                        *number,
                        "must be greater than or equal to `port`",
                    ));
                }
                if let Some(msg) = port_number(end) {
                    errors.push(FieldError::invalid(&end_path, end, msg));
                }
            }
        }
        Some(IntOrString::String(name)) => {
            if let Some(end) = port.end_port {
                errors.push(FieldError::invalid(
                    &end_path,
                    end,
                    "may not be specified when `port` is non-numeric",
                ));
            }
            for msg in port_name(name) {
                errors.push(FieldError::invalid(
                    &format!("{path}.port"),
                    name.as_str(),
                    &msg,
                ));
            }
        }
        None => {
            if let Some(end) = port.end_port {
                errors.push(FieldError::invalid(
                    &end_path,
                    end,
                    "may not be specified when `port` is not specified",
                ));
            }
        }
    }
    errors
}

/// `ValidateNetworkPolicyPeer`.
fn network_policy_peer(peer: &NetworkPolicyPeer, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut peers = 0;
    if let Some(selector) = &peer.pod_selector {
        peers += 1;
        errors.extend(label_selector(
            Some(selector),
            &format!("{path}.podSelector"),
        ));
    }
    if let Some(selector) = &peer.namespace_selector {
        peers += 1;
        errors.extend(label_selector(
            Some(selector),
            &format!("{path}.namespaceSelector"),
        ));
    }
    if let Some(block) = &peer.ip_block {
        peers += 1;
        errors.extend(ip_block(block, &format!("{path}.ipBlock")));
    }
    if peers == 0 {
        errors.push(FieldError::required(path, "must specify a peer"));
    } else if peers > 1 && peer.ip_block.is_some() {
        errors.push(FieldError::forbidden(
            path,
            "may not specify both ipBlock and another peer",
        ));
    }
    errors
}

/// `ValidateIPBlock`.
fn ip_block(block: &IPBlock, path: &str) -> Vec<FieldError> {
    let cidr_path = format!("{path}.cidr");
    if block.cidr.is_empty() {
        return vec![FieldError::required(&cidr_path, "")];
    }
    let Some(cidr) = parse_cidr(&block.cidr) else {
        return vec![invalid_cidr(&cidr_path, &block.cidr)];
    };
    let mut errors = Vec::new();
    for (i, raw) in block.except.iter().flatten().enumerate() {
        let except_path = format!("{path}.except[{i}]");
        let Some(except) = parse_cidr(raw) else {
            errors.push(invalid_cidr(&except_path, raw));
            continue;
        };
        if !cidr.contains(&except.network()) || cidr.prefix_len() >= except.prefix_len() {
            errors.push(FieldError::invalid(
                &except_path,
                raw.as_str(),
                "must be a strict subset of `cidr`",
            ));
        }
    }
    errors
}

/// As Go's `ParseCIDRSloppy`: host bits may be set; the network is kept.
fn parse_cidr(raw: &str) -> Option<IpNet> {
    raw.parse::<IpNet>().ok().map(|n| n.trunc())
}

fn invalid_cidr(path: &str, raw: &str) -> FieldError {
    FieldError::invalid(
        path,
        raw,
        "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
    )
}

/// `ValidateLabelSelector` (label values in selectors must be valid).
pub fn label_selector(selector: Option<&LabelSelector>, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(selector) = selector else {
        return errors;
    };
    let labels_path = format!("{path}.matchLabels");
    for (key, value) in selector.match_labels.iter().flatten() {
        errors.extend(label_name(key, &labels_path));
        for msg in label_value(value) {
            errors.push(FieldError::invalid(&labels_path, value.as_str(), &msg));
        }
    }
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let path = format!("{path}.matchExpressions[{i}]");
        let values = expr.values.as_deref().unwrap_or_default();
        let values_path = format!("{path}.values");
        match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errors.push(FieldError::required(
                &values_path,
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.push(FieldError::forbidden(
                &values_path,
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(FieldError::invalid(
                &format!("{path}.operator"),
                other,
                "not a valid selector operator",
            )),
        }
        errors.extend(label_name(&expr.key, &format!("{path}.key")));
        for (n, value) in values.iter().enumerate() {
            for msg in label_value(value) {
                errors.push(FieldError::invalid(
                    &format!("{values_path}[{n}]"),
                    value.as_str(),
                    &msg,
                ));
            }
        }
    }
    errors
}

/// `ValidateLabelName`: `IsQualifiedName`, one error per message.
fn label_name(name: &str, path: &str) -> Vec<FieldError> {
    qualified_name(name)
        .into_iter()
        .map(|msg| FieldError::invalid(path, name, &msg))
        .collect()
}

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// Go's `RegexError`, examples and all (its double spaces included).
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{msg} (e.g. {}regex used for validation is '{fmt}')",
        examples.join(" or ")
    )
}

fn max_len_error(length: usize) -> String {
    format!("must be no more than {length} characters")
}

/// `IsQualifiedName`.
fn qualified_name(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_owned());
            } else {
                errors.extend(dns1123_subdomain(prefix).into_iter().map(|m| format!("prefix part {m}")));
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            )]
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errors.push(format!("name part {}", max_len_error(63)));
    }
    if !is_qualified_name(name) {
        errors.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errors
}

/// `IsValidLabelValue`.
fn label_value(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push(max_len_error(63));
    }
    if !value.is_empty() && !is_qualified_name(value) {
        errors.push(regex_error(
            LABEL_VALUE_MSG,
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errors
}

/// `IsDNS1123Subdomain`.
fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 253 {
        errors.push(max_len_error(253));
    }
    let label_ok = |label: &str| {
        let b = label.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && alnum(&b[0])
            && alnum(&b[b.len() - 1])
            && b.iter().all(|c| alnum(c) || *c == b'-')
    };
    if !value.split('.').all(label_ok) {
        errors.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errors
}

/// The whole of `QUALIFIED_NAME_FMT`.
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `IsValidPortNum`.
fn port_number(port: i32) -> Option<&'static str> {
    (!(1..=65535).contains(&port)).then_some("must be between 1 and 65535, inclusive")
}

/// `IsValidPortName` (an IANA_SVC_NAME).
fn port_name(port: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if port.len() > 15 {
        errors.push(max_len_error(15));
    }
    let charset = !port.is_empty()
        && port
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if !charset {
        errors
            .push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errors.push("must contain at least one letter (a-z)".into());
    }
    if port.contains("--") {
        errors.push("must not contain consecutive hyphens".into());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errors.push("must not begin or end with a hyphen".into());
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: &str) -> Vec<String> {
        let policy: NetworkPolicy = serde_yaml::from_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}\n"
        ))
        .expect("policy YAML");
        network_policy(&policy)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_valid_policy_has_no_errors() {
        let spec = "{podSelector: {matchLabels: {app: web, example.com/tier: ''}, matchExpressions: [{key: role, operator: NotIn, values: [db]}, {key: x, operator: Exists}]}, policyTypes: [Ingress, Egress], ingress: [{from: [{podSelector: {}, namespaceSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 80, endPort: 90}, {port: http, protocol: UDP}, {protocol: SCTP}]}], egress: [{}]}";
        assert_eq!(errors(spec), Vec::<String>::new());
        assert!(errors("{}").is_empty());
    }

    #[test]
    fn selector_errors_read_as_the_api_servers() {
        assert_eq!(
            errors("{podSelector: {matchExpressions: [{key: app, operator: Equals, values: [web]}]}}"),
            ["spec.podSelector.matchExpressions[0].operator: Invalid value: \"Equals\": not a valid selector operator"]
        );
        assert_eq!(
            errors("{podSelector: {matchExpressions: [{key: app, operator: In}]}}"),
            ["spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"]
        );
        assert_eq!(
            errors("{podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}}"),
            ["spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"]
        );
        assert_eq!(
            errors("{podSelector: {matchLabels: {app: -web}}}"),
            ["spec.podSelector.matchLabels: Invalid value: \"-web\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"]
        );
        assert_eq!(
            errors("{podSelector: {matchLabels: {Bad_/app: web}}}"),
            ["spec.podSelector.matchLabels: Invalid value: \"Bad_/app\": prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"]
        );
        let key = errors("{podSelector: {matchExpressions: [{key: '', operator: Exists}]}}");
        assert_eq!(key.len(), 2, "{key:?}");
        assert_eq!(key[0], "spec.podSelector.matchExpressions[0].key: Invalid value: \"\": name part must be non-empty");
        let value = errors(&format!(
            "{{ingress: [{{from: [{{namespaceSelector: {{matchExpressions: [{{key: a, operator: In, values: [ok, '{}']}}]}}}}]}}]}}",
            "v".repeat(64)
        ));
        assert_eq!(value, [format!("spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values[1]: Invalid value: \"{}\": must be no more than 63 characters", "v".repeat(64))]);
    }

    #[test]
    fn policy_types_must_be_ingress_or_egress_and_at_most_two() {
        assert_eq!(
            errors("{podSelector: {}, policyTypes: [Ingress, Sideways]}"),
            ["spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\""]
        );
        assert_eq!(
            errors("{podSelector: {}, policyTypes: [Ingress, Egress, Ingress]}"),
            ["spec.policyTypes: Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"Ingress\"}: may not specify more than two policyTypes"]
        );
        // Duplicates are not rejected by the API server.
        assert!(errors("{policyTypes: [Egress, Egress]}").is_empty());
    }

    #[test]
    fn peer_port_and_ip_block_errors() {
        let rule = |rule: &str| errors(&format!("{{ingress: [{rule}]}}"));
        assert_eq!(
            rule("{from: [{}]}"),
            ["spec.ingress[0].from[0]: Required value: must specify a peer"]
        );
        assert_eq!(
            rule("{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}"),
            ["spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer"]
        );
        assert_eq!(
            rule("{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}"),
            ["spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"]
        );
        assert_eq!(
            rule("{from: [{ipBlock: {cidr: ''}}]}"),
            ["spec.ingress[0].from[0].ipBlock.cidr: Required value"]
        );
        for except in ["10.1.0.0/24", "10.0.0.0/16", "::/64"] {
            assert_eq!(
                rule(&format!("{{from: [{{ipBlock: {{cidr: 10.0.0.0/16, except: ['{except}']}}}}]}}")),
                [format!("spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"{except}\": must be a strict subset of `cidr`")]
            );
        }
        assert_eq!(
            rule("{ports: [{protocol: tcp}]}"),
            ["spec.ingress[0].ports[0].protocol: Unsupported value: \"tcp\": supported values: \"TCP\", \"UDP\", \"SCTP\""]
        );
        assert_eq!(
            rule("{ports: [{port: 0}, {port: 90, endPort: 80}]}"),
            [
                "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ingress[0].ports[1].endPort: Invalid value: 90: must be greater than or equal to `port`",
            ]
        );
        assert_eq!(
            rule("{ports: [{endPort: 90}, {port: web, endPort: 90}]}"),
            [
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is not specified",
                "spec.ingress[0].ports[1].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
            ]
        );
        assert_eq!(
            rule("{ports: [{port: '80'}]}"),
            ["spec.ingress[0].ports[0].port: Invalid value: \"80\": must contain at least one letter (a-z)"]
        );
        assert_eq!(
            errors("{egress: [{to: [{podSelector: {matchExpressions: [{key: a, operator: Near}]}}]}]}"),
            ["spec.egress[0].to[0].podSelector.matchExpressions[0].operator: Invalid value: \"Near\": not a valid selector operator"]
        );
    }

    #[test]
    fn unknown_fields_under_spec_are_found_by_path() {
        let raw: Value = serde_yaml::from_str(
            "{metadata: {name: p, x-extra: 1}, spec: {podSelector: {matchLabels: {a: b}}, ingress: [{from: [{podSelector: {}}]}, {form: [{podSelector: {}}], ports: [{port: 80, prot: TCP}]}], egress: null, policyTypes: [Ingress]}}",
        )
        .unwrap();
        let policy: NetworkPolicy = serde_json::from_value(raw.clone()).unwrap();
        let known = serde_json::to_value(&policy).unwrap();
        let unknown = unknown_fields(&raw, &known);
        assert_eq!(
            unknown,
            ["spec.ingress[1].form", "spec.ingress[1].ports[0].prot"]
        );
        assert_eq!(
            strict_decoding(&unknown[..1]),
            "NetworkPolicy in version \"v1\" cannot be handled as a NetworkPolicy: strict decoding error: unknown field \"spec.ingress[1].form\""
        );
        // Everything the type has, empty objects and lists included.
        let raw: Value = serde_yaml::from_str(
            "{spec: {podSelector: {}, ingress: [{}], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: []}}], ports: [{port: web, endPort: null, protocol: UDP}]}], policyTypes: []}}",
        )
        .unwrap();
        let policy: NetworkPolicy = serde_json::from_value(raw.clone()).unwrap();
        assert!(unknown_fields(&raw, &serde_json::to_value(&policy).unwrap()).is_empty());
    }

    #[test]
    fn the_rejection_reads_as_the_api_servers_status() {
        let one = [FieldError::required(
            "spec.ingress[0].from[0]",
            "must specify a peer",
        )];
        assert_eq!(
            rejection("NetworkPolicy.networking.k8s.io", "p", &one),
            "NetworkPolicy.networking.k8s.io \"p\" is invalid: spec.ingress[0].from[0]: Required value: must specify a peer"
        );
        let two = [one[0].clone(), FieldError::forbidden("spec.x", "no")];
        assert!(rejection("NetworkPolicy.networking.k8s.io", "p", &two).ends_with(
            "is invalid: [spec.ingress[0].from[0]: Required value: must specify a peer, spec.x: Forbidden: no]"
        ));
        assert!(two[0].is_within("spec.ingress"));
        assert!(two[0].is_within("spec.ingress[0].from[0]"));
        assert!(!two[0].is_within("spec.ingress[0].from[0]x"));
        assert!(!two[0].is_within("spec.egress"));
    }
}
