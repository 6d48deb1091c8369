//! The CNI plugin's input: its environment and the network config on
//! stdin, both from one fuzz input, through the plugin's own parsers.
//!
//! Layout of an input: the environment, one `NAME=VALUE` a line (bytes,
//! not necessarily UTF-8, as a real environment can be), then a NUL byte,
//! then stdin. An input without a NUL is all environment and an empty
//! stdin. Errors are the expected answer to most inputs; what must hold is
//! that nothing panics and that what the plugin would print is what the
//! CNI protocol allows.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;

use sluice_cni::{
    commands,
    config::{reply_version, requested_version, CniVersion, NetConf},
    env::{validate_container_id, validate_ifname, CniEnv, Invocation},
    result::CniResult,
    Error,
};

/// Splits an input into the environment's pairs and stdin.
pub fn split(data: &[u8]) -> (Vec<(OsString, OsString)>, &[u8]) {
    let (env, stdin) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &data[data.len()..]),
    };
    let vars = env
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line.iter().position(|b| *b == b'=') {
            Some(eq) => (
                OsString::from_vec(line[..eq].to_vec()),
                OsString::from_vec(line[eq + 1..].to_vec()),
            ),
            None => (OsString::from_vec(line.to_vec()), OsString::new()),
        })
        .collect();
    (vars, stdin)
}

/// Runs every parser the plugin runs before it touches the system, and
/// checks what each promises. Panics (a finding) when a promise is broken.
pub fn check(data: &[u8]) {
    let (vars, stdin) = split(data);
    let version = reply_version(stdin);

    let env = CniEnv::from_vars(vars.clone());
    match &env {
        Ok(env) => check_env(env),
        Err(err) => check_error_object(err, version),
    }

    // VERSION is the one command `run` answers without I/O.
    if matches!(&env, Ok(env) if env.invocation == Invocation::Version) {
        match sluice_cni::run(vars, stdin) {
            Ok(Some(out)) => {
                let reply: serde_json::Value =
                    serde_json::from_str(&out).expect("VERSION prints JSON");
                assert!(reply["supportedVersions"].is_array(), "{out}");
                assert_eq!(
                    reply["cniVersion"].as_str(),
                    requested_version(stdin).ok().as_deref(),
                    "VERSION echoes the requested version"
                );
            }
            Ok(None) => panic!("VERSION printed nothing"),
            Err(err) => check_error_object(&err, version),
        }
    }
    match commands::version(stdin) {
        Ok(out) => {
            serde_json::from_str::<serde_json::Value>(&out).expect("VERSION prints JSON");
        }
        Err(err) => check_error_object(&err, version),
    }

    match NetConf::parse(stdin) {
        Ok(conf) => check_conf(&conf, stdin),
        Err(err) => check_error_object(&err, version),
    }
}

/// A parsed environment carries only what the parser vouched for.
fn check_env(env: &CniEnv) {
    let (container_id, ifname) = match &env.invocation {
        Invocation::Add(target) | Invocation::Check(target) => {
            assert!(
                !target.netns.as_os_str().is_empty(),
                "ADD/CHECK without a netns"
            );
            (&target.container_id, &target.ifname)
        }
        Invocation::Del {
            container_id,
            ifname,
            ..
        } => (container_id, ifname),
        Invocation::Version | Invocation::Status | Invocation::Gc => return,
    };
    assert_eq!(validate_container_id(container_id), Ok(()), "{env:?}");
    assert_eq!(validate_ifname(ifname), Ok(()), "{env:?}");
    if let Some(pod) = env.pod() {
        assert!(!pod.namespace.is_empty() && !pod.name.is_empty(), "{pod:?}");
    }
}

/// A parsed config: the version an error would carry is the config's own,
/// and a `prevResult` that decodes survives our own encoding of it.
fn check_conf(conf: &NetConf, stdin: &[u8]) {
    assert_eq!(
        reply_version(stdin),
        conf.cni_version,
        "errors must carry the config's cniVersion"
    );
    assert!(!conf.name.is_empty() && !conf.plugin_type.is_empty());
    if let Some(mtu) = conf.mtu {
        assert!((68..=65535).contains(&mtu), "mtu {mtu}");
    }
    if let Some(prev) = &conf.prev_result {
        match CniResult::from_prev_result(prev) {
            Ok(result) => {
                // The newest version says everything; older ones drop
                // what they have no field for, but must still decode.
                for version in [CniVersion::V1_1_0, conf.cni_version] {
                    let printed = result.to_json(version);
                    let value: serde_json::Value =
                        serde_json::from_str(&printed).expect("a result prints JSON");
                    let again = CniResult::from_prev_result(&value).unwrap_or_else(|e| {
                        panic!("our own result {printed} does not decode: {e}")
                    });
                    if version == CniVersion::V1_1_0 {
                        assert_eq!(again, result, "{printed}");
                    }
                }
            }
            Err(err) => check_error_object(&err, conf.cni_version),
        }
    }
}

/// The error object the plugin would print: JSON with the error's code and
/// the version it was given.
fn check_error_object(err: &Error, version: CniVersion) {
    let code = err.code();
    let json = err.to_object(version.as_str()).to_json();
    let value: serde_json::Value = serde_json::from_str(&json).expect("error object is JSON");
    assert_eq!(value["code"].as_u64(), Some(u64::from(code)), "{json}");
    assert_eq!(
        value["cniVersion"].as_str(),
        Some(version.as_str()),
        "{json}"
    );
    assert!(
        value["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
}
