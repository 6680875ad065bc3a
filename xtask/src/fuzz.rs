//! `cargo xtask fuzz [--time SECS] [TARGET…]`: runs each fuzz target of
//! `ffrtmp/fuzz/` (cargo-fuzz, libFuzzer with AddressSanitizer, on the
//! nightly toolchain) for SECS seconds, from its corpus
//! (`target/fuzz-corpus/<target>`, kept between runs, seeded with real
//! inputs of this machine: its mountinfo, a /proc/PID/stat, the head of its
//! kernel BTF, the embedded policy), and prints what
//! libFuzzer reports at the end: executions, coverage, corpus size. A crash
//! fails the task and leaves the input in `ffrtmp/fuzz/artifacts/<target>/`;
//! turn it into a regression test (docs/TESTING.md).
//!
//! `cargo xtask test` runs a smoke pass ([`SMOKE_SECS`] per target).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::toolchain::NIGHTLY;

/// Every target, in `ffrtmp/fuzz/fuzz_targets/`.
pub(crate) const TARGETS: &[&str] = &["policy", "limits", "record", "proc", "mountinfo", "btf"];
/// Seconds per target in the test command's smoke pass.
pub(crate) const SMOKE_SECS: u64 = 4;
/// cargo-fuzz release installed into `target/tools/`.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// What one target's run reported.
pub(crate) struct Outcome {
    pub target: String,
    /// libFuzzer's last status line (`#N DONE cov: … ft: … corp: …`).
    pub stats: String,
}

#[derive(clap::Args)]
pub(crate) struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

pub(crate) fn run(root: &Path, args: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| (*t).to_string()).collect()
    } else {
        args.targets.clone()
    };
    for outcome in fuzz(root, &targets, args.time)? {
        println!("fuzz {:<10} {}", outcome.target, outcome.stats);
    }
    Ok(())
}

/// Runs `targets` for `secs` each; fails on the first crash.
pub(crate) fn fuzz(root: &Path, targets: &[String], secs: u64) -> anyhow::Result<Vec<Outcome>> {
    let cargo_fuzz = ensure_cargo_fuzz(root)?;
    let dir = root.join("ffrtmp/fuzz");
    let mut outcomes = Vec::new();
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "no fuzz target {target:?} (targets: {})",
                TARGETS.join(", ")
            );
        }
        let corpus = root.join("target/fuzz-corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        seed(root, target, &corpus)?;
        let mut cmd = Command::new(&cargo_fuzz);
        cmd.current_dir(&dir)
            .env("RUSTUP_TOOLCHAIN", NIGHTLY)
            // The kernel programs are not needed to fuzz user-space parsers.
            .env("FFRTMP_SKIP_EBPF", "1")
            .env("CARGO_TARGET_DIR", root.join("target/fuzz"))
            .args(["fuzz", "run", "--fuzz-dir"])
            .arg(&dir)
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-print_final_stats=1")
            // A policy or a BTF file is small; longer inputs only slow it.
            .arg("-max_len=8192")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd
            .output()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({}); its input is in ffrtmp/fuzz/artifacts/{target}/:\n{}",
                out.status,
                tail.join("\n")
            );
        }
        let stats = log
            .lines()
            .rev()
            .find(|l| l.contains("DONE") || l.contains("cov:"))
            .unwrap_or("(no stats)")
            .trim()
            .to_string();
        let execs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        outcomes.push(Outcome {
            target: target.clone(),
            stats: format!("{stats} (executions: {execs})"),
        });
    }
    Ok(outcomes)
}

/// A real input for `target` in its corpus, so that fuzzing starts past
/// the first checks (a BTF magic number, a mountinfo line's shape).
fn seed(root: &Path, target: &str, corpus: &Path) -> anyhow::Result<()> {
    let seed: Option<Vec<u8>> = match target {
        "policy" => fs::read(root.join("ffrtmp/src/policy/default.toml")).ok(),
        "mountinfo" => fs::read("/proc/self/mountinfo").ok(),
        "proc" => fs::read("/proc/self/stat").ok(),
        "btf" => fs::read("/sys/kernel/btf/vmlinux").ok().map(|mut b| {
            b.truncate(8192);
            b
        }),
        _ => None,
    };
    if let Some(bytes) = seed {
        fs::write(corpus.join("seed"), bytes).context("writing a seed")?;
    }
    Ok(())
}

/// cargo-fuzz in `target/tools/fuzz/bin`, installed from the crate
/// registry when missing (a minute, once).
fn ensure_cargo_fuzz(root: &Path) -> anyhow::Result<PathBuf> {
    let prefix = root.join("target/tools/fuzz");
    let bin = prefix.join("bin/cargo-fuzz");
    let stamp = prefix.join("version");
    if bin.is_file() && fs::read_to_string(&stamp).is_ok_and(|v| v == CARGO_FUZZ_VERSION) {
        return Ok(bin);
    }
    println!(
        "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
        prefix.display()
    );
    crate::run_command(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--force", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(&prefix),
    )
    .context("installing cargo-fuzz")?;
    fs::write(&stamp, CARGO_FUZZ_VERSION)?;
    Ok(bin)
}
