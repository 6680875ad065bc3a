//! Helpers for the integration tests: run the real `ffrtmp` binary, read its
//! event stream, and wait for the events a test expects.
#![allow(dead_code)]

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    thread,
    time::{Duration, Instant},
};

use ffrtmp::events::{Body, Event};

/// Environment variable naming the binary under test; `cargo xtask test`
/// sets it to the shipped build (static musl, release), so that what ships
/// is what the integration tests run.
pub(crate) const BIN_ENV: &str = "FFRTMP_BIN";

/// Path of the binary under test: `$FFRTMP_BIN`, else cargo's own build of
/// this package (`cargo test`).
pub(crate) fn ffrtmp() -> &'static str {
    static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::env::var(BIN_ENV).unwrap_or_else(|_| env!("CARGO_BIN_EXE_ffrtmp").to_string())
    });
    &BIN
}

/// The published event schema (docs/events.schema.json), compiled once.
static SCHEMA: std::sync::LazyLock<jsonschema::Validator> = std::sync::LazyLock::new(|| {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/events.schema.json"))
            .expect("schema is JSON");
    jsonschema::draft202012::new(&schema).expect("a valid draft 2020-12 schema")
});

/// One line of an event stream: checked against the published schema
/// (every event every test sees is), then read. Panics with what is wrong.
pub(crate) fn parse_event(line: &str) -> Event {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {e}: {line}"));
    let errors: Vec<String> = SCHEMA.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "against docs/events.schema.json: {errors:?}: {line}"
    );
    serde_json::from_value(value).unwrap_or_else(|e| panic!("not a valid event: {e}: {line}"))
}

/// Upper bound on waiting for an event; a bound on a hang, not a speed target.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// True when root; otherwise prints a loud SKIP line, or panics when the
/// root tests are required (under `cargo xtask test` in CI or as root).
pub(crate) fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if required() {
        panic!("{test} needs root, and root tests are required here");
    }
    skip(test, "needs root (eBPF, cgroups, /proc of every user)");
    false
}

