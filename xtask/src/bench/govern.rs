//! `cargo xtask bench govern`: how soon after its exec a new matching
//! process is in its cgroup, with `ffrtmp watch` and with libcgroup's
//! `cgrulesengd` given an equivalent rule, idle and under a storm of
//! unrelated execs on every core.
//!
//! The latency is measured the same way for both, by the kernel: `perf`
//! records the `sched:sched_process_exec` and `cgroup:cgroup_attach_task`
//! tracepoints. A process is under its limits once it has joined its first
//! destination cgroup in every hierarchy (on v1, one attach per hierarchy):
//! ffrtmp's rule staging cgroup, cgrulesengd's group. ffrtmp then moves it
//! to its own job cgroup: that last move is reported too. ffrtmp's own
//! `latency_us` is reported beside them. The matching process is a copy of `sleep` named `ffbench` that lives
//! 300 ms, started every 4 ms; one never moved counts as ungoverned. The
//! daemon's CPU is measured idle and during a storm of unrelated execs
//! alone (which the kernel-side filter keeps from it).
//!
//! cgrulesengd reads the fixed path /etc/cgrules.conf (and will not start
//! without /etc/cgconfig.conf and /etc/cgconfig.d): the bench writes them
//! and restores what was there.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::kit::{
    Load, PROBE, PROBE_GAP, Watcher, measure, pct, peak_rss_during, remove_cgroup_tree, vm_field,
};
use crate::build_release;

/// ffrtmp's cgroup root and cgrulesengd's group, distinct from real ones.
const FFRTMP_ROOT: &str = "/ffrtmp-bench";
const CGRED_GROUP: &str = "ffrtmp-bench-cgred";
const CGRULES: &str = "/etc/cgrules.conf";
const CGCONFIG: &str = "/etc/cgconfig.conf";
const CGCONFIG_D: &str = "/etc/cgconfig.d";
const TRACEFS: &str = "/sys/kernel/tracing";
/// How long unrelated execs run alone, for the daemon's CPU.
const UNRELATED_STORM: Duration = Duration::from_secs(5);
/// `Nice=` of ffrtmp/systemd/ffrtmp-watch.service.
const DAEMON_NICE: i32 = -5;

