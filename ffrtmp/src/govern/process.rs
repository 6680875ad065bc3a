//! Per-process governance that needs no cgroup: nice (per thread on Linux,
//! so every thread is set) and oom_score_adj, each read back.
use std::{fs, io};

/// Errors while setting nice or oom_score_adj.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
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
    #[error("setting oom_score_adj of {pid} to {value}")]
    OomScoreAdj {
        pid: u32,
        value: i32,
        #[source]
        source: io::Error,
    },
}

/// The nice value of thread `tid`.
pub fn nice_of(tid: u32) -> io::Result<i32> {
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
pub fn set_nice_all_threads(pid: u32, nice: i32) -> Result<i32, ProcessError> {
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
pub fn set_oom_score_adj(pid: u32, value: i32) -> Result<i32, ProcessError> {
    let path = format!("/proc/{pid}/oom_score_adj");
    let err = |source| ProcessError::OomScoreAdj { pid, value, source };
    fs::write(&path, value.to_string()).map_err(err)?;
    oom_score_adj_of(pid).map_err(err)
}

pub fn oom_score_adj_of(pid: u32) -> io::Result<i32> {
    fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