/// Says loudly that a test did not run: written straight to stderr, past
/// libtest's capture of passing tests' output.
pub(crate) fn skip(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// A running `ffrtmp watch` and everything it has printed so far.
pub(crate) struct Watch {
    child: Child,
    lines: Receiver<String>,
    pub events: Vec<Event>,
    /// The lines `events` were read from, as written.
    pub raw: Vec<String>,
}

impl Watch {
    /// Starts `ffrtmp watch ARGS` and waits for its `started` event.
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(ffrtmp()).arg("watch").args(args))
    }

    /// Starts `ffrtmp watch --all --observe-only ARGS`: every process's
    /// events, nothing governed (the observer's own tests).
    pub(crate) fn observe_all(args: &[&str]) -> Self {
        Self::start_with(
            Command::new(ffrtmp())
                .args(["watch", "--all", "--observe-only"])
                .args(args),
        )
    }

    /// Starts a prepared command whose stdout is the event stream.
    pub(crate) fn start_with(cmd: &mut Command) -> Self {
        // stderr as the caller set it (inherited by default).
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning ffrtmp watch");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut watch = Watch {
            child,
            lines,
            events: Vec::new(),
            raw: Vec::new(),
        };
        watch.wait_for("the started event", |e| matches!(e.body, Body::Started(_)));
        watch
    }

    /// Reads lines until `pred` matches an event (already seen or new).
    /// Panics with the stream so far when it does not come.
    pub(crate) fn wait_for(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(e) = self.events.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let event = parse_event(&line);
                    let hit = pred(&event);
                    self.events.push(event);
                    self.raw.push(line);
                    if hit {
                        return self.events.last().cloned().expect("just pushed");
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {what} within {PATIENCE:?}; stream:\n{}", self.dump())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("watch ended before {what}; stream:\n{}", self.dump())
                }
            }
        }
    }

    /// Takes in every line printed so far, without waiting.
    pub(crate) fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.events.push(parse_event(&line));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and returns the exit status; the rest of the stream is
    /// read into `events`.
    pub(crate) fn stop_with(
        mut self,
        signal: nix::sys::signal::Signal,
    ) -> (ExitStatus, Vec<Event>) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signalling watch");
        let status = self.child.wait().expect("waiting for watch");
        // The reader thread ends at EOF; collect what it forwarded.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.events.push(parse_event(&line));
        }
        (status, std::mem::take(&mut self.events))
    }

    pub(crate) fn stop(self) -> (ExitStatus, Vec<Event>) {
        self.stop_with(nix::sys::signal::Signal::SIGTERM)
    }

    fn dump(&self) -> String {
        self.events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn exec_of(pid: u32) -> impl Fn(&Event) -> bool {
    move |e| matches!(&e.body, Body::Exec(x) if x.pid == pid)
}

pub(crate) fn exit_of(pid: u32) -> impl Fn(&Event) -> bool {
    move |e| matches!(&e.body, Body::Exit(x) if x.pid == pid)
}

/// Environment variable that turns a test binary into a helper process.
pub(crate) const HELPER_ENV: &str = "FFRTMP_TEST_HELPER";

/// True when this process was started by [`helper`] in `mode`.
pub(crate) fn is_helper(mode: &str) -> bool {
    std::env::var_os(HELPER_ENV).is_some_and(|v| v == mode)
}

/// This test binary, re-run to execute only the test function `test` with
/// [`HELPER_ENV`] set to `mode`; that function acts as a helper program.
pub(crate) fn helper(test: &str, mode: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current test binary"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, mode)
        .stdout(Stdio::null());
    cmd
}

/// Whether the root test suites are required to run (not skip) here.
pub(crate) fn required() -> bool {
    std::env::var_os("FFRTMP_REQUIRE_ROOT_TESTS").is_some()
}

/// True inside the VM harness (`cargo xtask vm-test`).
pub(crate) fn in_vm() -> bool {
    std::env::var_os("FFRTMP_VM").is_some()
}

/// A fresh scratch directory for one test, removed when the test passes.
///
/// Why removed: some tests put two copies of a test binary in theirs
/// (~170 MB each, debug info), so a kept directory per test per run filled a
/// CI disk within a dozen runs. A failing test keeps its directory (events
/// files, policies) for inspection and says where it is.
pub(crate) fn scratch(test: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("ffrtmp-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    Scratch(dir)
}

/// A test's scratch directory; see [`scratch`].
pub(crate) struct Scratch(std::path::PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The job of `status --format json`'s `jobs` whose `field` is `value`.
pub(crate) fn status_job<'a>(
    status: &'a serde_json::Value,
    field: &str,
    value: &str,
) -> &'a serde_json::Value {
    status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j[field] == value)
        .unwrap_or_else(|| panic!("no job with {field} {value} in status: {status:#}"))
}

/// How many records `lost` events counted in `events`.
pub(crate) fn lost_count(events: &[Event]) -> u64 {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Lost(l) => Some(l.count),
            _ => None,
        })
        .sum()
}

/// The events in a `--events FILE` written by `run`, `attach` or `watch`.
pub(crate) fn read_events(path: &std::path::Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(parse_event)
        .collect()
}

/// The cgroup lines of `pid` (/proc/PID/cgroup); empty when it is gone.
pub(crate) fn cgroups(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// The cgroup path of job `job` made by root `attach` or `watch` without
/// `--cgroup-root`: on a systemd host its transient scope, beside the
/// unit the test runs in (`govern/scope.rs`), elsewhere `/ffrtmp/<job>`.
pub(crate) fn root_job_cgroup(job: &str) -> String {
    if systemd_host() {
        format!("/system.slice/ffrtmp-{job}.scope")
    } else {
        format!("/ffrtmp/{job}")
    }
}

/// Whether systemd manages this host's cgroup tree (root's jobs are then
/// scopes).
pub(crate) fn systemd_host() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Whether `text` (a /proc/PID/cgroup) names any ffrtmp job of root's.
#[allow(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "unit suffixes are lower case by definition (systemd.unit(5))"
)]
pub(crate) fn in_a_root_job(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_end();
        l.contains("/ffrtmp/")
            || l.rsplit('/')
                .next()
                .is_some_and(|last| last.starts_with("ffrtmp-") && last.ends_with(".scope"))
    })
}

