//! Invoking a CNI plugin binary exactly as a container runtime does:
//! `CNI_*` environment variables, the network config on stdin, the result
//! or error object on stdout.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{json, Value};

use super::netns::command_in;

/// What the plugin answered.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// The `code` of a CNI error object, if the answer is one.
    pub fn error_code(&self) -> Option<u64> {
        self.json()?.get("code")?.as_u64()
    }
}

/// One invocation of a plugin.
#[derive(Debug, Clone)]
pub struct CniCall {
    pub plugin: PathBuf,
    /// Where the plugin process runs (the node's netns); `None`: here.
    pub run_in: Option<PathBuf>,
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
    pub config: Value,
}

impl CniCall {
    pub fn new(plugin: &Path, command: &str, config: Value) -> Self {
        Self {
            plugin: plugin.to_owned(),
            run_in: None,
            command: command.to_owned(),
            container_id: String::new(),
            netns: String::new(),
            ifname: "eth0".to_owned(),
            args: String::new(),
            path: plugin
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            config,
        }
    }

    pub fn run_in(mut self, node_netns: &Path) -> Self {
        self.run_in = Some(node_netns.to_owned());
        self
    }

    pub fn container(mut self, container_id: &str, netns: &str, ifname: &str) -> Self {
        self.container_id = container_id.to_owned();
        self.netns = netns.to_owned();
        self.ifname = ifname.to_owned();
        self
    }

    pub fn invoke(&self) -> std::io::Result<CniOutput> {
        self.invoke_raw(self.config.to_string().as_bytes(), &[])
    }

    /// With explicit stdin bytes and environment overrides (`None` removes a
    /// variable), for error-path tests.
    pub fn invoke_raw(
        &self,
        stdin: &[u8],
        env: &[(&str, Option<&str>)],
    ) -> std::io::Result<CniOutput> {
        let mut cmd = match &self.run_in {
            Some(ns) => command_in(ns, &self.plugin)?,
            None => Command::new(&self.plugin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", &self.command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_ARGS", &self.args)
            .env("CNI_PATH", &self.path);
        for (key, value) in env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin may stop reading (an oversized config): as libcni
            // (Go's exec), take its answer instead of the broken pipe.
            match input.write_all(stdin) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
        let out = child.wait_with_output()?;
        Ok(CniOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A sluice network config.
pub fn sluice_netconf(name: &str, cni_version: &str, agent_socket: &Path) -> Value {
    json!({
        "cniVersion": cni_version,
        "name": name,
        "type": "sluice-cni",
        "agentSocket": agent_socket.display().to_string(),
    })
}
