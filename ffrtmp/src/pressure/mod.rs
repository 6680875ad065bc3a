//! Pressure: whether live jobs get the CPU they need, watched while they
//! run, and what each tier asks of the node.
//!
//! A live encode paced to realtime sleeps between frames while it keeps
//! up. When the CPUs are busy with other work its threads instead wait on
//! a run queue; a stream that waits too long falls behind realtime and
//! never catches up (its source does not wait). So the signal is the share
//! of time a job's threads spend **waiting for a CPU** ([`sample`]): the
//! job's `cpu.pressure` "some" on cgroup v2 with pressure stall
//! information, else its threads' run-queue waits from
//! `/proc/TID/schedstat` (v1 hosts, and kernels booted without PSI). Which
//! one was used is in each event (`signal`). A job with a quota that
//! throttles it waits too; the event says so (`cause: throttled`, from
//! `cpu.stat`), because then the fix is its quota, not the node.
//!
//! [`Watch`] samples every live job (tier `live`, from its record:
//! [`crate::govern::job`]) each [`INTERVAL`] and judges the share over the last
//! [`WINDOW`]: at or above [`AT_RISK`] the job is at risk (one `pressure`
//! event); it is cleared (one `pressure` event with `cleared`) once the
//! share stayed below [`CALM`] for [`CLEAR_AFTER`], or when the job ends.
//! The hysteresis is the rate limit: a job flapping around the threshold
//! yields at most one event per [`CLEAR_AFTER`]. Nothing here moves or
//! limits a process: it only reads, on its own thread (`daemon/`), so a
//! slow /proc never delays governing.
//!
//! [`demand`] sums what each tier uses and would use (`status`: the
//! node's capacity against each tier's demand).
pub(crate) mod sample;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    events::{Cause, Pressure},
    govern::{Context, job::Job},
    limits::Tier,
};
use sample::{Sample, Window};

/// How often live jobs are sampled.
pub(crate) const INTERVAL: Duration = Duration::from_millis(500);
/// The window a job's waiting share is judged over.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// The waiting share at which a live job is at risk. Measured on our
/// 2-CPU host with real 720p30 live encodes (0.8 CPU each there): two of
/// them beside two batch encodes, within capacity under tiers, waited
/// 0.001 (median) to 0.01 (max) of each window and ran at 0.97x; four of
/// them (160 % of the machine) waited 0.46–0.53 and ran at 0.58–0.63x. A
/// saturated node makes every live thread wait `1 - CPUs/threads` of the
/// time, so the jump is steep: 0.1 is ten times the calm maximum.
pub(crate) const AT_RISK: f64 = 0.1;
/// The waiting share below which an at-risk job is calm again.
pub(crate) const CALM: f64 = 0.05;
/// How long a job must stay calm before it is cleared.
pub(crate) const CLEAR_AFTER: Duration = Duration::from_secs(3);
/// The share of a window a job must be throttled for its waits to be
/// blamed on its quota.
const THROTTLED: f64 = 0.05;

/// The pressure watch's state: recent samples of each live job.
#[derive(Default)]
pub(crate) struct Watch {
    jobs: HashMap<String, Watched>,
}

struct Watched {
    job_id: String,
    cgroup: String,
    /// Oldest first; the window's first sample is the oldest kept.
    samples: Vec<Sample>,
    at_risk: bool,
    /// When it was last at or above [`CALM`].
    restless_at: Instant,
}

