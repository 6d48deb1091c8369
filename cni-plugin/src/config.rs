//! The network configuration on stdin: CNI's standard keys plus sluice's own.
//!
//! Parsing goes in the order libcni checks: JSON syntax (code 6), then
//! `cniVersion` (code 1), then the keys themselves (code 7). Unknown keys are
//! ignored.

use std::path::PathBuf;

use serde::Deserialize;
use sluice_common::api::{Attachment, DEFAULT_SOCKET};

use crate::error::Error;

/// Versions of the spec this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// Used where no (supported) version was asked for: the newest.
pub const DEFAULT_VERSION: CniVersion = CniVersion::V1_1_0;

/// Longest path that fits `sockaddr_un.sun_path` (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A supported CNI spec version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub fn parse(version: &str) -> Option<Self> {
        match version {
            "0.4.0" => Some(CniVersion::V0_4_0),
            "1.0.0" => Some(CniVersion::V1_0_0),
            "1.1.0" => Some(CniVersion::V1_1_0),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }
}

/// A parsed, validated network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub plugin_type: String,
    /// `agentSocket`, or the agent's default socket.
    pub agent_socket: PathBuf,
    /// `mtu`: overrides the MTU the agent hands out.
    pub mtu: Option<u32>,
    /// `prevResult`, undecoded: only CHECK reads it, and decoding it is
    /// CHECK's business (ADD rejects its presence, DEL ignores it).
    pub prev_result: Option<serde_json::Value>,
    /// `cni.dev/valid-attachments` (GC only).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The keys sluice reads; serde ignores the rest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    agent_socket: Option<String>,
    mtu: Option<u32>,
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, Error> {
        let value: serde_json::Value =
            serde_json::from_slice(stdin).map_err(|source| Error::Decode {
                what: "network config",
                source,
            })?;
        let serde_json::Value::Object(map) = &value else {
            return Err(Error::config("network config is not a JSON object"));
        };
        let cni_version = match map.get("cniVersion") {
            Some(serde_json::Value::String(v)) => check_version(v)?,
            Some(other) => {
                return Err(Error::config(format!("cniVersion {other} is not a string")))
            }
            None => return Err(incompatible("(none)")),
        };
        let raw: RawConf =
            serde_json::from_value(value).map_err(|e| Error::config(e.to_string()))?;

        let name = raw.name.ok_or_else(|| Error::config("missing \"name\""))?;
        validate_network_name(&name)?;
        let plugin_type = raw
            .plugin_type
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::config("missing \"type\""))?;
        let agent_socket = match raw.agent_socket {
            Some(path) => validate_socket_path(path)?,
            None => PathBuf::from(DEFAULT_SOCKET),
        };
        if let Some(mtu) = raw.mtu {
            // 68 is IPv4's minimum MTU (RFC 791); the kernel rejects less.
            if !(68..=65535).contains(&mtu) {
                return Err(Error::config(format!("mtu {mtu} is outside 68..=65535")));
            }
        }
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            agent_socket,
            mtu: raw.mtu,
            prev_result: raw.prev_result.filter(|v| !v.is_null()),
            valid_attachments: raw.valid_attachments.map(|list| {
                list.into_iter()
                    .map(|a| Attachment {
                        container_id: a.container_id,
                        ifname: a.ifname,
                    })
                    .collect()
            }),
        })
    }
}

/// The version a VERSION request asks about. VERSION must work with a bare
/// `{"cniVersion": ...}` (or nothing at all), so only syntax is checked; the
/// spec says to echo the requested version, supported or not.
pub fn requested_version(stdin: &[u8]) -> Result<String, Error> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_VERSION.as_str().to_string());
    }
    let value: serde_json::Value =
        serde_json::from_slice(stdin).map_err(|source| Error::Decode {
            what: "VERSION request",
            source,
        })?;
    Ok(match value.get("cniVersion") {
        Some(serde_json::Value::String(v)) if !v.is_empty() => v.clone(),
        _ => DEFAULT_VERSION.as_str().to_string(),
    })
}

/// The version to write into an error object before (or without) a full
/// parse: the config's version when it is one we speak, else the newest.
/// Never fails; it is what the panic hook and early errors use.
pub fn reply_version(stdin: &[u8]) -> CniVersion {
    // Read as `NetConf::parse` reads it (a repeated key: the last wins, as
    // in Go's encoding/json), so an error carries the version the config
    // was taken at.
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().and_then(CniVersion::parse))
        .unwrap_or(DEFAULT_VERSION)
}

fn check_version(version: &str) -> Result<CniVersion, Error> {
    CniVersion::parse(version).ok_or_else(|| incompatible(version))
}

fn incompatible(version: &str) -> Error {
    Error::IncompatibleVersion {
        version: version.to_string(),
        supported: SUPPORTED_VERSIONS.join(", "),
    }
}

/// Spec: "Must start with an alphanumeric character, optionally followed by
/// any combination of one or more alphanumeric characters, underscore, dot or
/// hyphen."
fn validate_network_name(name: &str) -> Result<(), Error> {
    crate::env::validate_container_id(name)
        .map_err(|why| Error::config(format!("network name {name:?} {why}")))
}

