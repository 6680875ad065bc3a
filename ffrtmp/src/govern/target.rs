//! The process `attach` governs, held by a pidfd so that a reused pid is
//! never mistaken for it: the pidfd is opened first, the start time read
//! from /proc/PID/stat is its identity, and [`Target::check`] runs before
//! every step (a pidfd turns readable when its process exits, after which
//! the pid may name another process).
use std::{
    io,
    os::fd::{AsFd, BorrowedFd, FromRawFd as _, OwnedFd},
};

use crate::observe::proc::{ProcError, Stat};

/// Why a process cannot be a target.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TargetError {
    #[error("process {0} does not exist")]
    NoSuchProcess(u32),
    #[error("process {0} has exited")]
    Exited(u32),
    #[error("process {pid} is {why}: ffrtmp does not govern it")]
    Refused { pid: u32, why: &'static str },
    #[error(
        "process {pid} started at tick {actual}, not {expected}: the pid now names another process"
    )]
    Reused {
        pid: u32,
        expected: u64,
        actual: u64,
    },
    #[error("{tid} is a thread of process {tgid}, not a process: attach to {tgid}")]
    Thread { tid: u32, tgid: u32 },
    #[error(
        "process {pid} belongs to uid {uid}: without privileges ffrtmp governs only its own user's processes (uid {ours}): EPERM (os error 1)"
    )]
    NotOurs { pid: u32, uid: u32, ours: u32 },
    #[error("opening a pidfd for process {pid}")]
    Pidfd {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("reading process {pid}")]
    Proc {
        pid: u32,
        #[source]
        source: ProcError,
    },
}

impl TargetError {
    /// Bad input (a pid that cannot be governed), as opposed to a failure.
    pub(crate) fn is_bad_input(&self) -> bool {
        !matches!(self, TargetError::Pidfd { .. } | TargetError::Proc { .. })
    }

    /// Failed for want of a file descriptor (EMFILE, ENFILE).
    pub(crate) fn out_of_fds(&self) -> bool {
        let (TargetError::Pidfd { source, .. }
        | TargetError::Proc {
            source: ProcError::Io { source, .. },
            ..
        }) = self
        else {
            return false;
        };
        matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }
}

/// The thread group (process) of thread `tid`, from /proc/TID/status.
fn thread_group_of(tid: u32) -> Option<u32> {
    crate::observe::proc::read_text(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// A live process and its identity.
#[derive(Debug)]
pub(crate) struct Target {
    pub pid: u32,
    pub comm: String,
    /// Clock ticks after boot at which it started (its identity).
    pub start_ticks: u64,
    pidfd: OwnedFd,
}

impl Target {
    /// Refuses a process of another user when ffrtmp has no privileges:
    /// nothing could be applied to it (neither its cgroup nor its nice), so
    /// reporting it `governed` would pretend.
    pub(crate) fn ours_to_govern(&self) -> Result<(), TargetError> {
        if super::may_govern_others() {
            return Ok(());
        }
        let ours = nix::unistd::geteuid().as_raw();
        match crate::observe::proc::read_uid(self.pid) {
            Ok(uid) if uid != ours => Err(TargetError::NotOurs {
                pid: self.pid,
                uid,
                ours,
            }),
            _ => Ok(()),
        }
    }

    /// Opens `pid`; `expect_start` (ticks after boot, as in /proc/PID/stat)
    /// refuses a pid that now names a different process.
    pub(crate) fn open(pid: u32, expect_start: Option<u64>) -> Result<Self, TargetError> {
        if pid == 1 {
            return Err(TargetError::Refused {
                pid,
                why: "init (pid 1)",
            });
        }
        if pid == std::process::id() {
            return Err(TargetError::Refused {
                pid,
                why: "ffrtmp itself",
            });
        }
        // SAFETY: pidfd_open(2) returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::ESRCH) => TargetError::NoSuchProcess(pid),
                // A pidfd names a thread group: a thread's id is refused
                // (EINVAL; ENOENT from 6.9 on).
                Some(libc::EINVAL | libc::ENOENT) => match thread_group_of(pid) {
                    Some(tgid) if tgid != pid => TargetError::Thread { tid: pid, tgid },
                    _ => TargetError::Pidfd { pid, source },
                },
                _ => TargetError::Pidfd { pid, source },
            });
        }
        // SAFETY: a fresh fd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let stat = match Stat::read(pid) {
            Ok(s) => s,
            Err(ProcError::Gone(_)) => return Err(TargetError::NoSuchProcess(pid)),
            Err(source) => return Err(TargetError::Proc { pid, source }),
        };
        if stat.is_kernel_thread() {
            return Err(TargetError::Refused {
                pid,
                why: "a kernel thread",
            });
        }
        let target = Target {
            pid,
            comm: stat.comm.clone(),
            start_ticks: stat.start_ticks,
            pidfd,
        };
        if stat.state == 'Z' {
            return Err(TargetError::Exited(pid));
        }
        if let Some(expected) = expect_start
            && expected != stat.start_ticks
        {
            return Err(TargetError::Reused {
                pid,
                expected,
                actual: stat.start_ticks,
            });
        }
        // The pidfd was opened before the stat was read: it names this
        // process, and from here on it alone says whether it still lives.
        if target.has_exited() {
            return Err(TargetError::Exited(pid));
        }
        Ok(target)
    }

    /// Still the same live process? Run before every step.
    pub(crate) fn check(&self) -> Result<(), TargetError> {
        if self.has_exited() {
            return Err(TargetError::Exited(self.pid));
        }
        match Stat::read(self.pid) {
            Ok(s) if s.start_ticks == self.start_ticks && s.state != 'Z' => Ok(()),
            Ok(s) if s.start_ticks != self.start_ticks => Err(TargetError::Reused {
                pid: self.pid,
                expected: self.start_ticks,
                actual: s.start_ticks,
            }),
            Ok(_) | Err(ProcError::Gone(_)) => Err(TargetError::Exited(self.pid)),
            Err(source) => Err(TargetError::Proc {
                pid: self.pid,
                source,
            }),
        }
    }

    /// A pidfd polls readable once its process has exited.
    pub(crate) fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.pidfd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&raw mut pfd, 1, 0) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// The live descendants of `pid` (children, grandchildren, …) now.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let Ok(pids) = crate::observe::proc::list_pids() else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = pids
        .into_iter()
        .filter_map(|p| Stat::read(p).ok().map(|s| (p, s.ppid)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, _) in parents.iter().filter(|(_, pp)| *pp == parent) {
            out.push(child);
            frontier.push(child);
        }
    }
    out
}
