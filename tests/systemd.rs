//! On a systemd host, the package's own `ffrtmp-watch.service` as shipped:
//! hardened (`systemd-analyze security` ≤ 4.0), `Type=notify` (ready only
//! once the kernel programs are attached), a watchdog kept by the governing
//! loop, reload, events in their own file and not in the journal, and no
//! stop, restart, kill -9 or watchdog kill of the daemon ever stopping a
//! transcoder.
//!
//! These run where systemd is PID 1 — the systemd VM (`cargo xtask
//! vm-test --systemd`, part of `cargo xtask test`) — and say SKIP elsewhere.
//! The VM is disposable: the tests change the installed unit only through a
//! runtime drop-in and the policy file, and put both back.
#![allow(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "unit suffixes are lower case by definition (systemd.unit(5))"
)]
mod common;

use ffrtmp::events::{Fallback, Mode};

use std::{
    fs,
    path::Path,
    process::{Child, Command, Output},
    thread,
    time::{Duration, Instant},
};

use common::{cgroups, cpu_quota, fake, pid_alive, read_events, scratch, skip};
use ffrtmp::{
    events::{Body, Event},
    limits::Tier,
};

const UNIT: &str = "ffrtmp-watch.service";
const EVENTS: &str = "/var/log/ffrtmp/events.jsonl";
const POLICY: &str = "/etc/ffrtmp/policy.toml";
const DROP_IN: &str = "/run/systemd/system/ffrtmp-watch.service.d/test.conf";

fn systemd_host(test: &str) -> bool {
    if Path::new("/run/systemd/system").is_dir() && nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(
        test,
        "needs systemd as PID 1 and root (runs in the systemd VM: cargo xtask vm-test --systemd)",
    );
    false
}

fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn systemctl(args: &[&str]) -> Output {
    let out = Command::new("systemctl").args(args).output().unwrap();
    assert!(out.status.success(), "systemctl {args:?}: {out:?}");
    out
}

fn show(property: &str) -> String {
    show_unit(UNIT, property)
}