fn validate_socket_path(path: String) -> Result<PathBuf, Error> {
    if path.is_empty() {
        return Err(Error::config("agentSocket is empty"));
    }
    if !path.starts_with('/') {
        return Err(Error::config(format!(
            "agentSocket {path:?} is not an absolute path"
        )));
    }
    if path.len() > MAX_SOCKET_PATH || path.contains('\0') {
        return Err(Error::config(format!(
            "agentSocket {path:?} cannot be a unix socket path (at most {MAX_SOCKET_PATH} bytes, no NUL)"
        )));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn parse(json: &str) -> Result<NetConf, Error> {
        NetConf::parse(json.as_bytes())
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let conf =
            parse(r#"{"cniVersion":"1.0.0","name":"sluice","type":"sluice-cni"}"#).expect("valid");
        assert_eq!(conf.cni_version, CniVersion::V1_0_0);
        assert_eq!(conf.name, "sluice");
        assert_eq!(conf.plugin_type, "sluice-cni");
        assert_eq!(conf.agent_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(conf.mtu, None);
        assert_eq!(conf.prev_result, None);
        assert_eq!(conf.valid_attachments, None);
    }

    #[test]
    fn sluice_keys_and_unknown_keys() {
        let conf = parse(
            r#"{"cniVersion":"0.4.0","name":"n","type":"sluice-cni",
                "agentSocket":"/tmp/lab/agent.sock","mtu":1400,
                "ipam":{"type":"ignored"},"dns":{},"somethingElse":[1,2]}"#,
        )
        .expect("valid");
        assert_eq!(conf.agent_socket, PathBuf::from("/tmp/lab/agent.sock"));
        assert_eq!(conf.mtu, Some(1400));
    }

    #[test]
    fn not_json_is_code_6() {
        for input in ["", "not json", "{\"cniVersion\":"] {
            assert_eq!(
                parse(input).expect_err(input).code(),
                code::DECODING_FAILURE,
                "{input:?}"
            );
        }
    }

    #[test]
    fn missing_name_or_type_is_code_7() {
        let err = parse(r#"{"cniVersion":"1.1.0","type":"sluice-cni"}"#).expect_err("no name");
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG);
        assert!(err.to_string().contains("name"), "{err}");
        let err = parse(r#"{"cniVersion":"1.1.0","name":"n"}"#).expect_err("no type");
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG);
        let err = parse(r#"{"cniVersion":"1.1.0","name":"-n","type":"t"}"#).expect_err("bad");
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn unsupported_or_missing_version_is_code_1() {
        for json in [
            r#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#,
            r#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#,
            r#"{"name":"n","type":"t"}"#,
        ] {
            let err = parse(json).expect_err(json);
            assert_eq!(err.code(), code::INCOMPATIBLE_VERSION, "{json}");
            assert!(err.details().contains("1.1.0"), "{}", err.details());
        }
    }

    #[test]
    fn version_is_checked_before_the_other_keys() {
        let err = parse(r#"{"cniVersion":"0.2.0"}"#).expect_err("old and nameless");
        assert_eq!(err.code(), code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn bad_agent_socket_is_code_7() {
        let long = format!("/{}", "s".repeat(120));
        for socket in ["", "relative.sock", long.as_str()] {
            let json = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"t","agentSocket":{}}}"#,
                serde_json::Value::from(socket)
            );
            let err = parse(&json).expect_err(socket);
            assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG, "{socket:?}");
        }
        let err = parse(r#"{"cniVersion":"1.1.0","name":"n","type":"t","agentSocket":5}"#)
            .expect_err("number");
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn bad_mtu_is_code_7() {
        for mtu in ["0", "67", "70000", "\"1500\"", "-1"] {
            let json = format!(r#"{{"cniVersion":"1.1.0","name":"n","type":"t","mtu":{mtu}}}"#);
            let err = parse(&json).expect_err(mtu);
            assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG, "{mtu}");
        }
    }

    #[test]
    fn valid_attachments_for_gc() {
        let conf = parse(
            r#"{"cniVersion":"1.1.0","name":"n","type":"t",
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .expect("valid");
        assert_eq!(
            conf.valid_attachments,
            Some(vec![Attachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn version_request_echoes_or_defaults() {
        assert_eq!(requested_version(b"").expect("empty"), "1.1.0");
        assert_eq!(requested_version(b"{}").expect("no version"), "1.1.0");
        assert_eq!(
            requested_version(br#"{"cniVersion":"0.4.0"}"#).expect("0.4.0"),
            "0.4.0"
        );
        assert_eq!(
            requested_version(b"garbage").expect_err("garbage").code(),
            code::DECODING_FAILURE
        );
    }

    #[test]
    fn reply_version_never_fails() {
        assert_eq!(reply_version(b"garbage"), CniVersion::V1_1_0);
        assert_eq!(
            reply_version(br#"{"cniVersion":"0.3.1"}"#),
            CniVersion::V1_1_0
        );
        assert_eq!(
            reply_version(br#"{"cniVersion":"0.4.0"}"#),
            CniVersion::V0_4_0
        );
    }

    /// Found by the `cni` fuzz target: a repeated key made the peek fail
    /// (so errors said 1.1.0) while the full parse took the config at 0.4.0.
    #[test]
    fn reply_version_reads_a_repeated_key_as_the_parse_does() {
        let stdin =
            br#"{"cniVersion":"1.0.0","name":"n","type":"sluice-cni","cniVersion":"0.4.0"}"#;
        let conf = NetConf::parse(stdin).expect("config");
        assert_eq!(conf.cni_version, CniVersion::V0_4_0);
        assert_eq!(reply_version(stdin), conf.cni_version);
    }
}
