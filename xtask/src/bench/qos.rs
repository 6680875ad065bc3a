//! `cargo xtask bench qos`: whether live streams keep realtime on an
//! oversubscribed node, with real ffmpeg, side by side in one run.
//!
//! A live encode is the brief's: `-re`, lavfi testsrc2 1280x720@30,
//! libx264 `-preset faster -threads 1`; a batch encode the same source
//! without `-re`, `-preset medium`, running until the row ends. A short
//! calibration measures one live encode's CPU alone and picks N live
//! encodes to need ~75 % of the machine, and M = one batch encode per CPU
//! and one more (on 2 CPUs, live + batch ~215–230 %: a live encode costs
//! 0.65–0.8 CPU on our host, so N is coarse, and with one batch encode per
//! CPU the equal-share row left the live ones at 0.78x, too kind a
//! baseline). Rows:
//!
//! 1. no governor;
//! 2. `watch` with the policy before tiers (every ffmpeg `cpu_weight` 50);
//! 3. `watch` with the embedded policy (live → `live`, batch → `batch`);
//! 4. the same, and meanwhile exec→limits latency measured by the kernel's
//!    tracepoints (as `bench govern` does) with every CPU busy encoding;
//! 5. the live tier itself oversubscribed: live encodes needing ~130 % of
//!    the machine, no batch; how soon `pressure` fires, and for which jobs;
//! 6. 20 light live encodes: the daemon's own CPU while it samples them.
//!
//! Per row: each live stream's speed (media seconds over wall seconds,
//! start-up included: 1.0 is realtime), the batch encodes' CPU against
//! the CPU the live ones left over, and the `pressure` events.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use super::kit::{Load, PROBE, Watcher, measure, pct, remove_cgroup_tree};
use crate::build_release;

const ROOT: &str = "/ffrtmp-bench-qos";
/// The encodes' source: the brief's 720p30 test pattern.
const SOURCE: &str = "testsrc2=size=1280x720:rate=30";
const CALIBRATION: u64 = 6;
/// Light live encodes of row 5, and their size.
const MANY: usize = 20;
const LIGHT: &str = "testsrc2=size=160x120:rate=30";
/// The policy every ffmpeg was governed by before tiers.
const EQUAL_POLICY: &str = "[[rule]]\nname = \"ffmpeg\"\ncomm = \"ffmpeg\"\ncpu_weight = 50\nmemory_high = \"3G\"\nmemory_max = \"4G\"\npids_max = 512\noom_score_adj = 500\n";

/// One encode started for a row.
struct Encode {
    child: Child,
    started: Instant,
    live: bool,
}

/// A live encode's end: its wall time and CPU.
struct Ended {
    pid: u32,
    wall: f64,
    cpu: f64,
    ok: bool,
}

