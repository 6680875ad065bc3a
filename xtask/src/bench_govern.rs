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
    collections::HashMap,
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{Watcher, peak_rss_during, vm_field},
    build_release,
};

/// The reconnect row: a node's streams coming back after an ingest outage,
/// 500 matching execs within one second, each living on (issue 12: limits
/// within 5 ms at p99, every one in its own job within 1 s).
const RECONNECT_EXECS: usize = 500;
const RECONNECT_GAP: Duration = Duration::from_millis(2);
const RECONNECT_LIFE: &str = "3";

/// Name (comm) of the matching workload.
pub(crate) const PROBE: &str = "ffbench";
/// How long each matching process lives.
const PROBE_LIFE: &str = "0.3";
/// Gap between two matching execs.
const PROBE_GAP: Duration = Duration::from_millis(4);
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

pub fn run(root: &Path, execs: usize, idle: Duration) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("bench govern needs root (eBPF, cgroups, perf)");
    }
    crate::packages::ensure(&[("cgrulesengd", "cgroup-tools"), ("perf", "linux-perf")])?;
    let bin = build_release(root)?;
    if !Path::new(TRACEFS).join("events").is_dir() {
        crate::run_command(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
    }
    let (dir, probe, policy) = crate::bench::probe_setup(
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

/// Removes cgroup `path` and its (empty) descendants from every hierarchy.
pub(crate) fn remove_cgroup_tree(path: &str) {
    fn remove(dir: &Path) {
        for child in fs::read_dir(dir).into_iter().flatten().flatten() {
            if child.path().is_dir() {
                remove(&child.path());
            }
        }
        let _ = fs::remove_dir(dir);
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if matches!(f.get(2), Some(&"cgroup" | &"cgroup2")) {
            remove(&Path::new(f[1]).join(path.trim_start_matches('/')));
        }
    }
}

/// Latencies of one measurement, in ms, sorted.
pub(crate) struct Latencies {
    /// Until the process is under its limits: its first destination cgroup
    /// joined in every hierarchy (ffrtmp: the rule's staging cgroup).
    pub(crate) governed: Vec<f64>,
    /// Until its last move (ffrtmp: into its own job cgroup).
    pub(crate) final_: Vec<f64>,
    pub(crate) ungoverned: usize,
    pub(crate) execs: usize,
}

pub(crate) fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}

/// The matching execs of one row.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub(crate) execs: usize,
    gap: Duration,
    life: &'static str,
}

impl Load {
    pub(crate) fn probes(execs: usize) -> Self {
        Load {
            execs,
            gap: PROBE_GAP,
            life: PROBE_LIFE,
        }
    }

    fn reconnect() -> Self {
        Load {
            execs: RECONNECT_EXECS,
            gap: RECONNECT_GAP,
            life: RECONNECT_LIFE,
        }
    }
}

/// Starts the load's probes (under a storm if asked) while perf records the
/// tracepoints; returns each probe's exec→last-attach time into a cgroup
/// whose path contains `target`.
pub(crate) fn measure(
    dir: &Path,
    probe: &Path,
    load: Load,
    storm: bool,
    cores: usize,
    target: &str,
) -> anyhow::Result<Latencies> {
    let execs = load.execs;
    let data = dir.join("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-a", "-o"])
        .arg(&data)
        .args(["-e", "sched:sched_process_exec", "--filter"])
        .arg(format!("filename ~ \"*{PROBE}\""))
        .args(["-e", "cgroup:cgroup_attach_task", "--filter"])
        .arg(format!("comm == \"{PROBE}\""))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record")?;
    // perf has no readiness signal either; give it time to open its events.
    thread::sleep(Duration::from_millis(1500));
    let stop = Arc::new(AtomicBool::new(false));
    let forkers: Vec<_> = (0..if storm { cores } else { 0 })
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = Command::new("/bin/true").status();
                }
            })
        })
        .collect();
    let mut probes: Vec<Child> = Vec::with_capacity(execs);
    let mut pids = Vec::with_capacity(execs);
    let start = Instant::now();
    for i in 0..execs {
        let due = start + load.gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let child = Command::new(probe)
            .arg(load.life)
            .spawn()
            .context("starting a probe")?;
        pids.push(child.id());
        probes.push(child);
    }
    for mut p in probes {
        p.wait()?;
    }
    stop.store(true, Ordering::Relaxed);
    for f in forkers {
        let _ = f.join();
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    perf.wait()?;
    let script = Command::new("perf")
        .args(["script", "--ns", "-F", "time,event,trace", "-i"])
        .arg(&data)
        .output()
        .context("running perf script")?;
    let text = String::from_utf8_lossy(&script.stdout);
    let mut exec_at: HashMap<u32, f64> = HashMap::new();
    // pid -> destination cgroup -> when it was joined in its last hierarchy.
    let mut attached_at: HashMap<u32, HashMap<String, f64>> = HashMap::new();
    for line in text.lines() {
        let Some((time, rest)) = line
            .trim()
            .split_once(": ")
            .map(|(t, r)| (t, r.trim_start()))
        else {
            continue;
        };
        let Ok(t) = time.trim().parse::<f64>() else {
            continue;
        };
        let pid = rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if rest.starts_with("sched:sched_process_exec") {
            exec_at.entry(pid).or_insert(t);
        } else if rest.starts_with("cgroup:cgroup_attach_task") && rest.contains(target) {
            let path = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("dst_path="))
                .unwrap_or_default()
                .to_string();
            let last = attached_at.entry(pid).or_default().entry(path).or_insert(t);
            *last = last.max(t);
        }
    }
    let (mut governed, mut final_) = (Vec::new(), Vec::new());
    let mut ungoverned = 0;
    for pid in &pids {
        match (exec_at.get(pid), attached_at.get(pid)) {
            (Some(e), Some(dests)) => {
                let first = dests.values().copied().fold(f64::INFINITY, f64::min);
                let last = dests.values().copied().fold(0.0, f64::max);
                governed.push((first - e) * 1000.0);
                final_.push((last - e) * 1000.0);
            }
            (Some(_), None) => ungoverned += 1,
            (None, _) => bail!("perf recorded no exec for probe {pid}"),
        }
    }
    governed.sort_by(f64::total_cmp);
    final_.sort_by(f64::total_cmp);
    let _ = fs::remove_file(&data);
    Ok(Latencies {
        governed,
        final_,
        ungoverned,
        execs,
    })
}
