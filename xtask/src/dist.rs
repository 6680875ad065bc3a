//! `cargo xtask dist`: the release artefacts, from a clean checkout, in
//! `target/dist/` (their layout is a contract: docs/PACKAGE.md):
//!
//! - `ffrtmp_<version>_amd64.deb`, built with Debian's own `dpkg-deb` from a
//!   staged tree: the stripped static binary, the units, the sysusers entry,
//!   the default policy as a conffile, man pages, completions, docs, and the
//!   maintainer scripts of `ffrtmp/dist/debian/`;
//! - `ffrtmp-<version>-<arch>-linux-musl.tar.gz`: the same files in a
//!   prefix-relative tree with `install.sh` and LICENSE, and a `SHA256SUMS`
//!   of every file in it;
//! - `SHA256SUMS` of both.
//!
//! Man pages and completions come from the binary itself (`ffrtmp manual`,
//! `ffrtmp completions`), so they describe exactly the CLI that ships. Every
//! timestamp is the commit's (`SOURCE_DATE_EPOCH`), owners are root and
//! compressed files carry no name or time, so the same commit builds the
//! same bytes.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{run_command, toolchain::capture};

/// The packaging sources (maintainer scripts, sysusers entry, install.sh).
const SOURCES: &str = "ffrtmp/dist";
/// The units, shared with the tests that check them.
const UNITS: &[&str] = &["ffrtmp-watch.service", "ffrtmp-wrapper.service"];
/// What a fleet's monitoring takes from the package (from the repository
/// root, to /usr/share/ffrtmp/): Prometheus rules, their unit tests and an
/// example scrape configuration, a drop-in that serves the metrics to the
/// fleet, an rsyslog configuration that ships the events, and the events'
/// JSON Schema (docs/OPERATIONS.md, docs/EVENTS.md).
const FLEET: &[(&str, &str)] = &[
    ("ffrtmp/prometheus/rules.yml", "prometheus/rules.yml"),
    (
        "ffrtmp/prometheus/rules.test.yml",
        "prometheus/rules.test.yml",
    ),
    ("ffrtmp/prometheus/scrape.yml", "prometheus/scrape.yml"),
    (
        "ffrtmp/systemd/metrics-on-network.conf",
        "systemd/metrics-on-network.conf",
    ),
    (
        "ffrtmp/rsyslog/ffrtmp-events.conf",
        "rsyslog/ffrtmp-events.conf",
    ),
    ("docs/events.schema.json", "events.schema.json"),
];
/// The documentation shipped (from the repository root).
const DOCS: &[&str] = &[
    "README.md",
    "docs/ARCHITECTURE.md",
    "docs/BENCHMARKS.md",
    "docs/EVENTS.md",
    "docs/OPERATIONS.md",
    "docs/PACKAGE.md",
    "docs/POLICY.md",
];

/// What `dist` made.
#[derive(Debug)]
pub(crate) struct Artefacts {
    /// target/dist/, with SHA256SUMS of the two below.
    pub dir: PathBuf,
    pub deb: PathBuf,
    pub tarball: PathBuf,
}

/// Strips `unstripped` into `target/shipped/ffrtmp` (symbols and debug
/// information only: the code is byte for byte the tested one) and returns
/// that path: what the package, the tarball, the tests and the VMs run.
/// Written beside and renamed, so a running copy is never overwritten.
pub(crate) fn strip(root: &Path, unstripped: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/shipped");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("ffrtmp");
    let tmp = dir.join(".ffrtmp.tmp");
    // .comment only names the compilers (lintian: binary-has-unneeded-section).
    run_command(
        Command::new("strip")
            .args(["--strip-all", "--remove-section=.comment", "-o"])
            .arg(&tmp)
            .arg(unstripped),
    )
    .context("stripping the shipped binary")?;
    fs::rename(&tmp, &out).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(out)
}

/// One file of the payload: its path in the .deb's tree and in the
/// tarball's (`None`: not in that one), its mode and its bytes.
struct File {
    deb: Option<String>,
    tar: Option<String>,
    mode: u32,
    bytes: Vec<u8>,
}

