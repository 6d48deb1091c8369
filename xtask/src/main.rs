//! `cargo xtask`: bootstrap the machine, build, run the lab demo, run the
//! tests.
//!
//! Every command installs what it needs first, idempotently, so a fresh
//! machine needs nothing but this repository and a Rust toolchain.
mod bootstrap;
mod fuzz;
mod image;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (apt packages, rust-src,
    /// bpf-linker, cargo-fuzz). Idempotent.
    Bootstrap,
    /// Bootstrap, then build every binary.
    Build,
    /// The main job: bring up a two-node lab with the upstream NetworkPolicy
    /// model's pods and show them talking (`sluice lab demo`).
    Lab {
        /// Extra arguments for `sluice lab demo` (e.g. --routing native,
        /// --down).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks, each next to its baseline measured in the same run, from
    /// the release build (`sluice lab bench`): target/bench/report.md,
    /// report.json and plots/.
    Bench {
        /// Every comparison at smaller sizes and in shorter runs.
        #[arg(long)]
        quick: bool,
        /// Afterwards, copy the report to docs/benchmarks.md and its plots
        /// to docs/benchmarks/ (what the repository shows as a real run).
        #[arg(long)]
        publish: bool,
        /// Extra arguments for `sluice lab bench` (e.g. --seconds 10 --runs 5
        /// --only services).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The OCI image (deploy/image/Containerfile), built offline with
    /// podman from the release binaries: tagged in podman's storage and
    /// saved to target/image/sluice.oci.tar.
    Image {
        /// The image's name.
        #[arg(long, default_value = concat!("localhost/sluice:", env!("CARGO_PKG_VERSION")))]
        tag: String,
        /// From the debug build instead (quicker to build, slower to run).
        #[arg(long)]
        debug: bool,
    },
    /// Render the Helm chart with default values into deploy/sluice.yaml,
    /// for `kubectl apply -f` (a test fails while it is stale).
    Deploy,
    /// NetworkPolicy conformance: every case of DIR on fresh two-node labs
    /// (`sluice lab conformance`); fails if any case fails.
    Conformance {
        /// Case directory [default: tests/conformance/upstream/cases, the
        /// 48 upstream cases].
        dir: Option<PathBuf>,
        /// Extra arguments for `sluice lab conformance`, after `--` (e.g.
        /// -- --routing native --case 21).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The whole test suite: lints, unit tests, then the privileged
    /// end-to-end tests against the real kernel.
    Test {
        /// Only run end-to-end tests whose name contains this.
        filter: Option<String>,
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the bounded fuzz runs.
        #[arg(long)]
        no_fuzz: bool,
    },
    /// Fuzz TARGET (every target if none) for a while: tests/fuzz, seeds
    /// in tests/fuzz/corpus/TARGET, crashes in tests/fuzz/artifacts/TARGET.
    Fuzz {
        /// cni, manifest, policy or ebpf_parser (root).
        target: Option<String>,
        /// Seconds per target (0: run the seeds once).
        #[arg(long, default_value_t = 300)]
        time: u64,
        /// Instead of --time, the test command's run: a fixed number of
        /// executions from a fixed seed, the same on every machine.
        #[arg(long, conflicts_with = "time")]
        test_runs: bool,
        /// Afterwards, fold what the run found that adds coverage into
        /// the committed seeds.
        #[arg(long)]
        merge: bool,
        /// Instead of fuzzing, run TARGET once on each FILE (a crash input).
        #[arg(long, num_args = 1.., value_name = "FILE", requires = "target")]
        replay: Vec<PathBuf>,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// The commit measured, marked when the tree differs from it.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) if git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty()) => {
            format!("{head} with uncommitted changes")
        }
        Some(head) => head,
        None => "commit unknown".into(),
    }
}

/// docs/benchmarks.md and docs/benchmarks/*.png from a bench's report.
fn publish_bench(report_dir: &Path, docs: &Path) -> anyhow::Result<()> {
    let md = std::fs::read_to_string(report_dir.join("report.md"))
        .context("reading the bench's report")?;
    let plots = docs.join("benchmarks");
    let _ = std::fs::remove_dir_all(&plots);
    std::fs::create_dir_all(&plots).context("creating docs/benchmarks")?;
    for entry in std::fs::read_dir(report_dir.join("plots")).context("reading the plots")? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, plots.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    std::fs::write(
        docs.join("benchmarks.md"),
        md.replace("](plots/", "](benchmarks/"),
    )
    .context("writing docs/benchmarks.md")?;
    println!("published to {}", docs.join("benchmarks.md").display());
    Ok(())
}

fn build() -> anyhow::Result<()> {
    bootstrap::all()?;
    run(cargo().args(["build", "--workspace", "--bins"]))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Bootstrap => bootstrap::all(),
        Cmd::Build => build(),
        Cmd::Lab { args } => {
            build()?;
            run(Command::new(workspace_root().join("target/debug/sluice"))
                .args(["lab", "demo"])
                .args(args))
        }
        Cmd::Bench {
            quick,
            publish,
            args,
        } => {
            bootstrap::all()?;
            // Release: the agent's CPU time, memory and latencies are part
            // of what is measured.
            run(cargo().args(["build", "--workspace", "--bins", "--release"]))?;
            let root = workspace_root();
            let out = root.join("target/bench");
            run(Command::new(root.join("target/release/sluice"))
                .args(["lab", "bench", "--out"])
                .arg(&out)
                .args(quick.then_some("--quick"))
                .args(args)
                .env("SLUICE_BENCH_COMMIT", commit()))?;
            if publish {
                publish_bench(&out, &root.join("docs"))?;
            }
            Ok(())
        }
        Cmd::Image { tag, debug } => {
            bootstrap::all()?;
            let profile = if debug { "debug" } else { "release" };
            let mut build = cargo();
            build.args(["build", "--workspace", "--bins"]);
            if !debug {
                build.arg("--release");
            }
            run(&mut build)?;
            image::Image {
                bin_dir: workspace_root().join("target").join(profile),
                tag,
                out_dir: workspace_root().join("target/image"),
                keep_tagged: true,
            }
            .build(&workspace_root())
        }
        Cmd::Deploy => {
            bootstrap::all()?;
            let root = workspace_root();
            run(Command::new("python3")
                .arg(root.join("helm/tools/chart.py"))
                .arg("render")
                .arg(root.join("helm/sluice"))
                .args(["--header", "--namespace", "kube-system", "--out"])
                .arg(root.join("deploy/sluice.yaml"))
                .current_dir(std::env::temp_dir()))
        }
        Cmd::Conformance { dir, args } => {
            build()?;
            let dir =
                dir.unwrap_or_else(|| workspace_root().join("tests/conformance/upstream/cases"));
            run(Command::new(workspace_root().join("target/debug/sluice"))
                .args(["lab", "conformance"])
                .arg(dir)
                .args(args))
        }
        Cmd::Fuzz {
            target,
            time,
            test_runs,
            merge,
            replay,
        } => {
            if !replay.is_empty() {
                return fuzz::replay(target.as_deref().unwrap_or_default(), &replay);
            }
            let targets = fuzz::select(target.as_deref())?;
            let budget = if test_runs {
                fuzz::Budget::TestRuns
            } else {
                fuzz::Budget::Seconds(time)
            };
            fuzz::fuzz(&targets, budget, merge)
        }
        Cmd::Test {
            filter,
            no_lint,
            no_fuzz,
        } => {
            build()?;
            if !no_lint {
                run(cargo().args(["fmt", "--all", "--check"]))?;
                run(cargo().args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))?;
            }
            run(cargo().args(["test", "--workspace", "--exclude", "sluice-tests"]))?;
            if !no_fuzz {
                // Each target as a test named fuzz_<target>, which the
                // filter picks like an end-to-end test's name.
                let targets: Vec<_> = fuzz::TARGETS
                    .iter()
                    .copied()
                    .filter(|t| {
                        filter
                            .as_ref()
                            .is_none_or(|f| format!("fuzz_{}", t.name).contains(f.as_str()))
                    })
                    .collect();
                if !targets.is_empty() {
                    fuzz::fuzz(&targets, fuzz::Budget::TestRuns, false)?;
                }
            }
            // The image of the binaries under test, for the tests that run
            // it (debug binaries: no second build).
            let image = image::Image {
                bin_dir: workspace_root().join("target/debug"),
                tag: "localhost/sluice:test".into(),
                out_dir: workspace_root().join("target/image-test"),
                keep_tagged: false,
            };
            image.build(&workspace_root())?;
            let mut e2e = cargo();
            e2e.args(["test", "-p", "sluice-tests", "--"])
                .env("SLUICE_BIN_DIR", workspace_root().join("target/debug"))
                .env("SLUICE_IMAGE_ARCHIVE", image.archive())
                // A test that cannot run as root fails instead of skipping.
                .env("SLUICE_PRIVILEGED", "1");
            if let Some(filter) = filter {
                e2e.arg(filter);
            }
            run(&mut e2e)
        }
    }
}
