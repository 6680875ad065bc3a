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
//! Everything is cached under `target/vm/`: a second run downloads nothing.
use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    run_command,
    toolchain::{Tools, capture},
};

pub mod systemd;

/// Kernels run when none is named. 6.12 is left out: under TCG here it
/// oopses at random (double faults in kmem_cache_alloc, NULL derefs in
/// mprotect) during a plain busybox fork loop with nothing of ours loaded,
/// on 1 or 2 vCPUs and any CPU model; `--kernel 6.12` still runs it.
pub const DEFAULT_KERNELS: &[&str] = &["5.10", "6.1"];
/// A kernel of the matrix.
struct KernelSpec {
    name: &'static str,
    /// The Debian cloud kernel package, as a regex on package names.
    package: &'static str,
    /// The suite that carries it.
    suite: &'static str,
    /// vCPUs (6.12 is least unstable under TCG with one).
    cpus: u32,
}

const KERNEL_SPECS: &[KernelSpec] = &[
    KernelSpec {
        name: "5.10",
        package: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
        suite: "bullseye",
        cpus: 2,
    },
    KernelSpec {
        name: "6.1",
        package: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        suite: "bookworm",
        cpus: 2,
    },
    KernelSpec {
        name: "6.12",
        package: r"^linux-image-6\.12\.[0-9.]+\+deb12-cloud-amd64-unsigned$",
        suite: "bookworm-backports",
        cpus: 1,
    },
];
/// vCPUs for a kernel given as a .deb.
const DEFAULT_CPUS: u32 = 2;
/// Suites of the private sources list.
const SUITES: &[&str] = &["bookworm", "bookworm-backports", "bullseye"];
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Host tools copied into the VM (busybox's applets lack the options the
/// tests use), with the shared libraries they need.
const HOST_TOOLS: &[&str] = &["/usr/bin/setpriv", "/usr/bin/unshare"];
/// Host packages the harness needs.
const HOST_PACKAGES: &[(&str, &str)] =
    &[("qemu-system-x86_64", "qemu-system-x86"), ("cpio", "cpio")];
/// The unprivileged owner of the delegated subtree in the VM.
const DELEGATE_UID: u32 = 1000;
/// A VM that has not powered off by then has failed.
const VM_TIME_LIMIT: Duration = Duration::from_mins(20);
/// Printed by the init when it is done; the host requires it.
const DONE_MARKER: &str = "FFRTMP-VM-DONE";

#[derive(clap::Args)]
pub struct VmArgs {
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
pub struct VmOutcome {
    pub kernel: String,
    /// Passed, not counting the tests that said SKIP.
    pub passed: u64,
    pub failed: u64,
    pub skips: Vec<crate::test::Skip>,
    pub ok: bool,
    pub why: String,
}

/// Can VM tests run here? `Err` says why not.
pub fn available() -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("not root (the VM tests need to install qemu and run root test suites)");
    }
    ensure_host_packages()
}

