//! Per-process governance that needs no cgroup: nice (per thread on Linux,
//! so every thread is set) and oom_score_adj, each read back; and the
//! daemon's own request for a short scheduler slice.
use std::{fs, io, time::Duration};

/// Errors while setting nice or oom_score_adj.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("setting nice {nice} on thread {tid}")]
    Nice {
        nice: i32,
        tid: u32,
        #[source]
        source: io::Error,
    },
    #[error("listing the threads of {pid}")]
    Threads {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("requesting a {slice:?} scheduler slice for this thread")]
    Slice {
        slice: Duration,
        #[source]
        source: io::Error,
    },
    #[error("setting oom_score_adj of {pid} to {value}")]
    OomScoreAdj {
        pid: u32,
        value: i32,
        #[source]
        source: io::Error,
    },
}

/// The nice value of thread `tid`.
pub(crate) fn nice_of(tid: u32) -> io::Result<i32> {
    // getpriority can return -1 legitimately: clear errno first.
    nix::errno::Errno::clear();
    // SAFETY: plain syscall wrapper.
    let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    if n == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// Sets `nice` on every thread of `pid`; returns the value read back from
/// the main thread.
pub(crate) fn set_nice_all_threads(pid: u32, nice: i32) -> Result<i32, ProcessError> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|source| ProcessError::Threads { pid, source })?;
    for task in tasks.filter_map(Result::ok) {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        // SAFETY: plain syscall wrapper.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            let source = io::Error::last_os_error();
            // A thread that ended meanwhile is not a failure.
            if source.raw_os_error() != Some(libc::ESRCH) {
                return Err(ProcessError::Nice { nice, tid, source });
            }
        }
    }
    nice_of(pid).map_err(|source| ProcessError::Nice {
        nice,
        tid: pid,
        source,
    })
}

/// Writes `/proc/PID/oom_score_adj` and reads it back.
pub(crate) fn set_oom_score_adj(pid: u32, value: i32) -> Result<i32, ProcessError> {
    let path = format!("/proc/{pid}/oom_score_adj");
    let err = |source| ProcessError::OomScoreAdj { pid, value, source };
    fs::write(&path, value.to_string()).map_err(err)?;
    oom_score_adj_of(pid).map_err(err)
}

pub(crate) fn oom_score_adj_of(pid: u32) -> io::Result<i32> {
    crate::observe::proc::read_text(format!("/proc/{pid}/oom_score_adj"))?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Asks the scheduler to run the calling thread in slices of `slice`,
/// keeping its policy and nice; returns the slice read back, or `None` when
/// the kernel has no per-task slice (before 6.12) or the thread is not
/// under the fair scheduler (an operator's real-time policy is kept).
///
/// Why: the kernel often wakes `watch` on the CPU where the new transcoder
/// is still loading. Under EEVDF (6.6+) a woken task whose slice is not
/// shorter than the running one's waits for it to sleep (~1 ms for a
/// dynamically linked binary), however low its nice; a shorter slice
/// lets it preempt at the loader's next return to user space. It changes
/// latency only, not the CPU share, so the streams lose nothing by it.
pub(crate) fn request_slice(slice: Duration) -> Result<Option<Duration>, ProcessError> {
    let err = |source| ProcessError::Slice { slice, source };
    let mut attr = sched_attr_of_self().map_err(err)?;
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        return Ok(None);
    }
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: sched_setattr(2) on the calling thread (0) with a
    // fully initialised struct whose size field is its own size.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) };
    if r != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // Kernels before 6.12 accept the call and ignore sched_runtime for the
    // fair policy; they report 0 back.
    let back = sched_attr_of_self().map_err(err)?.sched_runtime;
    Ok((back != 0).then(|| Duration::from_nanos(back)))
}

fn sched_attr_of_self() -> io::Result<libc::sched_attr> {
    let size = std::mem::size_of::<libc::sched_attr>();
    // SAFETY: sched_attr is plain integers; all-zero is a valid value.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getattr(2) on the calling thread (0) writes at most
    // `size` bytes into `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &raw mut attr,
            size as libc::c_uint,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    attr.size = size as u32;
    Ok(attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the running kernel has per-task slices (Linux 6.12).
    fn kernel_has_custom_slices() -> bool {
        let release = nix::sys::utsname::uname().expect("uname");
        let release = release.release().to_string_lossy().into_owned();
        let mut parts = release
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (6, 12)
    }

    #[test]
    fn a_requested_slice_is_read_back_and_nice_is_kept() {
        // On a thread of its own: the attributes are per thread.
        std::thread::spawn(|| {
            // SAFETY: gettid and setpriority on this thread.
            let tid = unsafe { libc::gettid() } as u32;
            // SAFETY: as above; raising nice needs no privilege.
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 3) }, 0);
            let slice = Duration::from_micros(500);
            let got = request_slice(slice).expect("sched_setattr");
            if kernel_has_custom_slices() {
                assert_eq!(got, Some(slice));
            } else {
                assert_eq!(got, None, "this kernel has no per-task slice");
            }
            assert_eq!(nice_of(tid).expect("getpriority"), 3);
        })
        .join()
        .expect("test thread");
    }
}