fn ffmpeg(live: bool, source: &str, secs: u64, progress: Option<&Path>) -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-nostdin", "-loglevel", "error"]);
    if live {
        c.arg("-re");
    }
    c.args(["-f", "lavfi", "-i"])
        .arg(format!("{source}:duration={secs}"));
    c.args(["-c:v", "libx264", "-threads", "1", "-preset"])
        .arg(if live { "faster" } else { "medium" });
    if let Some(p) = progress {
        c.arg("-progress").arg(p);
    }
    c.args(["-f", "null", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Waits for `child` and returns its wall time since `started` and its CPU
/// (user + system, from wait4's rusage).
fn wait_cpu(child: &Child, started: Instant) -> anyhow::Result<(f64, f64, bool)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers to locals.
    let rc = unsafe { libc::wait4(child.id() as i32, &raw mut status, 0, &raw mut usage) };
    if rc < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let wall = started.elapsed().as_secs_f64();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((wall, tv(usage.ru_utime) + tv(usage.ru_stime), ok))
}

/// CPU seconds a running process has used (/proc/PID/stat, clock ticks).
fn cpu_of(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After ")": state is field 0; utime 11, stime 12.
    (ticks(11) + ticks(12)) / hz
}

/// What one row measured.
struct Row {
    name: &'static str,
    live: Vec<Ended>,
    batch_cpu: f64,
    leftover: f64,
    events: Vec<serde_json::Value>,
    /// When the row's encodes started (wall clock), for event times.
    t0: SystemTime,
}

impl Row {
    fn speeds(&self, secs: u64) -> Vec<f64> {
        let mut s: Vec<f64> = self.live.iter().map(|e| secs as f64 / e.wall).collect();
        s.sort_by(f64::total_cmp);
        s
    }

    /// (job, seconds after the row started, cleared, waiting) of each
    /// pressure event.
    fn pressure(&self) -> Vec<(String, f64, bool, f64)> {
        self.events
            .iter()
            .filter(|e| e["event"] == "pressure")
            .map(|e| {
                let at = e["ts"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .and_then(|t| t.duration_since(self.t0).ok())
                    .map_or(f64::NAN, |d| d.as_secs_f64());
                (
                    e["job_id"].as_str().unwrap_or_default().to_string(),
                    at,
                    e["cleared"] == true,
                    e["waiting"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    }
}

/// Runs `live` live and `batch` batch encodes of `secs` under `watcher`
/// (if any); `during` runs while they do.
fn row(
    name: &'static str,
    live: usize,
    batch: usize,
    secs: u64,
    watcher: Option<Watcher>,
    dir: &Path,
    during: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Row> {
    let cores = thread::available_parallelism().map_or(2, std::num::NonZero::get) as f64;
    let t0 = SystemTime::now();
    let start = Instant::now();
    let mut encodes = Vec::new();
    for i in 0..batch {
        let progress = dir.join(format!("{name}-batch-{i}.progress"));
        let child = ffmpeg(false, SOURCE, 3600, Some(&progress))
            .spawn()
            .context("starting ffmpeg (batch)")?;
        encodes.push(Encode {
            child,
            started: Instant::now(),
            live: false,
        });
    }
    for _ in 0..live {
        let child = ffmpeg(true, SOURCE, secs, None)
            .spawn()
            .context("starting ffmpeg (live)")?;
        encodes.push(Encode {
            child,
            started: Instant::now(),
            live: true,
        });
    }
    during()?;
    let mut ended = Vec::new();
    for e in encodes.iter().filter(|e| e.live) {
        let (wall, cpu, ok) = wait_cpu(&e.child, e.started)?;
        ended.push(Ended {
            pid: e.child.id(),
            wall,
            cpu,
            ok,
        });
    }
    let window = start.elapsed().as_secs_f64();
    let batch_cpu: f64 = encodes
        .iter()
        .filter(|e| !e.live)
        .map(|e| cpu_of(e.child.id()))
        .sum();
    for e in encodes.iter_mut().filter(|e| !e.live) {
        let _ = e.child.kill();
        let _ = e.child.wait();
    }
    let live_cpu: f64 = ended.iter().map(|e| e.cpu).sum();
    // Events written after the last stream ended are not this row's.
    thread::sleep(Duration::from_millis(500));
    let events = match watcher {
        Some(w) => w.stop()?,
        None => Vec::new(),
    };
    remove_cgroup_tree(ROOT);
    if let Some(bad) = ended.iter().find(|e| !e.ok) {
        bail!("{name}: live encode {} failed", bad.pid);
    }
    Ok(Row {
        name,
        live: ended,
        batch_cpu,
        leftover: (cores * window - live_cpu).max(0.0),
        events,
        t0,
    })
}

fn watcher(bin: &Path, dir: &Path, name: &str, policy: Option<&Path>) -> anyhow::Result<Watcher> {
    let mut args = vec!["--cgroup-root", ROOT];
    if let Some(p) = policy {
        args.push("--policy");
        args.push(p.to_str().context("policy path")?);
    }
    Watcher::start_with(bin, &args, dir.join(format!("{name}.jsonl")))
}

pub(super) fn run(root: &Path, secs: u64) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("bench qos needs root (eBPF, cgroups, perf)");
    }
    crate::packages::ensure(&[("ffmpeg", "ffmpeg"), ("perf", "linux-perf")])?;
    let bin = build_release(root)?;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("ffrtmp-bench-qos-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let cores = thread::available_parallelism().map_or(2, std::num::NonZero::get);

    // Calibration: one live encode alone.
    let started = Instant::now();
    let child = ffmpeg(true, SOURCE, CALIBRATION, None).spawn()?;
    let (wall, cpu, ok) = wait_cpu(&child, started)?;
    if !ok {
        bail!("the calibration encode failed");
    }
    let per_live = cpu / wall;
    let round = |x: f64| (x.round() as usize).max(1);
    let n = round(0.75 * cores as f64 / per_live);
    let m = cores + 1;
    let n_over = round(1.3 * cores as f64 / per_live).max(n + 1);
    println!(
        "bench qos: {cores} CPUs; one live encode alone uses {per_live:.3} CPU; {n} live (~{:.0} % of the machine) + {m} batch encodes, {secs} s",
        n as f64 * per_live / cores as f64 * 100.0
    );

    let equal = dir.join("equal.toml");
    fs::write(&equal, EQUAL_POLICY)?;
    // The embedded policy, and a rule for bench govern's probe.
    let embedded = Command::new(&bin).args(["policy", "default"]).output()?;
    let tiers = dir.join("tiers.toml");
    fs::write(
        &tiers,
        format!(
            "{}\n[[rule]]\nname = \"probe\"\ncomm = \"{PROBE}\"\ntier = \"live\"\n",
            String::from_utf8(embedded.stdout)?
        ),
    )?;
    let probe = dir.join(PROBE);
    fs::copy(fs::canonicalize("/bin/sleep")?, &probe)?;

    let mut rows = Vec::new();
    rows.push(row("no governor", n, m, secs, None, &dir, || Ok(()))?);
    let w = watcher(&bin, &dir, "equal", Some(&equal))?;
    rows.push(row("equal weights", n, m, secs, Some(w), &dir, || Ok(()))?);
    let w = watcher(&bin, &dir, "tiers", Some(&tiers))?;
    rows.push(row("tiers", n, m, secs, Some(w), &dir, || Ok(()))?);
    // The same again, with bench govern's probes exec'd meanwhile (perf
    // records every CPU too): its pressure events are not the live tier's.
    let w = watcher(&bin, &dir, "latency", Some(&tiers))?;
    let mut latency = None;
    rows.push(row("tiers + execs", n, m, secs, Some(w), &dir, || {
        // Once every encode runs: the CPUs are busy.
        thread::sleep(Duration::from_secs(3));
        latency = Some(measure(
            &dir,
            &probe,
            Load::probes(200),
            false,
            cores,
            ROOT,
        )?);
        Ok(())
    })?);
    let w = watcher(&bin, &dir, "over", Some(&tiers))?;
    rows.push(row("live over", n_over, 0, secs, Some(w), &dir, || Ok(()))?);

    println!(
        "  {:<14} {:>5} {:>30} {:>22} {:>9}",
        "row", "live", "live speed min / median / max", "batch CPU / leftover", "pressure"
    );
    for r in &rows {
        let s = r.speeds(secs);
        let fired = r.pressure().iter().filter(|p| !p.2).count();
        let batch = if r.batch_cpu > 0.0 {
            format!(
                "{:.2} / {:.2} {:>4.0} %",
                r.batch_cpu,
                r.leftover,
                r.batch_cpu / r.leftover.max(1e-9) * 100.0
            )
        } else {
            "-".into()
        };
        println!(
            "  {:<14} {:>5} {:>12.3} / {:.3} / {:.3} {:>22} {:>9}",
            r.name,
            r.live.len(),
            s[0],
            s[s.len() / 2],
            s[s.len() - 1],
            batch,
            fired
        );
    }
    let live_pids: Vec<String> = rows[4]
        .live
        .iter()
        .map(|e| format!("ffmpeg-{}", e.pid))
        .collect();
    let mut first: BTreeMap<String, f64> = BTreeMap::new();
    for (job, at, cleared, _) in rows[4].pressure() {
        if !cleared {
            first.entry(job).or_insert(at);
        }
    }
    let mut times: Vec<f64> = first.values().copied().collect();
    times.sort_by(f64::total_cmp);
    let strangers = first.keys().filter(|j| !live_pids.contains(j)).count();
    println!(
        "  live over: pressure fired for {} of {} live jobs ({} not live), first after {:.2} s, all within {:.2} s of the streams starting",
        first.len(),
        live_pids.len(),
        strangers,
        times.first().copied().unwrap_or(f64::NAN),
        times.last().copied().unwrap_or(f64::NAN),
    );
    for r in &rows[1..4] {
        let alarms: Vec<String> = r
            .pressure()
            .iter()
            .filter(|p| !p.2)
            .map(|(job, at, _, waiting)| format!("{job} at {at:.1} s, waiting {waiting}"))
            .collect();
        println!(
            "  {}: {} pressure events (the live tier fits) {}",
            r.name,
            alarms.len(),
            alarms.join("; ")
        );
    }
    if let Some(l) = latency {
        println!(
            "  tiers, every CPU encoding: exec -> limits (kernel tracepoints) p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} of {} ungoverned",
            pct(&l.governed, 50.0),
            pct(&l.governed, 99.0),
            pct(&l.governed, 100.0),
            l.ungoverned,
            l.execs
        );
    }

    // The daemon's CPU while it samples many live jobs.
    let w = watcher(&bin, &dir, "many", Some(&tiers))?;
    let idle = {
        let t0 = w.cpu_ns()?;
        thread::sleep(Duration::from_secs(5));
        (w.cpu_ns()? - t0) as f64 / 5e9 * 100.0
    };
    let mut light: Vec<Child> = (0..MANY)
        .map(|_| {
            let mut c = ffmpeg(true, LIGHT, 3600, None);
            c.spawn()
        })
        .collect::<Result<_, _>>()?;
    thread::sleep(Duration::from_secs(3));
    let busy = Duration::from_secs(secs);
    let t0 = w.cpu_ns()?;
    thread::sleep(busy);
    let used = (w.cpu_ns()? - t0) as f64 / busy.as_nanos() as f64 * 100.0;
    for c in &mut light {
        let _ = c.kill();
        let _ = c.wait();
    }
    let events = w.stop()?;
    remove_cgroup_tree(ROOT);
    let governed = events
        .iter()
        .filter(|e| e["event"] == "governed" && e["tier"] == "live")
        .count();
    println!(
        "  watch's CPU: {idle:.3} % of one core idle; {used:.3} % while {governed} live jobs ({MANY} light encodes) were sampled every 500 ms, over {busy:?}"
    );
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}
