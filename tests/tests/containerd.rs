//! The kubelet/containerd contract: Debian's containerd, private to the
//! test (its own config, root, state, socket, CNI bin and conf dirs), runs
//! in a node's network namespace beside the real agent, and its CRI plugin
//! drives sluice-cni exactly as it does for kubelet. The test speaks CRI
//! over gRPC as kubelet does (`tests/cri/cri.py`, stubs generated from
//! `tests/cri/runtime_v1.proto`): RunPodSandbox for two pods, their
//! addresses from PodSandboxStatus, traffic between them, then
//! StopPodSandbox and RemovePodSandbox leaving nothing behind. The CNI
//! setup is what the Helm chart's init container writes
//! (`sluice install-cni`), the pause image is built here.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    bin, leftovers::Leftovers, probe, require_root, run_ok, unique, Netns, Node, PRIVILEGED_ENV,
    TIMEOUT,
};

const PAUSE: &str = "localhost/sluice-pause:test";
/// libcni's cache, which containerd's CRI plugin uses (it cannot be
/// moved).
const CNI_CACHE: [&str; 2] = ["/var/lib/cni/results", "/var/lib/cni"];

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn cri_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cri/cri.py")
}

/// A sandbox as PodSandboxStatus describes it.
struct Sandbox {
    id: String,
    ip: IpAddr,
    netns: PathBuf,
}

struct Containerd {
    dir: PathBuf,
    cgroup_parent: String,
    child: Option<Child>,
    had_cni_cache: [bool; 2],
    sandboxes: Vec<String>,
}

