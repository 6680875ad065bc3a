//! The start-up order: the functions `ffrtmp run` and `ffrtmp attach`
//! execute, linked next to each other.
//!
//! Every job pays for its wrapper's start-up, and on our VMs most of that is
//! page faults: the code `run` touches was spread over ~33 of the binary's
//! 64 KiB fault-around windows. Linking the functions it executes first
//! (rust-lld's `--symbol-ordering-file`) takes 26 page faults and ~0.1 ms
//! off every `run` and `attach` (docs/BENCHMARKS.md).
//!
//! [`ORDER_FILE`] is a profile, committed like a lock file: `cargo xtask
//! startup-order` writes it from `perf` samples and page faults of the
//! shipped binary running `run` and `attach`. Symbols the code no longer has
//! are skipped by the linker; `cargo xtask build` says how many it placed,
//! and in CI fails below [`FRESH_SHARE`], so a stale profile cannot land.
//! ffrtmp's build script names the file, so a new profile relinks. Without
//! rust-lld the binary links as before.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{run_command, toolchain::capture};

/// The profile, relative to the workspace root: one mangled symbol a line.
pub(crate) const ORDER_FILE: &str = "ffrtmp/startup.order";
/// Rounds of each profiled command.
const PROFILE_ROUNDS: usize = 400;
/// Sampling frequency of the profile (Hz): high, to catch short functions.
const SAMPLE_HZ: &str = "50000";

/// rustc flags that link with rust-lld in the order of [`ORDER_FILE`];
/// `None` (and a note) when the toolchain has no rust-lld or there is no
/// profile.
pub(crate) fn link_flags(root: &Path) -> anyhow::Result<Option<String>> {
    let order = root.join(ORDER_FILE);
    if !order.is_file() {
        eprintln!("xtask: no {ORDER_FILE}: linking without a start-up order");
        return Ok(None);
    }
    let Some(gcc_ld) = lld_dir(root)? else {
        eprintln!("xtask: the toolchain has no rust-lld: linking without a start-up order");
        return Ok(None);
    };
    let (gcc_ld, order) = (path_str(&gcc_ld)?, path_str(&order)?);
    Ok(Some(format!(
        "-C link-arg=-B{gcc_ld} -C link-arg=-fuse-ld=lld \
         -C link-arg=-Wl,--symbol-ordering-file={order} \
         -C link-arg=-Wl,--no-warn-symbol-ordering"
    )))
}

/// A path for a space-separated flags variable.
fn path_str(path: &Path) -> anyhow::Result<&str> {
    match path.to_str() {
        Some(s) if !s.contains(char::is_whitespace) => Ok(s),
        _ => bail!("{} has whitespace or is not UTF-8", path.display()),
    }
}

/// The `gcc-ld` directory (an `ld.lld` that runs rust-lld) of the toolchain
/// that builds the workspace, if it has one.
fn lld_dir(root: &Path) -> anyhow::Result<Option<PathBuf>> {
    let rustc = || {
        let mut c = Command::new("rustc");
        c.current_dir(root);
        c
    };
    let sysroot = capture(rustc().args(["--print", "sysroot"]))?;
    let version = capture(rustc().arg("-vV"))?;
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV names no host")?;
    let dir = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host.trim())
        .join("bin/gcc-ld");
    Ok(dir.join("ld.lld").is_file().then_some(dir))
}

/// The share of the profile's functions that must be placed, below which
/// the profile is stale: CI fails (`CI` set), elsewhere a warning. Measured
/// (docs/BENCHMARKS.md, 2026-11-29): a profile two sessions old, 87 %
/// placed, cost `run` 0.08–0.10 ms against a fresh one; none at all,
/// 0.18–0.21 ms (and the 1 ms target).
pub(crate) const FRESH_SHARE: f64 = 0.90;

