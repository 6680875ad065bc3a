//! `ffrtmp run` against the real kernel: the workload really is in its
//! cgroup, the limits really hold, the exit status is the workload's, and the
//! workload outlives the wrapper. Runs on the v1 hybrid host, on pure v2 in
//! the VMs, and on systemd, where the job is a scope holding the wrapper
//! and its workload (`common::root_job_cgroup`).
mod common;

use ffrtmp::events::{Fallback, Mode};

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{ffrtmp, is_helper, read_events, require_root, scratch, skip};
use ffrtmp::events::{Body, Event};
use ffrtmp::limits::{LimitName, Size};

/// `ffrtmp run ARGS` with events to a file; returns the output and events.
fn run(events: &Path, args: &[&str]) -> (Output, Vec<Event>) {
    let out = Command::new(ffrtmp())
        .arg("run")
        .arg("--events")
        .arg(events)
        .args(args)
        .output()
        .expect("running ffrtmp run");
    (out, read_events(events))
}

fn governed(events: &[Event]) -> &ffrtmp::events::Governed {
    events
        .iter()
        .find_map(|e| match &e.body {
            Body::Governed(g) => Some(g),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no governed event in {events:?}"))
}

fn job_exit(events: &[Event]) -> &ffrtmp::events::Exit {
    events
        .iter()
        .find_map(|e| match &e.body {
            Body::Exit(x) if x.job.is_some() => Some(x),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no job exit event in {events:?}"))
}

/// The cgroup directories of a job, one per hierarchy that has it, found
/// from /proc/PID/cgroup of a process inside it.
fn cgroup_dirs_of(pid: u32) -> Vec<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let base = match controllers {
            "" => PathBuf::from("/sys/fs/cgroup"),
            c if ["cpu", "memory", "pids", "blkio", "cpuacct"].contains(&c) => {
                Path::new("/sys/fs/cgroup").join(c)
            }
            _ => continue,
        };
        if common::in_a_root_job(path) {
            dirs.push(base.join(path.trim_start_matches('/')));
        }
    }
    dirs
}

fn pure_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Helper: spin for 2 s of wall time, then exit 0.
#[test]
fn helper_spin_two_seconds() {
    if !is_helper("spin") {
        return;
    }
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Helper: rest for 0.3 s (a job with a burst allowance saves up unused
/// quota meanwhile), spin for 0.5 s, then write its cgroup's `nr_bursts`
/// (periods in which it ran above its quota; `none` on a kernel without
/// burst) to `$FFRTMP_TEST_OUT`.
#[test]
fn helper_rest_then_spin() {
    if !is_helper("rest-then-spin") {
        return;
    }
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(500) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let own = cgroup_dirs_of(std::process::id());
    let stat = own
        .iter()
        .find_map(|d| fs::read_to_string(d.join("cpu.stat")).ok())
        .expect("the job's cpu.stat");
    // A kernel without CFS burst (before 5.14) has no nr_bursts.
    let bursts = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_bursts "))
        .unwrap_or("none");
    fs::write(std::env::var("FFRTMP_TEST_OUT").unwrap(), bursts.trim()).unwrap();
}

/// Helper: once `$FFRTMP_TEST_GO` holds a deadline, spin until it, then
/// write the CPU time it got (µs) and the CPUs it was allowed to
/// `$FFRTMP_TEST_OUT`.
#[test]
fn helper_spin_on_cpu0() {
    if !is_helper("spin-cpu0") {
        return;
    }
    // The go file holds the end of the run (CLOCK_MONOTONIC, ns): one
    // deadline for both spinners. Each timing itself from when it first
    // ran let a starved batch spinner start its 2 s after the live one had
    // ended and get a whole CPU then (live 49.8-50.5 % in the 6.1 VM).
    let go = PathBuf::from(std::env::var_os("FFRTMP_TEST_GO").unwrap());
    let deadline: u64 = loop {
        if let Some(ns) = fs::read_to_string(&go)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break ns;
        }
        thread::sleep(Duration::from_millis(5));
    };
    // The CPUs it may run on: its cgroup's cpuset (common::OneCpu).
    let me = nix::unistd::Pid::from_raw(0);
    let allowed = nix::sched::sched_getaffinity(me).unwrap();
    let cpus: Vec<String> = (0..nix::sched::CpuSet::count())
        .filter(|&i| allowed.is_set(i).unwrap_or(false))
        .map(|i| i.to_string())
        .collect();
    let mut x = 0u64;
    while monotonic_ns() < deadline {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    let cpu = us(usage.user_time()) + us(usage.system_time());
    fs::write(
        std::env::var("FFRTMP_TEST_OUT").unwrap(),
        format!("{cpu} {}", cpus.join(",")),
    )
    .unwrap();
}

/// CLOCK_MONOTONIC in ns: one clock for the test and its helpers.
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Helper: allocate and touch 256 MiB.
#[test]
fn helper_allocate() {
    if !is_helper("allocate") {
        return;
    }
    println!("{}", common::allocate_mib(256));
}

#[test]
fn the_workload_runs_inside_its_cgroup_from_its_first_instruction() {
    if !require_root("the_workload_runs_inside_its_cgroup_from_its_first_instruction") {
        return;
    }
    let dir = scratch("placement");
    let job = format!("placement-{}", std::process::id());
    // The workload's first act is to print its own cgroups: the join
    // happened before exec, not after.
    let (out, events) = run(
        &dir.join("events"),
        &["--job-id", &job, "--", "/bin/cat", "/proc/self/cgroup"],
    );
    assert!(out.status.success(), "{out:?}");
    let cgroups = String::from_utf8_lossy(&out.stdout);
    let cgroup = common::root_job_cgroup(&job);
    if pure_v2() {
        assert!(cgroups.contains(&format!("0::{cgroup}\n")), "{cgroups}");
    } else {
        // v1: the hierarchies whose statistics feed the exit report, and
        // none that no limit asked for (each costs a mkdir and a migration).
        for c in ["cpuacct", "memory"] {
            assert!(
                cgroups.contains(&format!(":{c}:/ffrtmp/{job}")),
                "{c}: {cgroups}"
            );
        }
        for c in ["cpu", "pids", "blkio"] {
            assert!(
                !cgroups.contains(&format!(":{c}:/ffrtmp/")),
                "{c} joined without a limit: {cgroups}"
            );
        }
    }
    let g = governed(&events);
    assert_eq!(g.job_id, job);
    assert_eq!(g.mode, Mode::Privileged);
    assert_eq!(g.cgroup.as_deref(), Some(cgroup.as_str()));
    // The empty job cgroup is removed when the job ends (by systemd, a
    // moment after, for a scope).
    let x = job_exit(&events);
    assert_eq!(x.exit_code, Some(0));
    assert!(common::root_job_removed(&job), "{cgroup} left behind");
    for base in ["/sys/fs/cgroup/cpu/ffrtmp", "/sys/fs/cgroup/memory/ffrtmp"] {
        assert!(
            !Path::new(base).join(&job).exists(),
            "{base}/{job} left behind"
        );
    }
}

#[test]
fn cpu_max_gives_a_busy_loop_its_quota() {
    if !require_root("cpu_max_gives_a_busy_loop_its_quota") {
        return;
    }
    let dir = scratch("cpu");
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(ffrtmp());
    cmd.args(["run", "--cpu-max", "20000 100000", "--events"])
        .arg(dir.join("events"))
        .arg("--")
        .arg(exe)
        .args(["--exact", "helper_spin_two_seconds", "--test-threads=1"])
        .env(common::HELPER_ENV, "spin")
        .stdout(Stdio::null());
    let status = cmd.status().unwrap();
    assert!(status.success(), "{status}");
    let events = read_events(&dir.join("events"));
    assert_eq!(
        governed(&events).limits.cpu_max.unwrap().to_string(),
        "20000 100000"
    );
    let x = job_exit(&events);
    let job = x.job.as_ref().unwrap();
    let share = job.cpu_usage_us.unwrap() as f64 / x.duration_us.unwrap() as f64;
    eprintln!("cpu.max 20000 100000: {:.1} % of a CPU", share * 100.0);
    assert!(
        (0.15..=0.25).contains(&share),
        "{:.1} % of a CPU",
        share * 100.0
    );
}

/// Whether this kernel has CFS burst (`cpu.max.burst`, `cpu.cfs_burst_us`:
/// Linux 5.14).
fn kernel_has_cpu_burst() -> bool {
    let release = nix::sys::utsname::uname().unwrap();
    let release = release.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (5, 14)
}

/// A job's burst allowance, end to end: asked with `--cpu-max-burst`,
/// written to `cpu.max.burst` (v2) or `cpu.cfs_burst_us` (v1), read back
/// into `governed`, and really spent — the job that rested runs above its
/// quota for a period (`nr_bursts`), while the same job without a burst
/// never does. On a kernel without it (5.10), `degraded` says so and the
/// quota still holds.
#[test]
fn cpu_max_burst_lets_a_rested_job_spend_saved_quota() {
    if !require_root("cpu_max_burst_lets_a_rested_job_spend_saved_quota") {
        return;
    }
    let dir = scratch("burst");
    let exe = std::env::current_exe().unwrap();
    let bursts = |extra: &[&str], name: &str| {
        let out = dir.join(format!("{name}.out"));
        let events = dir.join(format!("{name}.events"));
        let status = Command::new(ffrtmp())
            .args(["run", "--cpu-max", "20000 100000", "--events"])
            .arg(&events)
            .args(extra)
            .arg("--")
            .arg(&exe)
            .args(["--exact", "helper_rest_then_spin", "--test-threads=1"])
            .env(common::HELPER_ENV, "rest-then-spin")
            .env("FFRTMP_TEST_OUT", &out)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{status}");
        let n: Option<u64> = fs::read_to_string(&out).unwrap().parse().ok();
        (n, read_events(&events))
    };
    let (without, _) = bursts(&[], "without");
    let (with, events) = bursts(&["--cpu-max-burst", "20000"], "with");
    let g = governed(&events);
    assert_eq!(g.limits.cpu_max.unwrap().to_string(), "20000 100000");
    let refusal = || {
        events
            .iter()
            .find_map(|e| match &e.body {
                Body::Degraded(d) if d.limit == Some(LimitName::CpuMaxBurst) => Some(d),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no degraded cpu_max_burst in {events:?}"))
    };
    if common::systemd_host() {
        // A scope's limits are its unit properties, and systemd has none
        // for the burst: refused, said, and the quota still holds.
        let d = refusal();
        assert!(d.reason.contains("systemd"), "{d:?}");
        assert_eq!(
            d.fallback,
            Fallback::None,
            "a refused burst must not lower nice"
        );
        assert!(g.limits.cpu_max_burst.is_none());
        assert_eq!(with, Some(0), "no burst allowance, yet it burst");
        eprintln!("systemd has no property for the burst: its refusal was checked");
    } else if kernel_has_cpu_burst() {
        assert_eq!(g.limits.cpu_max_burst, Some(20000), "{events:?}");
        let (with, without) = (with.unwrap(), without.unwrap());
        eprintln!("nr_bursts: {with} with a 20 ms burst, {without} without");
        assert_eq!(without, 0, "no burst allowance, yet it burst");
        assert!(with >= 1, "the rested job never spent its saved quota");
        // `status`, run inside such a job, shows the allowance in force.
        let status = Command::new(ffrtmp())
            .args([
                "run",
                "--cpu-max",
                "20000 100000",
                "--cpu-max-burst",
                "20000",
            ])
            .args(["--events", "/dev/null", "--", ffrtmp(), "status"])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let shown = status["jobs"].as_array().unwrap().iter().any(|j| {
            ["cpu.max.burst", "cpu.cfs_burst_us"]
                .iter()
                .any(|f| j["limits"][f] == "20000")
        });
        assert!(shown, "status does not show the burst: {status:#}");
    } else {
        let d = refusal();
        assert!(d.reason.contains("this kernel has no"), "{d:?}");
        assert_eq!(
            d.fallback,
            Fallback::None,
            "a refused burst must not lower nice"
        );
        assert!(g.limits.cpu_max_burst.is_none());
        eprintln!("this kernel predates CFS burst (5.14): its refusal was checked");
    }
}

/// Tiers, end to end: a `--tier live` and a `--tier batch` busy loop on
/// the same CPU. The live one's weight (1000) and the batch one's
/// `cpu.idle` are read back into `governed` with the tier, `status` shows
/// each job's tier while they run, and the live job really gets the CPU.
/// A kernel without `cpu.idle` (before 5.15) says `degraded` and runs the
/// batch job at nice 10, and the weight alone still favours live. Both
/// jobs are confined to CPU 0 by a cpuset (`common::OneCpu`), so they
/// contend for certain, on the host and in every VM.
#[test]
fn a_live_job_takes_the_cpu_from_a_batch_job() {
    if !require_root("a_live_job_takes_the_cpu_from_a_batch_job") {
        return;
    }
    let dir = scratch("tiers");
    let cpu0 = common::OneCpu::new("tiers");
    let start = |tier: &str| {
        let events = dir.join(format!("{tier}.events"));
        let child = cpu0
            .ffrtmp("run")
            .args(["--tier", tier, "--events"])
            .arg(&events)
            .arg("--")
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "helper_spin_on_cpu0", "--test-threads=1"])
            .env(common::HELPER_ENV, "spin-cpu0")
            .env("FFRTMP_TEST_GO", dir.join("go"))
            .env("FFRTMP_TEST_OUT", dir.join(format!("{tier}.cpu")))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        (child, events)
    };
    let (mut batch, batch_events) = start("batch");
    let (mut live, live_events) = start("live");
    for events in [&batch_events, &live_events] {
        common::wait_for_event(events, "governed", |e| matches!(e.body, Body::Governed(_)));
    }
    // Both spin until one deadline, 4 s from now: neither has the CPU to
    // itself first or after. Written whole, then renamed into place. 4 s,
    // not 2: under TCG the batch spinner gets a roughly fixed 0.1–0.2 s
    // whatever the window (live 91.6–93.8 % over 2 s in the 6.1 VM,
    // 96.2–97.3 % over 4 s), too close to the 90 % asserted below.
    let deadline = monotonic_ns() + 4_000_000_000;
    fs::write(dir.join("go.new"), deadline.to_string()).unwrap();
    fs::rename(dir.join("go.new"), dir.join("go")).unwrap();
    let status = cpu0.ffrtmp("status").output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(batch.wait().unwrap().success() && live.wait().unwrap().success());
    let (batch_events, live_events) = (read_events(&batch_events), read_events(&live_events));
    let (b, l) = (governed(&batch_events), governed(&live_events));
    assert_eq!(b.tier, Some(ffrtmp::limits::Tier::Batch));
    assert_eq!(l.tier, Some(ffrtmp::limits::Tier::Live));
    assert_eq!(l.limits.cpu_weight, Some(1000), "{l:?}");
    // Idle against weight 1000: measured 99.6 % here. Weight 1000 against
    // 100 (no cpu.idle): 91 % at most.
    let mut least = 0.9;
    if b.limits.cpu_idle.is_some() {
        assert_eq!(b.limits.cpu_idle, Some(1), "{b:?}");
    } else {
        least = 0.8;
        let d = batch_events
            .iter()
            .find_map(|e| match &e.body {
                Body::Degraded(d) if d.limit == Some(LimitName::CpuIdle) => Some(d),
                _ => None,
            })
            .unwrap_or_else(|| panic!("cpu_idle neither in force nor degraded: {batch_events:?}"));
        assert_eq!(d.fallback, Fallback::Nice10, "{d:?}");
        eprintln!("no cpu.idle here: {}", d.reason);
    }
    // Both spin on one CPU: status's capacity sees live using it, and
    // asking more than batch gets.
    let tiers = &status["capacity"]["tiers"];
    eprintln!("status capacity: {:#}", status["capacity"]);
    {
        assert!(tiers["live"]["jobs"].as_u64() >= Some(1), "{tiers:#}");
        assert!(
            tiers["live"]["usage_cpus"].as_f64() > Some(0.5),
            "{tiers:#}"
        );
        assert!(tiers["batch"]["jobs"].as_u64() >= Some(1), "{tiers:#}");
        for (job, tier) in [(&b.job_id, "batch"), (&l.job_id, "live")] {
            let shown = common::status_job(&status, "job_id", job);
            assert_eq!(shown["tier"], tier, "{shown:#}");
            assert_eq!(shown["made_by"], "run", "{shown:#}");
        }
    }
    // The workloads' own CPU: a job's cgroup also holds its wrapper on a
    // systemd host (its scope), whose start-up costs ~0.2 s of CPU under
    // TCG. Each wrote its CPU time and the CPUs it was allowed: CPU 0
    // alone, or the comparison proves nothing.
    let used = |tier: &str| -> u64 {
        let text = fs::read_to_string(dir.join(format!("{tier}.cpu"))).unwrap();
        let (cpu, allowed) = text.split_once(' ').unwrap();
        assert_eq!(allowed, "0", "the {tier} job was not confined to CPU 0");
        cpu.parse().unwrap()
    };
    let (b_us, l_us) = (used("batch"), used("live"));
    let share = l_us as f64 / (l_us + b_us) as f64;
    eprintln!(
        "one CPU: live {l_us} us, batch {b_us} us: live's share {:.1} %",
        share * 100.0
    );
    assert!(share >= least, "live got {:.1} % of the CPU", share * 100.0);
}

#[test]
fn memory_max_oom_kills_and_the_report_says_so() {
    if !require_root("memory_max_oom_kills_and_the_report_says_so") {
        return;
    }
    let dir = scratch("oom");
    let exe = std::env::current_exe().unwrap();
    let status = Command::new(ffrtmp())
        .args(["run", "--memory-max", "32M", "--events"])
        .arg(dir.join("events"))
        .arg("--")
        .arg(exe)
        .args(["--exact", "helper_allocate", "--test-threads=1"])
        .env(common::HELPER_ENV, "allocate")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(128 + 9), "{status}");
    let events = read_events(&dir.join("events"));
    assert_eq!(
        governed(&events).limits.memory_max,
        Some(Size::Bytes(32u64 << 20))
    );
    let x = job_exit(&events);
    assert_eq!((x.exit_code, x.signal), (None, Some(9)));
    let job = x.job.as_ref().unwrap();
    assert_eq!(job.oom_killed, Some(true));
    assert!(
        job.memory_peak_bytes.is_none_or(|p| p <= 33 << 20),
        "{job:?}"
    );
}

#[test]
fn the_exit_status_is_the_workloads() {
    if !require_root("the_exit_status_is_the_workloads") {
        return;
    }
    let dir = scratch("status");
    let not_executable = dir.join("not-executable");
    fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).unwrap();
    let ne = not_executable.to_str().unwrap();
    for (args, code) in [
        (&["/bin/true"][..], 0),
        (&["/bin/false"], 1),
        (&["/bin/sh", "-c", "exit 42"], 42),
        (&["/bin/sh", "-c", "kill -9 $$"], 128 + 9),
        (&["/nonexistent/program"], 127),
        (&[ne], 126),
    ] {
        let events = dir.join(format!("events-{code}"));
        let mut all = vec!["--"];
        all.extend_from_slice(args);
        let (out, _) = run(&events, &all);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
    }
}

/// Starts `ffrtmp run -- sleep 30`; returns the wrapper and the workload pid.
// The wrapper is returned to the caller, which waits for it.
#[allow(clippy::zombie_processes)]
fn start_sleeper(dir: &Path, job: &str) -> (Child, u32) {
    let events = dir.join(format!("events-{job}"));
    let wrapper = Command::new(ffrtmp())
        .args([
            "run",
            "--job-id",
            job,
            "--cpu-max",
            "50000 100000",
            "--events",
        ])
        .arg(&events)
        .args(["--", "/bin/sleep", "30"])
        .spawn()
        .unwrap();
    // Reaped by the caller; an events file that never says `governed`
    // fails the test in `governed_pid`.
    let pid = common::governed_pid(&events);
    (wrapper, pid)
}

fn alive(pid: u32) -> bool {
    common::pid_alive(pid)
}

fn kill(pid: u32, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).expect("a signal number");
    common::signal(pid, sig);
}

#[test]
fn the_workload_survives_kill_9_of_the_wrapper_and_stays_limited() {
    if !require_root("the_workload_survives_kill_9_of_the_wrapper") {
        return;
    }
    let dir = scratch("kill9");
    for trial in 0..10 {
        let job = format!("kill9-{}-{trial}", std::process::id());
        let (mut wrapper, pid) = start_sleeper(&dir, &job);
        let dirs = cgroup_dirs_of(pid);
        assert!(!dirs.is_empty(), "trial {trial}: not in an ffrtmp cgroup");
        wrapper.kill().unwrap();
        assert_eq!(wrapper.wait().unwrap().signal(), Some(9));
        thread::sleep(Duration::from_millis(50));
        assert!(
            alive(pid),
            "trial {trial}: the workload died with the wrapper"
        );
        assert_eq!(
            cgroup_dirs_of(pid),
            dirs,
            "trial {trial}: the workload left its cgroup"
        );
        kill(pid, libc::SIGKILL);
    }
}

#[test]
fn sigterm_sigint_and_sighup_detach_and_leave_the_workload_running() {
    if !require_root("sigterm_sigint_and_sighup_detach") {
        return;
    }
    let dir = scratch("detach");
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let job = format!("detach-{}-{name}", std::process::id());
        let (mut wrapper, pid) = start_sleeper(&dir, &job);
        kill(wrapper.id(), sig);
        assert!(
            wrapper.wait().unwrap().success(),
            "{name}: the wrapper exits 0 after detaching"
        );
        assert!(alive(pid), "{name}: the workload died");
        let events = read_events(&dir.join(format!("events-{job}")));
        assert!(
            events
                .iter()
                .any(|e| matches!(&e.body, Body::Detached(d) if d.pid == pid && d.reason == name)),
            "{name}: {events:?}"
        );
        let dirs = cgroup_dirs_of(pid);
        assert!(!dirs.is_empty(), "{name}: the workload left its cgroup");
        kill(pid, libc::SIGKILL);
        // Its parent is gone; wait until init reaps it.
        let deadline = Instant::now() + common::PATIENCE;
        while fs::metadata(format!("/proc/{pid}")).is_ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        // The next run reaps the empty leftover; one under the same job id
        // too (the leftover no longer holds the id).
        let next: &[&str] = if sig == libc::SIGHUP {
            &["--job-id", &job, "--", "/bin/true"]
        } else {
            &["--", "/bin/true"]
        };
        let (out, _) = run(&dir.join("events-next"), next);
        assert!(out.status.success(), "{name}: {out:?}");
        // (A scope is systemd's to remove, a moment after it emptied.)
        let deadline = Instant::now() + common::PATIENCE;
        for d in dirs {
            while d.exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            assert!(!d.exists(), "{name}: {} was not reaped", d.display());
        }
    }
}