/// A scratch directory the units' users (ffrtmp, the delegate) can read.
fn readable_scratch(test: &str) -> common::Scratch {
    let dir = scratch(test);
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

fn main_pid() -> u32 {
    show("MainPID").parse().unwrap()
}

fn journal() -> String {
    let out = Command::new("journalctl")
        .args(["-u", UNIT, "-o", "cat", "--no-pager"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How long systemd may take to restart a unit here: under `cargo xtask
/// test` three TCG VMs share two cores, and one agent restart (nominally
/// 1 s) once took longer than 20 s there.
const RESTART_PATIENCE: Duration = Duration::from_secs(90);

fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + RESTART_PATIENCE;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {RESTART_PATIENCE:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    common::wait_for_event(Path::new(EVENTS), what, pred)
}

/// The unit configured for a test, put back (stopped, drop-in and policy
/// restored) when dropped, also when the test fails.
struct Configured {
    policy_before: Option<String>,
    kids: Vec<Child>,
}

impl Configured {
    /// `policy` as the installed policy; the drop-in's `[Service]` lines.
    fn new(policy: &str, service: &str) -> Self {
        let policy_before = fs::read_to_string(POLICY).ok();
        fs::write(POLICY, policy).unwrap();
        fs::create_dir_all(Path::new(DROP_IN).parent().unwrap()).unwrap();
        fs::write(DROP_IN, format!("[Service]\n{service}\n")).unwrap();
        systemctl(&["daemon-reload"]);
        let _ = fs::remove_file(EVENTS);
        Configured {
            policy_before,
            kids: Vec::new(),
        }
    }
}

impl Drop for Configured {
    fn drop(&mut self) {
        let _ = Command::new("systemctl").args(["stop", UNIT]).status();
        for k in &mut self.kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        let _ = fs::remove_file(DROP_IN);
        if let Some(p) = &self.policy_before {
            let _ = fs::write(POLICY, p);
        }
        let _ = Command::new("systemctl").arg("daemon-reload").status();
        let _ = Command::new("systemctl")
            .args(["reset-failed", UNIT])
            .output();
        let _ = Command::new("ffrtmp").arg("cleanup").output();
    }
}

/// The job cgroup `pid` is in (the v2 line of /proc/PID/cgroup).
fn cgroup_of(pid: u32) -> String {
    cgroups(pid)
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string()
}

fn nice_of(pid: u32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit(')').next().unwrap();
    // Fields after the name: state is 3rd overall; nice is the 19th.
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

const TEST_POLICY: &str = r#"
[[rule]]
name = "sd"
comm = "sd-ffmpeg"
tier = "live"
cpu_max = "30000 100000"
nice = 5
oom_score_adj = 100
"#;

/// The shipped unit, hardened: exposure ≤ 4.0, and with that sandbox it
/// still governs another user's transcoder with every limit (cgroup, nice,
/// oom_score_adj). `systemctl start` returns once ready (Type=notify), with
/// a STATUS. Reload re-reads the policy. kill -9, a wedged governing loop
/// (the watchdog restarts it) and stop leave the transcoder running in its
/// job, and each restarted daemon finds the job again.
#[test]
fn the_hardened_notify_unit_governs_and_never_stops_a_transcoder() {
    if !systemd_host("the_hardened_notify_unit_governs") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--no-pager", UNIT])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for ffrtmp-watch.service:")
                .nth(1)
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {out:?}"));
    // Past libtest's capture: the figure belongs in the log of every run.
    say(&format!("systemd-analyze security {UNIT}: {exposure}"));
    assert!(exposure <= 4.0, "exposure {exposure}:\n{text}");

    let dir = readable_scratch("systemd-unit");
    let ffmpeg = fake(&dir, "sd-ffmpeg", "/bin/sleep");
    let mut unit = Configured::new(
        TEST_POLICY,
        "WatchdogSec=3s\nTimeoutAbortSec=3s\nRestartSec=1",
    );
    systemctl(&["start", UNIT]);
    // Type=notify: `start` returned, so the daemon said READY=1.
    let status = show("StatusText");
    assert!(status.contains("backend ebpf"), "{status}");
    wait_for("started", |e| matches!(e.body, Body::Started(_)));
    // The sandbox hides /proc/sys (ProcSubset=pid), so the unit passes the
    // boot id (%b): the daemon's events carry this boot's, as `run`'s do.
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let started: serde_json::Value = fs::read_to_string(EVENTS)
        .unwrap()
        .lines()
        .find(|l| l.contains(r#""event":"started""#))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap();
    assert_eq!(started["boot_id"], boot_id.trim(), "{started}");
    assert!(
        started["process_key"]
            .as_str()
            .is_some_and(|k| k.starts_with(boot_id.trim())),
        "{started}"
    );

    // Another user's transcoder, with every limit the sandbox must allow.
    let stream = Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(&ffmpeg)
        .arg("600")
        .spawn()
        .unwrap();
    let pid = stream.id();
    unit.kids.push(stream);
    let governed = wait_for(
        "its governed event",
        |e| matches!(&e.body, Body::Governed(g) if g.pid == pid && g.cgroup.as_deref().is_some_and(|c| !c.contains(".staging"))),
    );
    let Body::Governed(g) = governed.body else {
        unreachable!()
    };
    let job = g.cgroup.clone().unwrap();
    assert_eq!(cgroup_of(pid), job);
    // Its job is a scope systemd made, beside where it came from, with
    // the limits as the scope's properties.
    let scope = scope_unit(&job);
    assert_eq!(show_unit(&scope, "CPUQuotaPerSecUSec"), "300ms");
    assert_eq!(cpu_quota(&job), "30000");
    assert_nothing_at_the_root(&job);
    assert_eq!(nice_of(pid), 5);
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim(),
        "100"
    );
    let degraded: Vec<Event> = read_events(Path::new(EVENTS))
        .into_iter()
        .filter(|e| matches!(e.body, Body::Degraded(_)))
        .collect();
    assert!(
        degraded.iter().all(|e| match &e.body {
            Body::Degraded(d) => d.limit.is_none(),
            _ => true,
        }),
        "a limit degraded under the sandbox: {degraded:#?}"
    );
    say(&format!(
        "degraded under the sandbox (none for a limit): {degraded:?}"
    ));

    // Reload: the policy is read again, and said so.
    systemctl(&["reload", UNIT]);
    wait_for(
        "the reload",
        |e| matches!(&e.body, Body::Policy(p) if p.applied),
    );

    let still_governed = |when: &str| {
        assert!(pid_alive(pid), "{when}: the transcoder stopped");
        assert_eq!(cgroup_of(pid), job, "{when}: moved out of its job");
        assert_eq!(cpu_quota(&job), "30000", "{when}: its limit changed");
    };
    // kill -9: systemd restarts the daemon, which finds the job again.
    let first = main_pid();
    common::signal(first, nix::sys::signal::Signal::SIGKILL);
    wait_until("a restarted daemon", || {
        let now = main_pid();
        now != 0 && now != first
    });
    still_governed("after kill -9 of the daemon");
    let tracked = wait_for(
        "the job found again",
        |e| matches!(&e.body, Body::Tracked(t) if t.pid == pid),
    );
    // With its tier, from the job's record in ffrtmp's ledger: nothing of
    // ours on systemd's unit.
    let Body::Tracked(t) = tracked.body else {
        unreachable!()
    };
    assert_eq!(t.tier, Some(Tier::Live), "{t:?}");
    assert_eq!(g.tier, Some(Tier::Live), "{g:?}");
    let out = Command::new("ffrtmp")
        .args(["status", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = common::status_job(&status, "cgroup", &job);
    assert_eq!(entry["tier"], "live", "{entry}");
    assert_eq!(entry["made_by"], "watch", "{entry}");
    assert_eq!(entry["unit"], scope.as_str(), "{entry}");

    // A wedged governing loop: the watchdog restarts the daemon.
    let wedged = main_pid();
    common::signal(wedged, nix::sys::signal::Signal::SIGSTOP);
    wait_until("the watchdog's restart", || {
        let now = main_pid();
        now != 0 && now != wedged
    });
    assert!(
        journal().contains("Watchdog timeout"),
        "no watchdog timeout in the journal:\n{}",
        journal()
    );
    still_governed("after the watchdog restarted the daemon");

    // Stop: only the daemon goes.
    systemctl(&["stop", UNIT]);
    still_governed("after systemctl stop");
    let _ = Command::new("systemctl").args(["stop", &scope]).output();

    // Events and logs apart: no event line in the journal.
    let journal = journal();
    let events_there: Vec<&str> = journal
        .lines()
        .filter(|l| l.starts_with("{\"event\""))
        .collect();
    assert!(
        events_there.is_empty(),
        "events in the journal: {events_there:?}"
    );
}

/// The scope unit of job cgroup `job` (`…/ffrtmp-<job>.scope`), which must
/// be one.
fn scope_unit(job: &str) -> String {
    let unit = job.rsplit('/').next().unwrap().to_string();
    assert!(
        unit.starts_with("ffrtmp-") && unit.ends_with(".scope"),
        "not a job scope: {job}"
    );
    unit
}

/// The daemon made no cgroup outside what systemd delegated to it: no
/// staging and no job of its at the hierarchy's root.
fn assert_nothing_at_the_root(job: &str) {
    let root = Path::new("/sys/fs/cgroup/ffrtmp");
    let job = job.rsplit('/').next().unwrap();
    let id = job.trim_start_matches("ffrtmp-").trim_end_matches(".scope");
    for made in [root.join(".staging"), root.join(id)] {
        assert!(
            !made.exists(),
            "the daemon made {} on a systemd host",
            made.display()
        );
    }
}

/// Stopping the unit that started a transcoder stops the transcoder, as it
/// did before ffrtmp governed it: its scope is bound to that unit. Unless
/// that unit's `KillMode=process` asked for its children to outlive it:
/// then the transcoder outlives it in its scope, still limited.
#[test]
fn a_transcoder_stops_with_the_unit_that_started_it_unless_its_kill_mode_says_not() {
    if !systemd_host("a_transcoder_stops_with_the_unit_that_started_it") {
        return;
    }
    let dir = readable_scratch("systemd-origin");
    let ffmpeg = fake(&dir, "sd-ffmpeg", "/bin/sleep");
    let unit = Configured::new(TEST_POLICY, "");
    systemctl(&["start", UNIT]);
    wait_for("started", |e| matches!(e.body, Body::Started(_)));
    // A unit whose main process (a shell) starts the transcoder as a child.
    let start = |origin: &str, kill_mode: &str| -> (u32, String) {
        let _ = Command::new("systemctl").args(["stop", origin]).output();
        let _ = Command::new("systemctl")
            .args(["reset-failed", origin])
            .output();
        let out = Command::new("systemd-run")
            .args(["--quiet", &format!("--unit={origin}"), "--uid=1000"])
            .arg(format!("--property=KillMode={kill_mode}"))
            .args(["/bin/sh", "-c"])
            .arg(format!("{} 600 & wait", ffmpeg.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // The shell's child, now in a scope (the one before it has ended).
        let g = wait_for("the transcoder governed in a scope", |e| {
            matches!(&e.body, Body::Governed(g)
                if g.rule.as_deref() == Some("sd")
                && g.cgroup.as_deref().is_some_and(|c| c.ends_with(".scope"))
                && pid_alive(g.pid))
        });
        let Body::Governed(g) = g.body else {
            unreachable!()
        };
        let job = g.cgroup.unwrap();
        assert_eq!(cgroup_of(g.pid), job);
        // Beside its origin, in the same slice.
        assert_eq!(
            job,
            format!("/system.slice/{}", scope_unit(&job)),
            "not beside {origin}"
        );
        (g.pid, job)
    };

    let (pid, job) = start("sd-origin-bound.service", "control-group");
    let scope = scope_unit(&job);
    assert_eq!(show_unit(&scope, "BindsTo"), "sd-origin-bound.service");
    assert_eq!(cpu_quota(&job), "30000");
    systemctl(&["stop", "sd-origin-bound.service"]);
    wait_until("the transcoder stopped with its unit", || !pid_alive(pid));
    let exit = wait_for(
        "its exit",
        |e| matches!(&e.body, Body::Exit(x) if x.pid == pid),
    );
    say(&format!("exit of a scope's transcoder: {exit:?}"));

    let (pid, job) = start("sd-origin-keeps.service", "process");
    let scope = scope_unit(&job);
    assert_eq!(show_unit(&scope, "BindsTo"), "");
    systemctl(&["stop", "sd-origin-keeps.service"]);
    thread::sleep(Duration::from_secs(2));
    assert!(
        pid_alive(pid),
        "KillMode=process: the transcoder stopped with its unit"
    );
    assert_eq!(cgroup_of(pid), job, "moved out of its scope");
    assert_eq!(cpu_quota(&job), "30000");
    systemctl(&["stop", &scope]);
    wait_until("the transcoder stopped with its scope", || !pid_alive(pid));
    assert_nothing_at_the_root(&job);
    drop(unit);
}

/// `ffrtmp run` as root in a unit that delegated nothing (the common
/// `ExecStart=ffrtmp run … -- ffmpeg …`): the job is a scope beside that
/// unit holding the wrapper and its workload, limits as properties, nothing
/// made at the root; `PartOf=` that unit, so stopping the unit stops the
/// stream, while kill -9 of the wrapper (the unit's main process: the unit
/// ends) leaves the stream running and limited.
#[test]
fn run_as_root_makes_its_job_a_scope_part_of_its_unit() {
    if !systemd_host("run_as_root_makes_its_job_a_scope_part_of_its_unit") {
        return;
    }
    let dir = readable_scratch("systemd-run-root");
    let start = |unit: &str, job: &str| -> (u32, u32, String) {
        let _ = Command::new("systemctl").args(["stop", unit]).output();
        let _ = Command::new("systemctl")
            .args(["reset-failed", unit])
            .output();
        let events = dir.join(format!("{job}.events"));
        let out = Command::new("systemd-run")
            .args(["--quiet", &format!("--unit={unit}"), common::ffrtmp()])
            .args(["run", "--job-id", job, "--cpu-max", "30000 100000"])
            .args(["--cpu-weight", "500", "--events"])
            .arg(&events)
            .args(["--", "/bin/sleep", "600"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let pid = common::governed_pid(&events);
        let wrapper: u32 = show_unit(unit, "MainPID").parse().unwrap();
        let scope = format!("/system.slice/ffrtmp-{job}.scope");
        assert_eq!(cgroup_of(pid), scope, "the workload");
        assert_eq!(cgroup_of(wrapper), scope, "the wrapper");
        (wrapper, pid, scope)
    };

    let job = format!("sd-run-{}", std::process::id());
    let (wrapper, pid, cgroup) = start("sd-run-wrapper.service", &job);
    let scope = scope_unit(&cgroup);
    assert_eq!(show_unit(&scope, "PartOf"), "sd-run-wrapper.service");
    assert_eq!(show_unit(&scope, "BindsTo"), "");
    assert_eq!(show_unit(&scope, "CPUWeight"), "500");
    assert_eq!(cpu_quota(&cgroup), "30000");
    // The wrapper is one task of its job: one thread, none left by D-Bus.
    let tasks = fs::read_to_string(format!("/sys/fs/cgroup{cgroup}/pids.current")).unwrap();
    assert_eq!(tasks.trim(), "2", "tasks in {cgroup}");
    assert!(
        !Path::new("/sys/fs/cgroup/ffrtmp").join(&job).exists(),
        "run made a cgroup at the root"
    );
    common::signal(wrapper, nix::sys::signal::Signal::SIGKILL);
    wait_until("the wrapper's unit ended", || {
        show_unit("sd-run-wrapper.service", "ActiveState") != "active"
    });
    thread::sleep(Duration::from_secs(2));
    assert!(pid_alive(pid), "kill -9 of the wrapper stopped the stream");
    assert_eq!(cgroup_of(pid), cgroup, "the stream left its scope");
    assert_eq!(cpu_quota(&cgroup), "30000");
    systemctl(&["stop", &scope]);
    wait_until("the stream stopped with its scope", || !pid_alive(pid));

    let job = format!("sd-run-stop-{}", std::process::id());
    let (_, pid, _) = start("sd-run-stopped.service", &job);
    systemctl(&["stop", "sd-run-stopped.service"]);
    wait_until("the stream stopped with its unit", || !pid_alive(pid));
    let _ = Command::new("systemctl")
        .args(["reset-failed", "sd-run-wrapper.service"])
        .output();

    // Without a system bus (none installed, or not answering) the workload
    // still runs: its cgroup limits are `degraded`, nice stands in, and
    // nothing is made at the root.
    let job = format!("sd-run-nobus-{}", std::process::id());
    let events = dir.join("nobus.events");
    let out = Command::new(common::ffrtmp())
        .args(["run", "--job-id", &job, "--cpu-weight", "500", "--events"])
        .arg(&events)
        .args(["--", "/bin/sh", "-c", "cat /proc/self/cgroup; exit 3"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let events = read_events(&events);
    let degraded = events
        .iter()
        .find_map(|e| match &e.body {
            Body::Degraded(d) if d.limit == Some(ffrtmp::limits::LimitName::CpuWeight) => Some(d),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no degraded cpu_weight: {events:?}"));
    say(&format!("run without a system bus: {degraded:?}"));
    assert!(degraded.reason.contains("system bus"), "{degraded:?}");
    assert_eq!(degraded.fallback, Fallback::Nice10);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&job));
    assert!(!Path::new("/sys/fs/cgroup/ffrtmp").join(&job).exists());
}

/// Events go to their own file, whole: the issue's storm of 5 000
/// short-lived transcoders gives one `exec` line each in the events file
/// (or a `lost` count) and none in the journal, with the unit's journal
/// rate limit cut from journald's 10 000 to 200 lines per 30 s for the
/// test, so that events going through the journal (as they did on stdout)
/// would lose nearly all of it. The storm runs inside two `run` jobs, so
/// the daemon reports each exec and tracks it without asking systemd for a
/// scope per exec (600 governed ones took 62 – 90 s under TCG, 5 000 did
/// not end in 8 minutes). Before it, 100 governed execs 200 ms apart give
/// the daemon's exec -> staging latency here (a figure for
/// docs/BENCHMARKS.md, never asserted: TCG is ~10x slower than the host).
#[test]
fn events_stay_whole_and_out_of_the_journal_in_an_exec_storm() {
    if !systemd_host("events_stay_whole_and_out_of_the_journal") {
        return;
    }
    const STORM: usize = 5_000;
    const SPAWNERS: usize = 2;
    const GOVERNED: usize = 100;
    let dir = readable_scratch("systemd-storm");
    let short = fake(&dir, "sd-ffmpeg", "/bin/true");
    let _unit = Configured::new(
        TEST_POLICY,
        "LogRateLimitIntervalSec=30s\nLogRateLimitBurst=200",
    );
    systemctl(&["start", UNIT]);
    let execs_of = |events: &[Event]| -> usize {
        events
            .iter()
            .filter(|e| matches!(&e.body, Body::Exec(x) if x.comm == "sd-ffmpeg"))
            .count()
    };

    // Governed one by one, 200 ms apart (each one's scope made before the
    // next exec, as on a node where transcoders start seconds apart): the
    // latency figure. (Back to back, systemd's and dbus-daemon's work for
    // the last scope shares the two emulated vCPUs with the next staging
    // move: p50 11 - 22 ms, measured.)
    for _ in 0..GOVERNED {
        let _ = Command::new(&short).status();
        thread::sleep(Duration::from_millis(200));
    }
    wait_until("the governed execs reported", || {
        execs_of(&read_events(Path::new(EVENTS))) >= GOVERNED
    });
    let events = read_events(Path::new(EVENTS));
    let mut latencies: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Governed(g) => g.latency_us,
            _ => None,
        })
        .collect();
    latencies.sort_unstable();
    if let (Some(p50), Some(p99)) = (
        latencies.get(latencies.len() / 2),
        latencies.get(latencies.len() * 99 / 100),
    ) {
        say(&format!(
            "systemd VM, exec -> staging (latency_us) over {} governed 200 ms apart: p50 {p50} us, p99 {p99} us",
            latencies.len()
        ));
    }

    // The storm, from inside two jobs (one spawner per vCPU).
    let script = format!(
        "i=0; while [ $i -lt {} ]; do {}; i=$((i+1)); done",
        STORM / SPAWNERS,
        short.display()
    );
    let began = Instant::now();
    let spawners: Vec<Child> = (0..SPAWNERS)
        .map(|k| {
            Command::new(common::ffrtmp())
                .args(["run", "--job-id", &format!("sd-storm-{k}")])
                .args(["--events", "/dev/null", "--", "/bin/sh", "-c", &script])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut s in spawners {
        assert!(s.wait().unwrap().success());
    }
    let storm = began.elapsed();
    // Every exec reported, or counted lost: waited for, so a silent drop
    // fails here.
    let deadline = Instant::now() + RESTART_PATIENCE;
    let (seen, lost, lines) = loop {
        let events = read_events(Path::new(EVENTS));
        let seen = execs_of(&events) - GOVERNED;
        let lost = common::lost_count(&events);
        if seen as u64 + lost >= STORM as u64 || Instant::now() > deadline {
            break (seen, lost, events.len());
        }
        thread::sleep(Duration::from_millis(200));
    };
    say(&format!(
        "systemd VM exec storm: {STORM} execs in {storm:.1?}, {seen} in the events file ({lines} lines in all), {lost} counted lost"
    ));
    // A `lost` count covers exits too: every exec is seen or counted.
    assert!(
        seen as u64 + lost >= STORM as u64,
        "execs in the events file: {seen} of {STORM}, {lost} counted lost"
    );
    let journal = journal();
    assert!(
        !journal.lines().any(|l| l.starts_with("{\"event\"")),
        "events in the journal"
    );
}

/// The guide's worker agent unit (`User=ffrtmp`, `Delegate=yes`, with the
/// `KillMode=process` its troubleshooting section asks for) and a stand-in
/// agent that starts a job with `ffrtmp run`: on systemd 252 the agent sits
/// in the delegated cgroup itself, which kept every controller from being
/// enabled below it (EBUSY). The job lives inside the unit's delegated
/// subtree, in delegated mode, with its limit; kill -9 of the agent and of
/// the wrapper leaves the stream running there, limited. (systemd 252 then
/// cannot restart the agent while the job runs: see the end.)
#[test]
fn the_guides_worker_agent_runs_jobs_in_its_delegated_subtree() {
    if !systemd_host("the_guides_worker_agent_runs_jobs") {
        return;
    }
    let dir = readable_scratch("systemd-agent");
    let stream_bin = fake(&dir, "agent-ffmpeg", "/bin/sleep");
    let events = dir.join("events");
    fs::write(&events, "").unwrap();
    std::os::unix::fs::chown(&events, Some(ffrtmp_uid()), None).unwrap();
    let agent = dir.join("agent.sh");
    fs::write(
        &agent,
        format!(
            "#!/bin/sh\n# A stand-in for the guide's agent: one job per start.\n\
             ffrtmp run --job-id agent-job-$$ --cpu-max '30000 100000' --events {events} -- {bin} 600 &\n\
             exec sleep 600\n",
            events = events.display(),
            bin = stream_bin.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let unit = "ffrtmp-worker.service";
    let unit_file = format!("/run/systemd/system/{unit}");
    fs::write(
        &unit_file,
        format!(
            "[Unit]\nDescription=FFmpeg-RTMP Worker Agent with Wrapper (the guide's, with a stand-in agent)\n\
             [Service]\nType=simple\nUser=ffrtmp\nGroup=ffrtmp\nDelegate=yes\nKillMode=process\n\
             ExecStart={agent}\nRestart=always\nRestartSec=1\n",
            agent = agent.display()
        ),
    )
    .unwrap();
    systemctl(&["daemon-reload"]);
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("systemctl")
                .args(["kill", "--signal=SIGKILL", &self.0])
                .output();
            let _ = Command::new("systemctl").args(["stop", &self.0]).output();
            let _ = Command::new("pkill")
                .args(["-KILL", "agent-ffmpeg"])
                .output();
            let _ = fs::remove_file(format!("/run/systemd/system/{}", self.0));
            let _ = Command::new("systemctl").arg("daemon-reload").output();
        }
    }
    let _stop = Stop(unit.to_string());
    systemctl(&["start", unit]);
    let g = common::wait_for_event(&events, "the job's governed event", |e| {
        matches!(&e.body, Body::Governed(_))
    });
    let Body::Governed(g) = g.body else {
        unreachable!()
    };
    let subtree = format!("/system.slice/{unit}");
    let job = g.cgroup.clone().expect("a job cgroup");
    assert_eq!(g.mode, Mode::Delegated, "{g:?}");
    assert!(job.starts_with(&format!("{subtree}/ffrtmp/")), "{job}");
    assert_eq!(cpu_quota(&job), "30000");
    let stream = g.pid;
    assert_eq!(cgroup_of(stream), job);
    // The agent itself went to the supervisor leaf.
    let agent_pid: u32 = show_unit(unit, "MainPID").parse().unwrap();
    assert_eq!(cgroup_of(agent_pid), format!("{subtree}/supervisor"));

    // kill -9 of the wrapper, then of the agent: the stream runs on, in
    // its job, with its limit.
    let wrapper = fs::read_to_string(format!("/proc/{stream}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u32>()
        .unwrap();
    common::signal(wrapper, nix::sys::signal::Signal::SIGKILL);
    common::signal(agent_pid, nix::sys::signal::Signal::SIGKILL);
    wait_until("the agent's unit stopped", || {
        show_unit(unit, "MainPID") != agent_pid.to_string()
    });
    // Past systemd's restart attempts (RestartSec=1, five in a burst).
    thread::sleep(Duration::from_secs(8));
    assert!(pid_alive(stream), "the stream died with its agent");
    assert_eq!(cgroup_of(stream), job);
    assert_eq!(cpu_quota(&job), "30000");
    // systemd 252 cannot restart the agent while the job runs: it puts a
    // service's main process in the unit's own cgroup, whose
    // subtree_control now has the jobs' controllers (no internal
    // processes: 219/CGROUP, five times, then `failed`). Measured, said in
    // docs/OPERATIONS.md; DelegateSubgroup= (254) or jobs outside the
    // agent's unit (scopes, issue 14) lift it. Said here, not asserted.
    let log = Command::new("journalctl")
        .args(["--no-pager", "-b", "-u", unit, "-o", "cat"])
        .output()
        .unwrap();
    say(&format!(
        "the agent's unit after kill -9 with a job running: {} ({}); 219/CGROUP in its journal: {}",
        show_unit(unit, "ActiveState"),
        show_unit(unit, "Result"),
        String::from_utf8_lossy(&log.stdout).contains("219/CGROUP")
    ));
}

/// Runs `command` as user `uid` in a transient unit of their user manager
/// (`systemd-run --user --wait --pipe`, with `properties`).
fn in_user_manager(uid: &str, properties: &[&str], command: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "env",
            &format!("XDG_RUNTIME_DIR=/run/user/{uid}"),
            "systemd-run",
            "--user",
            "--wait",
            "--pipe",
            "--quiet",
        ])
        .args(properties)
        .args(command)
        .output()
        .unwrap()
}

fn show_unit(unit: &str, property: &str) -> String {
    let out = systemctl(&["show", "-p", property, "--value", unit]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ffrtmp_uid() -> u32 {
    let out = Command::new("id").args(["-u", "ffrtmp"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The guide's scenarios on a systemd host, as the guide writes them:
/// - `user@.service.d/delegate.conf` and, as a lingering unprivileged user
///   in their user manager, `ffrtmp run --job-id test-001 -- echo "Wrapper
///   works!"`: it works, and ffrtmp writes nothing in the user manager's
///   own tree (it found `user@UID.service` writable and made
///   `user@UID.service/ffrtmp` there before); from a `Delegate=yes` unit
///   of that user manager, the job is in delegated mode inside that unit,
///   its quota in force;
/// - Scenario 2: `attach` of an ffmpeg another unit started (no restart),
///   with the guide's limits; stopping that unit still stops it;
/// - the standalone wrapper unit starts and holds its delegation.
#[test]
fn the_guides_systemd_scenarios() {
    if !systemd_host("the_guides_systemd_scenarios") {
        return;
    }
    let dir = readable_scratch("systemd-guide");

    // Delegation for user managers, verbatim; a lingering user.
    let conf = Path::new("/etc/systemd/system/user@.service.d/delegate.conf");
    fs::create_dir_all(conf.parent().unwrap()).unwrap();
    fs::write(conf, "[Service]\nDelegate=yes\n").unwrap();
    systemctl(&["daemon-reload"]);
    let uid = std::env::var("FFRTMP_DELEGATED_UID").unwrap_or_else(|_| "1000".into());
    let linger = Command::new("loginctl")
        .args(["enable-linger", &uid])
        .output()
        .unwrap();
    assert!(linger.status.success(), "{linger:?}");
    let manager = format!("user@{uid}.service");
    // Lingering starts it; starting it here waits until it is up.
    let started = Command::new("systemctl")
        .args(["start", &manager])
        .output()
        .unwrap();
    if !started.status.success() {
        let status = Command::new("systemctl")
            .args(["status", "--no-pager", "-l", &manager])
            .output()
            .unwrap();
        let log = Command::new("journalctl")
            .args(["--no-pager", "-b", "-u", &manager, "-u", "systemd-logind"])
            .output()
            .unwrap();
        panic!(
            "the user's manager did not start: {started:?}\n{}\n{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&log.stdout)
        );
    }
    let out = in_user_manager(
        &uid,
        &[],
        &[
            "ffrtmp",
            "run",
            "--job-id",
            "test-001",
            "--",
            "echo",
            "Wrapper works!",
        ],
    );
    say(&format!(
        "guide scenario 1 in the user manager: {}",
        String::from_utf8_lossy(&out.stderr)
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Wrapper works!"
    );
    let manager_dir = format!("/sys/fs/cgroup/user.slice/user-{uid}.slice/{manager}");
    assert!(
        !Path::new(&format!("{manager_dir}/ffrtmp")).exists(),
        "ffrtmp wrote into the user manager's own tree"
    );
    // With Delegate=yes on the user's unit: delegated mode there (the user
    // manager sets no xattr; its `Delegate` property, on the user's bus,
    // says so), the quota in force; never above it.
    let out = in_user_manager(
        &uid,
        &["-p", "Delegate=yes"],
        &[
            "ffrtmp",
            "run",
            "--job-id",
            "test-002",
            "--cpu-max",
            "30000 100000",
            "--",
            "/bin/sh",
            "-c",
            "cat /proc/self/cgroup; cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cpu.max",
        ],
    );
    say(&format!(
        "guide scenario 1 in a Delegate=yes user unit: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    assert!(out.status.success(), "{out:?}");
    let inside = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !Path::new(&format!("{manager_dir}/ffrtmp")).exists(),
        "ffrtmp wrote into the user manager's own tree"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"mode\":\"delegated\""),
        "{out:?}"
    );
    assert!(
        inside.contains(&format!("{manager}/app.slice/run-"))
            && inside.contains("/ffrtmp/test-002\n"),
        "{inside}"
    );
    assert!(inside.contains("30000 100000"), "{inside}");
    let _ = Command::new("loginctl")
        .args(["disable-linger", &uid])
        .output();
    let _ = fs::remove_file(conf);
    systemctl(&["daemon-reload"]);

    // Scenario 2: a stream another unit started, attached without restart.
    let ffmpeg = fake(&dir, "legacy-ffmpeg", "/bin/sleep");
    let _ = Command::new("systemctl")
        .args(["stop", "legacy-stream.service"])
        .output();
    let run = Command::new("systemd-run")
        .args(["--quiet", "--unit=legacy-stream.service"])
        .arg(&ffmpeg)
        .arg("600")
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let pid: u32 = show_unit("legacy-stream.service", "MainPID")
        .parse()
        .unwrap();
    assert_ne!(pid, 0);
    let attach = Command::new("ffrtmp")
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--job-id",
            "existing-stream-001",
        ])
        .args(["--cpu-weight", "150", "--memory-max"])
        .arg((4u64 << 30).to_string())
        .arg("--detach")
        .output()
        .unwrap();
    assert!(attach.status.success(), "{attach:?}");
    assert!(pid_alive(pid), "the stream stopped when attached");
    let job = cgroup_of(pid);
    assert_eq!(job, "/system.slice/ffrtmp-existing-stream-001.scope");
    let weight = fs::read_to_string(format!("/sys/fs/cgroup{job}/cpu.weight")).unwrap();
    assert_eq!(weight.trim(), "150");
    let scope = scope_unit(&job);
    assert_eq!(show_unit(&scope, "BindsTo"), "legacy-stream.service");
    assert_eq!(show_unit(&scope, "MemoryMax"), (4u64 << 30).to_string());
    // systemd still stops the unit's main process with the unit.
    systemctl(&["stop", "legacy-stream.service"]);
    wait_until("the stream stopped with its unit", || !pid_alive(pid));

    // The standalone wrapper unit.
    systemctl(&["start", "ffrtmp-wrapper.service"]);
    assert_eq!(show_unit("ffrtmp-wrapper.service", "ActiveState"), "active");
    assert_eq!(show_unit("ffrtmp-wrapper.service", "Delegate"), "yes");
    systemctl(&["stop", "ffrtmp-wrapper.service"]);
}
