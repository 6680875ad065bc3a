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
    exit,
    govern_args::{EventOut, GovernArgs},
    governance::{DetachSignals, Placed, begin, events_of, prepare},
};
use crate::{
    errors::chain,
    events::{Detached, Event, Exit, Source, Timestamp, micros},
    govern::{
        place::NotPlaced,
        target::{Target, descendants},
    },
    observe::proc::age_of,
};

/// The largest pid Linux can give (`PID_MAX_LIMIT` on 64-bit, 2^22).
const PID_MAX_LIMIT: i64 = 1 << 22;

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The process to govern (its whole thread group).
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..=PID_MAX_LIMIT))]
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

pub(super) fn attach(args: AttachArgs) -> ExitCode {
    // With --detach there is nothing to follow and no child of ours to
    // protect: a signal during set-up may end the wrapper (the workload is
    // untouched; a cgroup made but unused is reaped later), so no event loop.
    let (mut sink, follower) = if args.detach {
        match events_of(&args.govern) {
            Ok(sink) => (sink, None),
            Err(code) => return code,
        }
    } else {
        match begin(&args.govern) {
            Ok((sink, runtime, signals)) => (sink, Some((runtime, signals))),
            Err(code) => return code,
        }
    };
    let target = match Target::open(args.pid, args.start_time).and_then(|t| {
        t.ours_to_govern()?;
        Ok(t)
    }) {
        Ok(t) => t,
        Err(e) => {
            let code = if e.is_bad_input() {
                exit::USAGE
            } else {
                exit::WRAPPER
            };
            return exit::fail(code, &e);
        }
    };
    let descendants = if args.include_children {
        descendants(args.pid)
    } else {
        Vec::new()
    };
    let resident: Vec<u32> = std::iter::once(args.pid)
        .chain(descendants.iter().copied())
        .collect();
    let prepared = match prepare(
        &args.govern,
        &format!("attach-{}", args.pid),
        &resident,
        &mut sink,
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let placed = match prepared.place(&target, &descendants, args.govern.strict) {
        Ok(p) => p,
        Err(NotPlaced::Gone { before, error }) => {
            eprintln!("ffrtmp: error: before {before}: {}", chain(&error));
            return ExitCode::from(exit::USAGE);
        }
        Err(NotPlaced::NotMoved { reason }) => {
            eprintln!(
                "ffrtmp: --strict: cannot move {} into its cgroup: {reason}",
                args.pid
            );
            return ExitCode::from(exit::WRAPPER);
        }
    };
    placed.report_governed(&mut sink);
    placed.reap_leftovers();
    match follower {
        None => ExitCode::SUCCESS,
        Some((runtime, signals)) => runtime.block_on(follow(target, placed, signals, &mut sink)),
    }
}

/// Waits for the exit (pidfd readable) or a signal (detach).
async fn follow(
    target: Target,
    placed: Placed,
    [mut term, mut int, mut hup]: DetachSignals,
    sink: &mut EventOut,
) -> ExitCode {
    // SAFETY: the pidfd is owned by `target`, which outlives this AsyncFd.
    let exited = match unsafe {
        AsyncFd::register_with_interest(target.pidfd(), tokio::io::Interest::READABLE)
    } {
        Ok(fd) => fd,
        Err(e) => {
            let e = e.into_parts().1;
            eprintln!("ffrtmp: error: watching process {}: {e}", target.pid);
            return ExitCode::from(exit::WRAPPER);
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
            process_key: placed.process().key(),
            job_id: placed.job_id.to_string(),
            reason: reason.into(),
        };
        sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, detached));
        return ExitCode::SUCCESS;
    }
    let ended = Exit {
        pid: target.pid,
        process_key: placed.process().key(),
        comm: target.comm.clone(),
        // Not our child: its status is not ours to know.
        exit_code: None,
        signal: None,
        duration_us: age_of(target.start_ticks).map(micros),
        job: Some(placed.report()),
    };
    sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, ended));
    placed.finish();
    ExitCode::SUCCESS
}
