//! `cargo xtask vm-test`: the root test suites on other kernels and on a pure
//! cgroup v2 hierarchy, in qemu VMs.
//!
//! For each kernel of the matrix (Debian cloud kernels 5.10 and 6.1 by
//! default, 6.12 on request, or a `.deb` given by path):
//!
//! 1. the kernel package is fetched with a private apt configuration (its
//!    own sources list, built from the host's configured Debian mirror, and
//!    its own lists and cache under `target/vm/`), never touching the host's
//!    apt state, and unpacked with `dpkg -x`;
//! 2. an initramfs is packed: busybox (from Debian's busybox-static, fetched
//!    the same way), the root test binaries and `ffrtmp` with the shared
//!    libraries they need, util-linux's `setpriv`/`unshare`, the `brd` RAM
//!    disk module, and an `init` that mounts proc, sysfs, devtmpfs, a pure
//!    cgroup v2 hierarchy with every controller enabled, tracefs and bpffs,
//!    makes a delegated subtree owned by uid 1000 (as systemd's
//!    `Delegate=yes` would), runs the suites and powers off;
//! 3. qemu boots it under TCG (nested KVM hangs on our hosts; `--kvm` opts
//!    in), its serial console is streamed with a `[vm KERNEL]` prefix, and
//!    the run fails when a test fails, when the init does not report its end,
//!    or when the VM outlives the time limit.
//!
//!
//! The files: `kernel.rs` (step 1: the private apt, the kernel and busybox
//! packages), `image.rs` (step 2: the test binaries, the initramfs and its
//! init), `boot.rs` (step 3: qemu), `console.rs` (reading the console: the
//! results, the end marker), `systemd.rs` (the systemd VM, from the same
//! parts).
use std::{fs, path::Path};

use anyhow::{Context as _, bail};

use crate::toolchain::Tools;

mod boot;
mod console;
mod image;
mod kernel;
pub(crate) mod systemd;

use boot::{BootSpec, boot};
use image::{build_tests, pack_initramfs};
use kernel::PrivateApt;

/// Kernels run when none is named. 6.12 is left out: under TCG here it
/// oopses at random (double faults in kmem_cache_alloc, NULL derefs in
/// mprotect) during a plain busybox fork loop with nothing of ours loaded,
/// on 1 or 2 vCPUs and any CPU model; `--kernel 6.12` still runs it.
pub(crate) const DEFAULT_KERNELS: &[&str] = &["5.10", "6.1"];
/// Host packages the harness needs.
const HOST_PACKAGES: &[(&str, &str)] =
    &[("qemu-system-x86_64", "qemu-system-x86"), ("cpio", "cpio")];

#[derive(clap::Args)]
pub(crate) struct VmArgs {
    /// Kernels to boot: 5.10, 6.1, 6.12, or a path to a linux-image .deb
    /// (repeatable; default: 5.10 and 6.1).
    #[arg(long = "kernel", value_name = "KERNEL")]
    pub kernels: Vec<String>,
    /// Use KVM instead of TCG (nested KVM hangs on our CI hosts).
    #[arg(long)]
    pub kvm: bool,
    /// Boot the systemd VM (Debian 12, systemd 252 as PID 1, the package
    /// installed) instead of the busybox kernel matrix.
    #[arg(long, conflicts_with = "kernels")]
    pub systemd: bool,
    /// Arguments for the test binaries inside the VM (e.g. a name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub test_args: Vec<String>,
}

/// Results of one VM.
pub(crate) struct VmOutcome {
    pub kernel: String,
    /// Passed, not counting the tests that said SKIP.
    pub passed: u64,
    pub failed: u64,
    pub skips: Vec<crate::results::Skip>,
    pub ok: bool,
    pub why: String,
}

/// Can VM tests run here? `Err` says why not.
pub(crate) fn available() -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("not root (the VM tests need to install qemu and run root test suites)");
    }
    ensure_host_packages()
}

/// Prints one line per VM; fails naming the kernels whose VM failed.
pub(crate) fn check(outcomes: &[VmOutcome]) -> anyhow::Result<()> {
    for o in outcomes {
        eprintln!("==> {o}");
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the VM tests failed on: {}", failed.join(", "));
    }
    Ok(())
}

impl std::fmt::Display for VmOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.ok { "ok" } else { "FAILED" };
        write!(
            f,
            "[vm {}] {verdict}: {} passed, {} failed, {} skipped",
            self.kernel,
            self.passed,
            self.failed,
            self.skips.len()
        )?;
        if !self.why.is_empty() {
            write!(f, " ({})", self.why)?;
        }
        Ok(())
    }
}

/// Builds the test binaries and runs them in a VM per kernel, against
/// `ffrtmp`, the shipped binary.
pub(crate) fn run(
    root: &Path,
    tools: &Tools,
    ffrtmp: &Path,
    args: &VmArgs,
) -> anyhow::Result<Vec<VmOutcome>> {
    ensure_host_packages()?;
    let built = build_tests(root, tools, ffrtmp)?;
    let vm_dir = root.join("target/vm");
    fs::create_dir_all(&vm_dir)?;
    let names: Vec<String> = if args.kernels.is_empty() {
        DEFAULT_KERNELS
            .iter()
            .map(std::string::ToString::to_string)
            .collect()
    } else {
        args.kernels.clone()
    };
    let mut apt = PrivateApt::new(&vm_dir);
    let busybox = apt.fetch_busybox()?;
    let mut outcomes = Vec::new();
    for name in &names {
        let kernel = match apt.fetch_kernel(name) {
            Ok(k) => k,
            // The default matrix is what can be fetched; a named kernel must be.
            Err(e) if args.kernels.is_empty() => {
                eprintln!("\n==> SKIPPING the {name} VM: cannot fetch its kernel: {e:#}\n");
                continue;
            }
            Err(e) => return Err(e.context(format!("fetching kernel {name}"))),
        };
        let initramfs = pack_initramfs(&vm_dir, &kernel, &busybox, &built, &args.test_args)
            .with_context(|| format!("packing the initramfs for {name}"))?;
        let spec = BootSpec {
            label: kernel.name.clone(),
            memory_mib: 1024,
            append: "console=ttyS0 panic=-1 oops=panic quiet".into(),
        };
        outcomes.push(boot(&kernel, &initramfs, args.kvm, &spec)?);
    }
    Ok(outcomes)
}

fn ensure_host_packages() -> anyhow::Result<()> {
    crate::packages::ensure(HOST_PACKAGES)
}
