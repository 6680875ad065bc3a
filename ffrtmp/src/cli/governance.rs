//! What `run` and `attach` share: deciding, before anything starts, what can
//! be applied (the job cgroup and its limits, nice, oom_score_adj), saying
//! what cannot (`degraded`, or a refusal with `--strict`), and the
//! `governed` report once a pid is in place.
use std::{io, process::ExitCode};

use serde_json::json;
use tokio::{
    runtime::Runtime,
    signal::unix::{Signal, SignalKind, signal},
};

use super::{
    EXIT_USAGE,
    govern_args::{EventOut, GovernArgs},
    run::EXIT_WRAPPER,
};
use crate::{
    events::{Event, Governed, Sink, Source, Timestamp},
    govern::{
        Applied, Context, Failure, GovernError, JobCgroup, ProcsWriter, Stats,
        layout::LayoutError,
        limits::JobId,
        plan::Plan,
        process::{nice_of, oom_score_adj_of},
        reap_empty_besides,
    },
};

/// SIGTERM, SIGINT and SIGHUP: the signals on which a wrapper detaches.
pub type DetachSignals = [Signal; 3];

/// How `attach` (when it stays) begins: its event output, then its event
/// loop with the detach signals installed before any set-up (a signal
/// during set-up must detach, not kill the wrapper with the default
/// action). `run` does the same without an event loop
/// ([`super::spawn::block_detach_signals`]).
pub fn begin(args: &GovernArgs) -> Result<(EventOut, Runtime, DetachSignals), ExitCode> {
    let sink = args.emitter().map_err(|e| {
        eprintln!("ffrtmp: error: opening the events file: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    let (runtime, signals) = runtime_with_signals()?;
    Ok((sink, runtime, signals))
}

/// The wrappers' event loop (one thread) with the detach signals installed.
fn runtime_with_signals() -> Result<(Runtime, DetachSignals), ExitCode> {
    let fail = |what: &str, e: io::Error| {
        eprintln!("ffrtmp: error: {what}: {e}");
        ExitCode::from(EXIT_WRAPPER)
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
pub struct Prepared {
    pub job_id: JobId,
    pub ctx: Context,
    pub cgroup: Option<JobCgroup>,
    pub applied: Applied,
    /// Nice to set on the workload (asked, or the fallback).
    pub nice: Option<i32>,
    pub oom_score_adj: Option<i32>,
}

/// Decides and prepares; on refusal returns the exit code (after saying why).
///
/// `resident`: a process that may already be in the job (attach); if the
/// job's cgroup exists and holds it, its limits are updated instead of the
/// job id being refused as in use.
pub fn prepare(
    args: &GovernArgs,
    default_job: &str,
    resident: Option<u32>,
    sink: &mut EventOut,
) -> Result<Prepared, ExitCode> {
    let job_id = match &args.job_id {
        Some(j) => j.clone(),
        None => default_job.parse().map_err(|e| fail(EXIT_WRAPPER, &e))?,
    };
    let ctx = Context::detect(args.cgroup_root.as_deref()).map_err(|e| match e {
        GovernError::Layout(LayoutError::BadRoot(_)) | GovernError::RootOutsideHierarchy(..) => {
            fail(EXIT_USAGE, &e)
        }
        e => fail(EXIT_WRAPPER, &e),
    })?;
    let limits = args.limits();
    let plan = Plan::make(&ctx, &job_id, &limits, resident).map_err(|e| fail(EXIT_USAGE, &e))?;
    if args.strict && !plan.applied.failures.is_empty() {
        for Failure { limit, reason } in &plan.applied.failures {
            eprintln!("ffrtmp: --strict: {limit} cannot be applied: {reason}");
        }
        if let Some(cg) = &plan.cgroup {
            cg.remove_if_empty();
        }
        return Err(ExitCode::from(EXIT_WRAPPER));
    }
    for degraded in plan.degradations() {
        if let Err(e) = sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, degraded)) {
            eprintln!("ffrtmp: warning: writing events: {e}");
        }
    }
    let Plan {
        cgroup,
        applied,
        nice,
        oom_score_adj,
        ..
    } = plan;
    Ok(Prepared {
        job_id,
        ctx,
        cgroup,
        applied,
        nice,
        oom_score_adj,
    })
}

/// Prints the error chain and returns the exit code.
fn fail(code: u8, e: &dyn std::error::Error) -> ExitCode {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("ffrtmp: error: {msg}");
    ExitCode::from(code)
}

impl Prepared {
    /// The job cgroup's `cgroup.procs` files, open for writing (none
    /// without a cgroup).
    pub fn open_procs(&self) -> Result<ProcsWriter, GovernError> {
        match &self.cgroup {
            Some(cg) => cg.procs_writer(),
            None => Ok(ProcsWriter::default()),
        }
    }

    /// Emits `governed` for `pid`, with nice and oom_score_adj read back.
    pub fn report_governed<S: Sink>(&self, pid: u32, sink: &mut S) -> Result<(), S::Error> {
        let mut limits = self.applied.limits.clone();
        if self.nice.is_some()
            && let Ok(n) = nice_of(pid)
        {
            limits.insert("nice".into(), json!(n));
        }
        if self.oom_score_adj.is_some()
            && let Ok(v) = oom_score_adj_of(pid)
        {
            limits.insert("oom_score_adj".into(), json!(v));
        }
        let governed = Governed {
            pid,
            job_id: self.job_id.to_string(),
            cgroup: self.cgroup.as_ref().map(|c| c.path.as_str().to_string()),
            mode: self.ctx.mode.as_str().to_string(),
            limits,
            rule: None,
            adopted: false,
            latency_us: None,
        };
        sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, governed))
    }

    pub fn stats(&self) -> Stats {
        self.cgroup.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    /// The job ended: remove its cgroup if nothing is left in it.
    pub fn finish(&self) {
        if let Some(cg) = &self.cgroup {
            cg.remove_if_empty();
        }
    }

    /// Removes empty job cgroups left by crashed wrappers (never this one:
    /// it is claimed).
    pub fn reap_leftovers(&self) {
        reap_empty_besides(&self.ctx, self.cgroup.as_ref());
    }

    /// Nothing was started: remove the cgroup made for it.
    pub fn abandon(&self) {
        self.finish();
    }

    /// The workload could not join its cgroup: remove it, and return the
    /// limits that had been applied to it (they are not in force).
    pub fn drop_cgroup(&mut self) -> Vec<String> {
        self.finish();
        self.cgroup = None;
        let lost = self.applied.limits.keys().cloned().collect();
        self.applied.limits.clear();
        lost
    }
}
