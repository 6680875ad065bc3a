//! Placing a process in its job: the one routine `attach` and the daemon's
//! job maker use (`run`'s child places itself before exec, `cli/spawn.rs`,
//! and reads back with [`Placement::confirm`]), and the one constructor of
//! the `governed` event all three emit.
//!
//! The order is the plan's: the whole thread group (and the descendants
//! asked for) into the job cgroup, then nice on every thread, then
//! oom_score_adj; before each step the [`Target`] is checked to still be
//! the same live process, and every value reported is read back from the
//! kernel. A refusal becomes a `degraded` body, or — when the caller asks
//! ([`IfNotMoved::Refuse`]) — no placement at all.
use super::{
    JobCgroup, Mode,
    plan::Plan,
    process::{ProcessError, nice_of, oom_score_adj_of, set_nice_all_threads, set_oom_score_adj},
    target::{Target, TargetError},
};
use crate::{
    errors::chain,
    events::{self, Degraded, Fallback, Governed, ProcessId},
    limits::{InForce, LimitName, Named, Nice, OomScoreAdj, Tier},
};

/// What to do when the target cannot join its job cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IfNotMoved {
    /// Place nothing ([`NotPlaced::NotMoved`]): `attach --strict`, or a
    /// process that stays in its staging cgroup.
    Refuse,
    /// Go on without the cgroup: its limits are reported as `degraded`.
    Degrade,
}

/// Why a process was not placed. The job cgroup made for it is removed
/// (when empty, which it is: the process never joined it or has exited).
#[derive(Debug)]
pub(crate) enum NotPlaced {
    /// It stopped being the process it was (it exited) before `before`.
    Gone {
        before: &'static str,
        error: TargetError,
    },
    /// It could not join its cgroup, and the caller asked to refuse then.
    NotMoved { reason: String },
}

/// A process in its job.
#[derive(Debug)]
pub(crate) struct Placement {
    /// Its job cgroup (`None`: none could be made, or it could not join).
    pub cgroup: Option<JobCgroup>,
    /// What is in force, read back: cgroup limits, nice, oom_score_adj.
    pub limits: events::Limits,
    /// What the placement could not do, one `degraded` body each (the
    /// plan's own refusals are [`Plan::degradations`]).
    pub degradations: Vec<Degraded>,
    /// The job's tier (the plan's).
    pub tier: Option<Tier>,
}

/// Places `target` (and `also`: its descendants, whose failures are not
/// its own) into `plan`'s job.
pub(crate) fn place(
    target: &Target,
    plan: Plan,
    also: &[u32],
    if_not_moved: IfNotMoved,
) -> Result<Placement, NotPlaced> {
    let Plan {
        cgroup,
        applied,
        nice,
        oom_score_adj,
        tier,
        ..
    } = plan;
    let mut placement = Placement {
        cgroup,
        limits: applied.limits,
        degradations: Vec::new(),
        tier,
    };
    move_in(target, &mut placement, also, if_not_moved)?;
    per_process(target, &mut placement, also, nice, oom_score_adj)?;
    Ok(placement)
}

/// The process gone (its identity no longer checks out) before `step`:
/// the cgroup made for it goes.
fn gone(placement: &Placement, before: &'static str, error: TargetError) -> NotPlaced {
    placement.remove_cgroup();
    NotPlaced::Gone { before, error }
}

/// Moves the whole thread group into the job's cgroup, if it has one. Not
/// moved: refused (a staged process stays where it is), or its cgroup
/// limits reported as not in force.
fn move_in(
    target: &Target,
    placement: &mut Placement,
    also: &[u32],
    if_not_moved: IfNotMoved,
) -> Result<(), NotPlaced> {
    let pid = target.pid;
    let Some(cg) = &placement.cgroup else {
        return Ok(());
    };
    if let Err(error) = target.check() {
        return Err(gone(placement, "moving it into its cgroup", error));
    }
    let moved = cg.add(pid);
    for &other in also {
        // A descendant may have exited meanwhile.
        let _ = cg.add(other);
    }
    let Err(e) = moved else {
        return Ok(());
    };
    if let Err(error) = target.check() {
        return Err(gone(placement, "moving it into its cgroup", error));
    }
    let reason = chain(&e).to_string();
    placement.remove_cgroup();
    if if_not_moved == IfNotMoved::Refuse {
        return Err(NotPlaced::NotMoved { reason });
    }
    // Its cgroup limits are not in force: say so, report none.
    placement.cgroup = None;
    for limit in std::mem::take(&mut placement.limits).names() {
        placement.degradations.push(Degraded {
            limit: Some(limit),
            reason: format!("process {pid} could not be moved into its cgroup: {reason}"),
            fallback: Fallback::None,
        });
    }
    Ok(())
}

