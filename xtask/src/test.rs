//! `cargo xtask test`: every test, in the order a failure is cheapest to
//! read: unit tests, then integration tests that run the real binary (root
//! ones against the real kernel), then the root suites in VMs (`vm`).
//!
//! Root-only tests skip loudly when not root; under CI (`CI` set) skipping is
//! an error, because a green run that skipped the kernel tests proves nothing.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{toolchain, vm};

/// Commands the host tests run, with their Debian packages.
const TEST_PACKAGES: &[(&str, &str)] = &[("ffmpeg", "ffmpeg")];

/// Set for the test binaries: root tests fail instead of skipping.
const REQUIRE_ROOT_ENV: &str = "FFRTMP_REQUIRE_ROOT_TESTS";
/// Set for the test binaries: the `ffrtmp` binary the integration tests run
/// (tests/common). They run the shipped build (static musl, release), not
/// cargo's debug build of it: what ships is what is tested.
pub const BIN_ENV: &str = "FFRTMP_BIN";

pub fn run(root: &Path, extra: &[String]) -> anyhow::Result<()> {
    let tools = toolchain::setup(root)?;
    let is_root = unsafe { libc::geteuid() } == 0;
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    if !is_root {
        if in_ci {
            bail!("CI must run the root tests: run `cargo xtask test` as root");
        }
        eprintln!(
            "\n==> NOT ROOT: the integration tests that need the real kernel (eBPF, cgroups)\n\
             ==> will SKIP. Run `cargo xtask test` as root to run them.\n"
        );
    }

    if is_root {
        // The transcode test runs Debian's real ffmpeg.
        crate::packages::ensure(TEST_PACKAGES)?;
    }
    let shipped = crate::build_release(root)?;
    let mut cmd = tools.cargo(root);
    cmd.env(BIN_ENV, &shipped)
        .args([
            "test",
            "--no-fail-fast",
            "--package",
            "ffrtmp-common",
            "--package",
            "ffrtmp",
            "--package",
            "xtask",
            "--",
            // The kernel tests each start their own `watch`; one at a time keeps
            // an exec storm in one test from filling another's ring buffer.
            "--test-threads=1",
        ])
        .args(extra);
    if in_ci || is_root {
        cmd.env(REQUIRE_ROOT_ENV, "1");
    }
    let mut totals = run_counting(&mut cmd)?;

    // The same root suites in VMs: pure cgroup v2, other kernels.
    let mut vm_outcomes = Vec::new();
    match vm::available() {
        Ok(()) => {
            let args = vm::VmArgs {
                kernels: Vec::new(),
                kvm: false,
                test_args: extra.to_vec(),
            };
            vm_outcomes = vm::run(root, &tools, &shipped, &args)?;
            for outcome in &vm_outcomes {
                totals.passed += outcome.passed;
                totals.failed += outcome.failed;
            }
        }
        Err(why) if in_ci => return Err(why.context("CI must run the VM tests")),
        Err(why) => {
            eprintln!("\n==> SKIPPING the VM tests (pure cgroup v2, other kernels): {why:#}\n")
        }
    }

    let vm_result = vm::check(&vm_outcomes);
    // One closing line for the whole run, last (cargo's own last line is
    // that of the last test binary, often a doc-test binary with no test).
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !totals.ok {
        bail!("some tests failed on the host");
    }
    vm_result
}

/// Sums of cargo's `test result:` lines.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    ok: bool,
}

/// Runs `cargo test`, passing its output through, and adds up its results.
fn run_counting(cmd: &mut Command) -> anyhow::Result<Totals> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            totals.passed += count(summary, "passed");
            totals.failed += count(summary, "failed");
            totals.ignored += count(summary, "ignored");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    totals.ok = status.success() && totals.failed == 0;
    Ok(totals)
}

/// The number before `what` in "ok. 19 passed; 0 failed; 0 ignored; …".
pub fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            let mut words = part.split_whitespace().rev();
            (words.next()? == what).then_some(())?;
            words.next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_cargo_test_summaries() {
        let s =
            "FAILED. 9 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 6.36s";
        assert_eq!(
            (count(s, "passed"), count(s, "failed"), count(s, "ignored")),
            (9, 1, 2)
        );
        assert_eq!(count("ok. 0 passed; 0 failed", "ignored"), 0);
    }
}
