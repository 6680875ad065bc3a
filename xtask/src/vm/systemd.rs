//! The systemd tier of the VM harness: Debian 12 booted with systemd 252 as
//! PID 1 on a pure cgroup v2 hierarchy — what nearly every edge node runs.
//!
//! The root filesystem is the package tests' (`rootfs::BOOKWORM_SYSTEMD`,
//! made by mmdebstrap and cached), unpacked, with the project's `.deb`
//! installed in it by `dpkg -i` (so the VM runs what ships, where the
//! package puts it), the root test binaries under `/tests`, and a oneshot
//! unit that runs them once the system is up, writes to the serial console
//! as the busybox VMs' init does, and powers off. The whole tree is the
//! initramfs, booted with `rdinit=/sbin/init` on the Debian 6.1 kernel of
//! the matrix (measured here: multi-user reached in under 10 s under TCG).
use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use anyhow::Context as _;

use super::{
    VmArgs, VmOutcome,
    boot::{BootSpec, boot},
    console::DONE_MARKER,
    image::{
        DELEGATE_UID, build_tests, copy_stripped, decompress_module, find_module, pack_cpio,
        shell_words,
    },
    kernel::PrivateApt,
};
use crate::{run_command, toolchain::Tools};

/// The kernel the systemd VM boots (systemd 252's own, Debian 12's).
const KERNEL: &str = "6.1";
/// The tier's name in the console prefix and the results.
const LABEL: &str = "systemd 6.1";
/// The unpacked tree (~230 MB) and the test binaries live in memory.
const MEMORY_MIB: u32 = 2048;

/// Boots the systemd VM with `deb` installed and runs the root suites in it.
pub(crate) fn run(
    root: &Path,
    tools: &Tools,
    shipped: &Path,
    deb: &Path,
    rootfs: &Path,
    args: &VmArgs,
) -> anyhow::Result<VmOutcome> {
    super::ensure_host_packages()?;
    let built = build_tests(root, tools, shipped)?;
    let vm_dir = root.join("target/vm");
    let mut apt = PrivateApt::new(&vm_dir);
    let kernel = apt.fetch_kernel(KERNEL)?;
    let stage = vm_dir.join("systemd-root");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage)?;
    run_command(
        Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(rootfs)
            .arg("-C")
            .arg(&stage),
    )
    .context("unpacking the root filesystem")?;

    // What ships, installed as an operator would, and the VM's users.
    fs::copy(deb, stage.join("root/ffrtmp.deb")).context("copying the package")?;
    chroot(&stage, "dpkg -i /root/ffrtmp.deb && rm /root/ffrtmp.deb")?;
    chroot(
        &stage,
        &format!(
            "useradd --uid {DELEGATE_UID} --user-group --home-dir /tmp --shell /bin/sh delegate"
        ),
    )?;
    for bin in &built.binaries {
        let name = bin.file_name().context("test binary has a name")?;
        copy_stripped(bin, &stage.join("tests").join(name))?;
    }
    let brd = find_module(&kernel.modules, "brd")?;
    decompress_module(&brd, &stage.join("usr/local/lib/brd.ko"))?;

    let runner = stage.join("usr/local/sbin/ffrtmp-vm-tests");
    fs::create_dir_all(runner.parent().context("runner has a parent")?)?;
    fs::write(&runner, runner_script(&args.test_args))?;
    fs::set_permissions(&runner, fs::Permissions::from_mode(0o755))?;
    let unit = stage.join("etc/systemd/system/ffrtmp-vm-tests.service");
    fs::write(&unit, RUNNER_UNIT)?;
    let wants = stage.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/ffrtmp-vm-tests.service",
        wants.join("ffrtmp-vm-tests.service"),
    )?;
    fs::write(stage.join("etc/hostname"), "ffrtmp-vm\n")?;

    let archive = vm_dir.join("initramfs-systemd.cpio");
    pack_cpio(&stage, &archive)?;
    let _ = fs::remove_dir_all(&stage);
    let spec = BootSpec {
        label: LABEL.into(),
        memory_mib: MEMORY_MIB,
        // No login prompt on the console the results are read from, and
        // systemd's own status lines kept off it.
        append: "console=ttyS0 rdinit=/sbin/init panic=-1 quiet systemd.show_status=0 \
                 systemd.mask=serial-getty@ttyS0.service systemd.mask=getty@tty1.service"
            .into(),
    };
    boot(&kernel, &archive, args.kvm, &spec)
}

/// Runs `script` with the staged tree as root directory.
fn chroot(stage: &Path, script: &str) -> anyhow::Result<()> {
    run_command(
        Command::new("chroot")
            .arg(stage)
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("in the systemd root: {script}"))
}

/// Starts the runner once the system is up. Not ordered after
/// multi-user.target, which wants it (that would be a cycle).
const RUNNER_UNIT: &str = "\
[Unit]
Description=ffrtmp VM test runner
After=basic.target systemd-user-sessions.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ffrtmp-vm-tests
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
";

/// The runner: the suites, as the busybox VMs' init runs them, against the
/// package's binary.
fn runner_script(test_args: &[String]) -> String {
    let args = shell_words(test_args);
    format!(
        r#"#!/bin/sh
insmod /usr/local/lib/brd.ko rd_nr=1 rd_size=65536
echo "FFRTMP-VM: kernel $(uname -r); $(systemctl --version | head -n1); cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
# The suites' delegated subtree is a real one here: a service with
# Delegate=yes run as the delegate, which systemd chowns and marks
# (trusted.delegate). Its own process is moved to a leaf, as
# DelegateSubgroup= does on systemd 254 (the suites' raw cgroup test needs
# the unit's cgroup empty; the worker agent test in tests/systemd.rs is the
# one where ffrtmp has to make that room itself).
systemd-run --quiet --unit=ffrtmp-delegated.service -p Delegate=yes -p User=delegate /bin/sleep infinity
d=/sys/fs/cgroup/system.slice/ffrtmp-delegated.service
mkdir $d/supervisor
for p in $(cat $d/cgroup.procs); do echo $p > $d/supervisor/cgroup.procs; done
chown {uid}:{uid} $d/supervisor $d/supervisor/cgroup.procs
export FFRTMP_VM=1 FFRTMP_SYSTEMD=1 FFRTMP_REQUIRE_ROOT_TESTS=1 FFRTMP_DELEGATED_CGROUP=$d FFRTMP_DELEGATED_UID={uid}
export {bin_env}=/usr/bin/ffrtmp HOME=/root
fail=0
for t in /tests/*; do
    echo "FFRTMP-VM: running $(basename $t)"
    # The console is a tty to libtest: no colours on it.
    $t --test-threads=1 --color never {args} || fail=1
done
echo "{done} fail=$fail"
systemctl poweroff --force --force
"#,
        uid = DELEGATE_UID,
        done = DONE_MARKER,
        bin_env = crate::results::BIN_ENV,
    )
}
