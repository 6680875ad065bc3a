//! The release artefacts (`cargo xtask dist`, docs/PACKAGE.md), installed
//! for real: a clean Debian 12 root filesystem (mmdebstrap, minbase with
//! systemd, man-db and bash-completion; `cargo xtask test` makes and caches
//! it) is unpacked per test and entered with `chroot`, in a private mount
//! namespace with /proc, /dev and /sys (so the cgroup tree) mounted. The
//! package is installed there with apt, as an operator would, and what it
//! promises is checked inside: the binary, man pages, completions, user,
//! units, upgrades that keep an edited policy, removal that stops every
//! ffrtmp but no workload, and a purge that leaves nothing behind.
//!
//! `cargo xtask test` sets `FFRTMP_DIST` (target/dist) and `FFRTMP_ROOTFS`
//! (the cached root filesystem's tarball); without them, or without root,
//! the tests say SKIP.
mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Root, pid_alive, required, skip};

const DIST_ENV: &str = "FFRTMP_DIST";
const ROOTFS_ENV: &str = "FFRTMP_ROOTFS";

/// The artefacts and the root filesystem, or `None` (after SKIP).
fn inputs(test: &str) -> Option<(PathBuf, PathBuf)> {
    if !common::require_root(test) {
        return None;
    }
    match (std::env::var_os(DIST_ENV), std::env::var_os(ROOTFS_ENV)) {
        (Some(d), Some(r)) => Some((PathBuf::from(d), PathBuf::from(r))),
        _ if required() => {
            panic!("{test}: {DIST_ENV} and {ROOTFS_ENV} are not set (run `cargo xtask test`)")
        }
        _ => {
            skip(
                test,
                &format!(
                    "{DIST_ENV}/{ROOTFS_ENV} not set: `cargo xtask test` builds the package and the root filesystem"
                ),
            );
            None
        }
    }
}

/// The one file in `dist` whose name ends with `suffix`.
fn artefact(dist: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(dist)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "{suffix} in {}: {found:?}", dist.display());
    found[0].clone()
}

/// A fresh copy of the root filesystem, removed on drop.
struct Chroot {
    dir: PathBuf,
}

