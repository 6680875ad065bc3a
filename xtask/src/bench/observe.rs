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
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::kit::{Watcher, peak_rss_during, vm_field};
use crate::build_release;

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) fn run(root: &Path, execs: usize, rounds: usize, idle: Duration) -> anyhow::Result<()> {
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
