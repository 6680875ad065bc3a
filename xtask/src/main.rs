//! `cargo xtask`: ffrtmp's developer tasks. Every task sets up what it needs
//! first (idempotently), so on a fresh machine one command does everything:
//!
//! - `setup`: nightly `rust-src` and a `bpf-linker` built against the
//!   nightly's own LLVM, cached under `target/tools/`.
//! - `build`, `run -- ARGS`: build (and run) `ffrtmp`.
//! - `test`: every test: unit, integration (root tests against the real
//!   kernel when root), then the root suites in VMs (`vm-test`).
//! - `vm-test`: the root suites on a pure cgroup v2 hierarchy and on the
//!   Debian kernels 5.10 and 6.1 (6.12 on request), under qemu.
//! - `bench observe`: the observer's benchmark (docs/BENCHMARKS.md).
//! - `fuzz`: the fuzz targets of `ffrtmp/fuzz/` (cargo-fuzz), a minute each.
//! - `soak --minutes N`: `watch` under a mixed, hostile load, its
//!   invariants checked every second.
//! - `dist`: the release artefacts in `target/dist/`: a Debian package and
//!   a tarball (`dist.rs`, docs/PACKAGE.md).
//! - `startup-order`: profile `run` and `attach` for the linker (see
//!   `startup.rs`).
mod bench;
mod dist;
mod fuzz;
mod packages;
mod results;
mod rootfs;
mod soak;
mod startup;
mod test;
mod toolchain;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ffrtmp developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker); idempotent.
    Setup,
    /// Build ffrtmp (release).
    Build,
    /// Build the release artefacts into target/dist/: the .deb, the tarball, SHA256SUMS.
    Dist,
    /// Build ffrtmp (release) and run it with ARGS, e.g. `-- watch`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit, integration (root), VM.
    Test {
        /// The nightly variant: then `fuzz` a minute per target and a
        /// 10-minute `soak`.
        #[arg(long)]
        nightly: bool,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the root test suites in qemu VMs: pure cgroup v2, other kernels.
    VmTest(vm::VmArgs),
    /// Profile the shipped binary's `run` and `attach` (root, perf) and write
    /// the order the linker places their functions in (ffrtmp/startup.order).
    StartupOrder,
    /// Fuzz the parsers of untrusted input (cargo-fuzz; nightly).
    Fuzz(fuzz::FuzzArgs),
    /// Run `watch` under a mixed, hostile load, checking its invariants.
    Soak(soak::SoakArgs),
    /// Run a benchmark and print its figures.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.task {
        Task::Setup => toolchain::setup(&root).map(drop),
        Task::Build => build_release(&root).map(drop),
        Task::Dist => {
            let bin = build_release(&root)?;
            dist::dist(&root, &bin).map(drop)
        }
        Task::Run { args } => {
            let bin = build_release(&root)?;
            let err = exec(Command::new(&bin).args(&args));
            Err(err).with_context(|| format!("running {}", bin.display()))
        }
        Task::Test { nightly, args } => {
            test::run(&root, &args)?;
            if nightly {
                fuzz::run(
                    &root,
                    &fuzz::FuzzArgs {
                        time: 60,
                        targets: Vec::new(),
                    },
                )?;
                soak::run(&root, &soak::SoakArgs { minutes: 10 })?;
            }
            Ok(())
        }
        Task::VmTest(args) if args.systemd => {
            let tools = toolchain::setup(&root)?;
            let shipped = build_release(&root)?;
            let artefacts = dist::dist(&root, &shipped)?;
            let rootfs = rootfs::ensure(&root, &rootfs::BOOKWORM_SYSTEMD)?;
            let outcome =
                vm::systemd::run(&root, &tools, &shipped, &artefacts.deb, &rootfs, &args)?;
            vm::check(&[outcome])
        }
        Task::VmTest(args) => {
            let tools = toolchain::setup(&root)?;
            let shipped = build_release(&root)?;
            let outcomes = vm::run(&root, &tools, &shipped, &args)?;
            if outcomes.is_empty() {
                bail!("no VM ran");
            }
            vm::check(&outcomes)
        }
        Task::Bench { which } => bench::run(&root, which),
        Task::Fuzz(args) => fuzz::run(&root, &args),
        Task::Soak(args) => soak::run(&root, &args),
        Task::StartupOrder => {
            // perf needs the symbols: the unstripped build.
            let bin = build_unstripped(&root)?;
            startup::generate(&root, &bin)
        }
    }
}

/// The workspace root (the parent of this crate).
fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

/// The target of the shipped binary: this machine's architecture, with musl
/// linked in statically. glibc's static start-up asks the CPU for its
/// features and caches (CPUID), which on a VM traps to the hypervisor: with
/// glibc, starting the binary took 0.3 ms longer (docs/BENCHMARKS.md).
fn release_target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

/// Builds the shipped binary (see [`build_unstripped`]) and strips it
/// (`dist::strip`): the binary every test, VM, benchmark and package uses.
fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    let bin = build_unstripped(root)?;
    dist::strip(root, &bin)
}

/// Builds the shipped binary with its symbols: a static PIE (no dynamic
/// loading at start-up, no shared-library pages in its RSS, runs on any
/// distribution) with the eBPF toolchain on PATH, linked in the start-up
/// order (`startup.rs`, which reads the symbols). `--target` keeps the
/// target and its flags off build scripts and proc macros.
fn build_unstripped(root: &Path) -> anyhow::Result<PathBuf> {
    let tools = toolchain::setup(root)?;
    let target = release_target();
    toolchain::ensure_target(root, &target)?;
    let mut cmd = tools.cargo(root);
    if let Some(flags) = startup::link_flags(root)? {
        let var = format!(
            "CARGO_TARGET_{}_RUSTFLAGS",
            target.to_uppercase().replace('-', "_")
        );
        cmd.env(var, flags);
    }
    run_command(cmd.args([
        "build",
        "--release",
        "--package",
        "ffrtmp",
        "--target",
        &target,
    ]))?;
    let bin = root.join("target").join(target).join("release/ffrtmp");
    startup::report(root, &bin)?;
    Ok(bin)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command to completion; fails unless it exits 0.
pub fn run_command(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Replaces this process (so signals reach the program directly).
fn exec(cmd: &mut Command) -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    cmd.exec()
}
