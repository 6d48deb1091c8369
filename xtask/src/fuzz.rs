//! The fuzz targets of `tests/fuzz` (cargo-fuzz, libFuzzer): a run of
//! each bounded by executions in `cargo xtask test` ([`Budget::TestRuns`]),
//! longer runs by hand with `cargo xtask fuzz`.
//!
//! The stable toolchain builds them with `RUSTC_BOOTSTRAP=1` (cargo-fuzz
//! passes nightly-only `-Z` flags) and without a sanitizer: the code under
//! test is safe Rust, so AddressSanitizer would add build time and halve
//! the executions for nothing (`--sanitizer address` works as well, for a
//! run by hand after unsafe code changes). Debug assertions and overflow
//! checks are on.
//!
//! Each run reads the committed seeds (`tests/fuzz/corpus/<target>`, never
//! written) and a working corpus under `tests/fuzz/target/corpus/<target>`
//! that keeps what earlier runs found (libFuzzer adds to the first corpus
//! directory only); `--merge` folds the working corpus's new coverage into
//! the committed seeds. A crash leaves its input in
//! `tests/fuzz/artifacts/<target>/`; committed into the seeds it is a
//! regression test of every later run.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::{run, workspace_root};

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    /// The largest input worth trying.
    pub max_len: usize,
    /// Executions in `cargo xtask test`: about 15 s on a 2-vCPU VM.
    pub test_runs: u64,
}

pub const TARGETS: &[Target] = &[
    // Environment plus network config: real ones are well under 4 KiB.
    Target {
        name: "cni",
        max_len: 4096,
        test_runs: 200_000,
    },
    // Manifests: a few objects.
    Target {
        name: "manifest",
        max_len: 8192,
        test_runs: 10_000,
    },
    // The seed of the cluster generator's RNG (folded into 32 bytes).
    Target {
        name: "policy",
        max_len: 64,
        test_runs: 2_000,
    },
    // Hook selector + one Ethernet frame (a 1500-byte MTU's).
    Target {
        name: "ebpf_parser",
        max_len: 1515,
        test_runs: 500_000,
    },
];

/// How long each target runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Seconds of exploration from libFuzzer's random seed, growing the
    /// working corpus (0: the seeds once). By hand.
    Seconds(u64),
    /// The test command's: each target's `test_runs` executions from a
    /// fixed seed, the committed seeds and an empty working corpus. Bounded
    /// by work, not time, so what a run finds does not depend on the
    /// machine's speed (hash-map iteration order, per process, still
    /// steers coverage feedback a little).
    TestRuns,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("tests/fuzz")
}

/// Installs cargo-fuzz if it is missing (part of `cargo xtask bootstrap`).
pub fn install() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

fn cargo_fuzz(subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["fuzz", subcommand, "--fuzz-dir"])
        .arg(fuzz_dir())
        .args(["--sanitizer", "none", "--debug-assertions"])
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(workspace_root());
    cmd
}