impl File {
    /// In both: the tarball is prefix-relative (usr/bin/x is bin/x there).
    fn new(deb: &str, mode: u32, bytes: Vec<u8>) -> Self {
        let tar = deb.strip_prefix("usr/").unwrap_or(deb).to_string();
        File {
            deb: Some(deb.to_string()),
            tar: Some(tar),
            mode,
            bytes,
        }
    }

    fn deb_only(mut self) -> Self {
        self.tar = None;
        self
    }

    fn tar_only(mut self) -> Self {
        self.deb = None;
        self
    }

    /// At `path` in the tarball.
    fn tar_at(mut self, path: &str) -> Self {
        self.tar = Some(path.to_string());
        self
    }
}

/// Builds every artefact from the shipped binary `bin`.
pub(crate) fn dist(root: &Path, bin: &Path) -> anyhow::Result<Artefacts> {
    let build: serde_json::Value = serde_json::from_str(&capture(
        Command::new(bin).args(["version", "--format", "json"]),
    )?)
    .context("parsing `ffrtmp version --format json`")?;
    let field = |k: &str| {
        build[k]
            .as_str()
            .map(String::from)
            .with_context(|| format!("`ffrtmp version` has no {k}"))
    };
    let (version, commit) = (field("version")?, field("commit")?);
    if build["kernel_programs"] != true {
        bail!(
            "the binary has no kernel programs (built with FFRTMP_SKIP_EBPF=1?): not shipping it"
        );
    }
    if build["libc"] != "musl" {
        bail!("the shipped binary must be the static musl build");
    }
    let epoch = source_date_epoch(root)?;
    let dir = root.join("target/dist");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = payload(root, bin, &version, &commit, epoch)?;

    let deb = dir.join(format!("ffrtmp_{version}_amd64.deb"));
    build_deb(root, &dir.join("stage-deb"), &files, &version, epoch, &deb)?;
    let arch = std::env::consts::ARCH;
    let name = format!("ffrtmp-{version}-{arch}-linux-musl");
    let tarball = dir.join(format!("{name}.tar.gz"));
    build_tarball(&dir.join("stage-tar"), &name, &files, epoch, &tarball)?;
    sha256sums(
        &dir,
        &[file_name(&deb)?, file_name(&tarball)?],
        &dir.join("SHA256SUMS"),
    )?;
    let artefacts = Artefacts { dir, deb, tarball };
    for path in [
        &artefacts.deb,
        &artefacts.tarball,
        &artefacts.dir.join("SHA256SUMS"),
    ] {
        println!("xtask: dist: {}", path.display());
    }
    Ok(artefacts)
}

/// The commit's time (or `SOURCE_DATE_EPOCH` when set).
fn source_date_epoch(root: &Path) -> anyhow::Result<u64> {
    if let Ok(e) = std::env::var("SOURCE_DATE_EPOCH") {
        return e
            .trim()
            .parse()
            .context("SOURCE_DATE_EPOCH is not a number");
    }
    capture(
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["log", "-1", "--format=%ct"]),
    )?
    .trim()
    .parse()
    .context("reading the commit's time")
}

