//! Errors of the plugin, each carrying its CNI error code, and the CNI error
//! object they are reported as.
//!
//! The runtime acts on the code (11 means "retry", 3 means "nothing to clean
//! up", ...), so every variant states its code explicitly in [`Error::code`]
//! instead of letting a catch-all decide.

use std::{io, path::PathBuf};

use serde::Serialize;
use sluice_common::api::ErrorKind;

/// Well-known CNI error codes (spec 1.1.0, "Error") and the plugin-specific
/// ones (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// The agent refused the request as invalid.
    pub const AGENT_REJECTED: u32 = 100;
    /// The node's pod CIDR has no free address.
    pub const ADDRESS_EXHAUSTED: u32 = 101;
    /// The agent answered something this plugin cannot use (version skew).
    pub const AGENT_PROTOCOL: u32 = 102;
    /// The agent has no record of an attachment that must exist.
    pub const AGENT_NOT_FOUND: u32 = 103;
    /// A netlink operation (creating, moving, addressing the veth) failed.
    pub const NETLINK: u32 = 110;
    /// CHECK found the attachment different from what ADD produced.
    pub const CHECK_FAILED: u32 = 120;
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("incompatible CNI version {version:?}")]
    IncompatibleVersion { version: String, supported: String },

    #[error("invalid environment: {message}")]
    InvalidEnvironment { message: String },

    #[error("CNI_NETNS={path}: {reason}")]
    BadNetns { path: PathBuf, reason: String },

    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot decode {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("invalid network config: {message}")]
    InvalidConfig { message: String },

    #[error("agent at {socket} is unreachable")]
    AgentUnreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("agent at {socket} did not answer")]
    AgentNoAnswer {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("agent failed to {op}: {message}")]
    Agent {
        op: &'static str,
        kind: ErrorKind,
        message: String,
    },

    #[error("agent sent an unexpected answer to {op}: {detail}")]
    AgentProtocol { op: &'static str, detail: String },

    #[error("plugin not available: {reason}")]
    NotAvailable { reason: String },

    #[error("{context}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("{message}")]
    Wiring { message: String },

    #[error("check failed: {message}")]
    CheckFailed { message: String },

    /// An ADD failed and undoing part of it failed too: the runtime's DEL
    /// (which ADD failures are followed by) has to finish the job.
    #[error("{source}")]
    RollbackIncomplete {
        source: Box<Error>,
        failures: Vec<String>,
    },
}

