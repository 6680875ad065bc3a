//! What `run` and `attach` share: deciding, before anything starts, what can
//! be applied (the job cgroup and its limits, nice, oom_score_adj), saying
//! what cannot (`degraded`, or a refusal with `--strict`), and, once the
//! workload is in place (`govern::place`), its `governed` event, its exit
//! report and its cgroup's removal.
use std::{io, process::ExitCode};

use tokio::{
    runtime::Runtime,
    signal::unix::{Signal, SignalKind, signal},
};

use super::{
    exit::{self, fail},
    govern_args::{EventOut, GovernArgs},
};
use crate::{
    events::{Event, JobReport, ProcessId, Source, Timestamp},
    govern::{
        Context, GovernError, ProcsWriter,
        ledger::MadeBy,
        place::{IfNotMoved, NotPlaced, Placement, place},
        plan::Plan,
        reap_empty_besides,
        scope::Tie,
        target::Target,
    },
    limits::{Failure, JobId},
    observe::proc::Stat,
};

/// SIGTERM, SIGINT and SIGHUP: the signals on which a wrapper detaches.
pub(super) type DetachSignals = [Signal; 3];

/// How `attach` (when it stays) begins: its event output, then its event
/// loop with the detach signals installed before any set-up (a signal
/// during set-up must detach, not kill the wrapper with the default
/// action). `run` does the same without an event loop
/// ([`super::spawn::block_detach_signals`]).
pub(super) fn begin(args: &GovernArgs) -> Result<(EventOut, Runtime, DetachSignals), ExitCode> {
    let sink = events_of(args)?;
    let (runtime, signals) = runtime_with_signals()?;
    Ok((sink, runtime, signals))
}

/// The event output, or exit 2 when `--events FILE` cannot be opened.
pub(super) fn events_of(args: &GovernArgs) -> Result<EventOut, ExitCode> {
    // The node's identity, read now rather than at the first event.
    crate::events::node::node();
    args.emitter().map_err(|e| {
        eprintln!("ffrtmp: error: opening the events file: {e}");
        ExitCode::from(exit::USAGE)
    })
}

/// The wrappers' event loop (one thread) with the detach signals installed.
fn runtime_with_signals() -> Result<(Runtime, DetachSignals), ExitCode> {
    let fail = |what: &str, e: io::Error| {
        eprintln!("ffrtmp: error: {what}: {e}");
        ExitCode::from(exit::WRAPPER)
    };
    // I/O only (signals, the child's exit, pidfds): wrappers use no timers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| fail("starting the event loop", e))?;
    let signals = {
        let _context = runtime.enter();
        let install = |kind| signal(kind).map_err(|e| fail("installing a signal handler", e));
        [
            install(SignalKind::terminate())?,
            install(SignalKind::interrupt())?,
            install(SignalKind::hangup())?,
        ]
    };
    Ok((runtime, signals))
}

/// A job ready for its workload.
pub(super) struct Prepared {
    pub job_id: JobId,
    pub ctx: Context,
    pub plan: Plan,
}

/// Decides and prepares; on refusal returns the exit code (after saying why).
///
/// `resident`: the process to attach (and its descendants asked for), which
/// may already be in the job; if the job's cgroup exists and holds it, its
/// limits are updated instead of the job id being refused as in use. On a
/// systemd host they make up the job's scope (`govern/scope.rs`).
pub(super) fn prepare(
    args: &GovernArgs,
    default_job: &str,
    resident: &[u32],
    sink: &mut EventOut,
) -> Result<Prepared, ExitCode> {
    let job_id = match &args.job_id {
        Some(j) => j.clone(),
        None => default_job.parse().map_err(|e| fail(exit::WRAPPER, &e))?,
    };
    let ctx = Context::detect(args.cgroup_root.as_deref()).map_err(|e| {
        if e.is_usage() {
            fail(exit::USAGE, &e)
        } else {
            fail(exit::WRAPPER, &e)
        }
    })?;
    let limits = args.limits();
    // Jobs on a systemd host are its scopes, unless a unit delegated us a
    // subtree: `attach`'s holds the target, `run`'s this wrapper, whose
    // workload then starts in it (nothing can be handed to systemd between
    // clone and exec).
    let plan = match resident {
        [target, ..] if ctx.scopes => {
            let about = format!("ffrtmp job {job_id} (attach, process {target})");
            Plan::scoped(&ctx, &job_id, &limits, resident, about, Tie::Bound)
        }
        [] if ctx.scopes && ctx.root.is_none() => {
            let wrapper = std::process::id();
            let about = format!("ffrtmp job {job_id} (run, wrapper {wrapper})");
            Plan::scoped(&ctx, &job_id, &limits, &[wrapper], about, Tie::Part)
        }
        _ => Plan::make(&ctx, &job_id, &limits, resident.first().copied()),
    }
    .map_err(|e| fail(exit::USAGE, &e))?
    .labelled(
        if resident.is_empty() {
            MadeBy::Run
        } else {
            MadeBy::Attach
        },
        args.tier,
    );
    let prepared = Prepared { job_id, ctx, plan };
    if args.strict && !prepared.plan.applied.failures.is_empty() {
        for Failure { limit, reason } in &prepared.plan.applied.failures {
            eprintln!("ffrtmp: --strict: {limit} cannot be applied: {reason}");
        }
        prepared.abandon();
        return Err(ExitCode::from(exit::WRAPPER));
    }
    for degraded in prepared.plan.degradations() {
        sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, degraded));
    }
    Ok(prepared)
}