impl Chroot {
    fn new(test: &str, rootfs: &Path) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chroot-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let out = Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-xf")
            .arg(rootfs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "unpacking the root filesystem: {out:?}"
        );
        Chroot { dir }
    }

    /// `sh -c SCRIPT` inside, in a private mount namespace with /proc,
    /// /dev and /sys; the last step `exec`s, so the child's pid is the
    /// script's.
    fn command(&self, script: &str) -> Command {
        let r = self.dir.display();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "mount --rbind /dev {r}/dev && mount -t proc proc {r}/proc && \
                 mount --rbind /sys {r}/sys && exec chroot {r} /bin/sh -c \"$0\""
            ))
            .arg(script)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn run(&self, script: &str) -> Output {
        self.command(script).output().unwrap()
    }

    /// Runs `script` and returns its stdout; fails the test unless it
    /// exits 0.
    fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "`{script}` failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spawn(&self, script: &str) -> Child {
        self.command(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Copies a host file to `/tmp/<name>` inside.
    fn put(&self, from: &Path, name: &str) -> String {
        fs::copy(from, self.dir.join("tmp").join(name)).unwrap();
        format!("/tmp/{name}")
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.join(inside.trim_start_matches('/'))
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        // The mounts lived in the children's namespaces: here these are
        // plain directories.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits up to 20 s for `cond`.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + common::PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The host binary's build facts, to compare with the installed one.
fn host_build() -> serde_json::Value {
    let out = common::ffrtmp_output(&["version", "--format", "json"]);
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_package_installs_upgrades_and_purges_cleanly() {
    let Some((dist, rootfs)) = inputs("the_package_installs_upgrades_and_purges_cleanly") else {
        return;
    };
    let deb = artefact(&dist, "_amd64.deb");
    let c = Chroot::new("install", &rootfs);
    let inside = c.put(&deb, "ffrtmp.deb");

    // Nothing else pre-installed: apt needs no network for it.
    let out = c.ok(&format!("apt-get install -y {inside}"));
    assert!(
        out.contains("systemctl enable --now ffrtmp-watch.service"),
        "{out}"
    );

    // The binary: version, commit, target, kernel programs — the tested build.
    let host = host_build();
    let version = c.ok("ffrtmp --version");
    for fact in [
        host["version"].as_str().unwrap(),
        host["commit"].as_str().unwrap(),
        "x86_64-unknown-linux-musl",
        "kernel programs: embedded",
    ] {
        assert!(version.contains(fact), "{fact} not in {version}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&c.ok("ffrtmp version --format json")).unwrap();
    assert_eq!(json, host);

    // Man pages: ffrtmp(1) and one per subcommand, found by man.
    for page in [
        "ffrtmp",
        "ffrtmp-watch",
        "ffrtmp-run",
        "ffrtmp-attach",
        "ffrtmp-status",
        "ffrtmp-cleanup",
        "ffrtmp-policy-check",
    ] {
        let path = c.ok(&format!("man -w {page}"));
        assert_eq!(path.trim(), format!("/usr/share/man/man1/{page}.1.gz"));
    }
    // bash: bash-completion loads a command's completion on its first Tab
    // (`__load_completion`); then `complete -p` shows it.
    let complete = c.ok(
        "bash -ic '. /usr/share/bash-completion/bash_completion; __load_completion ffrtmp; complete -p ffrtmp' 2>/dev/null",
    );
    assert!(
        complete.contains("-F _ffrtmp") && complete.trim_end().ends_with(" ffrtmp"),
        "{complete}"
    );
    for script in [
        "/usr/share/zsh/vendor-completions/_ffrtmp",
        "/usr/share/fish/vendor_completions.d/ffrtmp.fish",
    ] {
        let text = fs::read_to_string(c.path(script)).unwrap();
        assert!(text.contains("cgroup-root"), "{script}");
    }

    // What a fleet's monitoring takes, as in the repository (tests/fleet.rs
    // checks them with promtool and rsyslogd).
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (shipped, source) in [
        ("prometheus/rules.yml", "prometheus/rules.yml"),
        ("prometheus/rules.test.yml", "prometheus/rules.test.yml"),
        ("prometheus/scrape.yml", "prometheus/scrape.yml"),
        (
            "systemd/metrics-on-network.conf",
            "systemd/metrics-on-network.conf",
        ),
        ("rsyslog/ffrtmp-events.conf", "rsyslog/ffrtmp-events.conf"),
        ("events.schema.json", "../docs/events.schema.json"),
    ] {
        let path = format!("/usr/share/ffrtmp/{shipped}");
        let bytes = fs::read(c.path(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            bytes == fs::read(repo.join(source)).unwrap(),
            "{path} differs from {source}"
        );
    }
    // The metrics drop-in, installed as the docs say: systemd takes it.
    let drop_in = c.path("/etc/systemd/system/ffrtmp-watch.service.d");
    fs::create_dir_all(&drop_in).unwrap();
    fs::copy(
        c.path("/usr/share/ffrtmp/systemd/metrics-on-network.conf"),
        drop_in.join("metrics.conf"),
    )
    .unwrap();
    let verify = "systemd-analyze verify /lib/systemd/system/ffrtmp-watch.service";
    c.ok(verify);
    // It was read: the same drop-in with a relative ExecStart is refused.
    let text = fs::read_to_string(drop_in.join("metrics.conf")).unwrap();
    fs::write(
        drop_in.join("metrics.conf"),
        text.replace("ExecStart=/usr/bin/ffrtmp", "ExecStart=usr/bin/ffrtmp"),
    )
    .unwrap();
    assert!(
        !c.run(verify).status.success(),
        "a broken drop-in was not read"
    );
    fs::remove_dir_all(&drop_in).unwrap();

    // The system user the wrapper unit names.
    let passwd = c.ok("getent passwd ffrtmp");
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert!(fields[2].parse::<u32>().unwrap() < 1000, "{passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");

    // The units: systemd accepts them (and rejects a broken one here, so
    // the check means something); their documentation exists.
    c.ok("systemd-analyze verify /lib/systemd/system/ffrtmp-watch.service /lib/systemd/system/ffrtmp-wrapper.service");
    fs::write(
        c.path("/tmp/broken.service"),
        "[Service]\nExecStart=relative/path\n",
    )
    .unwrap();
    assert!(
        !c.run("systemd-analyze verify /tmp/broken.service")
            .status
            .success()
    );
    for unit in ["ffrtmp-watch.service", "ffrtmp-wrapper.service"] {
        let text = fs::read_to_string(c.path(&format!("/lib/systemd/system/{unit}"))).unwrap();
        let docs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation="))
            .flat_map(str::split_whitespace)
            .collect();
        assert!(!docs.is_empty(), "{unit}");
        for doc in docs {
            if let Some(path) = doc.strip_prefix("file://") {
                assert!(c.path(path).is_file(), "{unit}: {doc}");
            } else if let Some(page) = doc.strip_prefix("man:") {
                let name = page.split('(').next().unwrap();
                c.ok(&format!("man -w {name}"));
            } else {
                panic!("{unit}: {doc}");
            }
        }
    }
    // Installed, not enabled nor started.
    assert!(
        !c.path("/etc/systemd/system/multi-user.target.wants/ffrtmp-watch.service")
            .exists()
    );

    // An upgrade keeps an edited policy.
    let policy = c.path("/etc/ffrtmp/policy.toml");
    let text = fs::read_to_string(&policy).unwrap();
    assert!(text.contains("pids_max = 512"));
    fs::write(&policy, text.replace("pids_max = 512", "pids_max = 256")).unwrap();
    // The same package again, then a newer one.
    c.ok(&format!("apt-get install -y --reinstall {inside}"));
    assert!(
        fs::read_to_string(&policy)
            .unwrap()
            .contains("pids_max = 256")
    );
    let newer = repack_with_version(&deb, "9.9.9", &c.path("/tmp"));
    c.ok(&format!(
        "apt-get install -y /tmp/{}",
        newer.file_name().unwrap().to_string_lossy()
    ));
    assert!(
        c.ok("dpkg-query -W -f '${Version}' ffrtmp")
            .contains("9.9.9")
    );
    let kept = fs::read_to_string(&policy).unwrap();
    assert!(
        kept.contains("pids_max = 256") && !kept.contains("pids_max = 512"),
        "{kept}"
    );
    c.ok("ffrtmp policy check /etc/ffrtmp/policy.toml");

    // An operator's `enable` (offline here) goes with the purge too.
    let wants = c.path("/etc/systemd/system/multi-user.target.wants/ffrtmp-watch.service");
    c.ok("systemctl enable ffrtmp-watch.service");
    assert!(fs::symlink_metadata(&wants).is_ok());

    // Purge leaves nothing of the package's files behind.
    let files = c.ok("dpkg -L ffrtmp");
    c.ok("apt-get purge -y ffrtmp");
    assert!(
        !c.run("dpkg-query -W -f '${db:Status-Status}' ffrtmp | grep -qx installed")
            .status
            .success()
    );
    let mut left = Vec::new();
    for path in files.lines().filter(|l| l.starts_with('/') && *l != "/.") {
        let host_path = c.path(path);
        if fs::symlink_metadata(&host_path).is_err() {
            continue;
        }
        // Directories shared with other packages (/usr/share/man/man1…, and
        // /lib, base-files' link to usr/lib) stay.
        if !host_path.is_dir() || path.contains("ffrtmp") {
            left.push(path.to_string());
        }
    }
    assert!(left.is_empty(), "left behind by purge: {left:?}");
    assert!(
        fs::symlink_metadata(&wants).is_err(),
        "the enablement outlived the purge"
    );
}

/// A copy of `deb` with another version (dpkg-deb -R, then -b).
fn repack_with_version(deb: &Path, version: &str, into: &Path) -> PathBuf {
    let tree = into.join("repack");
    let _ = fs::remove_dir_all(&tree);
    let ok = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    ok(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version: ") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&control, text).unwrap();
    let out = into.join(format!("ffrtmp_{version}_amd64.deb"));
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&out));
    let _ = fs::remove_dir_all(&tree);
    out
}

/// `dpkg -r` stops every ffrtmp (the daemon and the wrappers) and removes
/// the empty job cgroups it made, but never a workload, a job that still
/// holds one (its limits stay), nor another program's cgroup.
#[test]
fn removal_stops_every_ffrtmp_but_no_workload() {
    let Some((dist, rootfs)) = inputs("removal_stops_every_ffrtmp_but_no_workload") else {
        return;
    };
    let deb = artefact(&dist, "_amd64.deb");
    let c = Chroot::new("remove", &rootfs);
    let inside = c.put(&deb, "ffrtmp.deb");
    c.ok(&format!("apt-get install -y {inside}"));
    let root = Root::new("pkgrm");
    let r = root.path();

    // A daemon (it makes staging cgroups under <root>/.staging)…
    let mut watch = c.spawn(&format!(
        "exec ffrtmp watch --backend procfs --cgroup-root {r}"
    ));
    eventually("watch's staging cgroups", || {
        !Root::dirs_of(&format!("{r}/.staging")).is_empty()
    });
    // …a live stream with a quota, whose wrapper forwards SIGTERM to it…
    let mut live = c.spawn(&format!(
        "exec ffrtmp run --forward-signals --cgroup-root {r} --job-id live --cpu-max '20000 100000' -- sleep 300"
    ));
    let job_pids = |job: &str| -> Vec<u32> {
        Root::dirs_of(&format!("{r}/{job}"))
            .iter()
            .flat_map(|d| {
                fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .collect()
    };
    eventually("the live job's workload", || !job_pids("live").is_empty());
    let stream = job_pids("live")[0];
    // …an empty job left by a wrapper killed with -9…
    let mut left = c.spawn(&format!(
        "exec ffrtmp run --cgroup-root {r} --job-id left -- sleep 0.5"
    ));
    eventually("the left job's workload", || !job_pids("left").is_empty());
    left.kill().unwrap();
    left.wait().unwrap();
    eventually("the left job to empty", || job_pids("left").is_empty());
    assert!(!Root::dirs_of(&format!("{r}/left")).is_empty());
    // …and another program's cgroup under the same root.
    root.make(Some("other"));

    c.ok("dpkg -r ffrtmp");

    // Every ffrtmp stopped: the daemon exits 0, the wrapper detaches.
    for (what, child) in [("watch", &mut watch), ("run", &mut live)] {
        let deadline = Instant::now() + common::PATIENCE;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{what} still runs after dpkg -r");
            thread::sleep(Duration::from_millis(20));
        }
    }
    let ffrtmps: Vec<String> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| fs::read_link(e.path().join("root")).is_ok_and(|p| p == c.dir))
        .filter(|e| fs::read_to_string(e.path().join("comm")).is_ok_and(|s| s.trim() == "ffrtmp"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        ffrtmps.is_empty(),
        "ffrtmp processes after dpkg -r: {ffrtmps:?}"
    );
    // The stream runs on, in its job, with its quota.
    assert!(pid_alive(stream));
    assert_eq!(job_pids("live"), vec![stream]);
    assert!(common::cpu_quota(&format!("{r}/live")).starts_with("20000"));
    // The empty leftovers are gone; the other program's cgroup stays.
    assert!(
        Root::dirs_of(&format!("{r}/left")).is_empty(),
        "left job kept"
    );
    assert!(
        Root::dirs_of(&format!("{r}/.staging")).is_empty(),
        "staging kept"
    );
    assert!(
        !Root::dirs_of(&format!("{r}/other")).is_empty(),
        "another program's cgroup removed"
    );
    common::signal(stream, nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn the_tarball_verifies_and_installs_without_dpkg() {
    let Some((dist, rootfs)) = inputs("the_tarball_verifies_and_installs_without_dpkg") else {
        return;
    };
    // The artefacts' sums, and a changed byte caught by them.
    let check = |dir: &Path| {
        Command::new("sha256sum")
            .args(["--check", "--strict", "--quiet", "SHA256SUMS"])
            .current_dir(dir)
            .output()
            .unwrap()
    };
    assert!(check(&dist).status.success(), "{:?}", check(&dist));
    let tarball = artefact(&dist, "-linux-musl.tar.gz");
    let c = Chroot::new("tarball", &rootfs);
    let out = Command::new("tar")
        .arg("-C")
        .arg(c.path("/opt"))
        .arg("-xzf")
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let name = tarball
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".tar.gz", "");
    let top = c.path(&format!("/opt/{name}"));
    let inner = check(&top);
    assert!(inner.status.success(), "{inner:?}");
    let sums = fs::read_to_string(top.join("SHA256SUMS")).unwrap();
    for file in [
        "bin/ffrtmp",
        "install.sh",
        "LICENSE",
        "etc/ffrtmp/policy.toml",
        "share/man/man1/ffrtmp.1.gz",
    ] {
        assert!(
            sums.lines().any(|l| l.ends_with(&format!(" {file}"))),
            "{file} not summed"
        );
    }
    let doc = top.join("share/doc/ffrtmp/README.md");
    let mut bytes = fs::read(&doc).unwrap();
    bytes.push(b'\n');
    fs::write(&doc, &bytes).unwrap();
    assert!(
        !check(&top).status.success(),
        "a changed file passed the check"
    );
    bytes.pop();
    fs::write(&doc, &bytes).unwrap();

    // install.sh: under /usr/local, units naming that binary.
    c.ok(&format!("cd /opt/{name} && ./install.sh"));
    assert!(
        c.ok("/usr/local/bin/ffrtmp --version")
            .contains("kernel programs: embedded")
    );
    // Debian's man maps /usr/local/bin to /usr/local/man, a link to share/man.
    let page = c.ok("man -w ffrtmp");
    assert_eq!(
        fs::canonicalize(c.path(page.trim())).unwrap(),
        fs::canonicalize(c.path("/usr/local/share/man/man1/ffrtmp.1.gz")).unwrap()
    );
    let unit = fs::read_to_string(c.path("/etc/systemd/system/ffrtmp-watch.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/ffrtmp watch"),
        "{unit}"
    );
    c.ok("systemd-analyze verify /etc/systemd/system/ffrtmp-watch.service /etc/systemd/system/ffrtmp-wrapper.service");
    c.ok("getent passwd ffrtmp");
    assert!(c.path("/etc/ffrtmp/policy.toml").is_file());
    assert!(
        c.path("/usr/local/share/ffrtmp/prometheus/rules.yml")
            .is_file()
    );

    // --uninstall removes what it installed, keeps the policy.
    let manifest = fs::read_to_string(c.path("/usr/local/share/ffrtmp/installed-files")).unwrap();
    assert!(manifest.lines().count() > 10, "{manifest}");
    c.ok(&format!("cd /opt/{name} && ./install.sh --uninstall"));
    for file in manifest.lines() {
        assert!(!c.path(file).exists(), "{file} left by --uninstall");
    }
    assert!(
        !c.path("/usr/local/share/ffrtmp").exists(),
        "its directory left by --uninstall"
    );
    assert!(c.path("/etc/ffrtmp/policy.toml").is_file());
}

/// lintian (Debian's) finds no error and no warning; each override says
/// why on the line above it.
#[test]
fn lintian_is_clean() {
    let Some((dist, _)) = inputs("lintian_is_clean") else {
        return;
    };
    let deb = artefact(&dist, "_amd64.deb");
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info"])
        .arg(&deb)
        .output()
        .expect("lintian (xtask installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lintian: {}\n{text}", out.status);
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("E: ") || l.starts_with("W: ")),
        "{text}"
    );
    let overrides = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/debian/lintian-overrides"),
    )
    .unwrap();
    let lines: Vec<&str> = overrides.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with('#') && !line.trim().is_empty() {
            assert!(
                i > 0 && lines[i - 1].starts_with("# ") && lines[i - 1].len() > 20,
                "override without a reason: {line}"
            );
        }
    }
}
