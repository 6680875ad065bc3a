//! Starting `run`'s workload the way `posix_spawn` does — `clone` with
//! `CLONE_VM | CLONE_VFORK` — with the steps that must happen between fork
//! and exec in the child: restore the signal mask and SIGPIPE, `setsid`,
//! join the job cgroup (`0` to each `cgroup.procs`), nice, oom_score_adj,
//! then `execv`. The workload's first instruction runs governed.
//!
//! Why not `fork`: the wrapper's memory is not copied (no page tables to
//! duplicate, no copy-on-write faults while the child runs), which is most
//! of what a wrapper adds to a short workload (docs/BENCHMARKS.md). The
//! price is the vfork discipline: the child runs on the wrapper's memory
//! with the wrapper suspended, so it makes only system calls on data
//! prepared before the clone, and leaves a failure in [`Failure`] for the
//! parent to read once the clone returns.
use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicI32, Ordering::Relaxed},
};

use nix::{
    sched::CloneFlags,
    sys::signal::{SigSet, SigmaskHow},
};

use super::exit;

/// The child's stack: it only makes system calls.
const CHILD_STACK: usize = 64 * 1024;

/// The child's stack, mapped for the clone and unmapped after it. Mapped
/// rather than allocated: the kernel's zero pages are faulted in only where
/// the child touches them (a zeroed heap buffer cost 16 page faults per
/// `run`, docs/BENCHMARKS.md).
struct ChildStack(std::ptr::NonNull<u8>);

impl ChildStack {
    fn map() -> io::Result<Self> {
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHILD_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        std::ptr::NonNull::new(p.cast())
            .map(Self)
            .ok_or_else(|| io::Error::other("mmap returned NULL"))
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: CHILD_STACK bytes mapped readable and writable (zeroed by
        // the kernel, so initialised), owned by self until drop.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), CHILD_STACK) }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`; no slice of it outlives self.
        unsafe { libc::munmap(self.0.as_ptr().cast(), CHILD_STACK) };
    }
}

/// Errors while starting the workload.
#[derive(Debug, thiserror::Error)]
pub(super) enum SpawnError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{program}: {step}")]
    Step {
        program: String,
        step: Step,
        #[source]
        source: io::Error,
    },
    #[error("{0}: an argument contains a NUL byte")]
    Nul(String),
    #[error("starting the workload")]
    Clone(#[source] io::Error),
    #[error("mapping the stack to start the workload on")]
    Stack(#[source] io::Error),
    #[error("opening a pidfd for the workload")]
    Pidfd(#[source] io::Error),
}

/// Where in the child a start failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Session,
    JoinCgroup,
    Nice,
    OomScoreAdj,
    Exec,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Session => "starting a session",
            Step::JoinCgroup => "joining the job cgroup",
            Step::Nice => "setting nice",
            Step::OomScoreAdj => "setting oom_score_adj",
            Step::Exec => "exec",
        })
    }
}

impl SpawnError {
    /// `run`'s exit status for it, as env(1) has it: 127 not found, 126
    /// found but not executable, else 125 (the wrapper failed).
    pub(super) fn exit_code(&self) -> u8 {
        match self {
            SpawnError::NotFound(_) => exit::NOT_FOUND,
            SpawnError::Step {
                step: Step::Exec,
                source,
                ..
            } => match source.raw_os_error() {
                Some(libc::ENOENT) => exit::NOT_FOUND,
                Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM) => {
                    exit::NOT_EXECUTABLE
                }
                _ => exit::WRAPPER,
            },
            _ => exit::WRAPPER,
        }
    }
}

/// What the child does before exec.
pub(super) struct Setup<'a> {
    /// `cgroup.procs` of the job, one per hierarchy, open for writing.
    pub procs: &'a [RawFd],
    pub nice: Option<i32>,
    pub oom_score_adj: Option<i32>,
    /// The signal mask to give the workload (the wrapper blocks its
    /// detach signals).
    pub mask: SigSet,
}

/// A started workload.
pub(super) struct Workload {
    pub pid: u32,
    /// Readable once it has exited.
    pub pidfd: OwnedFd,
}

/// A failure in the child, written there and read by the parent after the
/// clone returns (`CLONE_VFORK`: the child has exec'd or exited by then).
#[derive(Default)]
struct Failure {
    step: AtomicI32,
    errno: AtomicI32,
}

impl Failure {
    /// The child's failure, if it failed (it has exited then: it is
    /// reaped here).
    fn of(&self, child: nix::unistd::Pid, program: String) -> Option<SpawnError> {
        let step = self.step.load(Relaxed);
        if step == 0 {
            return None;
        }
        let _ = nix::sys::wait::waitpid(child, None);
        let step = [
            Step::Session,
            Step::JoinCgroup,
            Step::Nice,
            Step::OomScoreAdj,
            Step::Exec,
        ][(step - 1) as usize];
        Some(SpawnError::Step {
            program,
            step,
            source: io::Error::from_raw_os_error(self.errno.load(Relaxed)),
        })
    }
}

/// The program's name (for errors), its path and its arguments as C
/// strings, made before the clone.
fn exec_args(command: &[OsString]) -> Result<(String, CString, Vec<CString>), SpawnError> {
    let program = command
        .first()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = resolve(&command[0]).ok_or_else(|| SpawnError::NotFound(program.clone()))?;
    let cstring =
        |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul(program.clone()));
    let path = cstring(path.as_os_str())?;
    let args: Vec<CString> = command
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    Ok((program, path, args))
}