/// Every file that ships.
fn payload(
    root: &Path,
    bin: &Path,
    version: &str,
    commit: &str,
    epoch: u64,
) -> anyhow::Result<Vec<File>> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let sources = root.join(SOURCES);
    let mut files = vec![File::new("usr/bin/ffrtmp", 0o755, read(bin)?)];
    for unit in UNITS {
        let text = read(&root.join("ffrtmp/systemd").join(unit))?;
        files.push(File::new(
            &format!("lib/systemd/system/{unit}"),
            0o644,
            text,
        ));
    }
    files.push(
        File::new(
            "usr/lib/sysusers.d/ffrtmp.conf",
            0o644,
            read(&sources.join("sysusers.conf"))?,
        )
        .tar_at("lib/sysusers.d/ffrtmp.conf"),
    );
    files.push(File::new(
        "etc/logrotate.d/ffrtmp",
        0o644,
        read(&sources.join("logrotate"))?,
    ));
    let policy = capture(Command::new(bin).args(["policy", "default"]))?;
    let header = "# /etc/ffrtmp/policy.toml: the policy ffrtmp-watch.service governs by.\n\
        # Installed from the embedded default (`ffrtmp policy default`); an edited\n\
        # file survives upgrades. Check an edit with `ffrtmp policy check FILE`,\n\
        # then `systemctl reload ffrtmp-watch` (a bad policy is refused and the\n\
        # running one kept; jobs and workloads are never touched).\n#\n";
    files.push(File::new(
        "etc/ffrtmp/policy.toml",
        0o644,
        format!("{header}{policy}").into_bytes(),
    ));

    // Man pages and completions, from the binary's own CLI definition.
    let man = root.join("target/dist/man");
    let _ = fs::remove_dir_all(&man);
    run_command(Command::new(bin).arg("manual").arg(&man)).context("writing the man pages")?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    for page in pages {
        let name = file_name(&page)?;
        files.push(File::new(
            &format!("usr/share/man/man1/{name}.gz"),
            0o644,
            gzip(&read(&page)?)?,
        ));
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/ffrtmp"),
        ("zsh", "usr/share/zsh/vendor-completions/_ffrtmp"),
        ("fish", "usr/share/fish/vendor_completions.d/ffrtmp.fish"),
    ] {
        let script = capture(Command::new(bin).args(["completions", shell]))?;
        files.push(File::new(path, 0o644, script.into_bytes()));
    }

    for (source, path) in FLEET {
        files.push(File::new(
            &format!("usr/share/ffrtmp/{path}"),
            0o644,
            read(&root.join(source))?,
        ));
    }
    for doc in DOCS {
        let name = file_name(Path::new(doc))?;
        files.push(File::new(
            &format!("usr/share/doc/ffrtmp/{name}"),
            0o644,
            read(&root.join(doc))?,
        ));
    }
    let license = fs::read_to_string(root.join("LICENSE")).context("reading LICENSE")?;
    // The .deb has it in its copyright file (lintian: extra-license-file).
    files.push(
        File::new(
            "usr/share/doc/ffrtmp/LICENSE",
            0o644,
            license.clone().into_bytes(),
        )
        .tar_at("LICENSE")
        .tar_only(),
    );
    let copyright = fs::read_to_string(sources.join("debian/copyright"))?
        .replace("@LICENSE@", &dep5_text(&license));
    files.push(
        File::new(
            "usr/share/doc/ffrtmp/copyright",
            0o644,
            copyright.into_bytes(),
        )
        .deb_only(),
    );
    files.push(
        File::new(
            "usr/share/doc/ffrtmp/changelog.gz",
            0o644,
            gzip(changelog(version, commit, epoch)?.as_bytes())?,
        )
        .deb_only(),
    );
    files.push(
        File::new(
            "usr/share/lintian/overrides/ffrtmp",
            0o644,
            read(&sources.join("debian/lintian-overrides"))?,
        )
        .deb_only(),
    );
    files.push(File::new("install.sh", 0o755, read(&sources.join("install.sh"))?).tar_only());
    Ok(files)
}