/// Prints one line per VM; fails naming the kernels whose VM failed.
pub fn check(outcomes: &[VmOutcome]) -> anyhow::Result<()> {
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
pub fn run(
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

/// A kernel ready to boot.
struct Kernel {
    name: String,
    cpus: u32,
    vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    modules: PathBuf,
}

/// apt with its own sources, lists and cache under `target/vm/apt`.
struct PrivateApt {
    dir: PathBuf,
    updated: bool,
}

impl PrivateApt {
    fn new(vm_dir: &Path) -> Self {
        Self {
            dir: vm_dir.join("apt"),
            updated: false,
        }
    }

    fn options(&self) -> Vec<String> {
        vec![
            format!(
                "-o=Dir::Etc::sourcelist={}",
                self.dir.join("sources.list").display()
            ),
            "-o=Dir::Etc::sourceparts=-".into(),
            format!("-o=Dir::State::Lists={}", self.dir.join("lists").display()),
            format!("-o=Dir::Cache={}", self.dir.join("cache").display()),
            // Downloads land in our own folder, which apt's sandbox user
            // cannot write; we are root anyway.
            "-o=APT::Sandbox::User=root".into(),
        ]
    }

    /// Writes the sources list and runs `apt-get update`, once per run.
    fn update(&mut self) -> anyhow::Result<()> {
        if self.updated {
            return Ok(());
        }
        let mirror = host_debian_mirror()?;
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(self.dir.join(sub))?;
        }
        let sources: String = SUITES.iter().fold(String::new(), |mut out, suite| {
            use std::fmt::Write as _;
            let _ = writeln!(
                out,
                "deb [signed-by={DEBIAN_KEYRING}] {mirror} {suite} main"
            );
            out
        });
        fs::write(self.dir.join("sources.list"), sources)?;
        eprintln!(
            "xtask: updating the private package lists in {}",
            self.dir.display()
        );
        run_command(
            Command::new("apt-get")
                .args(self.options())
                .args(["-q", "update"]),
        )?;
        self.updated = true;
        Ok(())
    }

    /// Downloads `package` into `into` and unpacks it there.
    fn download_and_unpack(&mut self, package: &str, into: &Path) -> anyhow::Result<()> {
        self.update()?;
        let debs = self.dir.join("debs");
        fs::create_dir_all(&debs)?;
        run_command(
            Command::new("apt-get")
                .args(self.options())
                .args(["-q", "download", package])
                .current_dir(&debs),
        )?;
        let deb = find_deb(&debs, package)?;
        unpack_deb(&deb, into)
    }

    fn fetch_busybox(&mut self) -> anyhow::Result<PathBuf> {
        let dir = self
            .dir
            .parent()
            .context("apt dir has a parent")?
            .join("busybox");
        let bin = dir.join("bin/busybox");
        if !bin.is_file() {
            self.download_and_unpack("busybox-static", &dir)?;
        }
        Ok(bin)
    }

    fn fetch_kernel(&mut self, name: &str) -> anyhow::Result<Kernel> {
        let vm_dir = self
            .dir
            .parent()
            .context("apt dir has a parent")?
            .to_path_buf();
        let dir = vm_dir.join("kernels").join(sanitize(name));
        if find_vmlinuz(&dir).is_err() {
            let _ = fs::remove_dir_all(&dir);
            if Path::new(name).extension().is_some_and(|e| e == "deb") {
                unpack_deb(Path::new(name), &dir)?;
            } else {
                let KernelSpec {
                    package: pattern,
                    suite,
                    ..
                } = KERNEL_SPECS
                    .iter()
                    .find(|k| k.name == name)
                    .ok_or_else(|| {
                        anyhow!("unknown kernel {name:?}: use 5.10, 6.1, 6.12 or a .deb path")
                    })?;
                self.update()?;
                let found = capture(Command::new("apt-cache").args(self.options()).args([
                    "search",
                    "--names-only",
                    pattern,
                ]))?;
                let package = found
                    .lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .max_by(|a, b| natural_cmp(a, b))
                    .ok_or_else(|| anyhow!("no package matches {pattern} in {suite}"))?
                    .to_string();
                eprintln!("xtask: fetching {package}");
                self.download_and_unpack(&package, &dir)?;
            }
            prune_modules(&dir)?;
        }
        let vmlinuz = find_vmlinuz(&dir)?;
        let modules_root = dir.join("lib/modules");
        let modules = fs::read_dir(&modules_root)
            .with_context(|| format!("listing {}", modules_root.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .next()
            .ok_or_else(|| anyhow!("no modules in {}", modules_root.display()))?;
        Ok(Kernel {
            name: name.to_string(),
            cpus: KERNEL_SPECS
                .iter()
                .find(|k| k.name == name)
                .map_or(DEFAULT_CPUS, |k| k.cpus),
            vmlinuz,
            modules,
        })
    }
}

/// The Debian archive the host's apt uses (never hard-coded here).
fn host_debian_mirror() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    for path in ["/etc/apt/sources.list"] {
        if let Ok(t) = fs::read_to_string(path) {
            texts.push(t);
        }
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.filter_map(Result::ok) {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "sources" || e == "list") {
                texts.push(fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    for text in &texts {
        // deb822 stanzas: a URIs line in a stanza whose Suites name bookworm
        // (not -security, which lives elsewhere).
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:"))
                && suites.split_whitespace().any(|s| s == "bookworm")
                && let Some(uri) = uris.split_whitespace().next()
            {
                return Ok(uri.trim_end_matches('/').to_string());
            }
        }
        // one-line format: deb [opts] URI bookworm main
        for line in text.lines() {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|w| !w.starts_with('[') && !w.ends_with(']'))
                .collect();
            if let ["deb", uri, "bookworm", ..] = words[..] {
                return Ok(uri.trim_end_matches('/').to_string());
            }
        }
    }
    bail!("no Debian bookworm mirror in the host's apt sources")
}

/// Keeps of an unpacked kernel only what the VM uses (the image and the
/// block drivers): the rest of its modules is ~400 MB per kernel.
fn prune_modules(dir: &Path) -> anyhow::Result<()> {
    let modules = dir.join("lib/modules");
    for release in
        fs::read_dir(&modules).with_context(|| format!("listing {}", modules.display()))?
    {
        let kernel = release?.path().join("kernel");
        let Ok(entries) = fs::read_dir(&kernel) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name() != "drivers" {
                fs::remove_dir_all(entry.path())?;
            }
        }
        for entry in fs::read_dir(kernel.join("drivers"))?.filter_map(Result::ok) {
            if entry.file_name() != "block" {
                fs::remove_dir_all(entry.path())?;
            }
        }
    }
    Ok(())
}

fn find_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&prefix) && Path::new(n).extension().is_some_and(|e| e == "deb")
            })
        })
        .ok_or_else(|| {
            anyhow!(
                "apt-get download left no {package}_*.deb in {}",
                dir.display()
            )
        })
}

fn unpack_deb(deb: &Path, into: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(into)?;
    run_command(Command::new("dpkg").arg("-x").arg(deb).arg(into))
        .with_context(|| format!("unpacking {}", deb.display()))
}