/// The targets `name` picks: one by name, or all.
pub fn select(name: Option<&str>) -> anyhow::Result<Vec<Target>> {
    match name {
        None => Ok(TARGETS.to_vec()),
        Some(name) => match TARGETS.iter().find(|t| t.name == name) {
            Some(target) => Ok(vec![*target]),
            None => bail!(
                "no fuzz target {name:?}; the targets are {}",
                TARGETS
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// Builds, then runs each of `targets` for `budget`, one after the other;
/// fails at the first target that finds a crash (or cannot run). `merge`
/// folds the working corpus's new coverage into the committed seeds.
pub fn fuzz(targets: &[Target], budget: Budget, merge: bool) -> anyhow::Result<()> {
    install()?;
    // `cargo fuzz build` takes one target, or none for all.
    let mut build = cargo_fuzz("build");
    if let [target] = targets {
        build.arg(target.name);
    }
    run(&mut build)?;
    for target in targets {
        run_one(target, budget)?;
        if merge {
            self::merge(target.name)?;
        }
    }
    Ok(())
}

fn work_corpus(target: &str) -> PathBuf {
    fuzz_dir().join("target/corpus").join(target)
}

/// The test command's working corpus, emptied before each run.
fn test_corpus(target: &str) -> PathBuf {
    fuzz_dir().join("target/test-corpus").join(target)
}

fn seeds(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

fn run_one(target: &Target, budget: Budget) -> anyhow::Result<()> {
    let (max_len, target) = (target.max_len, target.name);
    let work = match budget {
        Budget::Seconds(_) => work_corpus(target),
        Budget::TestRuns => {
            let dir = test_corpus(target);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("emptying {}", dir.display()))?;
            }
            dir
        }
    };
    let seeds = seeds(target);
    let artifacts = fuzz_dir().join("artifacts").join(target);
    let logs = fuzz_dir().join("target/logs");
    for dir in [&work, &artifacts, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let (what, limit) = match budget {
        Budget::Seconds(0) => ("replaying the seeds".to_owned(), "-runs=0".to_owned()),
        Budget::Seconds(seconds) => (
            format!("for {seconds} s"),
            format!("-max_total_time={seconds}"),
        ),
        Budget::TestRuns => {
            let runs = TARGETS
                .iter()
                .find(|t| t.name == target)
                .map_or(0, |t| t.test_runs);
            (
                format!("for {runs} executions from seed 1"),
                format!("-runs={runs}"),
            )
        }
    };
    eprintln!(
        "xtask: fuzzing {target} {what} (log: {})",
        log_path.display()
    );
    let mut cmd = cargo_fuzz("run");
    cmd.arg(target)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(limit)
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .args((budget == Budget::TestRuns).then_some("-seed=1"))
        .stdout(log.try_clone()?)
        .stderr(log);
    let status = cmd.status().context("running cargo fuzz")?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    print_summary(target, &text);
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        for line in tail.iter().rev() {
            eprintln!("  | {line}");
        }
        bail!(
            "fuzz target {target} failed ({status}): the input is in {}; reproduce with \
             `cargo xtask fuzz {target} --replay FILE`, then add it to {} as a regression seed",
            artifacts.display(),
            seeds.display()
        );
    }
    Ok(())
}

/// One line per target: runs, speed, coverage, corpus growth.
fn print_summary(target: &str, log: &str) {
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned()
    };
    // libFuzzer's last status line: "#N  DONE  cov: C ft: F corp: ...".
    let status = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("cov:"))
        .and_then(|l| l.find("cov:").map(|i| l[i..].to_owned()))
        .unwrap_or_default();
    eprintln!(
        "fuzz {target}: {} runs, {} exec/s, {} new units, peak {} MB; {status}",
        stat("number_of_executed_units"),
        stat("average_exec_per_sec"),
        stat("new_units_added"),
        stat("peak_rss_mb"),
    );
}

/// libFuzzer's merge: inputs of the working corpus that add coverage over
/// the seeds are copied into the seeds.
fn merge(target: &str) -> anyhow::Result<()> {
    let mut cmd = cargo_fuzz("run");
    cmd.arg(target)
        .arg(seeds(target))
        .arg(work_corpus(target))
        .args(["--", "-merge=1"]);
    run(&mut cmd)
}

/// Runs `target` once on each of `files` (a crash input, a seed).
pub fn replay(target: &str, files: &[PathBuf]) -> anyhow::Result<()> {
    install()?;
    run(cargo_fuzz("build").arg(target))?;
    // As cargo fuzz's corpus arguments, not after `--`: otherwise cargo fuzz
    // puts the target's corpus directory first and libFuzzer, seeing a
    // directory, takes every argument for one.
    let mut cmd = cargo_fuzz("run");
    cmd.arg(target);
    for file in files {
        cmd.arg(absolute(file));
    }
    run(&mut cmd)
}

fn absolute(path: &Path) -> PathBuf {
    std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_owned())
}
