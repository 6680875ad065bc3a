//! What the benchmarks share: a running `watch`, peak RSS, the probe
//! program and its latencies, measured by the kernel with perf.
use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A running `watch` writing its events to a file.
pub(crate) struct Watcher {
    child: Child,
    out: PathBuf,
}

impl Watcher {
    pub(crate) fn start(bin: &Path, out: PathBuf) -> anyhow::Result<Self> {
        Self::start_with(bin, &["--all", "--observe-only"], out)
    }

    /// `ffrtmp watch --backend ebpf ARGS`, ready (its `started` written).
    pub(crate) fn start_with(bin: &Path, args: &[&str], out: PathBuf) -> anyhow::Result<Self> {
        let file = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let child = Command::new(bin)
            .args(["watch", "--backend", "ebpf"])
            .args(args)
            .stdout(file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("\"started\"")
        {
            if Instant::now() > deadline {
                bail!("watch did not start within 30 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, out })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of all threads, in ns (schedstat, not tick-granular).
    pub(crate) fn cpu_ns(&self) -> anyhow::Result<u64> {
        let tasks = format!("/proc/{}/task", self.pid());
        let mut total = 0;
        for task in fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
            let path = task?.path().join("schedstat");
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            total += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// (prog_id, run_cnt, run_time_ns) of each BPF program the watcher holds.
    pub(crate) fn prog_stats(&self) -> Vec<(u64, u64, u64)> {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let (Some(id), Some(cnt), Some(ns)) =
                (field("prog_id:"), field("run_cnt:"), field("run_time_ns:"))
            {
                out.push((id, cnt, ns));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// SIGTERM, wait, and return the events it wrote.
    pub(crate) fn stop(mut self) -> anyhow::Result<Vec<serde_json::Value>> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("watch exited with {status}");
        }
        let file = fs::File::open(&self.out)?;
        BufReader::new(file)
            .lines()
            .map(|l| Ok(serde_json::from_str(&l?)?))
            .collect()
    }
}

impl Drop for Watcher {
    /// A bench that fails half-way does not leave a daemon behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `f` while sampling `pid`'s VmRSS every 20 ms; returns the peak (KiB).
pub(crate) fn peak_rss_during<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(vm_field(pid, "VmRSS:").unwrap_or(0));
                if stop.load(Ordering::Relaxed) {
                    return peak;
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    (out, sampler.join().unwrap_or(0))
}

/// A scratch directory `ffrtmp-<what>-<pid>` with a copy of `sleep` named
/// `probe` (its processes have that comm) and a policy governing it with
/// `limits` (TOML lines); returns (directory, probe, policy).
pub(crate) fn probe_setup(
    what: &str,
    probe: &str,
    limits: &str,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("ffrtmp-{what}-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let copy = dir.join(probe);
    fs::copy(fs::canonicalize("/bin/sleep")?, &copy)?;
    let policy = dir.join("policy.toml");
    fs::write(
        &policy,
        format!("[[rule]]\nname = \"{what}\"\ncomm = \"{probe}\"\n{limits}"),
    )?;
    Ok((dir, copy, policy))
}

/// A `Vm…:` field of /proc/PID/status, in KiB.
pub(crate) fn vm_field(pid: u32, name: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

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
pub(crate) const PROBE_GAP: Duration = Duration::from_millis(4);

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

    pub(crate) fn reconnect() -> Self {
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
