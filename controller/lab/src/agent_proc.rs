//! Running `sluice-agent` as a child process, optionally inside a node
//! namespace.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use sluice_common::api::{self, Request, Response};

use super::netns::command_in;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub binary: PathBuf,
    pub node_name: String,
    /// `None`: the agent takes its Node object's `spec.podCIDR`, as in a
    /// cluster (only with a datastore).
    pub pod_cidr: Option<String>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The node's netns; `None` runs the agent where the caller is.
    pub netns: Option<PathBuf>,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
}

impl AgentOptions {
    fn command(&self, program: &Path) -> std::io::Result<std::process::Command> {
        Ok(match &self.netns {
            Some(ns) => command_in(ns, program)?,
            None => std::process::Command::new(program),
        })
    }
}

/// A running agent; killed (not uninstalled) on drop.
pub struct AgentProcess {
    pub options: AgentOptions,
    child: Option<Child>,
}

impl AgentProcess {
    pub fn spawn(options: AgentOptions) -> std::io::Result<Self> {
        Self::spawn_with(options, false)
    }

    /// Like [`spawn`](Self::spawn), in a session of its own, for an agent
    /// meant to outlive its starter (the lab's): a Ctrl-C or hangup on the
    /// starter's terminal does not reach it.
    pub fn spawn_in_session(options: AgentOptions) -> std::io::Result<Self> {
        Self::spawn_with(options, true)
    }

    fn spawn_with(options: AgentOptions, new_session: bool) -> std::io::Result<Self> {
        if let Some(dir) = options.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&options.log)?;
        let mut command = options.command(&options.binary)?;
        if new_session {
            new_session_on_exec(&mut command);
        }
        command.arg("--node-name").arg(&options.node_name);
        if let Some(pod_cidr) = &options.pod_cidr {
            command.arg("--pod-cidr").arg(pod_cidr);
        }
        let child = command
            .arg("--state-dir")
            .arg(&options.state_dir)
            .arg("--socket")
            .arg(&options.socket)
            .args(&options.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Self {
            options,
            child: Some(child),
        })
    }

    /// Refers to an agent started earlier (or not running at all), e.g. to
    /// uninstall it.
    pub fn existing(options: AgentOptions) -> Self {
        Self {
            options,
            child: None,
        }
    }

    /// Lets the process outlive this handle. A thread reaps it when it
    /// exits, so a long-lived starter (a test) collects no zombies.
    pub fn detach(mut self) {
        if let Some(child) = self.child.take() {
            reap_in_background(child);
        }
    }

    /// Waits until the agent answers `Status`, or fails with its log.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("agent exited with {status}:\n{}", self.log()));
                }
            }
            if let Ok(Response::Status { .. }) = api::call(
                &self.options.socket,
                &Request::Status,
                Duration::from_secs(2),
            ) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "agent not ready after {timeout:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.options.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL: what a crash looks like to everything else.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent and removes everything it installed for its node.
    pub fn uninstall(&mut self) -> std::io::Result<()> {
        self.stop();
        let status = self
            .options
            .command(&self.options.binary)?
            .arg("--node-name")
            .arg(&self.options.node_name)
            .arg("--socket")
            .arg(&self.options.socket)
            .arg("--uninstall")
            .args(&self.options.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "sluice-agent --uninstall: {status}"
            )))
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes `command`'s process the leader of a new session when it starts.
pub fn new_session_on_exec(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            Ok(())
        });
    }
}

/// Waits for `child` on a thread of its own.
pub fn reap_in_background(mut child: Child) {
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}
