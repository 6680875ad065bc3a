//! Step 2: the initramfs — busybox, the root test binaries and `ffrtmp`
//! with their shared libraries, the host tools, the `brd` module — and the
//! init that mounts a pure cgroup v2 hierarchy, runs the suites and
//! reports its end (`console::DONE_MARKER`).
use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{
    console::DONE_MARKER,
    kernel::{Kernel, sanitize},
};
use crate::{
    run_command,
    toolchain::{Tools, capture},
};

/// Host tools copied into the VM (busybox's applets lack the options the
/// tests use), with the shared libraries they need.
const HOST_TOOLS: &[&str] = &["/usr/bin/setpriv", "/usr/bin/unshare"];
/// The unprivileged owner of the delegated subtree in the VM.
pub(super) const DELEGATE_UID: u32 = 1000;

/// Test binaries that run on the host only: `layers` checks the source
/// tree (the VM has no sources); `package` installs the release artefacts
/// into a Debian root filesystem with chroot (the busybox VM has neither;
/// the binary they carry is the one the VMs test).
const HOST_ONLY_TESTS: &[&str] = &["layers", "package"];

/// The test binaries (and the `ffrtmp` binary they run) for the VM.
pub(super) struct BuiltTests {
    pub(super) binaries: Vec<PathBuf>,
    /// The shipped build; the tests find it through `FFRTMP_BIN`.
    pub(super) ffrtmp: PathBuf,
}

