//! The OCI image `cargo xtask image` builds (`cargo xtask test` builds one
//! of the binaries under test and names its archive in
//! `SLUICE_IMAGE_ARCHIVE`), run with podman in storage of the test's own:
//! its binaries start, it carries its labels, and the CNI installer step
//! the Helm chart's init container runs puts a working sluice-cni, the
//! reference plugins and the network config into host directories.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sluice_tests::{require_root, run_ok, unique, PRIVILEGED_ENV};

const ARCHIVE_ENV: &str = "SLUICE_IMAGE_ARCHIVE";
const TAG: &str = "localhost/sluice:test";

/// podman with storage, run state and temporary files under `dir`, all
/// removed on drop.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-image-{}", unique("im")));
        for sub in ["storage", "run", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("podman dirs");
        }
        Self { dir }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("TMPDIR", self.dir.join("tmp"))
            .env_remove("CONTAINER_HOST")
            .args(["--root", &self.dir.join("storage").display().to_string()])
            .args(["--runroot", &self.dir.join("run").display().to_string()])
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ]);
        cmd
    }

    /// podman with `args`; its stdout, or a panic if it fails.
    fn run(&self, args: &[&str]) -> String {
        run_ok(self.command().args(args), &format!("podman {args:?}"))
    }

    /// A throwaway container of the image, without network; `mounts` are
    /// `host:container` bind mounts.
    fn in_image(&self, mounts: &[String], command: &[&str]) -> String {
        let mut args = vec![
            "run",
            "--rm",
            "--network",
            "none",
            // podman would raise both to 1048576, which this sandbox
            // refuses.
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        for mount in mounts {
            args.extend(["--volume", mount]);
        }
        args.push(TAG);
        args.extend_from_slice(command);
        self.run(&args)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "--all", "--force"]).output();
        let _ = self.command().args(["rmi", "--all", "--force"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn archive() -> Option<PathBuf> {
    match std::env::var_os(ARCHIVE_ENV) {
        Some(path) => Some(PathBuf::from(path)),
        None if std::env::var_os(PRIVILEGED_ENV).is_some() => {
            panic!("{ARCHIVE_ENV} is not set: cargo xtask test builds the image and sets it")
        }
        None => {
            eprintln!("skipped: no image ({ARCHIVE_ENV}; cargo xtask test builds one)");
            None
        }
    }
}

#[test]
fn the_image_runs_its_binaries_and_installs_the_cni_plugin_on_a_host() {
    require_root!();
    let Some(archive) = archive() else {
        return;
    };
    let podman = Podman::new();
    podman.run(&["load", "--quiet", "--input", &archive.display().to_string()]);
    let labels = podman.run(&["image", "inspect", "--format", "{{json .Labels}}", TAG]);
    let labels: serde_json::Value = serde_json::from_str(&labels).expect("labels");
    assert_eq!(labels["org.opencontainers.image.title"], "sluice");
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    for binary in ["sluice-agent", "sluice"] {
        let version = podman.in_image(&[], &[binary, "--version"]);
        assert_eq!(
            version.trim(),
            format!("{binary} {}", env!("CARGO_PKG_VERSION")),
            "{binary} in the image"
        );
    }
    assert!(podman
        .in_image(&[], &["nft", "--version"])
        .starts_with("nftables"));

    // The init container's step, into a host's (empty) CNI directories.
    let host = podman.dir.join("host");
    let (bin_dir, conf_dir) = (host.join("opt/cni/bin"), host.join("etc/cni/net.d"));
    for dir in [&bin_dir, &conf_dir] {
        std::fs::create_dir_all(dir).expect("host dirs");
    }
    let mounts = [
        format!("{}:/host/opt/cni/bin", bin_dir.display()),
        format!("{}:/host/etc/cni/net.d", conf_dir.display()),
    ];
    let said = podman.in_image(
        &mounts,
        &[
            "sluice",
            "install-cni",
            "--bin-dir",
            "/host/opt/cni/bin",
            "--conf-dir",
            "/host/etc/cni/net.d",
        ],
    );
    assert!(said.contains("05-sluice.conflist"), "{said}");
    for plugin in ["sluice-cni", "loopback", "portmap"] {
        assert!(
            bin_dir.join(plugin).is_file(),
            "{plugin} installed on the host"
        );
    }
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(conf_dir.join("05-sluice.conflist")).expect("the network config"),
    )
    .expect("JSON");
    assert_eq!(config["cniVersion"], "1.0.0");
    assert_eq!(config["plugins"][0]["type"], "sluice-cni");
    assert_eq!(config["plugins"][1]["type"], "portmap");
    // The installed plugin runs on the host, as the runtime runs it.
    let version = run_plugin(&bin_dir.join("sluice-cni"));
    assert!(version.contains("supportedVersions"), "{version}");

    podman.in_image(
        &mounts,
        &[
            "sluice",
            "uninstall-cni",
            "--conf-dir",
            "/host/etc/cni/net.d",
        ],
    );
    assert!(!conf_dir.join("05-sluice.conflist").exists());
    assert!(bin_dir.join("sluice-cni").exists(), "left for DEL");
}

fn run_plugin(plugin: &Path) -> String {
    use std::io::Write as _;
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running the installed plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(br#"{"cniVersion":"1.0.0"}"#)
        .expect("stdin");
    let out = child.wait_with_output().expect("plugin output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