/// Starts `command` (looked up in `PATH` without a `/`, as execvp does).
pub(super) fn spawn(command: &[OsString], setup: &Setup<'_>) -> Result<Workload, SpawnError> {
    let (program, path, args) = exec_args(command)?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let oom = setup.oom_score_adj.map(|v| v.to_string().into_bytes());
    let mask = setup.mask;
    let failure = Failure::default();
    let mut stack = ChildStack::map().map_err(SpawnError::Stack)?;

    let child = Box::new(|| -> isize {
        // From here to exec: system calls only, on memory made above.
        let fail = |step: Step| -> isize {
            failure.errno.store(nix::errno::Errno::last_raw(), Relaxed);
            failure.step.store(step as i32 + 1, Relaxed);
            // The parent reads the failure above, not this status.
            // SAFETY: _exit(2) never returns and runs no atexit handlers.
            unsafe { libc::_exit(i32::from(exit::NOT_FOUND)) }
        };
        // SAFETY: the whole block makes async-signal-safe calls on data
        // prepared before the clone.
        unsafe {
            if libc::pthread_sigmask(libc::SIG_SETMASK, mask.as_ref(), std::ptr::null_mut()) != 0 {
                return fail(Step::Session);
            }
            // Rust ignores SIGPIPE; an ignored signal survives exec.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if libc::setsid() < 0 {
                return fail(Step::Session);
            }
            for &fd in setup.procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return fail(Step::JoinCgroup);
                }
            }
            if let Some(n) = setup.nice
                && libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0
            {
                return fail(Step::Nice);
            }
            if let Some(v) = &oom {
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                let ok = fd >= 0 && libc::write(fd, v.as_ptr().cast(), v.len()) == v.len() as isize;
                if !ok {
                    return fail(Step::OomScoreAdj);
                }
                libc::close(fd);
            }
            libc::execv(path.as_ptr(), argv.as_ptr());
            fail(Step::Exec)
        }
    });
    // SAFETY: CLONE_VM | CLONE_VFORK: this thread is suspended until the
    // child execs or exits; the child only makes system calls (above) on
    // data that outlives the clone. The wrapper is single-threaded here.
    let pid = unsafe {
        nix::sched::clone(
            child,
            stack.as_mut_slice(),
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| SpawnError::Clone(e.into()))?;
    let pid_raw = pid.as_raw();
    if let Some(e) = failure.of(pid, program) {
        return Err(e);
    }
    // SAFETY: pidfd_open(2) returns a new fd or -1. The child is ours and
    // not reaped, so its pid cannot have been reused.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_raw, 0) };
    if fd < 0 {
        return Err(SpawnError::Pidfd(io::Error::last_os_error()));
    }
    Ok(Workload {
        pid: pid_raw as u32,
        // SAFETY: a fresh fd that nothing else owns.
        pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
    })
}

/// `program` as execvp would find it: as given with a `/`, else the first
/// executable `PATH` entry (or, failing that, the first that exists, so
/// that exec says why it cannot run it).
fn resolve(program: &OsStr) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let search =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut existing = None;
    for dir in std::env::split_paths(&search) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        let Ok(meta) = candidate.metadata() else {
            continue;
        };
        if meta.is_file() && is_executable(&candidate) {
            return Some(candidate);
        }
        existing.get_or_insert(candidate);
    }
    existing
}

fn is_executable(path: &Path) -> bool {
    CString::new(path.as_os_str().as_bytes())
        // SAFETY: access(2) on a NUL-terminated path.
        .is_ok_and(|p| unsafe { libc::access(p.as_ptr(), libc::X_OK) } == 0)
}

/// Blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 for this thread (they are
/// read from a signalfd instead); returns the mask to restore in the
/// workload.
pub(super) fn block_detach_signals() -> io::Result<(SigSet, nix::sys::signalfd::SignalFd)> {
    let mut detach = SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGUSR1,
    ] {
        detach.add(s);
    }
    let mut original = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&detach), Some(&mut original))?;
    let fd = nix::sys::signalfd::SignalFd::with_flags(
        &detach,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )?;
    Ok((original, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_path_like_execvp() {
        assert_eq!(resolve(OsStr::new("")), None);
        assert_eq!(resolve(OsStr::new("./x")), Some(PathBuf::from("./x")));
        let sh = resolve(OsStr::new("sh")).expect("sh is on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(resolve(OsStr::new("ffrtmp-no-such-program")), None);
    }

    #[test]
    fn exit_codes_follow_env() {
        let step = |errno| SpawnError::Step {
            program: "x".into(),
            step: Step::Exec,
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(SpawnError::NotFound("x".into()).exit_code(), 127);
        assert_eq!(step(libc::ENOENT).exit_code(), 127);
        assert_eq!(step(libc::EACCES).exit_code(), 126);
        assert_eq!(step(libc::ENOEXEC).exit_code(), 126);
        assert_eq!(step(libc::E2BIG).exit_code(), 125);
        let join = SpawnError::Step {
            program: "x".into(),
            step: Step::JoinCgroup,
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(join.exit_code(), 125);
    }
}
