//! Step 3: qemu boots a kernel and its initramfs; its console is streamed
//! with a `[vm NAME]` prefix and read (`console.rs`) until the init reports
//! its end, the VM stops, or the time limit passes.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{VmOutcome, console::Console, kernel::Kernel};

/// A VM that has not powered off by then has failed.
const VM_TIME_LIMIT: Duration = Duration::from_mins(20);

/// How a VM boots: its name in the console's prefix and the results,
/// its memory, its kernel command line.
pub(super) struct BootSpec {
    pub(super) label: String,
    pub(super) memory_mib: u32,
    pub(super) append: String,
}

/// Boots one VM and follows its console.
pub(super) fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    kvm: bool,
    spec: &BootSpec,
) -> anyhow::Result<VmOutcome> {
    eprintln!(
        "\n==> [vm {}] booting {}",
        spec.label,
        kernel.vmlinuz.display()
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(if kvm {
        ["-accel", "kvm", "-cpu", "host"]
    } else {
        ["-accel", "tcg", "-cpu", "max"]
    })
    .args([
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &kernel.cpus.to_string(),
    ])
    .args(["-nographic", "-no-reboot", "-kernel"])
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    .args(["-append", &spec.append])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + VM_TIME_LIMIT;
    let mut console = Console::new(&spec.label);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => console.line(&line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(
                    console.cut_off(format!("the VM did not finish within {VM_TIME_LIMIT:?}"))
                );
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    Ok(console.end(status))
}