fn find_vmlinuz(dir: &Path) -> anyhow::Result<PathBuf> {
    let boot = dir.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("listing {}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| anyhow!("no vmlinuz in {}", boot.display()))
}

/// Compares names with embedded numbers numerically ("6.1.0-9" < "6.1.0-47").
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(s: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut num = String::new();
        let mut text = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                if !text.is_empty() {
                    out.push((0, std::mem::take(&mut text)));
                }
                num.push(c);
            } else {
                if !num.is_empty() {
                    out.push((num.parse().unwrap_or(u64::MAX), String::new()));
                    num.clear();
                }
                text.push(c);
            }
        }
        if !num.is_empty() {
            out.push((num.parse().unwrap_or(u64::MAX), String::new()));
        }
        if !text.is_empty() {
            out.push((0, text));
        }
        out
    }
    key(a).cmp(&key(b))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Test binaries that run on the host only: `layers` checks the source
/// tree (the VM has no sources); `package` installs the release artefacts
/// into a Debian root filesystem with chroot (the busybox VM has neither;
/// the binary they carry is the one the VMs test).
const HOST_ONLY_TESTS: &[&str] = &["layers", "package"];

/// The test binaries (and the `ffrtmp` binary they run) for the VM.
struct BuiltTests {
    binaries: Vec<PathBuf>,
    /// The shipped build; the tests find it through `FFRTMP_BIN`.
    ffrtmp: PathBuf,
}

/// Builds the integration test binaries without running them.
fn build_tests(root: &Path, tools: &Tools, ffrtmp: &Path) -> anyhow::Result<BuiltTests> {
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
fn pack_initramfs(
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
fn pack_cpio(stage: &Path, archive: &Path) -> anyhow::Result<()> {
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
fn copy_stripped(from: &Path, to: &Path) -> anyhow::Result<()> {
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

fn find_module(modules: &Path, name: &str) -> anyhow::Result<PathBuf> {
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
fn decompress_module(from: &Path, to: &Path) -> anyhow::Result<()> {
    let name = from.to_string_lossy();
    if name.ends_with(".ko") {
        return copy(from, to);
    }
    let tool = if name.ends_with(".xz") { "xz" } else { "zstd" };
    let out = fs::File::create(to)?;
    run_command(Command::new(tool).arg("-dc").arg(from).stdout(out))
}

/// Test arguments as shell words, single-quoted.
fn shell_words(args: &[String]) -> String {
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
        bin_env = crate::test::BIN_ENV,
        bin = ffrtmp.display(),
    )
}

/// Boots one VM and follows its console.
/// How a VM boots: its name in the console's prefix and the results,
/// its memory, its kernel command line.
struct BootSpec {
    label: String,
    memory_mib: u32,
    append: String,
}

fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    kvm: bool,
    spec: &BootSpec,
) -> anyhow::Result<VmOutcome> {
    let label = format!("[vm {}]", spec.label);
    eprintln!("\n==> {label} booting {}", kernel.vmlinuz.display());
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
    let mut outcome = VmOutcome {
        kernel: spec.label.clone(),
        passed: 0,
        failed: 0,
        skips: Vec::new(),
        ok: false,
        why: String::new(),
    };
    let mut done = None;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let line = printable(&line);
                println!("{label} {line}");
                if let Some(summary) = line.strip_prefix("test result: ") {
                    outcome.passed += crate::test::count(summary, "passed");
                    outcome.failed += crate::test::count(summary, "failed");
                }
                if let Some(skip) = crate::test::skip_of(&line) {
                    // Said SKIP and returned: not a pass.
                    outcome.passed = outcome.passed.saturating_sub(1);
                    outcome.skips.push(skip);
                }
                if let Some(rest) = line.strip_prefix(DONE_MARKER) {
                    done = Some(rest.trim() == "fail=0");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                outcome.why = format!("the VM did not finish within {VM_TIME_LIMIT:?}");
                let _ = child.wait();
                return Ok(outcome);
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    (outcome.ok, outcome.why) = match done {
        None => (
            false,
            format!("the VM stopped ({status}) before its init reported the end"),
        ),
        Some(false) => (false, "tests failed inside the VM".into()),
        Some(true) if outcome.failed > 0 => (false, "tests failed inside the VM".into()),
        Some(true) if outcome.passed == 0 => (false, "no test ran inside the VM".into()),
        Some(true) => (true, String::new()),
    };
    Ok(outcome)
}

/// A console line without terminal control sequences (the firmware clears
/// the screen) or carriage returns.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // ESC, then either one character or "[" parameters up to a letter.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_terminal_control_from_console_lines() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2JFFRTMP-VM: kernel 6.1\r"),
            "FFRTMP-VM: kernel 6.1"
        );
    }

    #[test]
    fn picks_the_newest_kernel_package_by_number() {
        let names = [
            "linux-image-6.1.0-9-cloud",
            "linux-image-6.1.0-47-cloud",
            "linux-image-6.1.0-10-cloud",
        ];
        let newest = names.iter().max_by(|a, b| natural_cmp(a, b)).unwrap();
        assert_eq!(*newest, "linux-image-6.1.0-47-cloud");
    }

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
