//! `ffrtmp run`: start a workload already inside its job cgroup, report how
//! it is governed and how it ended, and never own it.
//!
//! - The cgroup is created and configured first; the child joins it between
//!   clone and exec (writing `0` to each `cgroup.procs`; started the way
//!   `posix_spawn` does it, see `spawn.rs`), so the workload's first
//!   instruction already runs governed. It gets its own session and
//!   inherits stdin/stdout/stderr; events go to stderr or `--events`.
//! - One thread, no event loop: the wrapper blocks in poll(2) on the
//!   workload's pidfd and a signalfd for the detach signals.
//! - Exit status: the workload's; 128+N when killed by signal N; 125 when
//!   ffrtmp itself fails; 126 not executable; 127 not found (like env(1)).
//! - SIGTERM, SIGINT, SIGHUP: a `detached` event, then exit 0 leaving the
//!   workload running and limited (with `--forward-signals`: pass the signal
//!   on and keep waiting). SIGUSR1 always detaches, never forwarded: what
//!   package removal sends wrappers (docs/PACKAGE.md), so that removing
//!   ffrtmp never stops a stream. kill -9 of the wrapper changes nothing
//!   for it.
use std::{ffi::OsString, io, os::fd::AsRawFd as _, path::Path, process::ExitCode, time::Instant};

use clap::Args;
use nix::sys::{signal::SigSet, signalfd::SignalFd, wait::WaitStatus};

use super::{
    exit,
    govern_args::{EventOut, GovernArgs},
    governance::{Prepared, events_of, prepare},
    spawn::{self, Setup, Workload},
};
use crate::{
    errors::chain,
    events::{Detached, Event, Exit, ProcessId, Source, Timestamp, micros},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub govern: GovernArgs,
    /// Pass SIGTERM/SIGINT/SIGHUP on to the workload instead of detaching
    /// (SIGUSR1 always detaches).
    #[arg(long)]
    pub forward_signals: bool,
    /// The workload and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

pub(super) fn run(args: RunArgs) -> ExitCode {
    let mut sink = match events_of(&args.govern) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Before any set-up: a detach signal from now on is read, not fatal.
    let (mask, signals) = match spawn::block_detach_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ffrtmp: error: blocking the detach signals: {e}");
            return ExitCode::from(exit::WRAPPER);
        }
    };
    let default_job = format!("run-{}", std::process::id());
    let prepared = match prepare(&args.govern, &default_job, &[], &mut sink) {
        Ok(p) => p,
        Err(code) => return code,
    };
    supervise(&args, prepared, mask, &signals, &mut sink)
}

/// Starts the workload and waits for its exit or a detach signal: one
/// thread, blocking in poll(2) on the workload's pidfd and a signalfd.
fn supervise(
    args: &RunArgs,
    prepared: Prepared,
    mask: SigSet,
    signals: &SignalFd,
    sink: &mut EventOut,
) -> ExitCode {
    // Opened here, written by the child before exec.
    let procs = match prepared.open_procs() {
        Ok(p) => p,
        Err(e) => {
            prepared.abandon();
            return exit::fail(exit::WRAPPER, &e);
        }
    };
    let fds = procs.raw_fds();
    let setup = Setup {
        procs: &fds,
        nice: prepared.plan.nice,
        oom_score_adj: prepared.plan.oom_score_adj,
        mask,
    };
    let started = Instant::now();
    let workload = match spawn::spawn(&args.command, &setup) {
        Ok(w) => w,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("ffrtmp: cannot run {}", chain(&e));
            prepared.abandon();
            return ExitCode::from(code);
        }
    };
    drop(procs);
    let pid = workload.pid;
    let placed = prepared.spawned(pid);
    placed.report_governed(sink);
    placed.reap_leftovers();

    let status = loop {
        match wait_for(&workload, signals) {
            Ok(Woken::Exited) => {
                match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None) {
                    Ok(status) => break status,
                    Err(e) => {
                        eprintln!("ffrtmp: error: waiting for the workload: {e}");
                        return ExitCode::from(exit::WRAPPER);
                    }
                }
            }
            Ok(Woken::Signal(signo)) => {
                if let Some(code) =
                    on_signal(args, placed.process(), placed.job_id.as_str(), signo, sink)
                {
                    return code;
                }
            }
            Err(e) => {
                eprintln!("ffrtmp: error: waiting for the workload: {e}");
                return ExitCode::from(exit::WRAPPER);
            }
        }
    };
    let (exit_code, sig) = match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, s, _) => (None, Some(s as i32)),
        _ => (None, None),
    };
    let program = &args.command[0];
    let ended = Exit {
        pid,
        process_key: placed.process().key(),
        comm: Path::new(program)
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        exit_code,
        signal: sig,
        duration_us: Some(micros(started.elapsed())),
        job: Some(placed.report()),
    };
    sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, ended));
    placed.finish();
    match (exit_code, sig) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(s)) => ExitCode::from(128u8.wrapping_add(s as u8)),
        _ => ExitCode::from(exit::WRAPPER),
    }
}

/// What ended a wait.
enum Woken {
    Exited,
    Signal(i32),
}

/// Blocks until the workload exits or a detach signal arrives.
fn wait_for(workload: &Workload, signals: &SignalFd) -> io::Result<Woken> {
    loop {
        if let Some(info) = signals.read_signal().map_err(io::Error::from)? {
            return Ok(Woken::Signal(info.ssi_signo as i32));
        }
        let mut fds = [
            libc::pollfd {
                fd: workload.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds; no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            continue; // read above
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return Ok(Woken::Exited);
        }
    }
}

/// Detaches (returns the exit code) or forwards the signal (returns None).
fn on_signal(
    args: &RunArgs,
    process: ProcessId,
    job_id: &str,
    signo: i32,
    sink: &mut EventOut,
) -> Option<ExitCode> {
    let name = nix::sys::signal::Signal::try_from(signo).map_or("signal", |s| s.as_str());
    if args.forward_signals && signo != libc::SIGUSR1 {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(process.pid as i32, signo) };
        return None;
    }
    let detached = Detached {
        pid: process.pid,
        process_key: process.key(),
        job_id: job_id.to_string(),
        reason: name.to_string(),
    };
    sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, detached));
    Some(ExitCode::SUCCESS)
}
