//! One look at a job's CPU: how long its threads ran and waited for a CPU,
//! and how long its cgroup was throttled; and what two looks say about the
//! time between them.
//!
//! Per thread from `/proc/TID/schedstat` (run time and run-queue wait, ns;
//! any hierarchy, any kernel with schedstats or delay accounting): the
//! threads are the cgroup's `cgroup.threads` (v2) or `tasks` (v1). On v2,
//! when the kernel has pressure stall information, also the cgroup's
//! `cpu.pressure` "some" total: the time at least one of its threads
//! waited, which counts overlapping waits once. Throttling from
//! `cpu.stat` (`throttled_usec`, v1 `throttled_time` ns), which only grows
//! when the job has a quota (`cpu_max`).
use std::{collections::HashMap, fs, path::Path, time::Instant};

use crate::events::Signal;

/// A job's counters at one moment.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub at: Instant,
    /// Per thread: (ns run, ns waited on a run queue).
    threads: HashMap<u32, (u64, u64)>,
    /// `cpu.pressure` "some" total, µs (v2 with PSI).
    psi_some_us: Option<u64>,
    /// Time throttled, µs.
    throttled_us: Option<u64>,
}

/// What happened between two samples of a job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Window {
    pub seconds: f64,
    /// CPUs used (run time over wall time).
    pub usage: f64,
    /// CPUs it would have used had it not waited: run plus wait time over
    /// wall time (summed over threads).
    pub demand: f64,
    /// Share of the window its threads spent waiting for a CPU, 0..=1
    /// (PSI "some" where there is PSI, else summed waits, capped at 1).
    pub waiting: f64,
    pub signal: Signal,
    /// Share of the window the job was throttled by its quota.
    pub throttled: f64,
}

impl Sample {
    /// Reads job cgroup `dir` (its v2 directory, or its directory in v1's
    /// cpu hierarchy). A file that cannot be read counts as nothing: a
    /// job that has just ended reads as idle, never as an error.
    pub(crate) fn read(dir: &Path, v2: bool) -> Self {
        let at = Instant::now();
        let list = if v2 { "cgroup.threads" } else { "tasks" };
        let threads = fs::read_to_string(dir.join(list))
            .unwrap_or_default()
            .split_ascii_whitespace()
            .filter_map(|t| t.parse::<u32>().ok())
            .filter_map(|tid| Some((tid, schedstat(tid)?)))
            .collect();
        let psi_some_us = v2
            .then(|| fs::read_to_string(dir.join("cpu.pressure")).ok())
            .flatten()
            .and_then(|text| psi_some_total(&text));
        let throttled_us = fs::read_to_string(dir.join("cpu.stat"))
            .ok()
            .and_then(|text| throttled_us(&text));
        Sample {
            at,
            threads,
            psi_some_us,
            throttled_us,
        }
    }

    /// The window from `earlier` to this sample. A thread seen only now
    /// started within it: all its time counts; one seen only before has
    /// ended: its last part is not known and counts as nothing.
    pub(crate) fn since(&self, earlier: &Sample) -> Window {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        let (mut run, mut wait) = (0u64, 0u64);
        for (tid, &(r, w)) in &self.threads {
            let (r0, w0) = earlier.threads.get(tid).copied().unwrap_or((0, 0));
            run += r.saturating_sub(r0);
            wait += w.saturating_sub(w0);
        }
        let share = |ns: u64| ns as f64 / 1e9 / seconds;
        let (waiting, signal) = match (self.psi_some_us, earlier.psi_some_us) {
            (Some(now), Some(then)) => (
                (now.saturating_sub(then) as f64 / 1e6 / seconds).min(1.0),
                Signal::Psi,
            ),
            _ => (share(wait).min(1.0), Signal::Schedstat),
        };
        let throttled = match (self.throttled_us, earlier.throttled_us) {
            (Some(now), Some(then)) => (now.saturating_sub(then) as f64 / 1e6 / seconds).min(1.0),
            _ => 0.0,
        };
        Window {
            seconds,
            usage: share(run),
            demand: share(run + wait),
            waiting,
            signal,
            throttled,
        }
    }
}

/// `/proc/TID/schedstat`: ns on a CPU, ns waiting on a run queue.
fn schedstat(tid: u32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?;
    let mut words = text.split_ascii_whitespace();
    let run = words.next()?.parse().ok()?;
    let wait = words.next()?.parse().ok()?;
    Some((run, wait))
}

/// The `total=` of the `some` line of a pressure file, µs.
fn psi_some_total(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Throttled time from `cpu.stat`: v2 `throttled_usec` (µs), v1
/// `throttled_time` (ns).
fn throttled_us(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        let value: u64 = value.trim().parse().ok()?;
        match key {
            "throttled_usec" => Some(value),
            "throttled_time" => Some(value / 1000),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_kernels_files_are_read() {
        let psi = "some avg10=1.50 avg60=0.20 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=99\n";
        assert_eq!(psi_some_total(psi), Some(123_456));
        assert_eq!(psi_some_total("full total=1\n"), None);
        let v2 = "usage_usec 100\nuser_usec 50\nsystem_usec 50\nnr_periods 10\nnr_throttled 2\nthrottled_usec 4000\nnr_bursts 0\n";
        assert_eq!(throttled_us(v2), Some(4000));
        let v1 = "nr_periods 10\nnr_throttled 2\nthrottled_time 4000000\n";
        assert_eq!(throttled_us(v1), Some(4000));
        let own = schedstat(std::process::id()).expect("this kernel has /proc/PID/schedstat");
        assert!(own.0 > 0);
    }

    #[test]
    fn a_window_counts_new_threads_whole_and_caps_the_share() {
        let t0 = Instant::now();
        let earlier = Sample {
            at: t0,
            threads: HashMap::from([(1, (1_000_000_000, 0)), (2, (0, 0))]),
            psi_some_us: None,
            throttled_us: Some(0),
        };
        let later = Sample {
            at: t0 + Duration::from_secs(1),
            threads: HashMap::from([
                (1, (1_500_000_000, 400_000_000)),
                (3, (250_000_000, 900_000_000)),
            ]),
            psi_some_us: None,
            throttled_us: Some(100_000),
        };
        let w = later.since(&earlier);
        assert!((w.usage - 0.75).abs() < 1e-9, "{w:?}");
        assert!((w.demand - 2.05).abs() < 1e-9, "{w:?}");
        assert!((w.waiting - 1.0).abs() < 1e-9, "capped: {w:?}");
        assert_eq!(w.signal, Signal::Schedstat);
        assert!((w.throttled - 0.1).abs() < 1e-9, "{w:?}");
        let psi = |us| Sample {
            psi_some_us: Some(us),
            ..later.clone()
        };
        let w = psi(700_000).since(&Sample {
            psi_some_us: Some(400_000),
            ..earlier
        });
        assert_eq!(w.signal, Signal::Psi);
        assert!((w.waiting - 0.3).abs() < 1e-9, "{w:?}");
    }
}