impl Watch {
    /// Samples `jobs` (only the live ones are watched) and returns the
    /// events due: jobs newly at risk, and jobs cleared (calm again, or
    /// ended while at risk).
    pub(crate) fn step(&mut self, ctx: &Context, jobs: &[Job], now: Instant) -> Vec<Pressure> {
        let mut events = Vec::new();
        let live: HashMap<String, (&Job, (PathBuf, bool))> = jobs
            .iter()
            .filter(|j| j.tier() == Some(Tier::Live))
            .filter_map(|j| Some((j.cgroup.as_str().to_string(), (j, j.cpu_dir(ctx)?))))
            .collect();
        self.jobs.retain(|cgroup, w| {
            let stays = live.contains_key(cgroup);
            if !stays && w.at_risk {
                events.push(w.event(None, true));
            }
            stays
        });
        for (cgroup, (job, dir)) in live {
            let sample = Sample::read(&dir.0, dir.1);
            let watched = self.jobs.entry(cgroup.clone()).or_insert_with(|| Watched {
                job_id: job.id.clone(),
                cgroup,
                samples: Vec::new(),
                at_risk: false,
                restless_at: now,
            });
            watched.samples.push(sample);
            // Keep, as the oldest, the newest sample that is still at least
            // WINDOW older than the latest one.
            while watched.samples.len() > 2
                && watched.samples[1].at + WINDOW <= watched.samples[watched.samples.len() - 1].at
            {
                watched.samples.remove(0);
            }
            let [first, .., last] = watched.samples.as_slice() else {
                continue;
            };
            if last.at.duration_since(first.at) + INTERVAL / 2 < WINDOW {
                continue; // not a whole window yet
            }
            let window = last.since(first);
            tracing::debug!(
                job = watched.job_id,
                waiting = window.waiting,
                usage = window.usage,
                demand = window.demand,
                throttled = window.throttled,
                signal = ?window.signal,
                "live job sampled"
            );
            if window.waiting >= CALM {
                watched.restless_at = now;
            }
            if !watched.at_risk && window.waiting >= AT_RISK {
                watched.at_risk = true;
                events.push(watched.event(Some(window), false));
            } else if watched.at_risk && now.duration_since(watched.restless_at) >= CLEAR_AFTER {
                watched.at_risk = false;
                events.push(watched.event(Some(window), true));
            }
        }
        events
    }
}

impl Watched {
    /// Its `pressure` event; `window` is `None` for a job that ended.
    fn event(&self, window: Option<Window>, cleared: bool) -> Pressure {
        let (waiting, usage, us, throttled, signal) =
            window.map_or((0.0, 0.0, 0, 0.0, crate::events::Signal::Schedstat), |w| {
                (
                    w.waiting,
                    w.usage,
                    (w.seconds * 1e6).round() as u64,
                    w.throttled,
                    w.signal,
                )
            });
        Pressure {
            job_id: self.job_id.clone(),
            cgroup: self.cgroup.clone(),
            tier: Tier::Live,
            waiting: round3(waiting),
            usage_cpus: round3(usage),
            window_us: us,
            cause: if throttled >= THROTTLED {
                Cause::Throttled
            } else {
                Cause::Contended
            },
            signal,
            cleared,
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What the jobs of one tier use and ask for.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct TierDemand {
    pub jobs: usize,
    /// CPUs used over the window.
    pub usage_cpus: f64,
    /// CPUs they would have used without waiting (usage + waits).
    pub demand_cpus: f64,
    /// Jobs whose waiting share was at or above [`AT_RISK`].
    pub at_risk: usize,
}

/// Samples `jobs` twice, `window` apart, and sums each tier (`none`: jobs
/// without a tier).
pub(crate) fn demand(
    ctx: &Context,
    jobs: &[Job],
    window: Duration,
) -> BTreeMap<String, TierDemand> {
    let jobs: Vec<(&Job, (PathBuf, bool))> = jobs
        .iter()
        .filter_map(|j| Some((j, j.cpu_dir(ctx)?)))
        .collect();
    let first: Vec<Sample> = jobs
        .iter()
        .map(|(_, (dir, v2))| Sample::read(dir, *v2))
        .collect();
    std::thread::sleep(window);
    let mut tiers: BTreeMap<String, TierDemand> = Tier::ALL
        .iter()
        .map(|t| (t.as_str().to_string(), TierDemand::default()))
        .collect();
    for ((job, (dir, v2)), earlier) in jobs.iter().zip(&first) {
        let w = Sample::read(dir, *v2).since(earlier);
        let t = tiers
            .entry(job.tier().map_or("none", Tier::as_str).to_string())
            .or_default();
        t.jobs += 1;
        t.usage_cpus = round3(t.usage_cpus + w.usage);
        t.demand_cpus = round3(t.demand_cpus + w.demand);
        t.at_risk += usize::from(w.waiting >= AT_RISK);
    }
    tiers
}
