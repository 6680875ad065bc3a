//! `cargo xtask soak --minutes N`: the shipped `watch` under a mixed,
//! hostile load for N minutes, with its invariants checked every second.
//!
//! The load, all at once:
//! - streams: bursts of matching processes (`ffsoak`, a copy of `sleep`)
//!   living 0.2 to 6 s, up to a few hundred alive;
//! - unrelated execs (`/bin/true`) on one thread without pause;
//! - a consumer of the event stream that stops reading for 5 s every 20 s
//!   and then catches up (a stalled journald);
//! - ring overflow: the daemon is stopped (SIGSTOP) for 2 s every 45 s
//!   while both storms go on;
//! - kill -9 of the daemon every 70 s, and a restart a second later;
//! - a 64 KiB ring buffer, so that bursts and stops overflow it.
//!
//! Checked every second (a violation is printed, counted, and fails the
//! soak):
//! - every matching process alive for more than 1 s since the daemon last
//!   came back (restarted, or continued) is under its rule's limits: in its
//!   own job or its rule's staging cgroup, whose CPU quota is the rule's;
//! - no job cgroup stays without a live process for more than 10 s;
//! - the daemon's RSS stays under 64 MiB (its unit's `MemoryMax`) and its
//!   open files under 64 + 2 per job.
//!
//! Figures (execs, lost events by reason, restarts, peak RSS and fds) are
//! printed at the end, for docs/TESTING.md.
use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{bench::kit::vm_field, build_release};

const PROBE: &str = "ffsoak";
const ROOT: &str = "/ffrtmp-soak";
const QUOTA: &str = "50000";
const STALL_EVERY: Duration = Duration::from_secs(20);
const STALL_FOR: Duration = Duration::from_secs(5);
const STOP_EVERY: Duration = Duration::from_secs(45);
const STOP_FOR: Duration = Duration::from_secs(2);
const KILL_EVERY: Duration = Duration::from_secs(70);
/// How long a matching process may wait for its limits.
const GOVERN_WITHIN: Duration = Duration::from_secs(1);
/// How long an empty job cgroup may stay.
const EMPTY_JOB_FOR: Duration = Duration::from_secs(10);
const RSS_MAX_KIB: u64 = 64 * 1024;
/// `PF_EXITING` in /proc/PID/stat's flags.
const PF_EXITING: u64 = 0x4;

#[derive(clap::Args)]
pub(crate) struct SoakArgs {
    /// How long to soak.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
}

/// Counters shared by the load and the checker.
#[derive(Default)]
struct Figures {
    matching: AtomicU64,
    unrelated: AtomicU64,
    events: AtomicU64,
    lost_ring: AtomicU64,
    lost_output: AtomicU64,
    restarts: AtomicU64,
    stops: AtomicU64,
    stalls: AtomicU64,
}