/// Waits until job `job`'s cgroup made by root is gone (a scope is removed
/// by systemd, a moment after its last process ends).
pub(crate) fn root_job_removed(job: &str) -> bool {
    let gone = || {
        !Path::new("/sys/fs/cgroup/cpu/ffrtmp").join(job).exists()
            && !Path::new(&format!("/sys/fs/cgroup{}", root_job_cgroup(job))).exists()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gone() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// The CPU quota of cgroup `path` (a cgroup path such as `/ffrtmp/job`), as
/// the kernel reads it: v2 `cpu.max`, else v1 `cpu.cfs_quota_us`.
pub(crate) fn cpu_quota(path: &str) -> String {
    use std::path::Path;
    let rel = path.trim_start_matches('/');
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let v2 = Path::new("/sys/fs/cgroup").join(rel).join("cpu.max");
        let text = std::fs::read_to_string(&v2).unwrap_or_else(|e| panic!("{}: {e}", v2.display()));
        return text.split_whitespace().next().unwrap_or_default().into();
    }
    let v1 = Path::new("/sys/fs/cgroup/cpu")
        .join(rel)
        .join("cpu.cfs_quota_us");
    std::fs::read_to_string(&v1)
        .unwrap_or_else(|e| panic!("{}: {e}", v1.display()))
        .trim()
        .into()
}

/// A cpu controller file of cgroup `path` (v2, or v1's cpu hierarchy:
/// `cpu.idle` is named alike in both), trimmed; `None` when unreadable.
pub(crate) fn cpu_file(path: &str, file: &str) -> Option<String> {
    use std::path::Path;
    let rel = path.trim_start_matches('/');
    let base = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Path::new("/sys/fs/cgroup").join(rel)
    } else {
        Path::new("/sys/fs/cgroup/cpu").join(rel)
    };
    std::fs::read_to_string(base.join(file))
        .ok()
        .map(|t| t.trim().to_string())
}

/// Runs `ffrtmp ARGS` to completion and returns what it printed.
pub(crate) fn ffrtmp_output(args: &[&str]) -> std::process::Output {
    Command::new(ffrtmp())
        .args(args)
        .output()
        .expect("running ffrtmp")
}

/// Whether `pid` is alive. A zombie is not: a test does not reap a
/// workload whose parent is the wrapper, so the state is what tells.
pub(crate) fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// Sends `signal` to `pid`; a process that is already gone is no error.
pub(crate) fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    match nix::sys::signal::kill(pid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => panic!("sending {signal} to {pid}: {e}"),
    }
}

