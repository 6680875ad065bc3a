//! `ffrtmp run`: start a workload already inside its job cgroup, report how
//! it is governed and how it ended, and never own it.
//!
//! - The cgroup is created and configured first; the child joins it between
//!   fork and exec (writing `0` to each `cgroup.procs`), so the workload's
//!   first instruction already runs governed. It gets its own session and
//!   inherits stdin/stdout/stderr; events go to stderr or `--events`.
//! - Exit status: the workload's; 128+N when killed by signal N; 125 when
//!   ffrtmp itself fails; 126 not executable; 127 not found (like env(1)).
//! - SIGTERM, SIGINT, SIGHUP: a `detached` event, then exit 0 leaving the
//!   workload running and limited (with `--forward-signals`: pass the signal
//!   on and keep waiting). kill -9 of the wrapper changes nothing for it.
use std::{
    ffi::OsString,
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::ExitStatusExt as _,
    },
    path::Path,
    process::ExitCode,
    time::Instant,
};

use clap::Args;

use super::{
    govern_args::{EventOut, GovernArgs},
    governance::{DetachSignals, Prepared, begin, prepare},
};
use crate::events::{Detached, Event, Exit, JobReport, Sink, Source, Timestamp};

/// ffrtmp failed (as env(1) and timeout(1) use 125).
pub const EXIT_WRAPPER: u8 = 125;
const EXIT_NOT_EXECUTABLE: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub govern: GovernArgs,
    /// Pass SIGTERM/SIGINT/SIGHUP on to the workload instead of detaching.
    #[arg(long)]
    pub forward_signals: bool,
    /// The workload and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

pub fn run(args: RunArgs) -> ExitCode {
    let (mut sink, runtime, signals) = match begin(&args.govern) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let default_job = format!("run-{}", std::process::id());
    let prepared = match prepare(&args.govern, &default_job, None, &mut sink) {
        Ok(p) => p,
        Err(code) => return code,
    };
    runtime.block_on(supervise(args, prepared, signals, &mut sink))
}

async fn supervise(
    args: RunArgs,
    prepared: Prepared,
    [mut term, mut int, mut hup]: DetachSignals,
    sink: &mut EventOut,
) -> ExitCode {
    // Opened here, written by the child before exec.
    let procs: Vec<OwnedFd> = match prepared.open_procs() {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("ffrtmp: error: {e}");
            prepared.abandon();
            return ExitCode::from(EXIT_WRAPPER);
        }
    };
    let raw: Vec<i32> = procs.iter().map(|fd| fd.as_raw_fd()).collect();
    let nice = prepared.nice;
    let oom = prepared.oom_score_adj.map(|v| v.to_string().into_bytes());

    let program = &args.command[0];
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&args.command[1..]).kill_on_drop(false);
    // SAFETY: only async-signal-safe calls (setsid, write, setpriority,
    // open, close) on memory prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            for &fd in &raw {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(n) = nice
                && libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(v) = &oom {
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                let ok = fd >= 0 && libc::write(fd, v.as_ptr().cast(), v.len()) == v.len() as isize;
                if fd >= 0 {
                    libc::close(fd);
                }
                if !ok {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                io::ErrorKind::PermissionDenied => EXIT_NOT_EXECUTABLE,
                _ if e.raw_os_error() == Some(libc::ENOEXEC) => EXIT_NOT_EXECUTABLE,
                _ => EXIT_WRAPPER,
            };
            eprintln!("ffrtmp: cannot run {}: {e}", Path::new(program).display());
            prepared.abandon();
            return ExitCode::from(code);
        }
    };
    drop(procs);
    let Some(pid) = child.id() else {
        eprintln!("ffrtmp: error: the workload has no pid");
        return ExitCode::from(EXIT_WRAPPER);
    };
    let job_id = prepared.job_id.to_string();
    if let Err(e) = prepared.report_governed(pid, sink) {
        eprintln!("ffrtmp: warning: writing events: {e}");
    }
    prepared.reap_leftovers();

    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = term.recv() => if let Some(code) = on_signal(&args, pid, &job_id, libc::SIGTERM, sink) { return code },
            _ = int.recv() => if let Some(code) = on_signal(&args, pid, &job_id, libc::SIGINT, sink) { return code },
            _ = hup.recv() => if let Some(code) = on_signal(&args, pid, &job_id, libc::SIGHUP, sink) { return code },
        }
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ffrtmp: error: waiting for the workload: {e}");
            return ExitCode::from(EXIT_WRAPPER);
        }
    };
    let stats = prepared.stats();
    let (exit_code, sig) = (status.code(), status.signal());
    let exit = Exit {
        pid,
        comm: Path::new(program)
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        exit_code,
        signal: sig,
        duration_ms: Some(started.elapsed().as_micros() as f64 / 1000.0),
        job: Some(JobReport {
            job_id,
            oom_killed: stats.oom_killed,
            cpu_usage_us: stats.cpu_usage_us,
            memory_peak_bytes: stats.memory_peak_bytes,
        }),
    };
    if let Err(e) = sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, exit)) {
        eprintln!("ffrtmp: warning: writing events: {e}");
    }
    prepared.finish();
    match (exit_code, sig) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(s)) => ExitCode::from(128u8.wrapping_add(s as u8)),
        _ => ExitCode::from(EXIT_WRAPPER),
    }
}

/// Detaches (returns the exit code) or forwards the signal (returns None).
fn on_signal(
    args: &RunArgs,
    pid: u32,
    job_id: &str,
    signo: i32,
    sink: &mut EventOut,
) -> Option<ExitCode> {
    let name = nix::sys::signal::Signal::try_from(signo).map_or("signal", |s| s.as_str());
    if args.forward_signals {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(pid as i32, signo) };
        return None;
    }
    let detached = Detached {
        pid,
        job_id: job_id.to_string(),
        reason: name.to_string(),
    };
    let _ = sink.emit(Event::new(Timestamp::now(), Source::Ffrtmp, detached));
    Some(ExitCode::SUCCESS)
}
