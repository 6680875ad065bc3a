//! The job maker: the second half of governing a new process, on a thread
//! of its own.
//!
//! `watch` governs a new exec in two moves. The first, on the thread that
//! reads the kernel's ring ([`super::governor`]), puts it into its rule's
//! pre-made staging cgroup: one write per hierarchy, and its limits are in
//! force. The second, here, makes its own job cgroup (a few `mkdir`s and
//! limit writes with read-backs, ~0.3–0.5 ms), moves it there, sets nice
//! and oom_score_adj, and says so (`governed`).
//!
//! Why a thread: measured with `cargo xtask bench govern`, a transcoder
//! started while the reading thread was making another's job waited for it
//! (a ladder of renditions starts at once); and a thread that has just
//! spent half a millisecond of CPU loses the scheduler's favour (EEVDF
//! lag), so the next exec's wake-up no longer preempts the new process's
//! loader (~1 ms). The reading thread now only ever does the short first
//! move. Without the thread (it could not be started), jobs are made
//! inline, as before.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering::Relaxed},
    mpsc,
};

use tokio::sync::mpsc as async_mpsc;

use super::{
    Events, MadeJobs,
    host::{Made, MakeJobs, Unmade},
    note,
    seen::{Seen, monotonic_ns},
};
use crate::{
    errors::chain,
    events::{self, Degraded, Event, Fallback, ProcessId, Source, Timestamp},
    govern::{
        Context, GovernError, JobCgroup, job,
        layout::CgroupPath,
        ledger::MadeBy,
        place::{ByRule, IfNotMoved, NotPlaced, Placement, governed, place},
        plan::Plan,
        reap_job,
        scope::{self, Systemd},
        target::Target,
    },
    limits::JobId,
    policy::template::sanitise,
};

/// Makes jobs: shared by the governor (inline) and the maker thread.
pub(crate) struct Maker {
    pub(super) ctx: Context,
    /// CLOCK_MONOTONIC ns of the last governing (the reaper waits for quiet).
    pub(super) last_governed: Arc<AtomicU64>,
    /// With scopes: the connection to systemd (used by one thread at a
    /// time: the maker's, or the governor's once that has stopped).
    systemd: Option<Mutex<Systemd>>,
}

impl Maker {
    pub(super) fn new(ctx: Context, last_governed: Arc<AtomicU64>) -> Self {
        let systemd = if ctx.scopes {
            Systemd::new()
                .map_err(|e| tracing::warn!("{}", chain(&e)))
                .ok()
                .map(Mutex::new)
        } else {
            None
        };
        Maker {
            ctx,
            last_governed,
            systemd,
        }
    }

