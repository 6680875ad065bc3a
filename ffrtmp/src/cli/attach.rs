//! `ffrtmp attach --pid PID`: govern a running workload without restarting
//! it. The pid is held by a pidfd and checked before every step
//! ([`Target`]); the whole thread group moves into the job cgroup; nice is
//! set on every thread. Without `--detach` the exit is followed through the
//! pidfd (no polling) and reported; the exit status of a process that is
//! not our child is not knowable, so it is reported as null.
use std::process::ExitCode;

use clap::Args;
use tokio::io::unix::AsyncFd;

use super::{
    EXIT_USAGE,
    govern_args::{EventOut, GovernArgs},
    governance::{DetachSignals, Prepared, begin, prepare},
    run::EXIT_WRAPPER,
};
use crate::{
    events::{Degraded, Detached, Event, Exit, JobReport, Sink, Source, Timestamp},
    govern::{
        process::{set_nice_all_threads, set_oom_score_adj},
        target::{Target, descendants},
    },
    observe::proc::age_of,
};

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The process to govern (its whole thread group).
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: u32,
    /// Only if PID started at this time (clock ticks after boot, field 22 of
    /// /proc/PID/stat): refuses a pid that was reused since it was recorded.
    #[arg(long, value_name = "TICKS")]
    pub start_time: Option<u64>,
    /// Apply and return at once (default: stay and report the exit).
    #[arg(long)]
    pub detach: bool,
    /// Also move the process's current descendants.
    #[arg(long)]
    pub include_children: bool,
    #[command(flatten)]
    pub govern: GovernArgs,
}

pub fn attach(args: AttachArgs) -> ExitCode {
    // With --detach there is nothing to follow and no child of ours to
    // protect: a signal during set-up may end the wrapper (the workload is
    // untouched; a cgroup made but unused is reaped later), so no event loop.
    let (mut sink, follower) = if args.detach {
        match args.govern.emitter() {
            Ok(sink) => (sink, None),
            Err(e) => {
                eprintln!("ffrtmp: error: opening the events file: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    } else {
        match begin(&args.govern) {
            Ok((sink, runtime, signals)) => (sink, Some((runtime, signals))),
            Err(code) => return code,
        }
    };
    let target = match Target::open(args.pid, args.start_time) {
        Ok(t) => t,
        Err(e) => {
            let code = if e.is_bad_input() {
                EXIT_USAGE
            } else {
                EXIT_WRAPPER
            };
            eprintln!("ffrtmp: error: {:#}", anyhow::Error::new(e));
            return ExitCode::from(code);
        }
    };
    let mut prepared = match prepare(
        &args.govern,
        &format!("attach-{}", args.pid),
        Some(args.pid),
        &mut sink,
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut moved = vec![args.pid];
    if args.include_children {
        moved.extend(descendants(args.pid));
    }
    let mut move_failed = None;
    if let Some(cg) = &prepared.cgroup {
        if let Err(code) = step(&target, &prepared, "moving it into its cgroup") {
            return code;
        }
        for &pid in &moved {
            // A descendant may have exited meanwhile; the target may not.
            if let Err(e) = cg.add(pid)
                && pid == args.pid
            {
                move_failed = Some(format!("{:#}", anyhow::Error::new(e)));
            }
        }
    }
    if let Some(reason) = move_failed {
        if args.govern.strict {
            eprintln!(
                "ffrtmp: --strict: cannot move {} into its cgroup: {reason}",
                args.pid
            );
            prepared.abandon();
            return ExitCode::from(EXIT_WRAPPER);
        }
        // Its cgroup limits are not in force: say so, report none of them.
        for limit in prepared.drop_cgroup() {
            let _ = sink.emit(Event::new(
                Timestamp::now(),
                Source::Ffrtmp,
                Degraded {
                    limit: Some(limit),
                    reason: format!("the workload could not be moved into its cgroup: {reason}"),
                    fallback: "none".into(),
                },
            ));
        }
    }
    let mut failures = Vec::new();
    if let Some(n) = prepared.nice {
        if let Err(code) = step(&target, &prepared, "setting nice") {
            return code;
        }
        for &pid in &moved {
            if let Err(e) = set_nice_all_threads(pid, n)
                && pid == args.pid
            {
                failures.push(("nice", format!("{:#}", anyhow::Error::new(e))));
            }
        }
    }
    if let Some(v) = prepared.oom_score_adj {
        if let Err(code) = step(&target, &prepared, "setting oom_score_adj") {
            return code;
        }
        for &pid in &moved {
            if let Err(e) = set_oom_score_adj(pid, v)
                && pid == args.pid
            {
                failures.push(("oom_score_adj", format!("{:#}", anyhow::Error::new(e))));
            }
        }
    }
    for (limit, reason) in failures {
        let _ = sink.emit(Event::new(
            Timestamp::now(),
            Source::Ffrtmp,
            Degraded {
                limit: Some(limit.into()),
                reason,
                fallback: "none".into(),
            },
        ));
    }
    if let Err(e) = prepared.report_governed(args.pid, &mut sink) {
        eprintln!("ffrtmp: warning: writing events: {e}");
    }
    prepared.reap_leftovers();
    match follower {
        None => ExitCode::SUCCESS,
        Some((runtime, signals)) => runtime.block_on(follow(target, prepared, signals, &mut sink)),
    }
}

/// Each step only on the same live process; else undo and refuse.
fn step(target: &Target, prepared: &Prepared, what: &str) -> Result<(), ExitCode> {
    target.check().map_err(|e| {
        eprintln!("ffrtmp: error: before {what}: {e}");
        prepared.abandon();
        ExitCode::from(EXIT_USAGE)
    })
}

/// Waits for the exit (pidfd readable) or a signal (detach).
async fn follow(
    target: Target,
    prepared: Prepared,
    [mut term, mut int, mut hup]: DetachSignals,
    sink: &mut EventOut,
) -> ExitCode {
    let job_id = prepared.job_id.to_string();
    // SAFETY: the pidfd is owned by `target`, which outlives this AsyncFd.
    let exited = match unsafe {
        AsyncFd::register_with_interest(target.pidfd(), tokio::io::Interest::READABLE)
    } {
        Ok(fd) => fd,
        Err(e) => {
            let e = e.into_parts().1;
            eprintln!("ffrtmp: error: watching process {}: {e}", target.pid);
            return ExitCode::from(EXIT_WRAPPER);
        }
    };
    let reason = tokio::select! {
        r = exited.readable() => { drop(r); None }
        _ = term.recv() => Some("SIGTERM"),
        _ = int.recv() => Some("SIGINT"),
        _ = hup.recv() => Some("SIGHUP"),
    };
    if let Some(reason) = reason {
        let detached = Detached {
            pid: target.pid,
            job_id,
            reason: reason.into(),
        };
        let _ = sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, detached));
        return ExitCode::SUCCESS;
    }
    let stats = prepared.stats();
    let exit = Exit {
        pid: target.pid,
        comm: target.comm.clone(),
        // Not our child: its status is not ours to know.
        exit_code: None,
        signal: None,
        duration_ms: age_of(target.start_ticks).map(|a| a.as_micros() as f64 / 1000.0),
        job: Some(JobReport {
            job_id,
            oom_killed: stats.oom_killed,
            cpu_usage_us: stats.cpu_usage_us,
            memory_peak_bytes: stats.memory_peak_bytes,
        }),
    };
    let _ = sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, exit));
    prepared.finish();
    ExitCode::SUCCESS
}
