//! What `run` and `attach` share: deciding, before anything starts, what can
//! be applied (the job cgroup and its limits, nice, oom_score_adj), saying
//! what cannot (`degraded`, or a refusal with `--strict`), and the
//! `governed` report once a pid is in place.
use std::{fs::File, io, os::fd::OwnedFd, process::ExitCode};

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
    events::{Degraded, Event, Governed, Sink, Source, Timestamp},
    govern::{
        Applied, Context, Existing, Failure, GovernError, JobCgroup, Mode, Stats,
        layout::LayoutError,
        limits::JobId,
        pid_in_cgroup,
        process::{nice_of, oom_score_adj_of},
        reap_empty,
    },
};

/// SIGTERM, SIGINT and SIGHUP: the signals on which a wrapper detaches.
pub type DetachSignals = [Signal; 3];

/// How `run` and `attach` begin: their event output, then their event loop
/// with the detach signals installed before any set-up (a signal during
/// set-up must detach, not kill the wrapper with the default action).
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

/// Nice applied when CPU limits cannot be (lower priority than default).
pub const NICE_FALLBACK: i32 = 10;

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
    let mut applied = Applied::default();
    let mut cgroup = None;
    if ctx.root.is_some() {
        // Leftovers are reaped once the workload runs (Prepared::reap), off
        // the start-up path, unless one holds this job id.
        let create = |existing| JobCgroup::create(&ctx, &job_id, &limits, existing);
        let created = match create(Existing::Refuse) {
            Err(GovernError::JobIdInUse(_))
                if resident
                    .zip(ctx.job_path(&job_id))
                    .is_some_and(|(pid, path)| pid_in_cgroup(pid, &path)) =>
            {
                create(Existing::Update)
            }
            Err(GovernError::JobIdInUse(_)) if !reap_empty(&ctx).is_empty() => {
                create(Existing::Refuse)
            }
            other => other,
        };
        match created {
            Ok((cg, a)) => {
                cgroup = Some(cg);
                applied = a;
            }
            Err(e @ GovernError::JobIdInUse(_)) => return Err(fail(EXIT_USAGE, &e)),
            Err(e) => {
                let reason = format!("{:#}", anyhow::Error::new(e));
                for limit in cgroup_limits(&limits) {
                    applied.fail(limit, format!("no job cgroup: {reason}"));
                }
            }
        }
    } else {
        for limit in cgroup_limits(&limits) {
            applied.fail(
                limit,
                "unprivileged mode: no cgroup (not root, no delegated cgroup subtree)".into(),
            );
        }
    }

    let privileged = ctx.mode == Mode::Privileged;
    let mut nice = limits.nice;
    if let Some(n) = nice
        && n < 0
        && !privileged
    {
        applied.fail("nice", format!("nice {n} (below 0) needs privileges"));
        nice = None;
    }
    let mut oom_score_adj = limits.oom_score_adj;
    if let Some(v) = oom_score_adj
        && !privileged
        && oom_score_adj_of(std::process::id()).is_ok_and(|own| v < own)
    {
        applied.fail(
            "oom_score_adj",
            format!("lowering oom_score_adj to {v} needs privileges"),
        );
        oom_score_adj = None;
    }

    let cpu_failed = applied
        .failures
        .iter()
        .any(|f| f.limit == "cpu_max" || f.limit == "cpu_weight");
    let fallback = if cpu_failed && nice.is_none() && limits.nice.is_none() {
        nice = Some(NICE_FALLBACK);
        format!("nice {NICE_FALLBACK}")
    } else {
        "none".to_string()
    };

    if args.strict && !applied.failures.is_empty() {
        for Failure { limit, reason } in &applied.failures {
            eprintln!("ffrtmp: --strict: {limit} cannot be applied: {reason}");
        }
        if let Some(cg) = &cgroup {
            cg.remove_if_empty();
        }
        return Err(ExitCode::from(EXIT_WRAPPER));
    }
    for Failure { limit, reason } in &applied.failures {
        let fallback = if *limit == "cpu_max" || *limit == "cpu_weight" {
            fallback.clone()
        } else {
            "none".into()
        };
        let degraded = Degraded {
            limit: Some(limit.to_string()),
            reason: reason.clone(),
            fallback,
        };
        if let Err(e) = sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, degraded)) {
            eprintln!("ffrtmp: warning: writing events: {e}");
        }
    }
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

/// The names of the requested limits that need a cgroup.
fn cgroup_limits(l: &crate::govern::limits::Limits) -> Vec<&'static str> {
    [
        ("cpu_max", l.cpu_max.is_some()),
        ("cpu_weight", l.cpu_weight.is_some()),
        ("memory_max", l.memory_max.is_some()),
        ("memory_high", l.memory_high.is_some()),
        ("io_max", !l.io_max.is_empty()),
        ("pids_max", l.pids_max.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, asked)| asked.then_some(name))
    .collect()
}

impl Prepared {
    /// The job cgroup's `cgroup.procs` files, open for writing.
    pub fn open_procs(&self) -> io::Result<Vec<OwnedFd>> {
        let Some(cg) = &self.cgroup else {
            return Ok(Vec::new());
        };
        cg.procs_files()
            .iter()
            .map(|f| {
                File::options()
                    .write(true)
                    .open(f)
                    .map(OwnedFd::from)
                    .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", f.display())))
            })
            .collect()
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
        reap_empty(&self.ctx);
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
