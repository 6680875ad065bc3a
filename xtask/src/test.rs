//! `cargo xtask test`: every check and test, in the order a failure is
//! cheapest to read: formatting, lints and docs, then unit tests, then
//! integration tests that run the real binary (root ones against the real
//! kernel), then the root suites in VMs (`vm`).
//!
//! Root-only tests skip loudly when not root; under CI (`CI` set) skipping is
//! an error, because a green run that skipped the kernel tests proves nothing.
//!
//! The closing line counts honestly: a test that returned early after
//! saying `SKIP NAME: WHY` (tests/common's `skip`) is counted as skipped, not
//! passed, on the host and in each VM, and each is listed with its reason
//! before the closing line.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
};

use anyhow::{Context as _, bail};

use crate::{
    fuzz,
    results::{BIN_ENV, Skip, count, skip_of},
    toolchain, vm,
};

/// Commands the host tests run, with their Debian packages.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ffmpeg", "ffmpeg"),
    ("lintian", "lintian"),
    ("mmdebstrap", "mmdebstrap"),
    // tests/fleet.rs: promtool checks the endpoint and the rules, a real
    // Prometheus scrapes a running `watch`.
    ("promtool", "prometheus"),
    // tests/fleet.rs: rsyslogd -N1 checks the shipped collector configuration.
    ("rsyslogd", "rsyslog"),
];
/// Set for the test binaries: the release artefacts (`cargo xtask dist`)
/// and the root filesystem tests/package.rs installs them into.
const DIST_ENV: &str = "FFRTMP_DIST";
const ROOTFS_ENV: &str = "FFRTMP_ROOTFS";

/// Set for the test binaries: root tests fail instead of skipping.
const REQUIRE_ROOT_ENV: &str = "FFRTMP_REQUIRE_ROOT_TESTS";
/// Set for clippy and rustdoc: they need no kernel programs (ffrtmp/build.rs).
const SKIP_EBPF_ENV: &str = "FFRTMP_SKIP_EBPF";

pub(crate) fn run(root: &Path, extra: &[String]) -> anyhow::Result<()> {
    let tools = toolchain::setup(root)?;
    let is_root = crate::is_root();
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
    habits(root, &tools)?;
    if extra.is_empty() {
        // The parsers of untrusted input, a few seconds each; a crash fails
        // the run (`cargo xtask fuzz` runs them longer).
        eprintln!("==> fuzz smoke ({} s per target)", fuzz::SMOKE_SECS);
        let targets: Vec<String> = fuzz::TARGETS.iter().map(|t| (*t).to_string()).collect();
        for o in fuzz::fuzz(root, &targets, fuzz::SMOKE_SECS)? {
            println!("fuzz {:<10} {}", o.target, o.stats);
        }
    }

    if is_root {
        // The transcode test runs Debian's real ffmpeg; the package tests
        // lintian and a root filesystem from mmdebstrap.
        crate::packages::ensure(TEST_PACKAGES)?;
    }
    let shipped = crate::build_release(root)?;
    let mut cmd = tools.cargo(root);
    // The release artefacts and the Debian root filesystem, installed for
    // real by tests/package.rs.
    // Also what the systemd VM installs.
    let mut systemd_vm = None;
    if is_root {
        let artefacts = crate::dist::dist(root, &shipped)?;
        match crate::rootfs::ensure(root, &crate::rootfs::BOOKWORM_SYSTEMD) {
            Ok(rootfs) => {
                cmd.env(DIST_ENV, &artefacts.dir).env(ROOTFS_ENV, &rootfs);
                systemd_vm = Some((artefacts.deb.clone(), rootfs));
            }
            Err(why) if in_ci => return Err(why.context("CI must run the package tests")),
            Err(why) => {
                eprintln!("\n==> the package tests will SKIP: {why:#}\n");
            }
        }
    }
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
    let mut skipped = Skipped::default();
    skipped.add("host", &totals.skips);

    // The same root suites in VMs: pure cgroup v2, other kernels.
    let mut vm_outcomes = Vec::new();
    match vm::available() {
        Ok(()) => {
            let args = vm::VmArgs {
                kernels: Vec::new(),
                kvm: false,
                systemd: false,
                test_args: extra.to_vec(),
            };
            vm_outcomes = vm::run(root, &tools, &shipped, &args)?;
            // systemd 252 as PID 1, the package installed (vm/systemd.rs).
            match &systemd_vm {
                Some((deb, rootfs)) => {
                    vm_outcomes.push(vm::systemd::run(
                        root, &tools, &shipped, deb, rootfs, &args,
                    )?);
                }
                None if in_ci => bail!("CI must run the systemd VM"),
                None => eprintln!(
                    "\n==> SKIPPING the systemd VM: it needs root and the Debian root filesystem\n"
                ),
            }
            for outcome in &vm_outcomes {
                totals.passed += outcome.passed;
                totals.failed += outcome.failed;
                skipped.add(&format!("vm {}", outcome.kernel), &outcome.skips);
            }
        }
        Err(why) if in_ci => return Err(why.context("CI must run the VM tests")),
        Err(why) => {
            eprintln!("\n==> SKIPPING the VM tests (pure cgroup v2, other kernels): {why:#}\n");
        }
    }

    let vm_result = vm::check(&vm_outcomes);
    skipped.print();
    // One closing line for the whole run, last (cargo's own last line is
    // that of the last test binary, often a doc-test binary with no test).
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed,
        totals.failed,
        totals.ignored + skipped.count()
    );
    if !totals.ok {
        bail!("some tests failed on the host");
    }
    vm_result
}