impl Error {
    /// The CNI error code the runtime sees.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            Error::InvalidEnvironment { .. } | Error::BadNetns { .. } => code::INVALID_ENVIRONMENT,
            Error::Io { .. } => code::IO_FAILURE,
            Error::Decode { .. } => code::DECODING_FAILURE,
            Error::InvalidConfig { .. } => code::INVALID_NETWORK_CONFIG,
            Error::AgentUnreachable { source, .. } => {
                // A socket we may not open will not become openable by
                // retrying; everything else (no socket yet, agent restarting)
                // clears up once the agent is back.
                if source.kind() == io::ErrorKind::PermissionDenied {
                    code::IO_FAILURE
                } else {
                    code::TRY_AGAIN_LATER
                }
            }
            Error::AgentNoAnswer { .. } => code::TRY_AGAIN_LATER,
            Error::Agent { kind, .. } => match kind {
                ErrorKind::Invalid => code::AGENT_REJECTED,
                ErrorKind::Exhausted => code::ADDRESS_EXHAUSTED,
                ErrorKind::NotFound => code::AGENT_NOT_FOUND,
                // The agent documents Internal as "retrying may help".
                ErrorKind::Internal => code::TRY_AGAIN_LATER,
                // Kubelet retries the ADD; by then the Pod may be known.
                ErrorKind::Unidentified => code::TRY_AGAIN_LATER,
            },
            Error::AgentProtocol { .. } => code::AGENT_PROTOCOL,
            Error::NotAvailable { .. } => code::PLUGIN_NOT_AVAILABLE,
            Error::Netlink { .. } | Error::Wiring { .. } => code::NETLINK,
            Error::CheckFailed { .. } => code::CHECK_FAILED,
            Error::RollbackIncomplete { source, .. } => source.code(),
        }
    }

    /// The long form for the error object's `details`: the whole cause chain
    /// plus anything the variant knows beyond its one-line message.
    pub fn details(&self) -> String {
        let mut parts = vec![self.to_string()];
        let mut cause = std::error::Error::source(self);
        // RollbackIncomplete displays as its source; do not repeat it.
        if let Error::RollbackIncomplete { source, .. } = self {
            parts = vec![source.details()];
            cause = None;
        }
        while let Some(err) = cause {
            parts.push(err.to_string());
            cause = err.source();
        }
        let mut details = parts.join(": ");
        match self {
            Error::IncompatibleVersion { supported, .. } => {
                details.push_str(&format!(" (supported: {supported})"));
            }
            Error::RollbackIncomplete { failures, .. } => {
                details.push_str("; rollback incomplete: ");
                details.push_str(&failures.join("; "));
            }
            _ => {}
        }
        details
    }

    /// The CNI error object for this error, in the reply version `cni_version`.
    pub fn to_object(&self, cni_version: &str) -> ErrorObject {
        ErrorObject {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details: self.details(),
        }
    }

    /// `CNI_NETNS` could not be opened as a network namespace: the runtime
    /// gave us a bad reference.
    pub(crate) fn bad_netns(path: &std::path::Path, source: io::Error) -> Self {
        Error::BadNetns {
            path: path.to_path_buf(),
            reason: source.to_string(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn netlink(context: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            message: message.into(),
        }
    }

    pub(crate) fn check(message: impl Into<String>) -> Self {
        Error::CheckFailed {
            message: message.into(),
        }
    }
}

/// The error object printed on stdout (CNI spec, "Error").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorObject {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ErrorObject {
    /// The object for a panic: no `Error` exists, only the panic message.
    pub fn internal(cni_version: &str, msg: &str, details: String) -> Self {
        ErrorObject {
            cni_version: cni_version.to_string(),
            code: code::INTERNAL,
            msg: msg.to_string(),
            details,
        }
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"1.1.0","code":{},"msg":"internal error"}}"#,
                code::INTERNAL
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_the_cni_shape() {
        let err = Error::config("missing \"name\"");
        let json: serde_json::Value =
            serde_json::from_str(&err.to_object("1.0.0").to_json()).expect("valid JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "code": 7,
                "msg": "invalid network config: missing \"name\"",
                "details": "invalid network config: missing \"name\"",
            })
        );
    }

    #[test]
    fn details_walk_the_source_chain() {
        let err = Error::AgentUnreachable {
            socket: "/run/x.sock".into(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
        };
        assert_eq!(err.code(), code::TRY_AGAIN_LATER);
        assert_eq!(
            err.details(),
            "agent at /run/x.sock is unreachable: refused"
        );
    }

    #[test]
    fn permission_denied_on_the_socket_is_not_retryable() {
        let err = Error::AgentUnreachable {
            socket: "/run/x.sock".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(err.code(), code::IO_FAILURE);
    }

    #[test]
    fn agent_error_kinds_map_to_codes() {
        let agent = |kind| Error::Agent {
            op: "allocate",
            kind,
            message: String::new(),
        };
        assert_eq!(agent(ErrorKind::Invalid).code(), 100);
        assert_eq!(agent(ErrorKind::Exhausted).code(), 101);
        assert_eq!(agent(ErrorKind::NotFound).code(), 103);
        assert_eq!(agent(ErrorKind::Internal).code(), 11);
        assert_eq!(agent(ErrorKind::Unidentified).code(), 11);
    }

    #[test]
    fn rollback_failure_keeps_the_original_code_and_message() {
        let err = Error::RollbackIncomplete {
            source: Box::new(Error::Wiring {
                message: "eth0 already exists".into(),
            }),
            failures: vec!["release: agent unreachable".into()],
        };
        let obj = err.to_object("1.1.0");
        assert_eq!(obj.code, code::NETLINK);
        assert_eq!(obj.msg, "eth0 already exists");
        assert_eq!(
            obj.details,
            "eth0 already exists; rollback incomplete: release: agent unreachable"
        );
    }

    #[test]
    fn panic_object_is_code_999() {
        let obj = ErrorObject::internal("0.4.0", "internal error", "boom".into());
        let json: serde_json::Value = serde_json::from_str(&obj.to_json()).expect("valid JSON");
        assert_eq!(json["code"], 999);
        assert_eq!(json["cniVersion"], "0.4.0");
    }
}