    /// The job's plan: its scope, or its cgroup under the root.
    fn plan(&self, job: &Unmade<Target>, job_id: &JobId) -> Result<Plan, GovernError> {
        if !self.ctx.scopes {
            return Plan::make(&self.ctx, job_id, &job.limits, None);
        }
        let Some(systemd) = &self.systemd else {
            return Err(GovernError::NoCgroups);
        };
        // A staged process keeps every limit of its rule: one systemd
        // cannot set keeps it in staging (checked before systemd moves it).
        if job.staged_report.is_some() {
            let missing = scope::unsupported(&job.limits);
            if !missing.is_empty() {
                let why = missing
                    .iter()
                    .map(|(l, why)| format!("{l}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(GovernError::Scope(scope::ScopeError::Refused {
                    unit: scope::unit_name(job_id.as_str()),
                    reason: why,
                }));
            }
        }
        let from = job.from.clone().unwrap_or_else(|| scope::Origin {
            cgroup: CgroupPath::new("/").expect("\"/\" is a cgroup path"),
        });
        let mut systemd = systemd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let request = scope::Request {
            pids: &[job.pid],
            origin: &from,
            description: format!(
                "ffrtmp job {job_id} (rule {}, process {})",
                job.rule, job.pid
            ),
            tie: scope::Tie::Bound,
        };
        Plan::in_scope(&self.ctx, &mut systemd, job_id, &job.limits, &request)
    }
    /// Makes `job`'s own job and moves it there.
    fn make_one(&self, job: Unmade<Target>) -> Made<JobCgroup> {
        let pid = job.pid;
        let (comm, start_ticks) = (job.target.comm.clone(), job.target.start_ticks);
        let kernel_tracked = matches!(job.seen, Seen::Kernel { .. });
        let retried = job.attempts > 0;
        let mut follow = None;
        let (events, retry) = match self.make_job(&job, &mut follow) {
            Ok(events) => (events, None),
            Err(Unplaced { why, cgroup }) => {
                // Said once; the tries after it are silent until one works.
                let events = if job.attempts == 0 && job.staged_report.is_none() {
                    vec![note(format!(
                        "process {pid} ({}) not governed yet: {why}; tried again while it runs",
                        job.rule
                    ))]
                } else if job.attempts == 0 {
                    self.left_in_staging(&job, cgroup, &why)
                } else {
                    tracing::debug!(pid, attempt = job.attempts, why, "job still not made");
                    Vec::new()
                };
                (events, Some(job.park()))
            }
        };
        Made {
            pid,
            follow,
            comm,
            start_ticks,
            kernel_tracked,
            events,
            retried: retried && retry.is_none(),
            retry,
        }
    }

    /// The job's plan under its id; two processes for one job id (a shared
    /// stream key, say): the second gets its own job, named after both.
    /// On a retry, an empty job of that id is most likely this process's
    /// own earlier try, left behind at the fd limit (removing it takes the
    /// ledger's lock, a descriptor): it is removed, or the process waits in
    /// staging until it can be — measured in the 5.10 VM, a retry named the
    /// job `ffmpeg-1695-1695` instead.
    fn plan_unique(&self, job: &Unmade<Target>) -> Result<Plan, GovernError> {
        match self.plan(job, &job.job_id) {
            Err(GovernError::JobIdInUse(_)) => {
                let id = job.job_id.as_str();
                let busy = job::open(&self.ctx, id).is_some_and(|j| !j.pids().is_empty());
                if job.attempts > 0 && !busy {
                    reap_job(&self.ctx, id);
                    return self.plan(job, &job.job_id);
                }
                let unique = sanitise(&format!(
                    "{}-{}",
                    &id[..id.len().min(JobId::MAX_LEN - 11)],
                    job.pid
                ));
                self.plan(job, &unique)
            }
            other => other,
        }
    }

    /// The second half of governing: the process's own job cgroup, the
    /// move into it, nice and oom_score_adj, and the `governed` event.
    /// `Err`: a staged process stays in staging (its job is not made, or
    /// could not hold every limit the staging cgroup holds).
    fn make_job(
        &self,
        job: &Unmade<Target>,
        follow: &mut Option<(String, Option<JobCgroup>)>,
    ) -> Result<Events, Unplaced> {
        let Unmade {
            pid,
            rule,
            tier,
            job_id,
            limits: _,
            seen,
            target,
            staged_at,
            staged_report,
            from: _,
            attempts: _,
        } = job;
        let pid = *pid;
        if target.has_exited() {
            return Ok(Vec::new()); // it ended in staging: no job to make
        }
        self.busy();
        let plan = match self.plan_unique(job) {
            Ok(p) => p.labelled(MadeBy::Watch, *tier),
            Err(e) if staged_report.is_some() => {
                return Err(Unplaced {
                    why: chain(&e).to_string(),
                    cgroup: None,
                });
            }
            Err(e) => {
                return Ok(vec![note(format!(
                    "process {pid} ({rule}) not governed: {}",
                    chain(&e)
                ))]);
            }
        };
        holds_staged(&plan, staged_report.as_ref())?;
        let job = plan
            .cgroup
            .as_ref()
            .map_or_else(|| job_id.to_string(), |c| c.name().to_string());
        let mut events: Events = plan
            .degradations()
            .into_iter()
            .map(|d| Event::new(Timestamp::now(), Source::Ffrtmp, d))
            .collect();
        // A staged process that cannot join its own job stays where it is.
        let if_not_moved = if staged_report.is_some() {
            IfNotMoved::Refuse
        } else {
            IfNotMoved::Degrade
        };
        let Some(placement) = placed(place(target, plan, &[], if_not_moved), &job)? else {
            return Ok(Vec::new()); // it ended first: nothing to report
        };
        let latency_us = staged_at.or_else(|| seen.since_exec_us());
        for d in &placement.degradations {
            events.push(Event::new(Timestamp::now(), Source::Ffrtmp, d.clone()));
        }
        events.push(Event::new(
            Timestamp::now(),
            Source::Ffrtmp,
            placement.governed(
                ProcessId {
                    pid,
                    start_ticks: Some(target.start_ticks),
                },
                &job,
                self.ctx.mode,
                Some(ByRule {
                    rule: rule.clone(),
                    adopted: matches!(seen, Seen::Scan(_)),
                    latency_us,
                }),
            ),
        ));
        *follow = Some((job, placement.cgroup));
        self.busy();
        Ok(events)
    }

    fn busy(&self) {
        if let Some(now) = monotonic_ns() {
            self.last_governed.store(now, Relaxed);
        }
    }

    /// Its own job could not be made or joined: the process stays in its
    /// rule's staging cgroup, under the rule's limits (shared with whatever
    /// else is staged there), and that is what is reported.
    fn left_in_staging(&self, job: &Unmade<Target>, cgroup: Option<String>, why: &str) -> Events {
        let Some((path, limits)) = &job.staged_report else {
            return Vec::new(); // not reached: only staged ones stay
        };
        let (pid, rule) = (job.pid, &job.rule);
        vec![
            Event::new(
                Timestamp::now(),
                Source::Ffrtmp,
                Degraded {
                    limit: None,
                    reason: format!(
                        "process {pid} ({rule}): its job cgroup: {why}; it stays in {path}, under the rule's limits, and is tried again while it runs"
                    ),
                    fallback: Fallback::Staging,
                },
            ),
            Event::new(
                Timestamp::now(),
                Source::Ffrtmp,
                governed(
                    ProcessId {
                        pid,
                        start_ticks: Some(job.target.start_ticks),
                    },
                    &cgroup.unwrap_or_else(|| job.job_id.to_string()),
                    Some(path),
                    self.ctx.mode,
                    limits.clone(),
                    job.tier,
                    Some(ByRule {
                        rule: rule.clone(),
                        adopted: false,
                        latency_us: job.staged_at,
                    }),
                ),
            ),
        ]
    }
}