pub(crate) fn run(root: &Path, args: &SoakArgs) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("soak needs root (eBPF, cgroups)");
    }
    let bin = build_release(root)?;
    let (dir, probe, policy) = crate::bench::kit::probe_setup(
        "soak",
        PROBE,
        &format!("cpu_max = \"{QUOTA} 100000\"\nmemory_max = \"256M\"\n"),
    )?;
    let duration = Duration::from_secs(args.minutes * 60);
    // Every event, to look into a violation (kept when the soak fails).
    let log = dir.join("events.jsonl");
    println!(
        "soak: {} min of matching bursts, unrelated execs, a stalling reader, SIGSTOP every {STOP_EVERY:?}, kill -9 every {KILL_EVERY:?}",
        args.minutes
    );
    let figures = Arc::new(Figures::default());
    let done = Arc::new(AtomicBool::new(false));
    let daemon = Arc::new(Mutex::new(Daemon::start(&bin, &policy, &figures, &log)?));

    let streams = {
        let (done, figures, probe) = (Arc::clone(&done), Arc::clone(&figures), probe.clone());
        thread::spawn(move || matching_load(&probe, &done, &figures))
    };
    let unrelated = {
        let (done, figures) = (Arc::clone(&done), Arc::clone(&figures));
        thread::spawn(move || {
            while !done.load(Relaxed) {
                if Command::new("/bin/true").status().is_ok() {
                    figures.unrelated.fetch_add(1, Relaxed);
                }
            }
        })
    };

    let start = Instant::now();
    let (mut next_stop, mut next_kill) = (start + STOP_EVERY, start + KILL_EVERY);
    let mut checker = Checker::default();
    let mut violations = Vec::new();
    while start.elapsed() < duration {
        thread::sleep(Duration::from_secs(1));
        let now = Instant::now();
        {
            let mut d = daemon.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            if now >= next_kill {
                d.kill();
                thread::sleep(Duration::from_secs(1));
                *d = Daemon::start(&bin, &policy, &figures, &log)?;
                figures.restarts.fetch_add(1, Relaxed);
                next_kill = now + KILL_EVERY;
            } else if now >= next_stop {
                d.signal(libc::SIGSTOP);
                thread::sleep(STOP_FOR);
                d.signal(libc::SIGCONT);
                d.back = Instant::now();
                figures.stops.fetch_add(1, Relaxed);
                next_stop = now + STOP_EVERY;
            }
            violations.extend(checker.check(&d));
        }
        for v in violations.iter().skip(checker.reported) {
            println!("  VIOLATION at {:?}: {v}", start.elapsed());
        }
        checker.reported = violations.len();
    }
    done.store(true, Relaxed);
    let _ = streams.join();
    let _ = unrelated.join();
    if let Ok(mut d) = daemon.lock() {
        d.kill();
    }
    let f = &figures;
    println!(
        "soak: {} s; {} matching execs, {} unrelated; {} events read; lost: {} ring, {} output; {} restarts (kill -9), {} stops, {} reader stalls",
        start.elapsed().as_secs(),
        f.matching.load(Relaxed),
        f.unrelated.load(Relaxed),
        f.events.load(Relaxed),
        f.lost_ring.load(Relaxed),
        f.lost_output.load(Relaxed),
        f.restarts.load(Relaxed),
        f.stops.load(Relaxed),
        f.stalls.load(Relaxed),
    );
    println!(
        "soak: {} checks of {} processes; peak daemon RSS {} KiB, peak open files {}, peak jobs {}; {} violations",
        checker.checks,
        checker.seen,
        checker.peak_rss,
        checker.peak_fds,
        checker.peak_jobs,
        violations.len()
    );
    crate::bench::kit::remove_cgroup_tree(ROOT);
    if !violations.is_empty() {
        bail!(
            "{} invariant violations; the events are in {}",
            violations.len(),
            log.display()
        );
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// A running daemon and the thread that reads (and now and then stalls on)
/// its events.
struct Daemon {
    child: Child,
    /// When it last came back (started, or continued after a stop): the
    /// clock of "governed within 1 s".
    back: Instant,
}

impl Daemon {
    fn start(
        bin: &Path,
        policy: &Path,
        figures: &Arc<Figures>,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("opening the soak's event log")?;
        let mut child = Command::new(bin)
            .args(["watch", "--backend", "ebpf", "--ring-buffer-size", "65536"])
            .arg("--policy")
            .arg(policy)
            .args(["--cgroup-root", ROOT, "--output-buffer", "64K"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting watch")?;
        let out = child.stdout.take().context("watch's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let figures = Arc::clone(figures);
        thread::spawn(move || {
            let mut next_stall = Instant::now() + STALL_EVERY;
            let mut started = Some(tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                figures.events.fetch_add(1, Relaxed);
                let _ = writeln!(log, "{line}");
                if line.contains("\"event\":\"started\"")
                    && let Some(tx) = started.take()
                {
                    let _ = tx.send(());
                }
                if line.contains("\"event\":\"lost\"") {
                    let count = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["count"].as_u64())
                        .unwrap_or(0);
                    if line.contains("\"reason\":\"output\"") {
                        figures.lost_output.fetch_add(count, Relaxed);
                    } else {
                        figures.lost_ring.fetch_add(count, Relaxed);
                    }
                }
                if Instant::now() >= next_stall {
                    figures.stalls.fetch_add(1, Relaxed);
                    thread::sleep(STALL_FOR);
                    next_stall = Instant::now() + STALL_EVERY;
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .context("watch did not start within 30 s")?;
        Ok(Daemon {
            child,
            back: Instant::now(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bursts of matching processes with mixed lifetimes.
fn matching_load(probe: &Path, done: &AtomicBool, figures: &Figures) {
    let mut children: Vec<Child> = Vec::new();
    let mut round: u64 = 0;
    while !done.load(Relaxed) {
        round += 1;
        // A burst of 5 to 60 (a ladder, a reconnect), then a pause.
        let burst = 5 + (round * 37 % 56) as usize;
        for i in 0..burst {
            let life = 0.2 + ((round * 13 + i as u64 * 7) % 58) as f64 / 10.0;
            if let Ok(c) = Command::new(probe)
                .arg(format!("{life:.1}"))
                .stdout(Stdio::null())
                .spawn()
            {
                figures.matching.fetch_add(1, Relaxed);
                children.push(c);
            }
        }
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        thread::sleep(Duration::from_millis(300 + (round * 91 % 900)));
    }
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[derive(Default)]
struct Checker {
    /// Matching processes: pid → (start time in ticks, first seen).
    procs: HashMap<u32, (u64, Instant)>,
    /// Job directories seen empty: path → since.
    empty: HashMap<PathBuf, Instant>,
    checks: u64,
    seen: u64,
    reported: usize,
    peak_rss: u64,
    peak_fds: u64,
    peak_jobs: u64,
}

impl Checker {
    fn check(&mut self, daemon: &Daemon) -> Vec<String> {
        self.checks += 1;
        let mut bad = Vec::new();
        let now = Instant::now();
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(ROOT.trim_start_matches('/'));
        let hierarchy = if cpu.is_dir() {
            cpu
        } else {
            Path::new("/sys/fs/cgroup").join(ROOT.trim_start_matches('/'))
        };
        // Every matching process, governed in time.
        let mut alive = HashMap::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if !stat.contains(&format!("({PROBE})")) {
                continue;
            }
            let rest = stat.rsplit(')').next().unwrap_or_default();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // Ended or ending (v1 shows an exiting task in the root
            // cgroup): not a process to govern any more.
            let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
            if fields.first() == Some(&"Z") || flags & PF_EXITING != 0 {
                continue;
            }
            let start: u64 = fields.get(19).and_then(|s| s.parse().ok()).unwrap_or(0);
            let first = match self.procs.get(&pid) {
                Some(&(s, first)) if s == start => first,
                _ => {
                    self.seen += 1;
                    now
                }
            };
            alive.insert(pid, (start, first));
            let since = now.duration_since(first.max(daemon.back));
            if since < GOVERN_WITHIN {
                continue;
            }
            let cgroups = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            let Some(path) = cgroups
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .find(|p| p.starts_with(&format!("{ROOT}/")))
            else {
                bad.push(format!("process {pid} ungoverned for {since:?}"));
                continue;
            };
            let quota = quota_of(&hierarchy, path.trim_start_matches(ROOT));
            if quota.as_deref() != Some(QUOTA) && quota.is_some() {
                bad.push(format!("process {pid} in {path} with quota {quota:?}"));
            }
        }
        self.procs = alive;
        // No job cgroup left empty for long.
        let mut jobs = 0;
        for entry in fs::read_dir(&hierarchy).into_iter().flatten().flatten() {
            let path = entry.path();
            if !path.is_dir() || entry.file_name() == ".staging" {
                continue;
            }
            jobs += 1;
            let empty =
                fs::read_to_string(path.join("cgroup.procs")).is_ok_and(|s| s.trim().is_empty());
            if empty {
                let since = *self.empty.entry(path.clone()).or_insert(now);
                if now.duration_since(since) > EMPTY_JOB_FOR {
                    bad.push(format!(
                        "{} empty for {:?}",
                        path.display(),
                        now.duration_since(since)
                    ));
                    self.empty.insert(path, now);
                }
            } else {
                self.empty.remove(&path);
            }
        }
        self.empty.retain(|p, _| p.is_dir());
        self.peak_jobs = self.peak_jobs.max(jobs);
        // The daemon's size.
        let pid = daemon.pid();
        let rss = vm_field(pid, "VmRSS:").unwrap_or(0);
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        self.peak_rss = self.peak_rss.max(rss);
        self.peak_fds = self.peak_fds.max(fds);
        if rss > RSS_MAX_KIB {
            bad.push(format!("daemon RSS {rss} KiB"));
        }
        if fds > 64 + 2 * jobs {
            bad.push(format!("daemon holds {fds} files for {jobs} jobs"));
        }
        bad
    }
}

/// The CPU quota of the cgroup at `rel` under the hierarchy's root dir
/// (v1 `cpu.cfs_quota_us`, v2 `cpu.max`'s first field); `None` if gone.
fn quota_of(hierarchy: &Path, rel: &str) -> Option<String> {
    let dir = hierarchy.join(rel.trim_start_matches('/'));
    fs::read_to_string(dir.join("cpu.cfs_quota_us"))
        .or_else(|_| fs::read_to_string(dir.join("cpu.max")))
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
}