/// Prints how many of the profile's symbols `bin` has: the share the linker
/// could place first. In CI a share below [`FRESH_SHARE`] fails the build.
pub(crate) fn report(root: &Path, bin: &Path) -> anyhow::Result<()> {
    let Ok(order) = fs::read_to_string(root.join(ORDER_FILE)) else {
        return Ok(());
    };
    let wanted: BTreeSet<&str> = order.lines().filter(|l| !l.is_empty()).collect();
    let symbols = capture(Command::new("nm").arg(bin))?;
    let found = symbols
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| wanted.contains(s))
        .collect::<BTreeSet<_>>()
        .len();
    println!(
        "xtask: start-up order: {found} of {} profiled functions placed first",
        wanted.len(),
    );
    let share = found as f64 / wanted.len().max(1) as f64;
    if share < FRESH_SHARE {
        let why = format!(
            "the start-up profile is stale: {found} of {} functions placed ({:.0} %, below {:.0} %); \
             run `cargo xtask startup-order` as root and commit {ORDER_FILE}",
            wanted.len(),
            share * 100.0,
            FRESH_SHARE * 100.0
        );
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
            bail!("{why}");
        }
        eprintln!("xtask: warning: {why}");
    }
    Ok(())
}

/// `cargo xtask startup-order`: profiles the shipped binary running `run`
/// and `attach` and writes [`ORDER_FILE`]. Needs root (cgroups) and perf.
pub(crate) fn generate(root: &Path, bin: &Path) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("startup-order needs root (run and attach make cgroups)");
    }
    crate::packages::ensure(&[("perf", "linux-perf")])?;
    let dir = root.join("target/startup-order");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bin = path_str(bin)?;
    // What the bench times: run with and without limits, attach --detach.
    let script = format!(
        "sleep 600 & s=$!; i=0; while [ $i -lt {PROFILE_ROUNDS} ]; do \
         {bin} run -- /bin/true; \
         {bin} run --cpu-max '100000 100000' --memory-max 512M -- /bin/true; \
         {bin} attach --pid $s --detach --cpu-max '50000 100000' --memory-max 256M; \
         i=$((i+1)); done >/dev/null 2>&1; kill $s"
    );
    let mut symbols = Vec::new();
    for (name, event) in [
        ("samples", ["-e", "cpu-clock:u", "-F", SAMPLE_HZ]),
        ("faults", ["-e", "page-faults", "-c", "1"]),
    ] {
        let data = dir.join(format!("{name}.data"));
        run_command(
            Command::new("perf")
                .args(["record", "-q", "-o"])
                .arg(&data)
                .args(event)
                .args(["--", "sh", "-c", &script]),
        )?;
        let report = capture(
            Command::new("perf")
                .args([
                    "report",
                    "--no-demangle",
                    "--comm",
                    "ffrtmp",
                    "--sort",
                    "sym",
                ])
                .args(["--stdio", "-i"])
                .arg(&data),
        )?;
        symbols.extend(user_symbols(&report));
    }
    let mut seen = BTreeSet::new();
    symbols.retain(|s| seen.insert(s.clone()));
    if symbols.is_empty() {
        bail!("perf saw no function of ffrtmp");
    }
    let out = root.join(ORDER_FILE);
    fs::write(&out, symbols.join("\n") + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("xtask: wrote {} functions to {ORDER_FILE}", symbols.len());
    Ok(())
}

/// The user-space symbols of a `perf report --sort sym` listing, hottest
/// first, without the addresses perf could not name.
fn user_symbols(report: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("[.] "))
        .map(|(_, sym)| sym.trim().to_string())
        .filter(|s| !s.is_empty() && !s.starts_with("0x"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_symbols_from_a_perf_report() {
        let report = "# Overhead  Symbol\n\
                      \x20   12.50%  [.] _ZN6ffrtmp3cli4main17h0123456789abcdefE\n\
                      \x20    3.10%  [k] clear_page_erms\n\
                      \x20    1.00%  [.] 0x000000000048ae85\n\
                      \x20    0.50%  [.] memcpy\n";
        assert_eq!(
            user_symbols(report),
            ["_ZN6ffrtmp3cli4main17h0123456789abcdefE", "memcpy"]
        );
    }

    #[test]
    fn flags_refuse_a_path_with_whitespace() {
        assert!(path_str(Path::new("/a b/c")).is_err());
        assert_eq!(path_str(Path::new("/a/b")).unwrap(), "/a/b");
    }
}