/// The habits CI keeps: formatting, lints (the workspace's `[lints]`,
/// warnings denied) and docs (rustdoc warnings denied). The kernel
/// programs are not built for clippy and rustdoc (ffrtmp/build.rs).
fn habits(root: &Path, tools: &toolchain::Tools) -> anyhow::Result<()> {
    let step = |what: &str, args: &[&str], env: &[(&str, &str)]| {
        eprintln!("==> {what}");
        let mut cmd = tools.cargo(root);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        crate::run_command(&mut cmd).with_context(|| format!("{what} failed"))
    };
    step("cargo fmt --check", &["fmt", "--all", "--check"], &[])?;
    step(
        "cargo clippy (warnings denied)",
        &["clippy", "--all-targets", "--", "-D", "warnings"],
        &[(SKIP_EBPF_ENV, "1")],
    )?;
    // The kernel programs, for the BPF target (their own build needs it):
    // the same workspace lints, SAFETY comments on every unsafe block.
    eprintln!("==> cargo clippy, kernel programs (warnings denied)");
    let mut ebpf = tools.nightly_cargo(root);
    ebpf.args([
        "clippy",
        "--package",
        "ffrtmp-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        "target/ebpf-clippy",
        "--",
        "-D",
        "warnings",
    ]);
    crate::run_command(&mut ebpf).context("cargo clippy of the kernel programs failed")?;
    step(
        "cargo doc (warnings denied)",
        // Private items too: the module docs are the design, and most of
        // the crate is `pub(crate)`.
        &["doc", "--no-deps", "--document-private-items"],
        &[(SKIP_EBPF_ENV, "1"), ("RUSTDOCFLAGS", "-D warnings")],
    )
}

/// Sums of cargo's `test result:` lines, and the tests that said SKIP.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    skips: Vec<Skip>,
    ok: bool,
}

/// Runs `cargo test`, passing its output through, and adds up its results.
/// A test that said SKIP counts as skipped, not passed.
fn run_counting(cmd: &mut Command) -> anyhow::Result<Totals> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let stderr = child.stderr.take().context("cargo test has no stderr")?;
    // The tests write their SKIP lines to stderr, past libtest's capture.
    let errors = thread::spawn(move || {
        let mut skips = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            skips.extend(skip_of(&line));
        }
        skips
    });
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        totals.skips.extend(skip_of(&line));
        if let Some(summary) = line.strip_prefix("test result: ") {
            totals.passed += count(summary, "passed");
            totals.failed += count(summary, "failed");
            totals.ignored += count(summary, "ignored");
        }
    }
    totals.skips.extend(errors.join().unwrap_or_default());
    totals.passed = totals.passed.saturating_sub(totals.skips.len() as u64);
    let status = child.wait().context("waiting for cargo test")?;
    totals.ok = status.success() && totals.failed == 0;
    Ok(totals)
}

/// Every skip of the run, by test and reason, with where it happened.
#[derive(Default)]
struct Skipped(BTreeMap<(String, String), Vec<String>>);

impl Skipped {
    fn add(&mut self, place: &str, skips: &[Skip]) {
        for s in skips {
            self.0
                .entry((s.test.clone(), s.why.clone()))
                .or_default()
                .push(place.to_string());
        }
    }

    fn count(&self) -> u64 {
        self.0.values().map(|places| places.len() as u64).sum()
    }

    /// Each skipped test once, with its reason and where.
    fn print(&self) {
        if self.0.is_empty() {
            return;
        }
        println!("skipped:");
        for ((test, why), places) in &self.0 {
            println!("  {test} ({}): {why}", places.join(", "));
        }
    }
}