/// A per-process limit: how it is set on a process and read back, and
/// where its read-back goes.
struct Setting {
    limit: LimitName,
    step: &'static str,
    set: fn(u32, i32) -> Result<i32, ProcessError>,
    read: fn(u32) -> std::io::Result<i32>,
    slot: fn(&mut InForce) -> &mut Option<i32>,
}

/// The per-process limits, each with its value when it was asked for.
fn settings(nice: Option<i32>, oom_score_adj: Option<i32>) -> [(Setting, Option<i32>); 2] {
    [
        (
            Setting {
                limit: Nice::NAME,
                step: "setting nice",
                set: set_nice_all_threads,
                read: nice_of,
                slot: Nice::in_force,
            },
            nice,
        ),
        (
            Setting {
                limit: OomScoreAdj::NAME,
                step: "setting oom_score_adj",
                set: set_oom_score_adj,
                read: oom_score_adj_of,
                slot: OomScoreAdj::in_force,
            },
            oom_score_adj,
        ),
    ]
}

/// Per-process limits: each set on the live target, then read back.
fn per_process(
    target: &Target,
    placement: &mut Placement,
    also: &[u32],
    nice: Option<i32>,
    oom_score_adj: Option<i32>,
) -> Result<(), NotPlaced> {
    let pid = target.pid;
    for (setting, value) in settings(nice, oom_score_adj) {
        let Some(value) = value else { continue };
        if let Err(error) = target.check() {
            return Err(gone(placement, setting.step, error));
        }
        let result = (setting.set)(pid, value);
        for &other in also {
            let _ = (setting.set)(other, value);
        }
        match result {
            Ok(_) => {
                if let Ok(now) = (setting.read)(pid) {
                    *(setting.slot)(&mut placement.limits) = Some(now);
                }
            }
            Err(e) => placement.degradations.push(Degraded {
                limit: Some(setting.limit),
                reason: chain(&e).to_string(),
                fallback: Fallback::None,
            }),
        }
    }
    Ok(())
}

impl Placement {
    /// `run`'s workload placed itself (its child joined the cgroup and set
    /// nice and oom_score_adj before exec): read back what is in force.
    pub(crate) fn confirm(plan: Plan, pid: u32) -> Self {
        let mut limits = plan.applied.limits;
        for (setting, value) in settings(plan.nice, plan.oom_score_adj) {
            if value.is_some()
                && let Ok(now) = (setting.read)(pid)
            {
                *(setting.slot)(&mut limits) = Some(now);
            }
        }
        Placement {
            cgroup: plan.cgroup,
            limits,
            degradations: Vec::new(),
            tier: plan.tier,
        }
    }

    /// The `governed` event of `process` in this placement.
    pub(crate) fn governed(
        &self,
        process: ProcessId,
        job_id: &str,
        mode: Mode,
        by: Option<ByRule>,
    ) -> Governed {
        governed(
            process,
            job_id,
            self.cgroup.as_ref().map(|c| c.path.as_str()),
            mode,
            self.limits.clone(),
            self.tier,
            by,
        )
    }

    fn remove_cgroup(&self) {
        if let Some(cg) = &self.cgroup {
            cg.remove_if_empty();
        }
    }
}

/// How `watch` came to govern a process (null for `run` and `attach`).
#[derive(Clone, Debug)]
pub(crate) struct ByRule {
    pub rule: String,
    pub adopted: bool,
    pub latency_us: Option<u64>,
}

/// The one constructor of a `governed` event.
pub(crate) fn governed(
    process: ProcessId,
    job_id: &str,
    cgroup: Option<&str>,
    mode: Mode,
    limits: events::Limits,
    tier: Option<Tier>,
    by: Option<ByRule>,
) -> Governed {
    let (rule, adopted, latency_us) = match by {
        Some(b) => (Some(b.rule), b.adopted, b.latency_us),
        None => (None, false, None),
    };
    Governed {
        pid: process.pid,
        process_key: process.key(),
        job_id: job_id.to_string(),
        cgroup: cgroup.map(String::from),
        mode,
        limits,
        tier,
        rule,
        adopted,
        latency_us,
    }
}
