//! Debian root filesystems for the tests, made with Debian's `mmdebstrap`
//! and cached under `target/rootfs/` (as the VM kernels are under
//! `target/vm/`): a second run downloads nothing. Measured here: a minbase
//! bookworm with systemd, man-db and bash-completion in 15 s, 206 MB.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::run_command;

/// One root filesystem: a suite and the packages on top of minbase.
pub(crate) struct Rootfs {
    pub name: &'static str,
    pub suite: &'static str,
    pub include: &'static [&'static str],
}

/// A clean Debian 12 that boots systemd: what the package tests
/// (tests/package.rs) install into with chroot, and what the systemd VM
/// boots (`vm::systemd`). Nothing of ours; only what the checks use:
/// systemd-analyze, man, bash-completion, kmod (the VM's RAM disk), procps.
pub(crate) const BOOKWORM_SYSTEMD: Rootfs = Rootfs {
    name: "bookworm-systemd",
    suite: "bookworm",
    include: &[
        "systemd",
        "systemd-sysv",
        "dbus",
        // What a Debian server has for user managers (the guide's
        // `user@.service` delegation, a lingering user): logind's PAM
        // session and the user's bus.
        "libpam-systemd",
        "dbus-user-session",
        "man-db",
        "bash-completion",
        "kmod",
        "procps",
    ],
};

const MIRROR: &str = "http://deb.debian.org/debian";

/// The root filesystem's tarball, made if missing (its name carries its
/// package list, so a changed list makes a new one).
pub(crate) fn ensure(root: &Path, spec: &Rootfs) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/rootfs");
    let key = spec.include.join(",");
    let tar = dir.join(format!("{}-{:08x}.tar", spec.name, fnv(&key)));
    if tar.is_file() {
        return Ok(tar);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "xtask: making the {} root filesystem (mmdebstrap)",
        spec.name
    );
    // mmdebstrap picks its output's format by the name's extension unless
    // told: a `.partial` would be a directory.
    let partial = tar.with_extension("partial.tar");
    let _ = fs::remove_file(&partial);
    run_command(
        Command::new("mmdebstrap")
            .args([
                "--quiet",
                "--variant=minbase",
                "--format=tar",
                &format!("--include={key}"),
                spec.suite,
            ])
            .arg(&partial)
            .arg(MIRROR),
    )
    .context("mmdebstrap")?;
    fs::rename(&partial, &tar).with_context(|| format!("renaming {}", partial.display()))?;
    Ok(tar)
}

/// FNV-1a, 32 bits: a cache key, not a checksum.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