impl MakeJobs for Maker {
    type Held = Target;
    type Cgroup = JobCgroup;

    fn make(&self, job: Unmade<Target>) -> Made<JobCgroup> {
        self.make_one(job)
    }

    fn mark_busy(&self) {
        self.busy();
    }
}

/// A staged process moves only into a job that holds at least every limit
/// its staging cgroup holds: measured at the fd limit, jobs whose limit
/// writes failed (EMFILE) took processes out of their rule's limits. (A
/// scope holds it already — systemd moved it when it made the scope, after
/// `plan` checked that every limit has a property — so what systemd set
/// differently is reported instead.)
fn holds_staged(
    plan: &Plan,
    staged_report: Option<&(String, events::Limits)>,
) -> Result<(), Unplaced> {
    let moved = plan.cgroup.as_ref().is_some_and(JobCgroup::is_scope);
    let Some((_, staged)) = staged_report.filter(|_| !moved) else {
        return Ok(());
    };
    let staged = staged.names();
    let missing: Vec<String> = plan
        .applied
        .failures
        .iter()
        .filter(|f| staged.contains(&f.limit))
        .map(|f| format!("{}: {}", f.limit, f.reason))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if let Some(cg) = &plan.cgroup {
        cg.remove_if_empty();
    }
    Err(Unplaced {
        why: missing.join("; "),
        cgroup: None,
    })
}

/// What a placement came to: placed; `None`, gone (it ended first); or,
/// for another try, not placed (it could not be checked — /proc unreadable
/// at the fd limit: not known to be gone — or not moved into `job`).
fn placed(
    placement: Result<Placement, NotPlaced>,
    job: &str,
) -> Result<Option<Placement>, Unplaced> {
    match placement {
        Ok(p) => Ok(Some(p)),
        Err(NotPlaced::Gone { error, .. }) if !error.is_bad_input() => Err(Unplaced {
            why: chain(&error).to_string(),
            cgroup: None,
        }),
        Err(NotPlaced::Gone { .. }) => Ok(None),
        Err(NotPlaced::NotMoved { reason }) => Err(Unplaced {
            why: reason,
            cgroup: Some(job.to_string()),
        }),
    }
}

/// Why a staged process stays in staging, and the job it was meant for.
struct Unplaced {
    why: String,
    cgroup: Option<String>,
}

/// The maker thread's two ends: jobs in, made jobs out.
pub(super) type Ends<M> = (
    mpsc::Sender<Unmade<<M as MakeJobs>::Held>>,
    MadeJobs<Made<<M as MakeJobs>::Cgroup>>,
);

/// Starts the maker thread; its two ends, or `None` if it cannot be
/// started (jobs are then made inline).
pub(super) fn spawn<M: MakeJobs>(maker: Arc<M>) -> Option<Ends<M>> {
    let (jobs, rx) = mpsc::channel::<Unmade<M::Held>>();
    // Async, so that `watch`'s event loop wakes when a job is made.
    let (tx, made) = async_mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("ffrtmp-jobs".into())
        .spawn(move || {
            // Ends when the governor (the sender) or the event loop (the
            // receiver) is gone.
            while let Ok(job) = rx.recv() {
                if tx.send(maker.make(job)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "no job maker thread; making jobs inline"))
        .ok()?;
    Some((jobs, made))
}
