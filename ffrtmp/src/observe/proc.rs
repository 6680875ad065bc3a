//! Reading process facts from /proc, for the procfs backend and for adoption
//! of already-running processes (which is a procfs scan for both backends).
//!
//! Every read can race with the process exiting; callers treat a missing
//! process as "gone", never as an error of ffrtmp.
use std::{
    fs, io,
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use nix::time::{ClockId, clock_gettime};

use crate::events::{Exec, metrics::Usage, process_key};

/// `/proc/PID/stat` flag of kernel threads.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Errors while reading /proc.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {what}")]
    Parse { path: PathBuf, what: &'static str },
}

impl ProcError {
    fn io(pid: u32, path: PathBuf, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
            ProcError::Gone(pid)
        } else {
            ProcError::Io { path, source }
        }
    }
}

/// The fields of `/proc/PID/stat` ffrtmp uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    /// Process state (`R`, `S`, `Z` for a zombie, …).
    pub state: char,
    pub ppid: u32,
    pub flags: u64,
    /// Clock ticks after boot at which the process started.
    pub start_ticks: u64,
    /// CPU time in user and kernel mode, in clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Virtual memory size in bytes, and resident set in pages.
    pub vsize: u64,
    pub rss_pages: u64,
}

impl Stat {
    pub fn read(pid: u32) -> Result<Self, ProcError> {
        let path = PathBuf::from(format!("/proc/{pid}/stat"));
        let raw = read_small(&path).map_err(|e| ProcError::io(pid, path.clone(), e))?;
        Self::parse(pid, &raw).ok_or(ProcError::Parse {
            path,
            what: "unexpected /proc/PID/stat layout",
        })
    }

    /// Parses a stat line. `comm` may itself contain spaces and `)`, so the
    /// fields are split after the *last* `)`.
    pub fn parse(pid: u32, raw: &[u8]) -> Option<Self> {
        let open = raw.iter().position(|&b| b == b'(')?;
        let close = raw.iter().rposition(|&b| b == b')')?;
        let comm = String::from_utf8_lossy(raw.get(open + 1..close)?).into_owned();
        let rest = std::str::from_utf8(raw.get(close + 1..)?).ok()?;
        // Fields after comm, numbered from 3 (state) as in proc(5).
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).copied();
        Some(Stat {
            pid,
            comm,
            state: field(3)?.chars().next()?,
            ppid: field(4)?.parse().ok()?,
            flags: field(9)?.parse().ok()?,
            start_ticks: field(22)?.parse().ok()?,
            utime: field(14)?.parse().ok()?,
            stime: field(15)?.parse().ok()?,
            vsize: field(23)?.parse().ok()?,
            rss_pages: field(24)?.parse().ok()?,
        })
    }

    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// What this process costs now, for the metrics' `process_*`.
pub fn own_usage() -> Usage {
    let mut usage = Usage::default();
    if let Ok(stat) = Stat::read(std::process::id()) {
        let ticks = clock_ticks_per_second();
        usage.cpu_seconds = ticks.map(|hz| (stat.utime + stat.stime) as f64 / hz as f64);
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usage.resident_bytes = (page > 0).then_some(stat.rss_pages as f64 * page as f64);
        usage.virtual_bytes = Some(stat.vsize as f64);
        usage.start_time_seconds = age_of(stat.start_ticks)
            .and_then(|age| SystemTime::now().checked_sub(age))
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|t| t.as_secs_f64());
    }
    // At the descriptor limit this open fails too: the figure is left out,
    // and the limit says why.
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // Minus the descriptor of the listing itself.
        usage.open_fds = Some(dir.count().saturating_sub(1) as f64);
    }
    usage.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft as f64);
    usage
}

/// A start time in ns since boot (the kernel's `start_boottime`) as
/// /proc/PID/stat's clock ticks.
pub fn ticks_of_ns(ns: u64) -> Option<u64> {
    let hz = clock_ticks_per_second()?;
    Some(ns / (1_000_000_000 / hz))
}

/// Time since a process started `start_ticks` clock ticks after boot.
pub fn age_of(start_ticks: u64) -> Option<Duration> {
    let hz = clock_ticks_per_second()?;
    let boot = clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?;
    let now_ns = u128::try_from(boot.tv_sec()).ok()? * 1_000_000_000
        + u128::try_from(boot.tv_nsec()).ok()?;
    let start_ns = u128::from(start_ticks) * 1_000_000_000 / u128::from(hz);
    let age = now_ns.checked_sub(start_ns)?;
    Some(Duration::from_nanos(u64::try_from(age).ok()?))
}

fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0)
}

