//! `cargo xtask bench observe`: what the observer costs and whether it keeps
//! up, measured on this machine (figures go to docs/BENCHMARKS.md).
//!
//! - An exec storm: one forker thread per core, each running `/bin/true`
//!   back to back (fork+exec+wait). Rounds alternate without and with
//!   `watch --backend ebpf` running; the ratio of exec rates is the total
//!   cost of observation (kernel probes plus the user-side consumer, which
//!   competes for the same cores).
//! - Kernel-side cost per probe call, from the kernel's own BPF statistics
//!   (`kernel.bpf_stats_enabled`, read from the programs' fdinfo).
//! - Generated vs observed execs (and `lost`), from the event stream.
//! - `watch`'s CPU (schedstat, ns) and RSS while idle and during the storm.
use std::{
    collections::HashSet,
    ffi::OsStr,
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

use crate::build_release;

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(clap::Subcommand)]
pub enum Bench {
    /// `ffrtmp run` and `cgexec` against a bare exec; attach latency;
    /// wrapper RSS while a job runs.
    Run {
        /// Runs per measurement.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Also time `BIN run -- /bin/true` in the same rounds: another
        /// build of ffrtmp (another link order, say), side by side.
        #[arg(long, value_name = "BIN")]
        against: Option<std::path::PathBuf>,
    },
    /// `watch` governing new matching processes, against cgrulesengd:
    /// exec→in-cgroup latency idle and under an exec storm; daemon RSS and
    /// idle CPU.
    Govern {
        /// Matching execs per measurement.
        #[arg(long, default_value_t = 500)]
        execs: usize,
        /// Seconds of idle CPU measurement.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
    },
    /// Live streams on an oversubscribed node, with real ffmpeg: no
    /// governor, equal weights, tiers, the live tier oversubscribed.
    Qos {
        /// Seconds of media per live encode.
        #[arg(long, default_value_t = 20)]
        secs: u64,
    },
    /// Exec storm with and without `watch`; loss, probe cost, CPU and RSS.
    Observe {
        /// Execs per forker per round.
        #[arg(long, default_value_t = 2000)]
        execs: usize,
        /// Rounds of (without, with) watch.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Seconds of idle measurement.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
    },
}

pub fn run(root: &Path, bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Run { runs, against } => run_bench(root, runs, against.as_deref()),
        Bench::Qos { secs } => crate::bench_qos::run(root, secs),
        Bench::Govern { execs, idle_secs } => {
            crate::bench_govern::run(root, execs, Duration::from_secs(idle_secs))
        }
        Bench::Observe {
            execs,
            rounds,
            idle_secs,
        } => observe(root, execs, rounds, Duration::from_secs(idle_secs)),
    }
}

/// What one storm did and cost.
struct Storm {
    wall: Duration,
    /// CPU time (user + system) of this process and its reaped children:
    /// the forkers and every `/bin/true`, including the probes' work,
    /// which the kernel charges to the exec'ing task.
    cpu: Duration,
    pids: Vec<u32>,
}

impl Storm {
    fn rate(&self) -> f64 {
        self.pids.len() as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_exec_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.pids.len() as f64
    }
}

/// User + system CPU time of this process and its reaped children.
fn cpu_time() -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let mut total = Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: rusage is plain integers; all-zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct we pass.
        if unsafe { libc::getrusage(who, &raw mut ru) } == 0 {
            total += tv(ru.ru_utime) + tv(ru.ru_stime);
        }
    }
    total
}

/// Fork+exec `/bin/true` `per_forker` times on each of `forkers` threads.
fn storm(forkers: usize, per_forker: usize) -> anyhow::Result<Storm> {
    let cpu0 = cpu_time();
    let start = Instant::now();
    let threads: Vec<_> = (0..forkers)
        .map(|_| {
            thread::spawn(move || -> std::io::Result<Vec<u32>> {
                let mut pids = Vec::with_capacity(per_forker);
                for _ in 0..per_forker {
                    let mut c = Command::new("/bin/true").stdout(Stdio::null()).spawn()?;
                    pids.push(c.id());
                    c.wait()?;
                }
                Ok(pids)
            })
        })
        .collect();
    let mut pids = Vec::new();
    for t in threads {
        let part = t
            .join()
            .map_err(|_| anyhow::anyhow!("a forker panicked"))??;
        pids.extend(part);
    }
    Ok(Storm {
        wall: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu0),
        pids,
    })
}