/// Builds the integration test binaries without running them.
pub(super) fn build_tests(root: &Path, tools: &Tools, ffrtmp: &Path) -> anyhow::Result<BuiltTests> {
    let out = capture(tools.cargo(root).args([
        "test",
        "--package",
        "ffrtmp",
        "--tests",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut binaries = BTreeSet::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
            && msg["profile"]["test"] == true
            && !msg["target"]["name"]
                .as_str()
                .is_some_and(|n| HOST_ONLY_TESTS.contains(&n))
            && let Some(exe) = msg["executable"].as_str()
        {
            binaries.insert(PathBuf::from(exe));
        }
    }
    if binaries.is_empty() {
        bail!("cargo built no test binaries");
    }
    Ok(BuiltTests {
        binaries: binaries.into_iter().collect(),
        ffrtmp: ffrtmp.to_path_buf(),
    })
}

/// Packs the initramfs for `kernel`; returns the archive's path.
pub(super) fn pack_initramfs(
    vm_dir: &Path,
    kernel: &Kernel,
    busybox: &Path,
    built: &BuiltTests,
    test_args: &[String],
) -> anyhow::Result<PathBuf> {
    let stage = vm_dir.join(format!("initramfs-{}", sanitize(&kernel.name)));
    let _ = fs::remove_dir_all(&stage);
    for dir in [
        "bin",
        "usr/bin",
        "tests",
        "lib/modules",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
    ] {
        fs::create_dir_all(stage.join(dir))?;
    }
    copy(busybox, &stage.join("bin/busybox"))?;
    let mut with_libs: Vec<PathBuf> = HOST_TOOLS.iter().map(PathBuf::from).collect();
    for tool in HOST_TOOLS {
        copy(Path::new(tool), &stage.join(tool.trim_start_matches('/')))?;
    }
    for bin in &built.binaries {
        let name = bin.file_name().context("test binary has a name")?;
        copy_stripped(bin, &stage.join("tests").join(name))?;
        with_libs.push(bin.clone());
    }
    // At the same absolute path as on the host; static, so no libraries.
    copy_stripped(&built.ffrtmp, &stage.join(built.ffrtmp.strip_prefix("/")?))?;
    for lib in shared_libraries(&with_libs)? {
        copy(&lib, &stage.join(lib.strip_prefix("/")?))?;
    }
    // A RAM disk gives io.max a real MAJ:MIN.
    let brd = find_module(&kernel.modules, "brd")?;
    decompress_module(&brd, &stage.join("lib/modules/brd.ko"))?;
    fs::write(
        stage.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\ndelegate:x:{DELEGATE_UID}:{DELEGATE_UID}::/tmp:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n"
        ),
    )?;
    fs::write(
        stage.join("etc/group"),
        format!("root:x:0:\ndelegate:x:{DELEGATE_UID}:\nnogroup:x:65534:\n"),
    )?;
    let init = stage.join("init");
    fs::write(&init, init_script(test_args, &built.ffrtmp))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;

    let archive = vm_dir.join(format!("initramfs-{}.cpio", sanitize(&kernel.name)));
    pack_cpio(&stage, &archive)?;
    Ok(archive)
}

/// Packs the tree `stage` as a newc cpio archive: an initramfs.
pub(super) fn pack_cpio(stage: &Path, archive: &Path) -> anyhow::Result<()> {
    let file = fs::File::create(archive)?;
    run_command(
        Command::new("sh")
            .args(["-c", "find . -print0 | cpio --null --quiet -o -H newc"])
            .current_dir(stage)
            .stdout(file),
    )
    .with_context(|| format!("packing {}", archive.display()))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copies a debug build without its debug info (~55 MB → a few MB each; the
/// whole initramfs must unpack into the VM's memory).
pub(super) fn copy_stripped(from: &Path, to: &Path) -> anyhow::Result<()> {
    copy(from, to)?;
    run_command(Command::new("strip").arg("--strip-debug").arg(to))
        .with_context(|| format!("stripping {}", to.display()))
}

/// Shared libraries (and the loader) the binaries need, from `ldd`.
fn shared_libraries(binaries: &[PathBuf]) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for bin in binaries {
        let out = capture(Command::new("ldd").arg(bin))?;
        for line in out.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line
                .split("=>")
                .last()
                .and_then(|s| s.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(p) = path {
                libs.insert(PathBuf::from(p));
            }
        }
    }
    Ok(libs)
}

pub(super) fn find_module(modules: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = modules.join("kernel/drivers/block");
    for ext in [".ko", ".ko.xz", ".ko.zst"] {
        let p = dir.join(format!("{name}{ext}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no {name} module in {}", dir.display())
}

/// busybox's insmod takes plain modules only.
pub(super) fn decompress_module(from: &Path, to: &Path) -> anyhow::Result<()> {
    let name = from.to_string_lossy();
    if name.ends_with(".ko") {
        return copy(from, to);
    }
    let tool = if name.ends_with(".xz") { "xz" } else { "zstd" };
    let out = fs::File::create(to)?;
    run_command(Command::new(tool).arg("-dc").arg(from).stdout(out))
}

/// Test arguments as shell words, single-quoted.
pub(super) fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The VM's init (busybox sh).
fn init_script(test_args: &[String], ffrtmp: &Path) -> String {
    let args = shell_words(test_args);
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin HOME=/root
# No tmpfs over /tmp: the root is already in memory, and the checkout (with
# the ffrtmp binary the tests run by its host path) may live under /tmp.
# As on any Linux system: /tmp is world-writable and sticky, /run exists.
chmod 1777 /tmp
mkdir -p /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# Loopback, for the metrics endpoint's tests.
ip link set lo up
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control
done
# A delegated subtree, as systemd's Delegate=yes hands one to a service:
# owned by the delegate with its control files, controllers available from
# the parent, its own subtree_control left for the delegate to set.
d=/sys/fs/cgroup/delegated
mkdir $d
chown {uid}:{uid} $d $d/cgroup.procs $d/cgroup.subtree_control $d/cgroup.threads
insmod /lib/modules/brd.ko rd_nr=1 rd_size=65536
echo "FFRTMP-VM: kernel $(uname -r); cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
export FFRTMP_VM=1 FFRTMP_REQUIRE_ROOT_TESTS=1 FFRTMP_DELEGATED_CGROUP=$d FFRTMP_DELEGATED_UID={uid}
export {bin_env}='{bin}'
fail=0
for t in /tests/*; do
    echo "FFRTMP-VM: running $(basename $t)"
    $t --test-threads=1 {args} || fail=1
done
echo "{done} fail=$fail"
poweroff -f
"#,
        uid = DELEGATE_UID,
        done = DONE_MARKER,
        bin_env = crate::results::BIN_ENV,
        bin = ffrtmp.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_quotes_test_arguments() {
        let script = init_script(&["it's".into(), "--exact".into()], Path::new("/b/ffrtmp"));
        assert!(
            script.contains(r"--test-threads=1 'it'\''s' '--exact'"),
            "{script}"
        );
    }

    #[test]
    fn init_names_the_binary_under_test() {
        let script = init_script(&[], Path::new("/work/t/ffrtmp"));
        assert!(
            script.contains("export FFRTMP_BIN='/work/t/ffrtmp'\n"),
            "{script}"
        );
    }
}