impl Prepared {
    /// The job cgroup's `cgroup.procs` files, open for writing (none
    /// without a cgroup), for `run`'s child to join before exec.
    pub(super) fn open_procs(&self) -> Result<ProcsWriter, GovernError> {
        match &self.plan.cgroup {
            Some(cg) => cg.procs_writer(),
            None => Ok(ProcsWriter::default()),
        }
    }

    /// Nothing was started: remove the cgroup made for it.
    pub(super) fn abandon(&self) {
        if let Some(cg) = &self.plan.cgroup {
            cg.remove_if_empty();
        }
    }

    /// `run`: the workload `pid` placed itself before exec.
    pub(super) fn spawned(self, pid: u32) -> Placed {
        Placed {
            pid,
            // Our child, not reaped: its stat is there even if it ended.
            start_ticks: Stat::read(pid).ok().map(|s| s.start_ticks),
            placement: Placement::confirm(self.plan, pid),
            job_id: self.job_id,
            ctx: self.ctx,
        }
    }

    /// `attach`: places `target` (and `also`, its descendants). With
    /// `--strict` a target that cannot join its cgroup is refused.
    pub(super) fn place(
        self,
        target: &Target,
        also: &[u32],
        strict: bool,
    ) -> Result<Placed, NotPlaced> {
        let if_not_moved = if strict {
            IfNotMoved::Refuse
        } else {
            IfNotMoved::Degrade
        };
        let placement = place(target, self.plan, also, if_not_moved)?;
        Ok(Placed {
            pid: target.pid,
            start_ticks: Some(target.start_ticks),
            placement,
            job_id: self.job_id,
            ctx: self.ctx,
        })
    }
}

/// A workload in its job, followed until it exits or the wrapper detaches.
pub(super) struct Placed {
    pub pid: u32,
    /// Its start time (clock ticks after boot), for its `process_key`.
    pub start_ticks: Option<u64>,
    pub job_id: JobId,
    pub ctx: Context,
    pub placement: Placement,
}

impl Placed {
    /// The workload, as its events name it.
    pub(super) fn process(&self) -> ProcessId {
        ProcessId {
            pid: self.pid,
            start_ticks: self.start_ticks,
        }
    }

    /// Emits what the placement could not do, then `governed`.
    pub(super) fn report_governed(&self, sink: &mut EventOut) {
        for d in &self.placement.degradations {
            sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, d.clone()));
        }
        let governed =
            self.placement
                .governed(self.process(), self.job_id.as_str(), self.ctx.mode, None);
        sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, governed));
    }

    /// The job's exit report, from its cgroup.
    pub(super) fn report(&self) -> JobReport {
        let stats = self
            .placement
            .cgroup
            .as_ref()
            .map(super::super::govern::JobCgroup::stats);
        stats.unwrap_or_default().report(self.job_id.to_string())
    }

    /// The job ended: remove its cgroup if nothing is left in it.
    pub(super) fn finish(&self) {
        if let Some(cg) = &self.placement.cgroup {
            cg.remove_if_empty();
        }
    }

    /// Removes empty job cgroups left by crashed wrappers (never this one:
    /// it is claimed).
    pub(super) fn reap_leftovers(&self) {
        reap_empty_besides(&self.ctx, self.placement.cgroup.as_ref());
    }
}
