//! The CNI environment contract (`CNI_*` variables), parsed once into a type.
//!
//! Which variables are required depends on the command (spec 1.1.0,
//! "CNI operations"); [`Invocation`] holds exactly what each command gets, so
//! the commands never look at the process environment themselves and tests
//! build an environment from a list of pairs.

use std::{
    ffi::{OsStr, OsString},
    path::PathBuf,
};

use crate::error::Error;

/// Linux IFNAMSIZ minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// The parsed environment of one plugin invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub invocation: Invocation,
    /// `CNI_ARGS`, raw; [`CniEnv::pod`] reads kubelet's part of it.
    pub args: Option<String>,
    /// `CNI_PATH`. sluice delegates to no other plugin, so it is optional
    /// for every command (the spec lists it as required for GC only because
    /// plugins must forward GC to delegates, of which sluice has none).
    pub path: Vec<PathBuf>,
}

/// The command and the variables the spec requires for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    Add(Target),
    /// `CNI_NETNS` is optional for DEL: the namespace may be gone already.
    Del {
        container_id: String,
        ifname: String,
        netns: Option<PathBuf>,
    },
    Check(Target),
    Version,
    Status,
    Gc,
}

/// An attachment together with the namespace it lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
}

impl Invocation {
    pub fn command_name(&self) -> &'static str {
        match self {
            Invocation::Add(_) => "ADD",
            Invocation::Del { .. } => "DEL",
            Invocation::Check(_) => "CHECK",
            Invocation::Version => "VERSION",
            Invocation::Status => "STATUS",
            Invocation::Gc => "GC",
        }
    }
}

impl CniEnv {
    /// The Pod kubelet names in `CNI_ARGS` (`K8S_POD_NAMESPACE`,
    /// `K8S_POD_NAME`, `K8S_POD_UID`; `;`-separated `KEY=VALUE` pairs,
    /// others ignored, as `IgnoreUnknown=1` asks), if it names one.
    pub fn pod(&self) -> Option<sluice_common::api::PodRef> {
        let mut namespace = None;
        let mut name = None;
        let mut uid = None;
        for pair in self.args.as_deref()?.split(';') {
            match pair.split_once('=') {
                Some(("K8S_POD_NAMESPACE", v)) if !v.is_empty() => namespace = Some(v),
                Some(("K8S_POD_NAME", v)) if !v.is_empty() => name = Some(v),
                Some(("K8S_POD_UID", v)) if !v.is_empty() => uid = Some(v),
                _ => {}
            }
        }
        Some(sluice_common::api::PodRef {
            namespace: namespace?.to_owned(),
            name: name?.to_owned(),
            uid: uid.map(str::to_owned),
        })
    }

    /// Parses the environment from `(name, value)` pairs, e.g.
    /// `std::env::vars_os()`. Variables other than `CNI_*` are ignored; an
    /// empty value counts as unset, as in libcni.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let mut raw = RawEnv::default();
        let mut invalid = Vec::new();
        for (key, value) in vars {
            let (key, value) = (key.into(), value.into());
            let slot = match key.to_str() {
                Some("CNI_COMMAND") => &mut raw.command,
                Some("CNI_CONTAINERID") => &mut raw.container_id,
                Some("CNI_NETNS") => &mut raw.netns,
                Some("CNI_IFNAME") => &mut raw.ifname,
                Some("CNI_ARGS") => &mut raw.args,
                Some("CNI_PATH") => &mut raw.path,
                _ => continue,
            };
            if value.is_empty() {
                continue;
            }
            match value.into_string() {
                Ok(value) => *slot = Some(value),
                Err(_) => invalid.push(format!("{} is not valid UTF-8", key.to_string_lossy())),
            }
        }
        if !invalid.is_empty() {
            return Err(invalid_env(invalid.join("; ")));
        }
        raw.into_env()
    }
}

#[derive(Default)]
struct RawEnv {
    command: Option<String>,
    container_id: Option<String>,
    netns: Option<String>,
    ifname: Option<String>,
    args: Option<String>,
    path: Option<String>,
}

