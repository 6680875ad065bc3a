//! Step 1: kernels and busybox from Debian's packages, fetched with a
//! private apt configuration under `target/vm/apt` (the host's apt state is
//! never touched) and unpacked with `dpkg -x`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

use crate::{run_command, toolchain::capture};

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

/// A kernel ready to boot.
pub(super) struct Kernel {
    pub(super) name: String,
    pub(super) cpus: u32,
    pub(super) vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub(super) modules: PathBuf,
}

/// apt with its own sources, lists and cache under `target/vm/apt`.
pub(super) struct PrivateApt {
    dir: PathBuf,
    updated: bool,
}

impl PrivateApt {
    pub(super) fn new(vm_dir: &Path) -> Self {
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

    pub(super) fn fetch_busybox(&mut self) -> anyhow::Result<PathBuf> {
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

    pub(super) fn fetch_kernel(&mut self, name: &str) -> anyhow::Result<Kernel> {
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

pub(super) fn sanitize(name: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