/// A running `watch` writing its events to a file.
pub(crate) struct Watcher {
    child: Child,
    out: PathBuf,
}

impl Watcher {
    fn start(bin: &Path, out: PathBuf) -> anyhow::Result<Self> {
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
    fn prog_stats(&self) -> Vec<(u64, u64, u64)> {
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn observe(root: &Path, execs: usize, rounds: usize, idle: Duration) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("bench observe needs root (it loads eBPF programs)");
    }
    let bin = build_release(root)?;
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let forkers = thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let stats_before = fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    println!("bench observe: {forkers} forkers x {execs} execs x {rounds} rounds");

    let result = (|| -> anyhow::Result<()> {
        let mut base_rates = Vec::new();
        let mut watch_rates = Vec::new();
        let mut base_cpu = Vec::new();
        let mut watch_cpu = Vec::new();
        let (mut generated_total, mut observed_total, mut lost_total) = (0usize, 0usize, 0u64);
        let mut storm_cpu = Vec::new();
        let mut probe_share = Vec::new();
        let mut probe_ns_per_exec = Vec::new();
        let mut storm_peak_rss = 0;
        let mut start_hwm = 0;
        let mut idle_report = None;
        for round in 0..rounds {
            // Alternate which runs first, so drift between the two halves
            // of a round does not always favour the same side.
            let watch_first = round % 2 == 1;
            let mut baseline = || -> anyhow::Result<()> {
                let s = storm(forkers, execs)?;
                base_rates.push(s.rate());
                base_cpu.push(s.cpu_per_exec_us());
                Ok(())
            };
            if !watch_first {
                baseline()?;
            }

            let w = Watcher::start(&bin, dir.join(format!("observe-{round}.jsonl")))?;
            start_hwm = start_hwm.max(vm_field(w.pid(), "VmHWM:").unwrap_or(0));
            if round == 0 {
                let cpu0 = w.cpu_ns()?;
                let t0 = Instant::now();
                let ((), rss) = peak_rss_during(w.pid(), || thread::sleep(idle));
                let cpu = (w.cpu_ns()? - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
                idle_report = Some((cpu, rss));
            }
            let progs_before = w.prog_stats();
            let cpu0 = w.cpu_ns()?;
            let (storm_result, rss) = peak_rss_during(w.pid(), || storm(forkers, execs));
            let s = storm_result?;
            storm_peak_rss = storm_peak_rss.max(rss);
            watch_cpu.push(s.cpu_per_exec_us());
            let (t, pids) = (s.wall, s.pids);
            let cpu = (w.cpu_ns()? - cpu0) as f64 / t.as_nanos() as f64 * 100.0;
            watch_rates.push(pids.len() as f64 / t.as_secs_f64());
            storm_cpu.push(cpu);
            let progs_after = w.prog_stats();
            let probe_ns: u64 = progs_after
                .iter()
                .zip(progs_before.iter())
                .map(|((_, _, n1), (_, _, n0))| n1 - n0)
                .sum();
            probe_share.push(probe_ns as f64 / (t.as_nanos() as f64 * forkers as f64) * 100.0);
            probe_ns_per_exec.push(probe_ns as f64 / pids.len() as f64);
            // Let the consumer catch up before stopping.
            thread::sleep(Duration::from_millis(200));
            let events = w.stop()?;

            if watch_first {
                baseline()?;
            }
            println!(
                "  round {round}: without watch {:.0} execs/s ({:.0} us CPU/exec), with watch {:.0} execs/s ({:.0} us CPU/exec)",
                base_rates[round], base_cpu[round], watch_rates[round], watch_cpu[round]
            );
            let generated: HashSet<u32> = pids.into_iter().collect();
            let observed: HashSet<u64> = events
                .iter()
                .filter(|e| e["event"] == "exec" && e["filename"] == "/bin/true")
                .filter_map(|e| e["pid"].as_u64())
                .filter(|p| generated.contains(&(*p as u32)))
                .collect();
            let lost: u64 = events
                .iter()
                .filter(|e| e["event"] == "lost")
                .filter_map(|e| e["count"].as_u64())
                .sum();
            generated_total += generated.len();
            observed_total += observed.len();
            lost_total += lost;
        }
        let base = median(&mut base_rates);
        let with = median(&mut watch_rates);
        let (idle_cpu, idle_rss) = idle_report.context("no idle measurement")?;
        println!("  exec rate without watch (median): {base:.0} execs/s");
        println!("  exec rate with watch    (median): {with:.0} execs/s");
        println!(
            "  throughput cost (median ratio): {:.2} %",
            (base - with) / base * 100.0
        );
        let (bc, wc) = (median(&mut base_cpu), median(&mut watch_cpu));
        println!(
            "  CPU per fork+exec (median): {bc:.1} us without, {wc:.1} us with watch: {:+.2} %",
            (wc - bc) / bc * 100.0
        );
        println!(
            "  kernel-side cost (bpf_stats): {:.0} ns per exec (both probes), {:.3} % of the forkers' CPU time (median)",
            median(&mut probe_ns_per_exec),
            median(&mut probe_share)
        );
        println!("  generated {generated_total}, observed {observed_total}, lost {lost_total}");
        println!("  watch idle: CPU {idle_cpu:.4} % over {idle:?}, peak RSS {idle_rss} KiB");
        println!(
            "  watch during storm: CPU {:.2} % of one core (median), peak RSS {storm_peak_rss} KiB",
            median(&mut storm_cpu)
        );
        println!("  watch start-up peak (VmHWM): {start_hwm} KiB");
        Ok(())
    })();
    fs::write(BPF_STATS, stats_before.trim()).context("restoring kernel.bpf_stats_enabled")?;
    result
}

/// Median wall time of each command over `runs` rounds; every round runs
/// each command once, in turn, so that drift in the machine's speed (large
/// on a VM) affects them all alike. Every execution must succeed.
/// Untimed rounds before [`medians_interleaved`] times.
const WARM_UP_ROUNDS: usize = 20;

fn medians_interleaved(
    runs: usize,
    commands: &[(&str, Vec<&OsStr>)],
) -> anyhow::Result<Vec<Duration>> {
    let mut times: Vec<Vec<Duration>> = commands.iter().map(|_| Vec::with_capacity(runs)).collect();
    // Untimed rounds first: a binary's first runs after it was written (or
    // after the page cache dropped it) were up to 5 ms slower here, and
    // that is the state of the page cache, not the binary.
    for _ in 0..WARM_UP_ROUNDS {
        for (program, args) in commands {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("starting {program}"))?;
        }
    }
    for _ in 0..runs {
        for ((program, args), times) in commands.iter().zip(&mut times) {
            let start = Instant::now();
            let status = Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("starting {program}"))?;
            times.push(start.elapsed());
            if !status.success() {
                bail!("{program} {args:?} failed: {status}");
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect())
}

/// Median time from spawning `cmd()` to its `governed` event on stderr; the
/// command must then succeed.
fn median_until_governed(
    runs: usize,
    mut cmd: impl FnMut() -> Command,
) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = cmd().stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let mut governed = None;
        for line in BufReader::new(stderr).lines() {
            if line?.contains("\"event\":\"governed\"") {
                governed = Some(start.elapsed());
                break;
            }
        }
        let status = child.wait()?;
        match governed {
            Some(t) if status.success() => times.push(t),
            _ => bail!("{:?}: no governed event, or it failed: {status}", cmd()),
        }
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn run_bench(root: &Path, runs: usize, against: Option<&Path>) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("bench run needs root (it creates cgroups)");
    }
    crate::packages::ensure(&[("cgexec", "cgroup-tools")])?;
    let bin = build_release(root)?;
    println!("bench run: {runs} runs each, interleaved, median wall time");
    // cgexec needs its cgroup made first (cgcreate), in the same hierarchies.
    let group = format!("ffrtmp-bench-cgexec-{}", std::process::id());
    crate::run_command(Command::new("cgcreate").args(["-g", &format!("cpu,memory:/{group}")]))?;
    let cgexec_group = format!("cpu,memory:/{group}");
    let limits = ["--cpu-max", "100000 100000", "--memory-max", "512M"];
    let bin_str = bin.to_str().context("the binary's path is not UTF-8")?;
    let against_str = against
        .map(|p| p.to_str().context("--against's path is not UTF-8"))
        .transpose()?;
    let mut commands: Vec<(&str, Vec<&OsStr>)> = vec![
        ("/bin/true", vec![]),
        // The floor of a supervising wrapper: timeout(1), a small C program
        // that forks, execs and waits.
        ("timeout", ["600", "/bin/true"].map(OsStr::new).to_vec()),
        // The command: a job cgroup for the exit report (cpuacct,
        // memory), no limits.
        (bin_str, ["run", "--", "/bin/true"].map(OsStr::new).to_vec()),
        // With limits, as operators run it: also the cpu hierarchy and the
        // limits written and read back.
        (
            bin_str,
            ["run"]
                .iter()
                .chain(&limits)
                .chain(&["--", "/bin/true"])
                .map(OsStr::new)
                .collect(),
        ),
        (
            "cgexec",
            ["-g", &cgexec_group, "/bin/true"].map(OsStr::new).to_vec(),
        ),
    ];
    // Right after this build's own `run`, so that both follow the same
    // command: a `run` that follows cgexec was 6 ms slower here (the
    // kernel's cgroup locks leave their fast path after a migration).
    if let Some(other) = against_str {
        commands.insert(
            3,
            (other, ["run", "--", "/bin/true"].map(OsStr::new).to_vec()),
        );
    }
    let medians = medians_interleaved(runs, &commands);
    let _ = Command::new("cgdelete")
        .args(["-g", &cgexec_group])
        .status();
    let mut medians = medians?;
    let other = against.map(|_| medians.remove(3));
    let [bare, floor, plain, wrapped, cgexec] = medians[..] else {
        bail!("five commands were timed");
    };
    println!("  /bin/true:                         {:>8.3} ms", ms(bare));
    println!(
        "  timeout 600 /bin/true (floor):     {:>8.3} ms  (+{:.3} ms)",
        ms(floor),
        ms(floor) - ms(bare)
    );
    println!(
        "  ffrtmp run -- /bin/true:           {:>8.3} ms  (+{:.3} ms, x{:.1})",
        ms(plain),
        ms(plain) - ms(bare),
        plain.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "  ffrtmp run (cpu+memory limits):    {:>8.3} ms  (+{:.3} ms, x{:.1})",
        ms(wrapped),
        ms(wrapped) - ms(bare),
        wrapped.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "  cgexec (existing cgroup):          {:>8.3} ms  (+{:.3} ms)",
        ms(cgexec),
        ms(cgexec) - ms(bare)
    );
    if let (Some(other), Some(t)) = (against, other) {
        println!(
            "  {} run -- /bin/true: {:>8.3} ms  (+{:.3} ms)",
            other.display(),
            ms(t),
            ms(t) - ms(bare)
        );
    }

    // Attach: from the call to the limits applied, i.e. to the `governed`
    // event (written once every limit is in force and read back).
    let mut sleeper = Command::new("/bin/sleep").arg("600").spawn()?;
    let pid = sleeper.id().to_string();
    let mut n = 0;
    let attach = median_until_governed(runs.min(100), || {
        n += 1;
        let mut c = Command::new(&bin);
        c.args([
            "attach",
            "--pid",
            &pid,
            "--detach",
            "--job-id",
            &format!("bench-attach-{n}"),
        ]);
        c.args(["--cpu-max", "50000 100000", "--memory-max", "256M"]);
        c
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let attach = attach?;
    println!(
        "  ffrtmp attach (call to `governed`): {:>8.3} ms",
        ms(attach)
    );

    // Wrapper RSS while a job runs.
    let mut wrapper = Command::new(&bin)
        .args(["run", "--cpu-max", "100000 100000", "--", "/bin/sleep", "2"])
        .stderr(Stdio::null())
        .spawn()?;
    let wpid = wrapper.id();
    let ((), rss) = peak_rss_during(wpid, || thread::sleep(Duration::from_millis(1500)));
    wrapper.wait()?;
    println!("  ffrtmp run wrapper RSS while its job runs: {rss} KiB");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