/// Real uid from `/proc/PID/status`.
pub fn read_uid(pid: u32) -> Result<u32, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = fs::read_to_string(&path).map_err(|e| ProcError::io(pid, path.clone(), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .ok_or(ProcError::Parse {
            path,
            what: "no Uid line",
        })
}

/// Arguments from `/proc/PID/cmdline`; `None` when unreadable or empty.
/// Reads a small /proc file. `fs::read` asks for the size and position
/// first (0 for /proc) and then grows its buffer from 32 bytes: eight
/// system calls for a stat line. This is one read and the one that says
/// "end", on the path that governs a new process.
pub fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// [`read_small`] as text: for /proc and cgroupfs files.
pub fn read_text(path: impl AsRef<Path>) -> io::Result<String> {
    let raw = read_small(path.as_ref())?;
    String::from_utf8(raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn read_argv(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args = split_nul(&raw);
    (!args.is_empty()).then_some(args)
}

/// Splits a NUL-separated argument block (trailing NUL optional).
pub fn split_nul(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Pids of all processes (thread groups) now in /proc.
pub fn list_pids() -> Result<Vec<u32>, ProcError> {
    let path = PathBuf::from("/proc");
    let dir = fs::read_dir(&path).map_err(|source| ProcError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// An `exec` event for a process found in /proc (adopted or polled).
/// `filename` is the resolved executable (`/proc/PID/exe`), else `argv[0]`.
pub fn exec_event(stat: &Stat, adopted: bool) -> Result<Exec, ProcError> {
    let uid = read_uid(stat.pid)?;
    let argv = read_argv(stat.pid);
    let filename = fs::read_link(format!("/proc/{}/exe", stat.pid))
        .map(|p| p.to_string_lossy().into_owned())
        .ok()
        .or_else(|| argv.as_ref().and_then(|a| a.first().cloned()))
        .unwrap_or_default();
    Ok(Exec {
        pid: stat.pid,
        process_key: process_key(stat.pid, Some(stat.start_ticks)),
        tid: stat.pid,
        ppid: Some(stat.ppid),
        uid,
        comm: stat.comm.clone(),
        filename,
        argv,
        argv_truncated: false,
        adopted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_small_reads_whole_files_of_any_size() {
        let dir = std::env::temp_dir().join(format!("ffrtmp-read-small-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for size in [0, 1, 4095, 4096, 4097, 20_000] {
            let path = dir.join(format!("f{size}"));
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            fs::write(&path, &data).unwrap();
            assert_eq!(read_small(&path).unwrap(), data, "size {size}");
        }
        let _ = fs::remove_dir_all(&dir);
        let stat = format!("/proc/{}/stat", std::process::id());
        let ours = read_small(Path::new(&stat)).unwrap();
        assert!(ours.starts_with(format!("{} (", std::process::id()).as_bytes()));
    }

    #[test]
    fn parses_stat_with_a_hostile_comm() {
        let raw =
            b"4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1 2";
        let s = Stat::parse(4242, raw).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.ppid, 17);
        assert_eq!(s.flags, 4_194_560);
        assert_eq!(s.start_ticks, 987_654);
        assert_eq!((s.utime, s.stime, s.vsize, s.rss_pages), (1, 2, 1, 2));
        assert!(!s.is_kernel_thread());
    }

    #[test]
    fn reads_what_this_process_costs() {
        let u = own_usage();
        assert!(u.cpu_seconds.is_some_and(|s| s >= 0.0), "{u:?}");
        assert!(u.resident_bytes.is_some_and(|b| b > 1e6), "{u:?}");
        assert!(u.open_fds.is_some_and(|n| n >= 3.0), "{u:?}");
        assert!(u.max_fds.is_some_and(|n| n >= u.open_fds.unwrap()), "{u:?}");
        let started = u.start_time_seconds.unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(started <= now + 1.0 && started > now - 3600.0, "{u:?}");
    }

    #[test]
    fn rejects_truncated_stat() {
        assert_eq!(Stat::parse(1, b"1 (init) S 0 1"), None);
        assert_eq!(Stat::parse(1, b"garbage"), None);
    }

    #[test]
    fn splits_argument_blocks() {
        assert_eq!(split_nul(b"ffmpeg\0-i\0a b\0"), vec!["ffmpeg", "-i", "a b"]);
        assert_eq!(split_nul(b"x\0\0y"), vec!["x", "", "y"]);
        assert!(split_nul(b"").is_empty());
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let stat = Stat::read(pid).unwrap();
        assert_eq!(stat.pid, pid);
        assert!(age_of(stat.start_ticks).is_some());
        let exec = exec_event(&stat, true).unwrap();
        assert_eq!(exec.uid, nix::unistd::getuid().as_raw());
        assert!(exec.argv.is_some());
    }

    #[test]
    fn a_missing_process_is_gone() {
        // PIDs are at most 2^22; this one cannot exist.
        assert!(matches!(Stat::read(u32::MAX - 1), Err(ProcError::Gone(_))));
    }
}
