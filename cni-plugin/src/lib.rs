//! sluice's CNI plugin (spec 1.1.0; speaks 0.4.0, 1.0.0 and 1.1.0).
//!
//! Called by the container runtime for every pod: ADD allocates an address
//! from the node agent, wires a veth pair into the pod's network namespace
//! and registers the endpoint so the agent programs the eBPF dataplane; DEL
//! undoes that; CHECK, STATUS, GC and VERSION as the spec defines them.
//!
//! The binary is a thin shell around [`run`]; the library is public so the
//! end-to-end tests can use the same helpers (e.g. [`veth::host_ifname`]).

pub mod check;
pub mod client;
pub mod commands;
pub mod config;
pub mod dataplane;
pub mod env;
pub mod error;
pub mod netlink;
pub mod result;
pub mod veth;

use std::ffi::OsString;

pub use error::Error;

use crate::{
    client::UnixAgent,
    config::NetConf,
    env::{CniEnv, Invocation},
    netlink::NetlinkDataplane,
};

/// The largest network config read from stdin. Real ones are a few
/// hundred bytes, with a previous result a few kilobytes; anything near
/// this is a mistake or an attack, refused before it is parsed.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Runs one invocation: `vars` is the process environment, `stdin` the
/// network config (the caller reads at most one byte more than
/// [`MAX_CONFIG_BYTES`], so a longer one shows as such). Returns what to
/// print on stdout on success (`None` for commands that print nothing).
pub fn run<I, K, V>(vars: I, stdin: &[u8]) -> Result<Option<String>, Error>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    if stdin.len() > MAX_CONFIG_BYTES {
        return Err(Error::config(format!(
            "network config on stdin is longer than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    let env = CniEnv::from_vars(vars)?;
    if env.invocation == Invocation::Version {
        return commands::version(stdin).map(Some);
    }
    let conf = NetConf::parse(stdin)?;
    tracing::debug!(
        command = env.invocation.command_name(),
        network = %conf.name,
        args = ?env.args,
        "invoked"
    );
    let agent = UnixAgent::new(&conf.agent_socket);
    match &env.invocation {
        Invocation::Add(target) => {
            let mut dataplane = NetlinkDataplane::new()?;
            commands::add(target, env.pod(), &conf, &agent, &mut dataplane).map(Some)
        }
        Invocation::Del {
            container_id,
            ifname,
            netns: _,
        } => {
            let mut dataplane = NetlinkDataplane::new()?;
            commands::del(container_id, ifname, &agent, &mut dataplane).map(|()| None)
        }
        Invocation::Check(target) => {
            let mut dataplane = NetlinkDataplane::new()?;
            check::check(target, &conf, &agent, &mut dataplane).map(|()| None)
        }
        Invocation::Status => commands::status(&agent).map(|()| None),
        Invocation::Gc => commands::gc(&conf, &agent).map(|()| None),
        Invocation::Version => commands::version(stdin).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn code_of(vars: &[(&str, &str)], stdin: &str) -> u32 {
        run(vars.iter().copied(), stdin.as_bytes())
            .expect_err("should fail")
            .code()
    }

    #[test]
    fn version_needs_neither_config_nor_agent() {
        let out = run([("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#)
            .expect("VERSION")
            .expect("output");
        assert!(out.contains("supportedVersions"), "{out}");
    }

    #[test]
    fn environment_is_checked_before_the_config() {
        assert_eq!(
            code_of(&[("CNI_COMMAND", "ADD")], "not json"),
            code::INVALID_ENVIRONMENT
        );
    }

    #[test]
    fn config_errors_surface_through_run() {
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(code_of(&del, "not json"), code::DECODING_FAILURE);
        assert_eq!(
            code_of(&del, r#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code_of(&del, r#"{"cniVersion":"1.0.0","type":"t"}"#),
            code::INVALID_NETWORK_CONFIG
        );
    }

    #[test]
    fn an_oversized_config_is_refused_unread() {
        let mut huge = br#"{"cniVersion":"1.0.0","name":"n","type":"t","pad":""#.to_vec();
        huge.resize(MAX_CONFIG_BYTES + 1, b' ');
        let err = run([("CNI_COMMAND", "VERSION")], &huge).expect_err("too long");
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn status_without_agent_is_not_available() {
        let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"t","agentSocket":"/nonexistent/sluice.sock"}"#;
        assert_eq!(
            code_of(&[("CNI_COMMAND", "STATUS")], conf),
            code::PLUGIN_NOT_AVAILABLE
        );
    }
}
