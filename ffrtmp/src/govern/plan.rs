//! What `run`, `attach` and `watch` share before a workload is placed:
//! making the job cgroup with its limits, deciding which per-process
//! settings may be applied (nice below 0 and a lowered oom_score_adj need
//! privileges), and the nice fallback when CPU limits cannot be applied.
//! Nothing here touches the workload; failures are collected, not fatal,
//! so each entry point can report them (`degraded`) or refuse (`--strict`).
use super::{
    Cap, Context, Existing, GovernError, JobCgroup, has_cap,
    job::{self, Home},
    ledger::MadeBy,
    pid_in_cgroup,
    process::oom_score_adj_of,
    reap_empty, scope,
};
use crate::{
    errors::chain,
    events::{Degraded, Fallback},
    limits::{Applied, JobId, LimitName, Limits, Nice, OomScoreAdj, Tier},
};

/// Nice applied when CPU limits cannot be (lower priority than default).
pub(crate) const NICE_FALLBACK: i32 = 10;

/// A job ready for its workload.
#[derive(Debug)]
pub(crate) struct Plan {
    pub cgroup: Option<JobCgroup>,
    /// Cgroup limits read back, and every refusal (cgroup or per-process).
    pub applied: Applied,
    /// Nice to set on the workload (asked, or the fallback).
    pub nice: Option<i32>,
    pub oom_score_adj: Option<i32>,
    /// What stands in for refused CPU limits: nice 10, or nothing.
    pub cpu_fallback: Fallback,
    /// The job's tier, when it has one ([`Plan::labelled`]).
    pub tier: Option<Tier>,
    /// What else was not done, about no limit.
    notes: Vec<Degraded>,
}

impl Plan {
    /// Creates the job cgroup and applies `limits`. The only error is a job
    /// id in use by a live job; `resident`, a process already in that job
    /// (re-attach), makes it an update instead.
    pub(crate) fn make(
        ctx: &Context,
        job_id: &JobId,
        limits: &Limits,
        resident: Option<u32>,
    ) -> Result<Self, GovernError> {
        let mut applied = Applied::default();
        let mut cgroup = None;
        // One job id, one job: a scope's too (`attach`, `watch`).
        // (Its directory under the root is found by making it.)
        if let Some(Home::Scope { dir, .. }) = job::scope(ctx, job_id.as_str()).map(|j| j.home) {
            return Err(GovernError::JobIdInUse(dir));
        }
        if ctx.root.is_some() {
            // Leftovers are reaped once the workload runs, off the start-up
            // path, unless one holds this job id.
            let create = |existing| JobCgroup::create(ctx, job_id, limits, existing);
            let created = match create(Existing::Refuse) {
                Err(GovernError::JobIdInUse(_))
                    if resident
                        .zip(ctx.job_path(job_id))
                        .is_some_and(|(pid, path)| pid_in_cgroup(pid, &path)) =>
                {
                    create(Existing::Update)
                }
                Err(GovernError::JobIdInUse(_)) if !reap_empty(ctx).is_empty() => {
                    create(Existing::Refuse)
                }
                other => other,
            };
            match created {
                Ok((cg, a)) => {
                    cgroup = Some(cg);
                    applied = a;
                }
                Err(e @ GovernError::JobIdInUse(_)) => return Err(e),
                Err(e) => {
                    let reason = chain(&e).to_string();
                    for limit in cgroup_limits(limits) {
                        applied.fail(limit, format!("no job cgroup: {reason}"));
                    }
                }
            }
        } else {
            for limit in cgroup_limits(limits) {
                applied.fail(
                    limit,
                    "unprivileged mode: no cgroup (not root, no delegated cgroup subtree)".into(),
                );
            }
        }
        Ok(Self::finish(limits, applied, cgroup))
    }

    /// Job `job_id` as a transient systemd scope ([`scope`]). The only
    /// error is [`GovernError::JobIdInUse`] (the scope exists) or systemd
    /// not answering; its refusals are the limits' failures.
    pub(crate) fn in_scope(
        ctx: &Context,
        systemd: &mut scope::Systemd,
        job_id: &JobId,
        limits: &Limits,
        request: &scope::Request<'_>,
    ) -> Result<Self, GovernError> {
        let mount = ctx.layout.v2.as_ref().ok_or(GovernError::NoCgroups)?;
        // One job id, one job: a `run` job's under the root too.
        if let Some(Home::Tree { dirs, .. }) = job::in_tree(ctx, job_id.as_str()).map(|j| j.home) {
            let path = dirs.into_iter().next().unwrap_or_default();
            return Err(GovernError::JobIdInUse(path));
        }
        match systemd.start_scope(mount, job_id, request, limits) {
            Ok((path, dir, applied)) => Ok(Self::finish(
                limits,
                applied,
                Some(JobCgroup::of_scope(path, dir)),
            )),
            Err(scope::ScopeError::Exists(unit)) => Err(GovernError::JobIdInUse(unit.into())),
            Err(e) => Err(GovernError::Scope(e)),
        }
    }

    /// A job without a cgroup, for `why`: its cgroup limits are refused.
    pub(crate) fn without_cgroup(limits: &Limits, why: &str) -> Self {
        let mut applied = Applied::default();
        for limit in cgroup_limits(limits) {
            applied.fail(limit, why.into());
        }
        Self::finish(limits, applied, None)
    }