/// The licence's text as a DEP-5 field body: the notice after its title
/// and copyright line, indented, blank lines as " .".
fn dep5_text(license: &str) -> String {
    license
        .lines()
        .skip_while(|l| !l.starts_with("Copyright"))
        .skip(1)
        .skip_while(|l| l.trim().is_empty())
        .map(|l| {
            if l.trim().is_empty() {
                " .".to_string()
            } else {
                format!(" {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Debian changelog entry for this build (a native package: the
/// project's history is its git log).
fn changelog(version: &str, commit: &str, epoch: u64) -> anyhow::Result<String> {
    let date = capture(Command::new("date").args(["-u", "-R", "-d", &format!("@{epoch}")]))?;
    Ok(format!(
        "ffrtmp ({version}) unstable; urgency=medium\n\n  \
         * Release {version}, built from commit {commit}; the changes are the\n    \
         project's git history.\n\n \
         -- ffrtmp developers <ffrtmp@example.org>  {}\n",
        date.trim()
    ))
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    // -n: no name or time in the header (reproducible).
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    let mut stdin = child.stdin.take().context("gzip has no stdin")?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("running gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))??;
    if !out.status.success() {
        bail!("gzip failed: {}", out.status);
    }
    Ok(out.stdout)
}

/// Writes `files` under `stage` at the paths `path_of` gives, modes set,
/// every timestamp `epoch`.
fn stage_tree(
    stage: &Path,
    files: &[File],
    path_of: impl Fn(&File) -> Option<&str>,
    epoch: u64,
) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(stage);
    fs::create_dir_all(stage).with_context(|| format!("creating {}", stage.display()))?;
    for f in files {
        let Some(rel) = path_of(f) else {
            continue;
        };
        let path = stage.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, &f.bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode))?;
    }
    // Directories 0755 whatever the umask, then every mtime the commit's.
    run_command(
        Command::new("find")
            .arg(stage)
            .args(["-type", "d", "-exec", "chmod", "0755", "{}", "+"]),
    )?;
    run_command(Command::new("find").arg(stage).args([
        "-exec",
        "touch",
        "--no-dereference",
        "-d",
        &format!("@{epoch}"),
        "{}",
        "+",
    ]))
}

fn build_deb(
    root: &Path,
    stage: &Path,
    files: &[File],
    version: &str,
    epoch: u64,
    out: &Path,
) -> anyhow::Result<()> {
    stage_tree(stage, files, |f| f.deb.as_deref(), epoch)?;
    let sources = root.join(SOURCES).join("debian");
    let control_dir = stage.join("DEBIAN");
    fs::create_dir_all(&control_dir)?;
    let control = fs::read_to_string(sources.join("control"))?
        .replace("@VERSION@", version)
        .replace("@INSTALLED_SIZE@", &installed_size(stage)?.to_string());
    fs::write(control_dir.join("control"), control)?;
    fs::write(
        control_dir.join("conffiles"),
        "/etc/ffrtmp/policy.toml\n/etc/logrotate.d/ffrtmp\n",
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        let to = control_dir.join(script);
        fs::copy(sources.join(script), &to)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
    }
    let md5 = capture(
        Command::new("sh")
            .current_dir(stage)
            .args(["-c", "find . -type f ! -path './DEBIAN/*' -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' md5sum"]),
    )?;
    fs::write(control_dir.join("md5sums"), md5)?;
    for f in ["control", "conffiles", "md5sums"] {
        fs::set_permissions(control_dir.join(f), fs::Permissions::from_mode(0o644))?;
    }
    run_command(Command::new("chmod").arg("0755").arg(&control_dir))?;
    run_command(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(stage)
            .arg(out)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )
    .context("dpkg-deb --build")
}

/// dpkg's Installed-Size: KiB, each file rounded up, each other object 1.
fn installed_size(stage: &Path) -> anyhow::Result<u64> {
    let mut kib = 0;
    for entry in walk(stage)? {
        let meta = fs::symlink_metadata(&entry)?;
        kib += if meta.is_file() {
            meta.len().div_ceil(1024)
        } else {
            1
        };
    }
    Ok(kib)
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let path = e?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            out.extend(walk(&path)?);
        }
        out.push(path);
    }
    Ok(out)
}

fn build_tarball(
    stage: &Path,
    name: &str,
    files: &[File],
    epoch: u64,
    out: &Path,
) -> anyhow::Result<()> {
    let top = stage.join(name);
    stage_tree(&top, files, |f| f.tar.as_deref(), epoch)?;
    let mut names = Vec::new();
    for path in walk(&top)? {
        if fs::symlink_metadata(&path)?.is_file() {
            names.push(
                path.strip_prefix(&top)?
                    .to_str()
                    .context("a non-UTF-8 file name")?
                    .to_string(),
            );
        }
    }
    names.sort();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    sha256sums(&top, &refs, &top.join("SHA256SUMS"))?;
    run_command(
        Command::new("touch")
            .args(["-d", &format!("@{epoch}")])
            .arg(top.join("SHA256SUMS")),
    )?;
    run_command(
        Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                &format!("--mtime=@{epoch}"),
                "-I",
                "gzip -9n",
                "-cf",
            ])
            .arg(out)
            .arg("-C")
            .arg(stage)
            .arg(name),
    )
    .context("tar")
}

/// `sha256sum NAMES > out`, run in `dir`.
fn sha256sums(dir: &Path, names: &[&str], out: &Path) -> anyhow::Result<()> {
    let sums = capture(Command::new("sha256sum").current_dir(dir).args(names))?;
    fs::write(out, sums).with_context(|| format!("writing {}", out.display()))
}

fn file_name(path: &Path) -> anyhow::Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", path.display()))
}
