//! Builds the kernel programs (`ffrtmp-ebpf`) for the BPF target with the
//! nightly toolchain and `bpf-linker`, and leaves the object in `OUT_DIR`
//! where `observe::ebpf` embeds it.
//!
//! `cargo xtask setup` installs both; when `bpf-linker` is not on PATH we
//! also look in the place xtask installs it, so a plain `cargo build` works
//! after one `cargo xtask setup`.
//!
//! With `FFRTMP_SKIP_EBPF=1` (`cargo xtask test` sets it for clippy and
//! rustdoc) the kernel programs are not built: an empty object stands in,
//! so checking, linting and documenting need neither the nightly toolchain
//! nor bpf-linker. A binary built so cannot load eBPF and says so
//! (`observe::ebpf`), and the build prints a warning.
//!
//! It also tells the binary what `ffrtmp --version` reports (`cli::version`):
//! the git commit it was built from (`FFRTMP_COMMIT` when set, as for a
//! build from a source tarball; else `git rev-parse`; else `unknown`), the
//! target, and whether the kernel programs are embedded.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};

/// Where `cargo xtask setup` installs bpf-linker, relative to the workspace.
const XTASK_TOOLS_BIN: &str = "target/tools/bin";
const BPF_LINKER: &str = "bpf-linker";
const EBPF_PACKAGE: &str = "ffrtmp-ebpf";
/// The start-up profile the shipped binary is linked in the order of.
const STARTUP_ORDER: &str = "startup.order";
/// Set to skip building the kernel programs (see the module doc).
const SKIP_EBPF: &str = "FFRTMP_SKIP_EBPF";
/// The object's name in OUT_DIR, as `observe::ebpf` includes it.
const OBJECT: &str = "ffrtmp";

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .parent()
        .context("ffrtmp has no parent directory")?
        .to_path_buf();
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed={SKIP_EBPF}");
    build_facts(&workspace)?;
    let skip = env::var_os(SKIP_EBPF).is_some_and(|v| v == "1");
    println!(
        "cargo:rustc-env=FFRTMP_KERNEL_PROGRAMS={}",
        if skip { "absent" } else { "embedded" }
    );
    if skip {
        let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        std::fs::write(out.join(OBJECT), b"")
            .context("writing the empty stand-in for the kernel programs")?;
        println!(
            "cargo:warning={SKIP_EBPF}=1: the kernel programs are not built; this binary cannot load eBPF"
        );
        return Ok(());
    }
    // The shipped binary's link order (xtask/src/startup.rs): the linker
    // reads it, so a new profile must relink.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join(STARTUP_ORDER).display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("ffrtmp-common").display()
    );

    let tools = workspace.join(XTASK_TOOLS_BIN);
    let path = env::var_os("PATH").unwrap_or_default();
    let on_path = env::split_paths(&path).any(|dir| dir.join(BPF_LINKER).is_file());
    if !on_path {
        if !tools.join(BPF_LINKER).is_file() {
            return Err(anyhow!(
                "{BPF_LINKER} is not on PATH nor in {}: run `cargo xtask setup` first",
                tools.display()
            ));
        }
        let joined = env::join_paths(std::iter::once(tools).chain(env::split_paths(&path)))
            .context("joining PATH")?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", joined) };
    }

    let ebpf_dir = workspace.join(EBPF_PACKAGE);
    let root_dir = ebpf_dir
        .to_str()
        .context("the ffrtmp-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the kernel programs (ffrtmp-ebpf)")
}

/// What `ffrtmp --version` says about this build (see the module doc).
fn build_facts(workspace: &std::path::Path) -> anyhow::Result<()> {
    const COMMIT: &str = "FFRTMP_COMMIT";
    println!("cargo:rerun-if-env-changed={COMMIT}");
    let target = env::var("TARGET").context("TARGET not set")?;
    println!("cargo:rustc-env=FFRTMP_TARGET={target}");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = match env::var(COMMIT) {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // A new commit (or checkout) must reach the binary: watch HEAD
            // and the branch it names.
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                let dir = PathBuf::from(dir);
                let branch = git(&["symbolic-ref", "-q", "HEAD"]);
                // Only files that exist: cargo reruns for a missing one
                // on every build.
                for file in ["HEAD", "packed-refs"]
                    .into_iter()
                    .map(|f| dir.join(f))
                    .chain(branch.map(|b| dir.join(b)))
                    .filter(|f| f.is_file())
                {
                    println!("cargo:rerun-if-changed={}", file.display());
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env={COMMIT}={commit}");
    Ok(())
}