impl Containerd {
    /// `Err`: what this machine lacks to run it.
    fn start(node: &Node) -> Result<Self, String> {
        for needed in ["containerd", "ctr", "runc", "podman", "busybox"] {
            if tool(needed).is_none() {
                return Err(format!("{needed} is not installed"));
            }
        }
        let grpc = Command::new("python3")
            .args(["-c", "import grpc, grpc_tools"])
            .current_dir(std::env::temp_dir())
            .output()
            .is_ok_and(|o| o.status.success());
        if !grpc {
            return Err(
                "python3 grpcio-tools missing (pip install -r tests/cri/requirements.txt)".into(),
            );
        }
        let name = unique("cd");
        let mut ctr = Self {
            dir: std::env::temp_dir().join(format!("sluice-containerd-{name}")),
            cgroup_parent: format!("/sluice-test-{name}"),
            child: None,
            had_cni_cache: CNI_CACHE.map(|d| Path::new(d).exists()),
            sandboxes: Vec::new(),
        };
        // From here on, a panic drops `ctr`, which cleans up.
        let dir = ctr.dir.clone();
        for sub in ["root", "state", "bin", "net.d", "logs", "pause/rootfs/bin"] {
            std::fs::create_dir_all(dir.join(sub)).expect("containerd dirs");
        }

        // The chart's init container step, into our private dirs.
        run_ok(
            Command::new(bin("sluice"))
                .arg("install-cni")
                .arg("--bin-dir")
                .arg(dir.join("bin"))
                .arg("--conf-dir")
                .arg(dir.join("net.d"))
                .arg("--socket")
                .arg(node.socket())
                .arg("--plugin")
                .arg(bin("sluice-cni")),
            "sluice install-cni",
        );

        // restrict_oom_score_adj and disable_apparmor: this sandbox cannot
        // set a container's OOM score or load AppArmor profiles (runc's
        // init dies with "can't get final child's PID from pipe").
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{net_d}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = ctr.socket().display(),
            bin = dir.join("bin").display(),
            net_d = dir.join("net.d").display(),
        );
        std::fs::write(dir.join("config.toml"), config).expect("config.toml");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        // Only the network namespace is the node's (not `ip netns exec`,
        // which remounts /sys and hides the cgroups runc needs).
        let child = node
            .ns
            .command("containerd")
            .expect("containerd in the node netns")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        ctr.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while ctr.try_cri(&["version"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer:\n{}",
                ctr.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ctr.import_pause();
        Ok(ctr)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A pause image of one static busybox, built with podman in storage of
    /// our own, imported into containerd's `k8s.io` namespace.
    fn import_pause(&self) {
        let pause = self.dir.join("pause");
        std::fs::copy(
            tool("busybox").expect("busybox"),
            pause.join("rootfs/bin/busybox"),
        )
        .expect("busybox");
        std::fs::write(
            pause.join("Containerfile"),
            "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/busybox\", \"sleep\", \"2147483647\"]\n",
        )
        .expect("Containerfile");
        let podman = |args: &[&str]| {
            run_ok(
                Command::new("podman")
                    .arg("--root")
                    .arg(pause.join("storage"))
                    .arg("--runroot")
                    .arg(pause.join("run"))
                    .args(["--storage-driver", "vfs", "--events-backend", "none"])
                    .args(args),
                &format!("podman {args:?}"),
            )
        };
        let archive = pause.join("pause.tar").display().to_string();
        podman(&[
            "build",
            "--quiet",
            "--network",
            "none",
            "--layers=false",
            "--tag",
            PAUSE,
            &pause.display().to_string(),
        ]);
        podman(&[
            "save",
            "--quiet",
            "--format",
            "docker-archive",
            "--output",
            &archive,
            PAUSE,
        ]);
        podman(&["rmi", "--all", "--force"]);
        run_ok(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(["--namespace", "k8s.io", "images", "import", &archive]),
            "ctr images import",
        );
    }

    fn try_cri(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("python3")
            .arg(cri_script())
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .current_dir(std::env::temp_dir())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn cri(&self, args: &[&str]) -> String {
        self.try_cri(args)
            .unwrap_or_else(|e| panic!("CRI {args:?}: {e}\ncontainerd:\n{}", self.log()))
    }

    /// RunPodSandbox and PodSandboxStatus, as kubelet does for a new pod.
    fn run_pod(&mut self, namespace: &str, name: &str) -> Sandbox {
        let uid = unique("uid");
        let logs = self.dir.join("logs").display().to_string();
        let out = self.cri(&[
            "run",
            namespace,
            name,
            &uid,
            &self.cgroup_parent.clone(),
            &logs,
        ]);
        let status: Value = serde_json::from_str(out.trim()).expect("cri.py run answer");
        let id = status["id"].as_str().expect("sandbox id").to_owned();
        self.sandboxes.push(id.clone());
        assert_eq!(status["state"], "SANDBOX_READY", "{status}");
        Sandbox {
            id,
            ip: status["ip"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                .expect("sandbox IP"),
            netns: status["netns"]
                .as_str()
                .map(PathBuf::from)
                .expect("sandbox netns"),
        }
    }

    /// StopPodSandbox and RemovePodSandbox, as kubelet does when the pod goes.
    fn remove_pod(&mut self, sandbox: &Sandbox) {
        self.cri(&["stop", &sandbox.id]);
        self.cri(&["remove", &sandbox.id]);
        self.sandboxes.retain(|id| *id != sandbox.id);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.sandboxes) {
            let _ = self.try_cri(&["stop", &id]);
            let _ = self.try_cri(&["remove", &id]);
        }
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Leftovers {
            dir: &self.dir,
            cgroup_parent: &self.cgroup_parent,
        }
        .clean();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
        for (dir, existed) in CNI_CACHE.iter().zip(self.had_cni_cache) {
            if !existed {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

#[test]
fn containerd_cri_drives_sluice_cni_like_kubelet() {
    require_root!();
    let node = Node::start("cd", "10.103.0.0/24");
    let mut ctr = match Containerd::start(&node) {
        Ok(ctr) => ctr,
        Err(reason) if std::env::var_os(PRIVILEGED_ENV).is_some() => {
            panic!("containerd cannot run: {reason} (cargo xtask bootstrap installs it)")
        }
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let version: Value = serde_json::from_str(ctr.cri(&["version"]).trim()).expect("version");
    assert_eq!(version["runtime"], "containerd");
    assert_eq!(version["api"], "v1");

    let free = node.status().free_addresses;
    let a = ctr.run_pod("web", "a");
    let b = ctr.run_pod("web", "b");
    let cidr: ipnet::IpNet = node.pod_cidr.parse().expect("cidr");
    assert!(cidr.contains(&a.ip) && cidr.contains(&b.ip) && a.ip != b.ip);
    assert_eq!(node.status().endpoints, 2);
    // The plugin named each endpoint's Pod, from containerd's CNI_ARGS.
    let state: Value = serde_json::from_slice(
        &std::fs::read(node.dir.join("state/endpoints.json")).expect("agent state"),
    )
    .expect("JSON");
    let pods: Vec<(String, String)> = state["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| {
            let pod = &e["endpoint"]["pod"];
            Some((
                pod["namespace"].as_str()?.to_owned(),
                pod["name"].as_str()?.to_owned(),
            ))
        })
        .collect();
    for name in ["a", "b"] {
        assert!(
            pods.contains(&("web".to_owned(), name.to_owned())),
            "{pods:?}"
        );
    }

    // Traffic between the two sandboxes.
    let a_ns = Netns::open(&a.netns).expect("a's netns");
    let b_ns = Netns::open(&b.netns).expect("b's netns");
    let port = 7003;
    let _server = probe::EchoServer::start(&b_ns, SocketAddr::new(b.ip, port)).expect("server");
    assert!(
        probe::tcp(&a_ns, SocketAddr::new(b.ip, port), TIMEOUT),
        "a reaches b"
    );
    drop((a_ns, b_ns));

    ctr.remove_pod(&a);
    ctr.remove_pod(&b);
    let status = node.status();
    assert_eq!(status.endpoints, 0, "DEL released both");
    assert_eq!(status.free_addresses, free);
    assert!(
        !a.netns.exists() && !b.netns.exists(),
        "sandbox netns removed"
    );
    assert!(
        !node.links().iter().any(|l| l.starts_with("lxc")),
        "veths left: {:?}",
        node.links()
    );
}
