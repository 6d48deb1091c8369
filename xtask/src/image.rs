//! `cargo xtask image`: the OCI image of `deploy/image/Containerfile`,
//! built offline with podman. The build context's `rootfs/` is assembled
//! from this machine: the three binaries (debug info stripped), nft, and
//! Debian's `loopback` and `portmap` for the CNI installer, each with the
//! shared libraries `ldd` says it loads, at the same paths. The image is
//! tagged in podman's storage and saved as an OCI archive beside the
//! context, which is what tests load (into storage of their own).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::run;

/// Where the image's binaries go.
const BIN: &str = "usr/local/bin";
/// The binaries, from the cargo target directory.
const BINARIES: [&str; 3] = ["sluice-agent", "sluice-cni", "sluice"];
/// From the build machine: (source, path in the image).
const HOST_FILES: [(&str, &str); 3] = [
    ("/usr/sbin/nft", "usr/sbin/nft"),
    ("/usr/lib/cni/loopback", "usr/lib/cni/loopback"),
    ("/usr/lib/cni/portmap", "usr/lib/cni/portmap"),
];

pub struct Image {
    /// The cargo output directory holding the binaries (`target/release`).
    pub bin_dir: PathBuf,
    pub tag: String,
    /// Working directory: `context/` and the archive.
    pub out_dir: PathBuf,
    /// Leave the image tagged in podman's storage (else only the archive
    /// remains).
    pub keep_tagged: bool,
}

impl Image {
    pub fn archive(&self) -> PathBuf {
        self.out_dir.join("sluice.oci.tar")
    }

    pub fn build(&self, root: &Path) -> anyhow::Result<()> {
        let context = self.out_dir.join("context");
        let _ = std::fs::remove_dir_all(&context);
        let rootfs = context.join("rootfs");
        for dir in ["tmp", "etc", "run", "var/run", "proc", "sys", "dev", BIN] {
            std::fs::create_dir_all(rootfs.join(dir))?;
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/sbin/nologin\n",
        )?;
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
        let mut elves = Vec::new();
        for name in BINARIES {
            let target = rootfs.join(BIN).join(name);
            run(Command::new("objcopy")
                .arg("--strip-debug")
                .arg(self.bin_dir.join(name))
                .arg(&target))?;
            elves.push(target);
        }
        for (source, path) in HOST_FILES {
            copy(Path::new(source), &rootfs.join(path))?;
            elves.push(rootfs.join(path));
        }
        for elf in &elves {
            for library in libraries(elf)? {
                let inside = rootfs.join(library.strip_prefix("/").unwrap_or(&library));
                if !inside.exists() {
                    copy(&library, &inside)?;
                }
            }
        }
        std::fs::copy(
            root.join("deploy/image/Containerfile"),
            context.join("Containerfile"),
        )?;
        let revision = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        run(Command::new("podman")
            .args([
                "build",
                "--network",
                "none",
                "--pull=never",
                "--layers=false",
                "--quiet",
            ])
            .arg(format!("--build-arg=VERSION={}", env!("CARGO_PKG_VERSION")))
            .arg(format!("--build-arg=REVISION={revision}"))
            .args(["--tag", &self.tag])
            .arg(&context))?;
        let archive = self.archive();
        let _ = std::fs::remove_file(&archive);
        run(Command::new("podman")
            .args(["save", "--quiet", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(&self.tag))?;
        if !self.keep_tagged {
            run(Command::new("podman").args(["rmi", "--force", &self.tag]))?;
        }
        eprintln!("xtask: image {} (archive {})", self.tag, archive.display());
        Ok(())
    }
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Follows symlinks: the image holds each library under the name the
    // loader asks for.
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The shared libraries `elf` loads, the dynamic loader included, as
/// absolute paths on this machine.
fn libraries(elf: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(elf)
        .output()
        .with_context(|| format!("ldd {}", elf.display()))?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            elf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("the libraries of {}", elf.display()))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)` name files; the vDSO does not. A
/// library this machine lacks would be missing from the image too.
fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((name, right)) if right.trim() == "not found" => {
                bail!("{} not found", name.trim())
            }
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f41)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f41)\n";
        assert_eq!(
            parse_ldd(text).expect("parsed"),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let missing = parse_ldd("\tlibmissing.so.1 => not found\n").unwrap_err();
        assert!(missing.to_string().contains("libmissing.so.1"));
    }
}