pub(super) fn run(root: &Path, execs: usize, idle: Duration) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("bench govern needs root (eBPF, cgroups, perf)");
    }
    crate::packages::ensure(&[("cgrulesengd", "cgroup-tools"), ("perf", "linux-perf")])?;
    let bin = build_release(root)?;
    if !Path::new(TRACEFS).join("events").is_dir() {
        crate::run_command(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
    }
    let (dir, probe, policy) = super::kit::probe_setup(
        "bench-govern",
        PROBE,
        "cpu_max = \"100000 100000\"\nmemory_max = \"512M\"\n",
    )?;
    let cores = thread::available_parallelism().map_or(2, std::num::NonZero::get);
    println!(
        "bench govern: {execs} execs of a matching process (one per {PROBE_GAP:?}), idle and under a storm of /bin/true on {cores} threads"
    );

    // ffrtmp.
    let watcher = Watcher::start_with(
        &bin,
        &[
            "--policy",
            policy.to_str().context("policy path")?,
            "--cgroup-root",
            FFRTMP_ROOT,
            "--favordynmods",
        ],
        dir.join("events.jsonl"),
    )?;
    // As the shipped unit runs it (Nice=-5): governing is not queued
    // behind the processes it governs.
    // SAFETY: setpriority on our own child's main thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, watcher.pid(), DAEMON_NICE) };
    let idle_cpu = {
        let t0 = watcher.cpu_ns()?;
        thread::sleep(idle);
        let used = watcher.cpu_ns()?.saturating_sub(t0);
        used as f64 / idle.as_nanos() as f64 * 100.0
    };
    let wpid = watcher.pid();
    let mut results = Vec::new();
    for storm in [false, true] {
        let (r, rss) = peak_rss_during(wpid, || {
            measure(&dir, &probe, Load::probes(execs), storm, cores, FFRTMP_ROOT)
        });
        results.push((
            "ffrtmp watch",
            if storm { "storm" } else { "idle" },
            r?,
            Some(rss),
        ));
    }
    let (r, rss) = peak_rss_during(wpid, || {
        measure(&dir, &probe, Load::reconnect(), false, cores, FFRTMP_ROOT)
    });
    results.push(("ffrtmp watch", "reconnect", r?, Some(rss)));
    // Last (its 10 000+ exits leave kernel clean-up behind): a storm of
    // unrelated execs alone, which the kernel filters out, so the daemon
    // should hardly notice.
    let (storm_execs, storm_cpu) = {
        let t0 = watcher.cpu_ns()?;
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let forkers: Vec<_> = (0..cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if Command::new("/bin/true").status().is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        thread::sleep(UNRELATED_STORM);
        stop.store(true, Ordering::Relaxed);
        let execs: u64 = forkers.into_iter().filter_map(|f| f.join().ok()).sum();
        let used = watcher.cpu_ns()?.saturating_sub(t0);
        (
            execs,
            used as f64 / start.elapsed().as_nanos() as f64 * 100.0,
        )
    };
    let hwm = vm_field(wpid, "VmHWM:").unwrap_or(0);
    let events = watcher.stop()?;
    let own: Vec<f64> = events
        .iter()
        .filter(|e| e["event"] == "governed")
        .filter_map(|e| e["latency_us"].as_f64())
        .collect();

    // cgrulesengd with the equivalent rule, into one group made beforehand.
    let target = format!("cpu,cpuacct,memory:/{CGRED_GROUP}");
    crate::run_command(Command::new("cgcreate").args(["-g", &target]))?;
    crate::run_command(Command::new("cgset").args([
        "-r",
        "cpu.cfs_quota_us=100000",
        "-r",
        "memory.limit_in_bytes=536870912",
        CGRED_GROUP,
    ]))?;
    let saved = fs::read(CGRULES).ok();
    fs::write(
        CGRULES,
        format!("*:{PROBE} cpu,cpuacct,memory {CGRED_GROUP}/\n"),
    )?;
    // It refuses to start without these (templates); made empty if absent.
    let made_conf = !Path::new(CGCONFIG).exists();
    let made_dir = !Path::new(CGCONFIG_D).exists();
    if made_conf {
        fs::write(CGCONFIG, "")?;
    }
    if made_dir {
        fs::create_dir(CGCONFIG_D)?;
    }
    let cgred = (|| -> anyhow::Result<()> {
        let mut daemon = Command::new("cgrulesengd")
            .args(["-n", "-Q"])
            .stderr(Stdio::null())
            .spawn()
            .context("starting cgrulesengd")?;
        // It has no readiness signal; it is ready within milliseconds here.
        thread::sleep(Duration::from_secs(1));
        for storm in [false, true] {
            let r = measure(&dir, &probe, Load::probes(execs), storm, cores, CGRED_GROUP);
            results.push((
                "cgrulesengd",
                if storm { "storm" } else { "idle" },
                r?,
                None,
            ));
        }
        let r = measure(&dir, &probe, Load::reconnect(), false, cores, CGRED_GROUP);
        results.push(("cgrulesengd", "reconnect", r?, None));
        let _ = daemon.kill();
        let _ = daemon.wait();
        Ok(())
    })();
    match saved {
        Some(text) => fs::write(CGRULES, text)?,
        None => fs::remove_file(CGRULES)?,
    }
    if made_conf {
        fs::remove_file(CGCONFIG)?;
    }
    if made_dir {
        fs::remove_dir(CGCONFIG_D)?;
    }
    let _ = Command::new("cgdelete").args(["-g", &target]).status();
    cgred?;

    println!(
        "  exec -> in cgroup under its limits (kernel tracepoints), ms; [own job: last move]:"
    );
    println!(
        "  {:<14} {:<9} {:>8} {:>8} {:>8} {:>8} {:>11}   {:>8} {:>8} {:>8}",
        "", "", "p50", "p90", "p99", "max", "ungoverned", "[p50", "p99", "max]"
    );
    for (tool, row, r, _) in &results {
        println!(
            "  {:<14} {:<9} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>6} / {}   {:>8.3} {:>8.3} {:>8.3}",
            tool,
            row,
            pct(&r.governed, 50.0),
            pct(&r.governed, 90.0),
            pct(&r.governed, 99.0),
            pct(&r.governed, 100.0),
            r.ungoverned,
            r.execs,
            pct(&r.final_, 50.0),
            pct(&r.final_, 99.0),
            pct(&r.final_, 100.0),
        );
    }
    if !own.is_empty() {
        let mut own: Vec<f64> = own.iter().map(|us| us / 1000.0).collect();
        own.sort_by(f64::total_cmp);
        println!(
            "  ffrtmp's own latency_us (exec -> cgroup.procs written), ms: p50 {:.3} p99 {:.3} max {:.3} over {}",
            pct(&own, 50.0),
            pct(&own, 99.0),
            pct(&own, 100.0),
            own.len()
        );
    }
    let peak = results.iter().filter_map(|r| r.3).max().unwrap_or(0);
    println!(
        "  ffrtmp watch: idle CPU {idle_cpu:.4} % over {idle:?}; {storm_cpu:.4} % of one core during {storm_execs} unrelated execs in {UNRELATED_STORM:?}; RSS peak {peak} KiB while governing; VmHWM {hwm} KiB"
    );
    remove_cgroup_tree(FFRTMP_ROOT);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}