/// Waits until the events file at `path` (`--events`, written by `run`
/// or `attach`) holds an event that `pred` accepts, and returns it: the
/// proof that what a test waits for has happened, instead of a sleep.
pub(crate) fn wait_for_event(
    path: &std::path::Path,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(e) = read_events(path).into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {PATIENCE:?} in {:?}",
            read_events(path)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the `governed` event in an events file, once it is there.
pub(crate) fn governed_pid(path: &std::path::Path) -> u32 {
    match wait_for_event(path, "a governed event", |e| {
        matches!(e.body, Body::Governed(_))
    })
    .body
    {
        Body::Governed(g) => g.pid,
        _ => unreachable!("matched a governed event"),
    }
}

/// The body of the memory helpers: allocates and touches `mib` MiB.
pub(crate) fn allocate_mib(mib: usize) -> usize {
    let blocks: Vec<Vec<u8>> = (0..mib).map(|_| vec![1u8; 1 << 20]).collect();
    std::hint::black_box(&blocks);
    blocks.len()
}

/// A cgroup root of the test's own (`--cgroup-root`), removed with its
/// empty jobs, and ffrtmp's ledger of it, on drop.
pub(crate) struct Root(String);

impl Root {
    pub(crate) fn new(test: &str) -> Self {
        Root(format!("/ffrtmp-t-{test}-{}", std::process::id()))
    }

    pub(crate) fn path(&self) -> &str {
        &self.0
    }

    /// The cgroup path of rule `rule`'s staging cgroup (`.staging/<rule>-
    /// <digest of its limits>`), once `watch` has made it.
    pub(crate) fn staging(&self, rule: &str) -> Option<String> {
        let prefix = format!("{rule}-");
        Self::mounts().into_iter().find_map(|m| {
            let dir = m.join(self.0.trim_start_matches('/')).join(".staging");
            fs::read_dir(dir)
                .ok()?
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .find(|n| n.strip_prefix(&prefix).is_some_and(|d| d.len() == 8))
                .map(|n| format!("{}/.staging/{n}", self.0))
        })
    }

    /// Makes `<root>/<child>` (or the root itself) in every cgroup mount, as
    /// another program would; returns the directories.
    pub(crate) fn make(&self, child: Option<&str>) -> Vec<PathBuf> {
        let cgroup = match child {
            Some(c) => format!("{}/{c}", self.0),
            None => self.0.clone(),
        };
        Self::mounts()
            .into_iter()
            .map(|m| m.join(cgroup.trim_start_matches('/')))
            .inspect(|d| fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())))
            .collect()
    }

    fn mounts() -> Vec<PathBuf> {
        fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                matches!(f.get(2), Some(&"cgroup" | &"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .collect()
    }

    /// The directory of `cgroup` (a cgroup path) in each cgroup mount.
    pub(crate) fn dirs_of(cgroup: &str) -> Vec<PathBuf> {
        Self::mounts()
            .into_iter()
            .map(|m| m.join(cgroup.trim_start_matches('/')))
            .filter(|d| d.is_dir())
            .collect()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        /// Removes a cgroup directory and its (empty) descendants.
        fn remove(dir: &Path) {
            if let Ok(children) = fs::read_dir(dir) {
                for child in children
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                {
                    remove(&child.path());
                }
            }
            let _ = fs::remove_dir(dir);
        }
        // Killed workloads may take a moment to leave.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !Self::dirs_of(&self.0).is_empty() && Instant::now() < deadline {
            for dir in Self::dirs_of(&self.0) {
                remove(&dir);
            }
            thread::sleep(Duration::from_millis(20));
        }
        // ffrtmp's record of the jobs under it (govern::ledger).
        let escaped = self.0.replace('/', "%2F");
        let _ = fs::remove_dir_all(Path::new("/run/ffrtmp/roots").join(escaped));
    }
}