impl RawEnv {
    fn into_env(self) -> Result<CniEnv, Error> {
        let command = self
            .command
            .clone()
            .ok_or_else(|| invalid_env("CNI_COMMAND is not set".to_string()))?;
        let invocation = match command.as_str() {
            "ADD" => Invocation::Add(self.target()?),
            "CHECK" => Invocation::Check(self.target()?),
            "DEL" => {
                let (container_id, ifname) = self.attachment(false)?;
                Invocation::Del {
                    container_id,
                    ifname,
                    netns: self.netns.clone().map(PathBuf::from),
                }
            }
            "VERSION" => Invocation::Version,
            "STATUS" => Invocation::Status,
            "GC" => Invocation::Gc,
            other => {
                return Err(invalid_env(format!(
                    "CNI_COMMAND={other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                )))
            }
        };
        let path = self
            .path
            .as_deref()
            .map(|p| {
                std::env::split_paths(OsStr::new(p))
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(CniEnv {
            invocation,
            args: self.args,
            path,
        })
    }

    fn target(&self) -> Result<Target, Error> {
        let (container_id, ifname) = self.attachment(true)?;
        // attachment(true) has already reported a missing CNI_NETNS.
        let netns = self
            .netns
            .clone()
            .ok_or_else(|| invalid_env("CNI_NETNS is not set".to_string()))?;
        Ok(Target {
            container_id,
            ifname,
            netns: PathBuf::from(netns),
        })
    }

    /// Checks container id, interface name and (if `need_netns`) the netns,
    /// reporting every bad variable at once: the spec wants their names in
    /// the message.
    fn attachment(&self, need_netns: bool) -> Result<(String, String), Error> {
        let mut problems = Vec::new();
        match &self.container_id {
            None => problems.push("CNI_CONTAINERID is not set".to_string()),
            Some(id) => {
                if let Err(why) = validate_container_id(id) {
                    problems.push(format!("CNI_CONTAINERID={id:?} {why}"));
                }
            }
        }
        if need_netns && self.netns.is_none() {
            problems.push("CNI_NETNS is not set".to_string());
        }
        match &self.ifname {
            None => problems.push("CNI_IFNAME is not set".to_string()),
            Some(name) => {
                if let Err(why) = validate_ifname(name) {
                    problems.push(format!("CNI_IFNAME={name:?} {why}"));
                }
            }
        }
        match (&self.container_id, &self.ifname) {
            (Some(id), Some(name)) if problems.is_empty() => Ok((id.clone(), name.clone())),
            _ => Err(invalid_env(problems.join("; "))),
        }
    }
}

fn invalid_env(message: String) -> Error {
    Error::InvalidEnvironment { message }
}

/// Spec: "Must start with an alphanumeric character, optionally followed by
/// any combination of one or more alphanumeric characters, underscore, dot or
/// hyphen."
pub fn validate_container_id(id: &str) -> Result<(), &'static str> {
    let mut bytes = id.bytes();
    match bytes.next() {
        None => Err("is empty"),
        Some(first) if !first.is_ascii_alphanumeric() => {
            Err("must start with an alphanumeric character")
        }
        Some(_) if bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) => Ok(()),
        Some(_) => Err("may contain only alphanumerics, '_', '.' and '-'"),
    }
}

/// The kernel's rules for interface names (`dev_valid_name`), and no name
/// patterns (`%d`), which it would replace.
pub fn validate_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Err("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Err("is not a valid interface name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Err("must not contain '/', ':' or whitespace")
    } else if name.contains('%') {
        // A pattern: the kernel names the device itself (`eth%d` becomes
        // `eth0`), and the runtime would be told a name the pod lacks.
        Err("must not contain '%' (the kernel would choose the name)")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, Error> {
        CniEnv::from_vars(pairs.iter().copied())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("HOME", "/root"),
    ];

    fn without(var: &str) -> Vec<(&'static str, &'static str)> {
        ADD.iter().copied().filter(|(k, _)| *k != var).collect()
    }

    #[test]
    fn kubelets_cni_args_name_the_pod() {
        let mut vars = ADD.to_vec();
        vars.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=1f2e",
        ));
        let pod = env(&vars).expect("valid env").pod().expect("a pod");
        assert_eq!(
            (
                pod.namespace.as_str(),
                pod.name.as_str(),
                pod.uid.as_deref()
            ),
            ("shop", "web-0", Some("1f2e"))
        );
        assert_eq!(env(ADD).expect("valid env").pod(), None, "no CNI_ARGS");
        let mut vars = ADD.to_vec();
        vars.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=",
        ));
        assert_eq!(env(&vars).expect("valid env").pod(), None, "no name");
    }

    #[test]
    fn parses_a_complete_add() {
        let parsed = env(ADD).expect("valid env");
        assert_eq!(
            parsed.invocation,
            Invocation::Add(Target {
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
                netns: "/var/run/netns/pod".into(),
            })
        );
        assert_eq!(
            parsed.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn each_missing_required_variable_is_code_4_and_named() {
        for var in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let err = env(&without(var)).expect_err(var);
            assert_eq!(err.code(), code::INVALID_ENVIRONMENT, "{var}");
            assert!(err.to_string().contains(var), "{var}: {err}");
        }
    }

    #[test]
    fn empty_counts_as_missing() {
        let mut vars = without("CNI_IFNAME");
        vars.push(("CNI_IFNAME", ""));
        let err = env(&vars).expect_err("empty ifname");
        assert_eq!(err.code(), code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn all_problems_are_reported_together() {
        let err = env(&[("CNI_COMMAND", "CHECK")]).expect_err("nothing set");
        let msg = err.to_string();
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            assert!(msg.contains(var), "{msg}");
        }
    }

    #[test]
    fn del_does_not_need_netns() {
        let mut vars = without("CNI_NETNS");
        vars[0] = ("CNI_COMMAND", "DEL");
        let parsed = env(&vars).expect("DEL without netns");
        assert_eq!(
            parsed.invocation,
            Invocation::Del {
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
                netns: None,
            }
        );
        let err = env(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")]).expect_err("no id");
        assert_eq!(err.code(), code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn version_status_and_gc_need_only_the_command() {
        for (cmd, want) in [
            ("VERSION", Invocation::Version),
            ("STATUS", Invocation::Status),
            ("GC", Invocation::Gc),
        ] {
            assert_eq!(env(&[("CNI_COMMAND", cmd)]).expect(cmd).invocation, want);
        }
    }

    #[test]
    fn unknown_command_is_code_4() {
        let err = env(&[("CNI_COMMAND", "UPDATE")]).expect_err("unknown");
        assert_eq!(err.code(), code::INVALID_ENVIRONMENT);
        assert!(err.to_string().contains("CNI_COMMAND"), "{err}");
    }

    #[test]
    fn bad_names_are_code_4() {
        for (var, value) in [
            ("CNI_IFNAME", "eth0/1"),
            ("CNI_IFNAME", "a-very-long-ifname"),
            ("CNI_IFNAME", ".."),
            ("CNI_IFNAME", "eth%d"),
            ("CNI_CONTAINERID", "-leading-dash"),
            ("CNI_CONTAINERID", "has space"),
        ] {
            let mut vars = without(var);
            vars.push((var, value));
            let err = env(&vars).expect_err(value);
            assert_eq!(err.code(), code::INVALID_ENVIRONMENT, "{value}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn non_utf8_value_is_code_4() {
        use std::os::unix::ffi::OsStringExt;
        let vars = vec![
            (OsString::from("CNI_COMMAND"), OsString::from("DEL")),
            (
                OsString::from("CNI_CONTAINERID"),
                OsString::from_vec(vec![0x66, 0xff]),
            ),
            (OsString::from("CNI_IFNAME"), OsString::from("eth0")),
        ];
        let err = CniEnv::from_vars(vars).expect_err("bad utf-8");
        assert_eq!(err.code(), code::INVALID_ENVIRONMENT);
    }
}
