//! The eBPF toolchain, installed by the project itself:
//!
//! - the nightly toolchain's `rust-src` (the BPF target builds `core` from
//!   source with `-Z build-std`);
//! - `bpf-linker`, built from the crate registry against the nightly
//!   toolchain's own libLLVM, so no system LLVM is needed. The LLVM library
//!   name and major version are read from `rustc +nightly -vV` and the
//!   sysroot, never hard-coded.
//!
//! Everything lands in `target/tools/` with a stamp naming the nightly
//! toolchain it was built for; a second run with the same toolchain does
//! nothing.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

use crate::run_command;

/// The toolchain the kernel programs are built with (see ffrtmp/build.rs).
pub(crate) const NIGHTLY: &str = "nightly";
/// bpf-linker release known to work with the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Install root of bpf-linker, relative to the workspace (ffrtmp/build.rs
/// looks in its `bin/` too).
const TOOLS_DIR: &str = "target/tools";
const STAMP: &str = "bpf-linker.stamp";

/// What `setup` found or installed.
pub(crate) struct Tools {
    pub bin_dir: PathBuf,
}

impl Tools {
    /// `cargo` with the tools on PATH.
    pub(crate) fn cargo(&self, root: &Path) -> Command {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(root).env("PATH", self.path());
        cmd
    }

    /// The nightly's `cargo` (the kernel programs' toolchain), with the
    /// tools on PATH and none of the stable toolchain's variables.
    pub(crate) fn nightly_cargo(&self, root: &Path) -> Command {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", NIGHTLY, "cargo"])
            .current_dir(root)
            .env("PATH", self.path());
        for var in [
            "CARGO",
            "RUSTC",
            "RUSTDOC",
            "RUSTUP_TOOLCHAIN",
            "RUSTC_WRAPPER",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// PATH with the tools first.
    pub(crate) fn path(&self) -> std::ffi::OsString {
        let old = std::env::var_os("PATH").unwrap_or_default();
        std::env::join_paths(
            std::iter::once(self.bin_dir.clone()).chain(std::env::split_paths(&old)),
        )
        .unwrap_or(old)
    }
}

/// Installs whatever is missing; idempotent.
pub(crate) fn setup(root: &Path) -> anyhow::Result<Tools> {
    let tools = root.join(TOOLS_DIR);
    ensure_nightly()?;
    let info = NightlyInfo::read()?;
    ensure_rust_src(&info)?;
    ensure_nightly_clippy()?;
    ensure_bpf_linker(&tools, &info)?;
    Ok(Tools {
        bin_dir: tools.join("bin"),
    })
}

/// Facts about the nightly toolchain, from `rustc +nightly -vV`.
struct NightlyInfo {
    /// The whole `-vV` output; it names the exact build, used as the stamp.
    version: String,
    llvm_major: u32,
    sysroot: PathBuf,
}

impl NightlyInfo {
    fn read() -> anyhow::Result<Self> {
        let version = capture(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
        let llvm = version
            .lines()
            .find_map(|l| l.strip_prefix("LLVM version: "))
            .ok_or_else(|| anyhow!("`rustc +{NIGHTLY} -vV` does not name its LLVM version"))?;
        let llvm_major = llvm
            .split('.')
            .next()
            .and_then(|m| m.trim().parse().ok())
            .with_context(|| format!("parsing LLVM version {llvm:?}"))?;
        let sysroot =
            capture(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
        Ok(Self {
            version,
            llvm_major,
            sysroot: PathBuf::from(sysroot.trim()),
        })
    }

    /// The nightly's shared libLLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
    fn libllvm(&self) -> anyhow::Result<PathBuf> {
        let lib = self.sysroot.join("lib");
        let entries = fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", lib.display()))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("libLLVM.so.") {
                return Ok(entry.path());
            }
        }
        bail!(
            "no libLLVM.so.* in {}: the nightly toolchain ships no shared LLVM",
            lib.display()
        )
    }
}

/// Adds the standard library for `target` to the toolchain that builds the
/// workspace (the shipped binary's musl target is not installed by default).
pub(crate) fn ensure_target(root: &Path, target: &str) -> anyhow::Result<()> {
    let installed =
        capture(
            Command::new("rustup")
                .current_dir(root)
                .args(["target", "list", "--installed"]),
        )?;
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    eprintln!("xtask: adding the {target} target");
    run_command(
        Command::new("rustup")
            .current_dir(root)
            .args(["target", "add", target]),
    )
}

fn ensure_nightly() -> anyhow::Result<()> {
    let list = capture(Command::new("rustup").args(["toolchain", "list"]))?;
    if list.lines().any(|l| l.starts_with(&format!("{NIGHTLY}-"))) {
        return Ok(());
    }
    eprintln!("xtask: installing the {NIGHTLY} toolchain");
    run_command(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
    ]))
}

/// clippy of the nightly toolchain: the kernel programs are linted with
/// it (`cargo xtask test`), as they are built with it.
fn ensure_nightly_clippy() -> anyhow::Result<()> {
    let has = Command::new("rustup")
        .args(["run", NIGHTLY, "cargo", "clippy", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has {
        return Ok(());
    }
    eprintln!("xtask: adding clippy to the {NIGHTLY} toolchain");
    run_command(Command::new("rustup").args(["component", "add", "clippy", "--toolchain", NIGHTLY]))
}

fn ensure_rust_src(info: &NightlyInfo) -> anyhow::Result<()> {
    let core = info.sysroot.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the {NIGHTLY} toolchain");
    run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))
}

fn ensure_bpf_linker(tools: &Path, info: &NightlyInfo) -> anyhow::Result<()> {
    let bin = tools.join("bin/bpf-linker");
    let stamp = tools.join(STAMP);
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}\n{}", info.version);
    if bin.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the {NIGHTLY} toolchain's LLVM {} (about a minute)",
        info.llvm_major
    );
    // bpf-linker's build looks for `lib/libLLVM.so` under LLVM_PREFIX and
    // links to the versioned name; both point at the nightly's library. The
    // binary keeps this directory as its RUNPATH, so it stays in place.
    let libllvm = info.libllvm()?;
    let prefix = tools.join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let versioned = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), versioned] {
        let link = lib.join(name);
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    run_command(
        Command::new("cargo")
            .arg(format!("+{NIGHTLY}"))
            .args(["install", "bpf-linker", "--locked", "--force", "--version"])
            .arg(BPF_LINKER_VERSION)
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{}", info.llvm_major))
            .arg("--root")
            .arg(tools)
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker")?;
    run_command(Command::new(&bin).arg("--version")).context("checking the built bpf-linker")?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
}

/// Runs a command and returns its stdout; fails unless it exits 0.
pub(crate) fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed non-UTF-8"))
}
