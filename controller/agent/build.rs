//! Builds the eBPF object (dataplane-ebpf) for bpfel-unknown-none and leaves
//! it in OUT_DIR, where `sluice-agent` embeds it. The same recipe as
//! aya-build, done by hand because the eBPF crate lives outside the host
//! workspace: the stable toolchain with RUSTC_BOOTSTRAP=1 for
//! `-Z build-std=core`, bpf-linker as the linker, BTF emitted.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let ebpf_dir = manifest_dir.join("../../dataplane-ebpf");
    let common_dir = manifest_dir.join("../../common");
    for dir in [ebpf_dir.join("src"), common_dir.join("src")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for file in [
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    if which("bpf-linker").is_none() {
        panic!("bpf-linker is not on PATH; run `cargo xtask bootstrap` (it installs it)");
    }

    let target_dir = out_dir.join("ebpf-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--bins",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // Host-build wrappers (clippy, coverage) must not reach the eBPF build.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().expect("spawn cargo for the eBPF build");
    assert!(status.success(), "building dataplane-ebpf failed: {status}");

    let built = target_dir.join("bpfel-unknown-none/release/sluice-dataplane");
    std::fs::copy(&built, out_dir.join("sluice-dataplane"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
}

fn which(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| Path::is_file(candidate))
}
