//! Installing build and test prerequisites. Each step checks first and
//! does nothing when its tool is already there.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::run;

/// Debian packages the build, the lab and the tests use (nftables: the
/// agent's masquerade rules; prometheus: its server and promtool scrape the
/// lab's agents in a test; containerd: its CRI plugin drives sluice-cni in
/// a test; ipset: a baseline of the policy-scale bench; fonts-dejavu-core:
/// the text of the bench's plots).
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iperf3",
    "iptables",
    "nftables",
    "util-linux",
    "containernetworking-plugins",
    "podman",
    "runc",
    "busybox-static",
    "prometheus",
    "containerd",
    "ipset",
    "fonts-dejavu-core",
];

pub fn all() -> anyhow::Result<()> {
    apt()?;
    python()?;
    rust_src()?;
    bpf_linker()?;
    crate::fuzz::install()
}

/// The PyPI packages of the tests' Python tools: the chart tool's
/// (`helm/tools/requirements.txt`: Helm's SDK, the Kubernetes schemas) and
/// the CRI client's (`tests/cri/requirements.txt`: gRPC and protoc).
fn python() -> anyhow::Result<()> {
    let present = Command::new("python3")
        .args([
            "-c",
            "import helm_python, kubernetes_validate, yaml, grpc, grpc_tools",
        ])
        .current_dir(std::env::temp_dir())
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    let root = crate::workspace_root();
    for requirements in ["helm/tools/requirements.txt", "tests/cri/requirements.txt"] {
        let requirements = root.join(requirements);
        eprintln!("xtask: installing {}", requirements.display());
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--requirement"])
            .arg(&requirements)
            .current_dir(std::env::temp_dir()))?;
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    // Packages with a daemon (prometheus) would start it on install: the
    // tests start their own, privately. policy-rc.d forbids starting any.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask bootstrap: start no daemon\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    installed
}

fn rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// bpf-linker built against the Rust toolchain's own libLLVM: Debian has no
/// matching LLVM, but the toolchain ships one (`libLLVM.so.<major>.<minor>-rust-...`).
fn bpf_linker() -> anyhow::Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let lib = sysroot()?.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    // libLLVM.so.22.1-rust-... or libLLVM-22-rust-....so
    let major: String = llvm
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM version of {llvm}");
    }
    let prefix = std::env::temp_dir().join(format!("sluice-llvm-{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    eprintln!("xtask: building bpf-linker against {llvm} (a few minutes, once)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}