#[test]
fn forward_signals_passes_sigterm_to_the_workload() {
    if !require_root("forward_signals_passes_sigterm_to_the_workload") {
        return;
    }
    let dir = scratch("forward");
    let (mut wrapper, events, _) = forwarding_sleeper(&dir);
    kill(wrapper.id(), libc::SIGTERM);
    let status = wrapper.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
    assert_eq!(job_exit(&read_events(&events)).signal, Some(libc::SIGTERM));
}

/// `run --forward-signals -- sleep 30`, once governed: the wrapper, its
/// events file and the workload's pid.
#[allow(
    clippy::zombie_processes,
    reason = "the wrapper is returned; its callers wait for it"
)]
fn forwarding_sleeper(dir: &Path) -> (std::process::Child, PathBuf, u32) {
    let events = dir.join("events");
    let mut wrapper = Command::new(ffrtmp())
        .args(["run", "--forward-signals", "--events"])
        .arg(&events)
        .args(["--", "/bin/sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        if let Some(pid) = read_events(&events).iter().find_map(|e| match &e.body {
            Body::Governed(g) => Some(g.pid),
            _ => None,
        }) {
            return (wrapper, events, pid);
        }
        if Instant::now() > deadline {
            let _ = wrapper.kill();
            let _ = wrapper.wait();
            panic!("the workload was not governed");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGUSR1 detaches even a `--forward-signals` wrapper (package removal
/// sends it, docs/PACKAGE.md): the stream is never signalled.
#[test]
fn sigusr1_detaches_even_when_signals_are_forwarded() {
    if !require_root("sigusr1_detaches_even_when_signals_are_forwarded") {
        return;
    }
    let dir = scratch("usr1");
    let (mut wrapper, events, pid) = forwarding_sleeper(&dir);
    kill(wrapper.id(), libc::SIGUSR1);
    assert!(wrapper.wait().unwrap().success());
    assert!(alive(pid), "SIGUSR1 reached the workload");
    assert!(!cgroup_dirs_of(pid).is_empty(), "the workload left its job");
    assert!(
        read_events(&events)
            .iter()
            .any(|e| matches!(&e.body, Body::Detached(d) if d.pid == pid && d.reason == "SIGUSR1"))
    );
    kill(pid, libc::SIGKILL);
}

/// Everything under the cgroup mounts, two levels deep: what a hostile job
/// id could create or change.
fn cgroup_tree() -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(p.display().to_string());
                if depth < 2 {
                    stack.push((p, depth + 1));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_job_ids_exit_2_and_touch_nothing() {
    if !require_root("hostile_job_ids_exit_2_and_touch_nothing") {
        return;
    }
    let dir = scratch("hostile");
    let marker = dir.join("started");
    let long = "x".repeat(65);
    let before = cgroup_tree();
    for id in [
        "../x", "/abs", "", &long, "a\nb", ".", "..", ".staging", "a/b", "x y",
    ] {
        let out = Command::new(ffrtmp())
            .args([
                "run",
                "--job-id",
                id,
                "--cpu-max",
                "20000 100000",
                "--",
                "/bin/touch",
            ])
            .arg(&marker)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{id:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("job"),
            "{id:?}: no clear message"
        );
        assert!(!marker.exists(), "{id:?}: the workload was started");
    }
    // A NUL cannot pass through argv; it is refused by the parser (unit test).
    assert_eq!(
        cgroup_tree(),
        before,
        "a hostile job id changed the cgroup tree"
    );
    for escaped in [
        "/sys/fs/cgroup/x",
        "/sys/fs/cgroup/cpu/x",
        "/sys/fs/cgroup/memory/x",
        "/abs",
    ] {
        assert!(!Path::new(escaped).exists(), "{escaped} was created");
    }
}

#[test]
fn bad_limits_exit_2_before_anything_is_created() {
    if !require_root("bad_limits_exit_2_before_anything_is_created") {
        return;
    }
    let before = cgroup_tree();
    for args in [
        &["--cpu-max", "lots"][..],
        &["--cpu-max", "100 100000"],
        &["--cpu-weight", "0"],
        &["--memory-max", "4GB"],
        &["--memory-high", "-1"],
        &["--io-max", "8:0"],
        &["--io-max", "8:0 rbps=fast"],
        &["--pids-max", "0"],
        &["--nice", "20"],
        &["--oom-score-adj", "-1001"],
        &["--cgroup-root", "relative/path"],
        &["--cgroup-root", "/a/../b"],
    ] {
        let out = Command::new(ffrtmp())
            .arg("run")
            .args(args)
            .args(["--", "/bin/true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
    let out = Command::new(ffrtmp()).args(["run", "--"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a missing command is bad usage");
    assert_eq!(cgroup_tree(), before);
}

#[test]
fn the_deployment_guides_forms_work_verbatim() {
    if !require_root("the_deployment_guides_forms_work_verbatim") {
        return;
    }
    let dir = scratch("seed");
    let four_gib = (4u64 * 1024 * 1024 * 1024).to_string();
    let (out, events) = run(
        &dir.join("events"),
        &[
            "--job-id",
            &format!("seed-{}", std::process::id()),
            "--cpu-max",
            "100000 100000",
            "--cpu-weight",
            "150",
            "--memory-max",
            &four_gib,
            "--io-max",
            "8:0 rbps=104857600 wbps=104857600",
            "--",
            "/bin/true",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let g = governed(&events);
    assert_eq!(g.limits.cpu_max.unwrap().to_string(), "100000 100000");
    assert_eq!(g.limits.cpu_weight, Some(150));
    assert_eq!(g.limits.memory_max, Some(Size::Bytes(4u64 << 30)));
    // 8:0 is not a block device on every machine: applied or degraded,
    // never silently dropped.
    let io_degraded = events
        .iter()
        .any(|e| matches!(&e.body, Body::Degraded(d) if d.limit == Some(LimitName::IoMax)));
    assert!(g.limits.io_max.is_some() != io_degraded, "{events:?}");
}

#[test]
fn a_limit_the_kernel_refuses_is_degraded_or_with_strict_refused() {
    if !require_root("a_limit_the_kernel_refuses_is_degraded_or_with_strict_refused") {
        return;
    }
    let dir = scratch("strict");
    let marker = dir.join("started");
    // No such block device: the kernel refuses the io limit.
    let bogus = "250:250 rbps=1048576";
    let out = Command::new(ffrtmp())
        .args(["run", "--strict", "--io-max", bogus, "--events"])
        .arg(dir.join("events-strict"))
        .args(["--", "/bin/touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("io_max"),
        "{out:?}"
    );
    assert!(!marker.exists(), "--strict started the workload");

    let (out, events) = run(
        &dir.join("events"),
        &[
            "--io-max",
            bogus,
            "--",
            "/bin/touch",
            marker.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(marker.exists(), "without --strict the workload runs");
    let d = events
        .iter()
        .find_map(|e| match &e.body {
            Body::Degraded(d) => Some(d),
            _ => None,
        })
        .expect("a degraded event");
    assert_eq!(d.limit, Some(LimitName::IoMax));
    assert!(
        governed(&events).limits.io_max.is_none(),
        "a refused limit is not reported as applied"
    );
}

#[test]
fn a_job_id_in_use_is_refused() {
    if !require_root("a_job_id_in_use_is_refused") {
        return;
    }
    let dir = scratch("inuse");
    let job = format!("inuse-{}", std::process::id());
    let (mut wrapper, pid) = start_sleeper(&dir, &job);
    let out = Command::new(ffrtmp())
        .args(["run", "--job-id", &job, "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("job id"),
        "{out:?}"
    );
    kill(pid, libc::SIGKILL);
    wrapper.wait().unwrap();
}

#[test]
fn concurrent_runs_each_get_their_own_cgroup() {
    if !require_root("concurrent_runs_each_get_their_own_cgroup") {
        return;
    }
    let dir = scratch("concurrent");
    let runs: Vec<_> = (0..8)
        .map(|i| {
            Command::new(ffrtmp())
                .args(["run", "--events"])
                .arg(dir.join(format!("events-{i}")))
                .args(["--", "/bin/sleep", "1"])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut r in runs {
        assert!(r.wait().unwrap().success());
    }
    let cgroups: std::collections::HashSet<String> = (0..8)
        .map(|i| {
            governed(&read_events(&dir.join(format!("events-{i}"))))
                .cgroup
                .clone()
                .unwrap()
        })
        .collect();
    assert_eq!(cgroups.len(), 8);
}

#[test]
fn unprivileged_mode_degrades_to_nice_and_says_so() {
    if !require_root("unprivileged_mode_degrades_to_nice_and_says_so") {
        return;
    }
    if pure_v2() && std::env::var_os("FFRTMP_DELEGATED_CGROUP").is_some() {
        // In the VM uid 65534 has no delegated subtree either; same test.
    }
    let dir = scratch("unpriv");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let events = dir.join("events");
    let out = Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            ffrtmp(),
            "run",
            "--cpu-max",
            "20000 100000",
            "--events",
        ])
        .arg(&events)
        .args(["--", "/bin/sh", "-c", "cat /proc/self/stat"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let events = read_events(&events);
    let g = governed(&events);
    assert_eq!(g.mode, Mode::Unprivileged);
    assert_eq!(g.cgroup, None);
    assert_eq!(g.limits.nice, Some(10), "{g:?}");
    let d = events
        .iter()
        .find_map(|e| match &e.body {
            Body::Degraded(d) => Some(d),
            _ => None,
        })
        .expect("degraded");
    assert_eq!(
        (d.limit, d.fallback.as_str()),
        (Some(LimitName::CpuMax), "nice 10")
    );
    // Field 19 of /proc/self/stat is the nice value the workload runs with.
    let stat = String::from_utf8_lossy(&out.stdout);
    let nice = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(16)
        .unwrap();
    assert_eq!(nice, "10", "{stat}");
}

/// Delegated mode (VM): a service running as uid 1000 in a leaf of its
/// delegated subtree makes its job cgroups under `<subtree>/ffrtmp`.
#[test]
fn delegated_mode_governs_inside_the_delegated_subtree() {
    if !require_root("delegated_mode_governs_inside_the_delegated_subtree") {
        return;
    }
    let (Some(subtree), Ok(uid)) = (
        std::env::var_os("FFRTMP_DELEGATED_CGROUP"),
        std::env::var("FFRTMP_DELEGATED_UID"),
    ) else {
        if common::in_vm() {
            panic!("the VM must describe its delegated subtree");
        }
        skip(
            "delegated_mode_governs_inside_the_delegated_subtree",
            "no delegated subtree (runs in the VM)",
        );
        return;
    };
    let subtree = PathBuf::from(subtree);
    let leaf = subtree.join("service");
    fs::create_dir_all(&leaf).unwrap();
    let dir = scratch("delegated");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let events = dir.join("events");
    let _ = std::os::unix::fs::chown(
        &leaf,
        Some(uid.parse().unwrap()),
        Some(uid.parse().unwrap()),
    );
    let _ = std::os::unix::fs::chown(leaf.join("cgroup.procs"), Some(uid.parse().unwrap()), None);
    // As the service manager: start it in the leaf, as the delegate.
    let script = format!(
        "echo $$ > {leaf}/cgroup.procs && exec /usr/bin/setpriv --reuid={uid} --regid={uid} --clear-groups \
         {ffrtmp} run --cpu-max '20000 100000' --memory-max 64M --events {events} -- /bin/cat /proc/self/cgroup",
        leaf = leaf.display(),
        events = events.display(),
        ffrtmp = ffrtmp(),
    );
    let out = Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let events = read_events(&events);
    let g = governed(&events);
    assert_eq!(g.mode, Mode::Delegated, "{events:?}");
    let rel = subtree.strip_prefix("/sys/fs/cgroup").unwrap();
    let cgroup = g.cgroup.clone().unwrap();
    assert!(
        cgroup.starts_with(&format!("/{}/ffrtmp/", rel.display())),
        "{cgroup}"
    );
    assert_eq!(g.limits.cpu_max.unwrap().to_string(), "20000 100000");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("0::{cgroup}")),
        "{out:?}"
    );
    let _ = fs::remove_dir(subtree.join("ffrtmp"));
    let _ = fs::remove_dir(&leaf);
}

/// Length of a media file's first video stream in frames, per ffprobe.
fn frames_of(file: &Path) -> Option<u64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Debian's real ffmpeg transcodes a test pattern to mp4 under limits, and a
/// second transcode finishes its file although its wrapper is killed -9
/// mid-way.
#[test]
fn a_real_ffmpeg_transcode_completes_under_limits_and_outlives_kill_9() {
    if !require_root("a_real_ffmpeg_transcode") {
        return;
    }
    if common::in_vm() {
        skip(
            "a_real_ffmpeg_transcode",
            "no ffmpeg in the VM image (runs on the host)",
        );
        return;
    }
    if !Path::new("/usr/bin/ffmpeg").exists() {
        if common::required() {
            panic!("ffmpeg is missing: `cargo xtask test` installs it as root");
        }
        skip("a_real_ffmpeg_transcode", "ffmpeg is not installed");
        return;
    }
    let dir = scratch("ffmpeg");
    let transcode = |seconds: u32, out: &Path| -> Vec<String> {
        [
            "/usr/bin/ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc=duration={seconds}:size=640x480:rate=25"),
            "-c:v",
            "mpeg4",
            "-y",
        ]
        .iter()
        .map(std::string::ToString::to_string)
        .chain([out.display().to_string()])
        .collect()
    };

    let short = dir.join("short.mp4");
    let mut args = vec!["--cpu-max", "100000 100000", "--memory-max", "512M", "--"];
    let cmd = transcode(2, &short);
    args.extend(cmd.iter().map(String::as_str));
    let (out, events) = run(&dir.join("events-short"), &args);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        governed(&events).limits.cpu_max.unwrap().to_string(),
        "100000 100000"
    );
    assert_eq!(frames_of(&short), Some(50), "2 s at 25 fps");

    // Long enough to be killed mid-way under a 0.5 CPU quota.
    let long = dir.join("long.mp4");
    let events = dir.join("events-long");
    let mut wrapper = Command::new(ffrtmp())
        .args(["run", "--cpu-max", "50000 100000", "--events"])
        .arg(&events)
        .arg("--")
        .args(transcode(30, &long))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + common::PATIENCE;
    let pid = loop {
        if let Some(pid) = read_events(&events).iter().find_map(|e| match &e.body {
            Body::Governed(g) => Some(g.pid),
            _ => None,
        }) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no governed event");
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(300));
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    assert!(alive(pid), "ffmpeg died with its wrapper");
    let deadline = Instant::now() + Duration::from_mins(2);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the transcode did not finish");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        frames_of(&long),
        Some(750),
        "the whole 30 s were transcoded"
    );
}

/// Helper: write 3 MiB with O_DIRECT to the block device named in
/// FFRTMP_TEST_DEVICE, in 64 KiB blocks.
#[test]
fn helper_direct_write() {
    if !is_helper("direct-write") {
        return;
    }
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let device = std::env::var("FFRTMP_TEST_DEVICE").unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .unwrap();
    // O_DIRECT wants an aligned buffer: over-allocate and slice at 4 KiB.
    let raw = vec![0x5au8; (64 << 10) + 4096];
    let off = raw.as_ptr().align_offset(4096);
    let block = &raw[off..off + (64 << 10)];
    for _ in 0..48 {
        f.write_all(block).unwrap();
    }
}

/// io.max on a real block device (the VM's RAM disk): 3 MiB of direct
/// writes at wbps=1 MiB/s take well over a second; unlimited, far less.
#[test]
fn io_max_throttles_writes_to_a_real_block_device() {
    if !require_root("io_max_throttles_writes") {
        return;
    }
    let Ok(dev) = fs::read_to_string("/sys/block/ram0/dev") else {
        if common::in_vm() {
            panic!("the VM must provide /dev/ram0");
        }
        skip(
            "io_max_throttles_writes",
            "no /dev/ram0 here (the VM loads brd)",
        );
        return;
    };
    let dev = dev.trim().to_string();
    let dir = scratch("io");
    let exe = std::env::current_exe().unwrap();
    let timed = |extra: &[&str], events: &Path| {
        let start = Instant::now();
        let status = Command::new(ffrtmp())
            .arg("run")
            .args(extra)
            .arg("--events")
            .arg(events)
            .arg("--")
            .arg(&exe)
            .args(["--exact", "helper_direct_write", "--test-threads=1"])
            .env(common::HELPER_ENV, "direct-write")
            .env("FFRTMP_TEST_DEVICE", "/dev/ram0")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{extra:?}: {status}");
        start.elapsed()
    };
    let free = timed(&[], &dir.join("events-free"));
    let limit = format!("{dev} wbps=1048576");
    let throttled = timed(&["--io-max", &limit], &dir.join("events-io"));
    let events = read_events(&dir.join("events-io"));
    let applied = governed(&events).limits.io_max.clone().unwrap()[0].to_string();
    assert!(
        applied.starts_with(&dev) && applied.contains("wbps=1048576"),
        "{applied}"
    );
    eprintln!("3 MiB direct writes: {free:?} unlimited, {throttled:?} at 1 MiB/s");
    assert!(
        throttled >= Duration::from_millis(1500),
        "not throttled: {throttled:?}"
    );
    assert!(throttled > free * 2, "{throttled:?} vs {free:?}");
}