    /// `run` and `attach` on a systemd host ([`Context::scopes`]) when no
    /// subtree was delegated to us: job `job_id` as a scope holding `pids`
    /// (the first is the process whose unit it goes beside: `attach`'s
    /// target, then the descendants asked for; `run`'s wrapper, whose
    /// workload then starts inside), tied to its unit by `tie`. A process
    /// in a user manager's tree, or a systemd that does not answer, leaves
    /// the job without a cgroup (said in its limits' failures); the only
    /// error is the job id in use.
    pub(crate) fn scoped(
        ctx: &Context,
        job_id: &JobId,
        limits: &Limits,
        pids: &[u32],
        description: String,
        tie: scope::Tie,
    ) -> Result<Self, GovernError> {
        let paths = pids
            .first()
            .map(|&pid| super::cgroup_paths_of(pid))
            .unwrap_or_default();
        let Some(origin) = scope::Origin::of(&paths) else {
            return Ok(Self::without_cgroup(
                limits,
                "its cgroup could not be read from /proc",
            ));
        };
        if !origin.movable() {
            return Ok(Self::without_cgroup(
                limits,
                &format!(
                    "process {} is in {}, a user manager's tree, which belongs to its user (ffrtmp run as that user governs there)",
                    pids[0],
                    origin.cgroup.as_str()
                ),
            ));
        }
        let request = scope::Request {
            pids,
            origin: &origin,
            description,
            tie,
        };
        let planned = scope::Systemd::new()
            .and_then(|mut systemd| Self::in_scope(ctx, &mut systemd, job_id, limits, &request));
        match planned {
            Err(e @ GovernError::JobIdInUse(_)) => Err(e),
            Err(e) => Ok(Self::without_cgroup(limits, &chain(&e).to_string())),
            ok => ok,
        }
    }

    /// The per-process settings, once the cgroup part is known.
    fn finish(limits: &Limits, mut applied: Applied, cgroup: Option<JobCgroup>) -> Self {
        // Decided here, not found out in `run`'s child (where a refusal
        // could only fail the start): the capability each one needs.
        let mut nice = limits.nice.map(|Nice(n)| n);
        if let Some(n) = nice
            && n < 0
            && !has_cap(Cap::SysNice)
        {
            applied.fail(
                LimitName::Nice,
                format!("nice {n} (below 0) needs CAP_SYS_NICE, which ffrtmp does not have"),
            );
            nice = None;
        }
        let mut oom_score_adj = limits.oom_score_adj.map(|OomScoreAdj(v)| v);
        if let Some(v) = oom_score_adj
            && !has_cap(Cap::SysResource)
            && oom_score_adj_of(std::process::id()).is_ok_and(|own| v < own)
        {
            applied.fail(
                LimitName::OomScoreAdj,
                format!(
                    "lowering oom_score_adj to {v} needs CAP_SYS_RESOURCE, which ffrtmp does not have"
                ),
            );
            oom_score_adj = None;
        }
        let cpu_failed = applied.failures.iter().any(|f| nice_stands_in(f.limit));
        let cpu_fallback = if cpu_failed && nice.is_none() && limits.nice.is_none() {
            nice = Some(NICE_FALLBACK);
            Fallback::Nice10
        } else {
            Fallback::None
        };
        Plan {
            cgroup,
            applied,
            nice,
            oom_score_adj,
            cpu_fallback,
            tier: None,
            notes: Vec::new(),
        }
    }

    /// The job was made by `by`, in `tier` (whose limits are in the plan
    /// already): both are recorded in the ledger, for `status`, the
    /// pressure watch and a restarted daemon ([`job`]).
    #[must_use]
    pub(crate) fn labelled(mut self, by: MadeBy, tier: Option<Tier>) -> Self {
        self.tier = tier;
        if let Some(cg) = &self.cgroup
            && let Err(e) = cg.label(by, tier)
        {
            self.notes.push(Degraded::note(format!(
                "job {}: recording its tier: {}; its limits are in force, but status and the pressure watch do not see its tier",
                cg.name(),
                chain(&e)
            )));
        }
        self
    }

    /// One `degraded` event body per refusal, with its fallback.
    pub(crate) fn degradations(&self) -> Vec<Degraded> {
        self.applied
            .failures
            .iter()
            .map(|f| Degraded {
                limit: Some(f.limit),
                reason: f.reason.clone(),
                fallback: if nice_stands_in(f.limit) {
                    self.cpu_fallback
                } else {
                    Fallback::None
                },
            })
            .chain(self.notes.iter().cloned())
            .collect()
    }
}

/// The limits whose refusal the nice fallback stands in for: those that
/// decide the job's CPU share (a batch job whose kernel has no `cpu.idle`,
/// before 5.15, runs at nice 10 instead). A refused burst allowance leaves
/// the quota in force; a lower nice would only cost the stream more.
fn nice_stands_in(limit: LimitName) -> bool {
    matches!(
        limit,
        LimitName::CpuMax | LimitName::CpuWeight | LimitName::CpuIdle
    )
}

/// The names of the requested limits that need a cgroup.
fn cgroup_limits(l: &Limits) -> Vec<LimitName> {
    l.names()
        .into_iter()
        .filter(|n| n.row().cgroup.is_some())
        .collect()
}