/// Children killed when dropped, also when a test fails: a stray
/// transcoder would be adopted by the next test's daemon.
pub(crate) struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A copy of `real` named `name`: its processes have that comm.
pub(crate) fn fake(dir: &Path, name: &str, real: &str) -> PathBuf {
    let src = fs::canonicalize(real).unwrap();
    let path = dir.join(name);
    fs::copy(&src, &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs a copy of `sleep` (argv[0] "sleep", which busybox needs).
pub(crate) fn sleeper(path: &Path, secs: &str) -> Child {
    Command::new(path)
        .arg0("sleep")
        .arg(secs)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// CPU 0, and nothing else, for the jobs a test starts through it: a
/// cpuset the kernel enforces on every process in it, so two busy jobs
/// contend for that one CPU for certain. Pinning by affinity was not
/// enough: in the TCG VMs two spinners pinned to CPU 0 each got a whole
/// CPU (live 49.8 %, 6.1 VM; 50 % to 88 % in the systemd VM).
/// - v1 and hybrid hosts: a cpuset cgroup of the test's (ffrtmp uses no
///   v1 cpuset hierarchy), which the wrapper joins before it starts, and
///   its workload with it;
/// - pure v2: a `--cgroup-root` of the test's with `cpuset.cpus` 0, the
///   jobs' parent;
/// - systemd: a slice of the test's with `AllowedCPUs=0`, which the
///   wrapper runs in (`systemd-run --scope`); its job's scope goes beside
///   it, in that slice. systemd owns that tree, so the test asks it.
///
/// Removed (cgroups, slice) on drop.
pub(crate) struct OneCpu(Confined);

enum Confined {
    V1Cpuset(PathBuf),
    V2Root(Root),
    Slice(String),
}

impl OneCpu {
    pub(crate) fn new(test: &str) -> Self {
        let id = format!("{test}-{}", std::process::id());
        if systemd_host() {
            // "-" nests slices: keep it out of the name.
            let slice = format!("ffrtmptest{}.slice", std::process::id());
            let out = Command::new("systemctl")
                .args(["set-property", "--runtime", &slice, "AllowedCPUs=0"])
                .output()
                .unwrap();
            assert!(out.status.success(), "systemctl set-property: {out:?}");
            return OneCpu(Confined::Slice(slice));
        }
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        if v2 {
            let top = Path::new("/sys/fs/cgroup/cgroup.subtree_control");
            if !fs::read_to_string(top).unwrap().contains("cpuset") {
                fs::write(top, "+cpuset").unwrap();
            }
            let root = Root::new(test);
            let dir = &root.make(None)[0];
            fs::write(dir.join("cpuset.cpus"), "0").unwrap();
            return OneCpu(Confined::V2Root(root));
        }
        let base = Path::new("/sys/fs/cgroup/cpuset");
        let dir = base.join(format!("ffrtmp-t-{id}"));
        fs::create_dir(&dir).unwrap();
        // A v1 cpuset takes no process before its CPUs and memory nodes.
        let mems = fs::read_to_string(base.join("cpuset.mems")).unwrap();
        fs::write(dir.join("cpuset.cpus"), "0").unwrap();
        fs::write(dir.join("cpuset.mems"), mems.trim()).unwrap();
        OneCpu(Confined::V1Cpuset(dir))
    }

    /// `ffrtmp SUBCOMMAND` (`run` or `status`) for jobs on CPU 0.
    pub(crate) fn ffrtmp(&self, subcommand: &str) -> Command {
        let mut cmd = match &self.0 {
            Confined::V1Cpuset(dir) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
                    .arg(dir)
                    .args([ffrtmp(), subcommand]);
                c
            }
            Confined::V2Root(root) => {
                let mut c = Command::new(ffrtmp());
                c.args([subcommand, "--cgroup-root", root.path()]);
                c
            }
            Confined::Slice(slice) if subcommand == "run" => {
                let mut c = Command::new("systemd-run");
                c.args(["--quiet", "--scope", "--collect", "--slice", slice])
                    .args([ffrtmp(), subcommand]);
                c
            }
            Confined::Slice(_) => {
                let mut c = Command::new(ffrtmp());
                c.arg(subcommand);
                c
            }
        };
        cmd.stdin(Stdio::null());
        cmd
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        match &self.0 {
            Confined::V1Cpuset(dir) => {
                // Its processes have ended; the kernel may take a moment.
                let deadline = Instant::now() + Duration::from_secs(2);
                while fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            Confined::V2Root(_) => {} // the Root removes itself
            Confined::Slice(slice) => {
                for args in [["stop", slice.as_str()], ["revert", slice.as_str()]] {
                    let _ = Command::new("systemctl").args(args).output();
                }
            }
        }
    }
}
