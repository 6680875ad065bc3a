//! The ledger: ffrtmp's own record of the job cgroups it made, and the locks
//! that order making and removing them — in a directory only ffrtmp's user
//! can open.
//!
//! Why not the cgroup directories themselves: they are world-readable, so any
//! local user can open one and `flock` it. Measured on the upstream layout
//! (locks on `/sys/fs/cgroup/*/ffrtmp`), a user holding `LOCK_SH` kept
//! `watch` from starting for 19 s and a daemon's new processes in staging
//! for as long as it liked. And "an empty directory under our root" does not
//! say who made it: cleanup removed other programs' cgroups under a shared
//! `--cgroup-root`. Here, for each ffrtmp root cgroup:
//!
//! ```text
//! <base>/roots/<root, %-escaped>/lock        exclusive while a job is made or removed
//! <base>/roots/<root, %-escaped>/jobs/<job>  "ffrtmp made this job"; its wrapper holds LOCK_SH
//! <base>/scopes/jobs/<job>                   the record of a job systemd holds as a scope
//! ```
//!
//! A marker holds the job's [`Record`] (one JSON object): its tier and
//! who asked for it, the labels `status`, the pressure watch and a
//! restarted daemon read, for a job in the tree and a scope alike — never
//! in the cgroup (world-writable attributes of a directory any user can
//! open) or in a unit's description (systemd's prose). A record names the
//! inode of the cgroup directory it describes, so one left from an earlier
//! cgroup of the same name (a scope made again) is never taken for it.
//!
//! `<base>` is `/run/ffrtmp` in privileged mode and `/run/user/<uid>/ffrtmp`
//! (or `/tmp/ffrtmp-<uid>` without one) for a delegate. It is made 0700; an
//! existing one is used only if it is a real directory (not a link), owned by
//! us or root, and writable by no one else — so every lock here can only be
//! taken by ffrtmp itself. Files are opened with `O_NOFOLLOW`. Locks are
//! still taken with a bounded wait ([`LOCK_WAIT`]): a stopped ffrtmp holding
//! one fails the next job instead of stalling governing. Both live on tmpfs
//! and end with the boot, as cgroups do.
//!
//! A job cgroup without a marker is never removed, whoever made it.
use std::{
    fmt::Write as _,
    fs::{self, DirBuilder, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{GovernError, Mode, layout::CgroupPath};
use crate::limits::Tier;

/// How long taking the root lock may wait. Jobs are made in ~0.3–0.5 ms
/// under it (docs/BENCHMARKS.md), so only a stopped or stuck ffrtmp holds
/// it this long; the job then fails (and the daemon's process stays in its
/// staging cgroup, to be retried).
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Privileged mode's base directory.
const PRIVILEGED_BASE: &str = "/run/ffrtmp";

/// What ffrtmp records of a job it made, beside the fact that it made it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its tier, if it was given one.
    pub tier: Option<Tier>,
    /// Which command made it.
    pub by: Option<MadeBy>,
    /// The inode of the cgroup directory it describes (a v1 job's first).
    pub cgroup_ino: u64,
}

/// The command that made a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MadeBy {
    Run,
    Attach,
    Watch,
}

impl MadeBy {
    pub fn as_str(self) -> &'static str {
        match self {
            MadeBy::Run => "run",
            MadeBy::Attach => "attach",
            MadeBy::Watch => "watch",
        }
    }
}

/// A record is one small JSON object; anything longer is not one of ours.
const RECORD_MAX: u64 = 512;

/// The ledger of one ffrtmp root cgroup, or of the jobs that are scopes.
#[derive(Clone, Debug)]
pub struct Ledger {
    base: PathBuf,
    /// `<base>/roots/<escaped root>`.
    dir: PathBuf,
}

/// The root lock, held while a job is made or removed.
#[derive(Debug)]
pub struct RootLock {
    #[allow(dead_code, reason = "held for its lock, never read")]
    lock: Flock<File>,
}

/// A job's claim: a shared lock on its marker, held by the process that
/// made the job for as long as it looks after it (released by the kernel
/// however that process ends).
#[derive(Debug)]
pub struct Claim {
    #[allow(dead_code, reason = "held for its lock, never read")]
    lock: Flock<File>,
}

/// What the ledger says about a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// No marker: ffrtmp did not make it (or the ledger cannot be read).
    NotOurs,
    /// Ours, and a live process holds its claim.
    Claimed,
    /// Ours, and nobody looks after it.
    Unclaimed,
}

impl Ledger {
    /// The ledger of `root` in `mode` (no I/O: directories are made when a
    /// lock is first taken).
    pub fn of(mode: Mode, root: &CgroupPath) -> Self {
        let base = base_of(mode);
        let dir = base.join("roots").join(escape(root.as_str()));
        Ledger { base, dir }
    }

    /// The ledger of the jobs systemd holds as scopes (privileged mode
    /// only: only a privileged ffrtmp asks systemd for scopes).
    pub fn scopes() -> Self {
        let base = PathBuf::from(PRIVILEGED_BASE);
        let dir = base.join("scopes");
        Ledger { base, dir }
    }

    fn lock_file(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn marker(&self, job: &str) -> PathBuf {
        self.dir.join("jobs").join(job)
    }

    /// Makes the ledger's directories (0700), or checks the existing ones.
    fn prepare(&self) -> Result<(), GovernError> {
        if let Some(parent) = self.base.parent() {
            // /run/user/<uid> or /tmp: the system's; only checked below.
            if !parent.is_dir() {
                fs::create_dir_all(parent).map_err(|e| GovernError::io("creating", parent, e))?;
            }
        }
        let parent = self.dir.parent().unwrap_or(&self.base).to_path_buf();
        for dir in [
            self.base.clone(),
            parent,
            self.dir.clone(),
            self.dir.join("jobs"),
        ] {
            private_dir(&dir)?;
        }
        Ok(())
    }

    /// Makes or checks the ledger's directories once per process (a job
    /// made, labelled or removed would otherwise cost ~9 more system
    /// calls); `again`: they have gone, so they are made and checked anew.
    fn prepared(&self, again: bool) -> Result<(), GovernError> {
        static PREPARED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        let mut dirs = PREPARED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if again {
            dirs.retain(|d| d != &self.dir);
        }
        if !dirs.contains(&self.dir) {
            self.prepare()?;
            dirs.push(self.dir.clone());
        }
        Ok(())
    }

    /// Opens ledger file `path` (made if `create`), making the ledger's
    /// directories again if they have gone.
    fn open_in(&self, path: &Path, create: bool) -> Result<File, GovernError> {
        self.prepared(false)?;
        match open_private(path, create) {
            Err(GovernError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                self.prepared(true)?;
                open_private(path, create)
            }
            other => other,
        }
    }

    /// Takes the root lock, waiting at most [`LOCK_WAIT`].
    pub fn lock(&self) -> Result<RootLock, GovernError> {
        let path = self.lock_file();
        let file = self.open_in(&path, true)?;
        let lock = flock_within(file, FlockArg::LockExclusiveNonblock, LOCK_WAIT)
            .map_err(|e| GovernError::io("locking", &path, e))?;
        Ok(RootLock { lock })
    }

    /// Records that ffrtmp made job `job` and claims it. Under the root lock.
    pub fn record(&self, _lock: &RootLock, job: &str) -> Result<Claim, GovernError> {
        let path = self.marker(job);
        let file = open_private(&path, true)?;
        // Shared claims never conflict with each other; a reaper holds it
        // exclusively only under the root lock, which we hold.
        // A moment's wait at most: `entry` probes with an exclusive lock.
        let lock = flock_within(file, FlockArg::LockSharedNonblock, LOCK_WAIT)
            .map_err(|e| GovernError::io("claiming", &path, e))?;
        Ok(Claim { lock })
    }

    /// Writes job `job`'s record (its marker is made if it has none, as a
    /// scope's has not). Written in place, not replaced: a claim is a lock
    /// on the marker's inode. Readers take no lock; a record is written
    /// once, right after its job is made, in one `write`.
    pub fn label(&self, job: &str, record: &Record) -> Result<(), GovernError> {
        let path = self.marker(job);
        let file = self.open_in(&path, true)?;
        let text = serde_json::to_vec(record)
            .map_err(|e| GovernError::io("encoding the record of", &path, io::Error::other(e)))?;
        std::os::unix::fs::FileExt::write_all_at(&file, &text, 0)
            .and_then(|()| file.set_len(text.len() as u64))
            .map_err(|e| GovernError::io("writing", &path, e))
    }

    /// Job `job`'s record, if it has one that describes the cgroup
    /// directory whose inode is `cgroup_ino` (`None`: none, another
    /// cgroup's, unreadable, or not a record).
    pub fn record_of(&self, job: &str, cgroup_ino: u64) -> Option<Record> {
        let file = open_private(&self.marker(job), false).ok()?;
        let mut text = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, RECORD_MAX), &mut text).ok()?;
        let record: Record = serde_json::from_slice(&text).ok()?;
        (record.cgroup_ino == cgroup_ino).then_some(record)
    }

    /// Removes job `job`'s marker, without the root lock: for a scope's
    /// record, once its scope is gone (systemd removed it).
    pub fn forget_scope(&self, job: &str) {
        let _ = fs::remove_file(self.marker(job));
    }

    /// Whether `job` is ours, and whether someone looks after it.
    pub fn entry(&self, job: &str) -> Entry {
        let Ok(file) = open_private(&self.marker(job), false) else {
            return Entry::NotOurs;
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_) => Entry::Unclaimed,
            Err(_) => Entry::Claimed,
        }
    }

    /// Takes `job` for removal: `Some` (holding its marker exclusively) if
    /// it is ours and unclaimed. Under the root lock.
    pub fn take(&self, _lock: &RootLock, job: &str) -> Option<Taken> {
        let file = open_private(&self.marker(job), false).ok()?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
        Some(Taken { _lock: lock })
    }

    /// Forgets `job` (its cgroups are gone). Under the root lock.
    pub fn forget(&self, _lock: &RootLock, job: &str) {
        let _ = fs::remove_file(self.marker(job));
    }

    /// The jobs recorded.
    pub fn jobs(&self) -> Vec<String> {
        fs::read_dir(self.dir.join("jobs"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The roots this mode's ledger has records for (every root a job was made
/// under since boot, staging roots included), read without making anything.
/// Empty when the ledger does not exist or is not safely ours.
pub(crate) fn roots(mode: Mode) -> Vec<CgroupPath> {
    let base = base_of(mode);
    let roots = base.join("roots");
    if check_private(&base).is_err() || check_private(&roots).is_err() {
        return Vec::new();
    }
    let Ok(dir) = fs::read_dir(&roots) else {
        return Vec::new();
    };
    let mut found: Vec<CgroupPath> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| unescape(&name))
        .filter_map(|path| CgroupPath::new(&path).ok())
        .collect();
    found.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    found
}

/// A job taken for removal (see [`Ledger::take`]).
#[derive(Debug)]
pub struct Taken {
    _lock: Flock<File>,
}

/// The ledger's base directory in `mode`.
fn base_of(mode: Mode) -> PathBuf {
    match mode {
        Mode::Privileged => PathBuf::from(PRIVILEGED_BASE),
        Mode::Delegated | Mode::Unprivileged => user_base(),
    }
}

/// A delegate's base: its runtime directory when it has one, else a
/// directory of its own in /tmp. Chosen by uid, never by environment, so
/// every ffrtmp of one user (a unit, a shell) shares one ledger.
fn user_base() -> PathBuf {
    let uid = nix::unistd::geteuid().as_raw();
    let runtime = PathBuf::from(format!("/run/user/{uid}"));
    let usable = fs::symlink_metadata(&runtime)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0);
    if usable {
        runtime.join("ffrtmp")
    } else {
        PathBuf::from(format!("/tmp/ffrtmp-{uid}"))
    }
}

/// Makes `dir` 0700, or checks that the existing one is a directory (not a
/// link) owned by us or root that no one else may write.
fn private_dir(dir: &Path) -> Result<(), GovernError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_private(dir),
        Err(e) => Err(GovernError::io("creating", dir, e)),
    }
}

/// Checks that `dir` is a directory (not a link) owned by us or root that
/// no one else may write.
fn check_private(dir: &Path) -> Result<(), GovernError> {
    let meta = fs::symlink_metadata(dir).map_err(|e| GovernError::io("checking", dir, e))?;
    let uid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || !(meta.uid() == uid || meta.uid() == 0) || meta.mode() & 0o022 != 0 {
        return Err(GovernError::UnsafeLedger {
            path: dir.to_path_buf(),
            why: format!(
                "{}, owner uid {}, mode {:o}",
                if meta.is_dir() {
                    "a directory"
                } else {
                    "not a directory"
                },
                meta.uid(),
                meta.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// Opens a ledger file without following links (created 0600 if asked).
fn open_private(path: &Path, create: bool) -> Result<File, GovernError> {
    OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .mode(0o600)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(|e| GovernError::io("opening", path, e))
}

fn libc_flags() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits()
}

/// Takes a lock (a non-blocking kind), retrying until `wait` has passed.
/// Polled with a growing pause (50 µs to 2 ms): holders hold it for well
/// under a millisecond.
fn flock_within(file: File, how: FlockArg, wait: Duration) -> io::Result<Flock<File>> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_micros(50);
    let mut file = file;
    loop {
        match Flock::lock(file, how) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(2));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("held by another ffrtmp for over {} s", wait.as_secs_f32()),
                ));
            }
            Err((_, e)) => return Err(io::Error::from(e)),
        }
    }
}

/// A cgroup path as one file name: every byte outside `[A-Za-z0-9._-]`
/// as `%XX`, so `/ffrtmp` is `%2Fffrtmp` and no two paths share a name.
fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The inverse of [`escape`]; `None` for a name `escape` cannot make.
fn unescape(name: &str) -> Option<String> {
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    let path = String::from_utf8(out).ok()?;
    (escape(&path) == name).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_rejects_what_it_cannot_make() {
        for path in ["/ffrtmp", "/ffrtmp/.staging", "/a b/ü", "/a%20b"] {
            assert_eq!(unescape(&escape(path)).as_deref(), Some(path));
        }
        for name in ["%2", "%zz", "%2fffrtmp", "a/b", "%FF"] {
            assert_eq!(unescape(name), None, "{name}");
        }
    }

    #[test]
    fn escaped_roots_are_distinct_single_names() {
        let names: Vec<String> = ["/ffrtmp", "/ffrtmp/.staging", "/a b", "/a_b", "/a%20b"]
            .iter()
            .map(|p| escape(p))
            .collect();
        assert_eq!(names[0], "%2Fffrtmp");
        for (i, a) in names.iter().enumerate() {
            assert!(!a.contains('/'), "{a}");
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn an_unsafe_base_is_refused() {
        let dir = std::env::temp_dir().join(format!("ffrtmp-ledger-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        DirBuilder::new().mode(0o777).create(&dir).unwrap();
        // The umask may have cut the mode: set it.
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let err = private_dir(&dir).unwrap_err();
        assert!(matches!(err, GovernError::UnsafeLedger { .. }), "{err}");
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        private_dir(&dir).unwrap();
        let link = dir.with_extension("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(
            private_dir(&link).is_err(),
            "a link is not a private directory"
        );
        fs::remove_file(&link).unwrap();
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_record_describes_one_cgroup_and_keeps_its_claim() {
        let base = std::env::temp_dir().join(format!("ffrtmp-ledger-r-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let ledger = Ledger {
            dir: base.join("roots").join("%2Fx"),
            base: base.clone(),
        };
        let lock = ledger.lock().unwrap();
        let _claim = ledger.record(&lock, "j").unwrap();
        assert_eq!(ledger.record_of("j", 7), None, "an empty marker");
        let live = Record {
            tier: Some(Tier::Live),
            by: Some(MadeBy::Run),
            cgroup_ino: 7,
        };
        ledger.label("j", &live).unwrap();
        assert_eq!(ledger.record_of("j", 7), Some(live));
        assert_eq!(ledger.record_of("j", 8), None, "another cgroup's record");
        assert_eq!(ledger.entry("j"), Entry::Claimed, "written in place");
        // A shorter record replaces a longer one whole.
        let plain = Record {
            tier: None,
            by: Some(MadeBy::Watch),
            cgroup_ino: 7,
        };
        ledger.label("j", &plain).unwrap();
        assert_eq!(ledger.record_of("j", 7), Some(plain));
        fs::write(ledger.marker("j"), "tier = live").unwrap();
        assert_eq!(ledger.record_of("j", 7), None, "not a record");
        // A scope's record needs no marker first.
        let scopes = Ledger {
            dir: base.join("scopes"),
            base: base.clone(),
        };
        scopes.label("s", &live).unwrap();
        assert_eq!(scopes.record_of("s", 7), Some(live));
        scopes.forget_scope("s");
        assert!(scopes.jobs().is_empty());
        drop(lock);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn claims_keep_a_job_from_being_taken() {
        let base = std::env::temp_dir().join(format!("ffrtmp-ledger-c-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let ledger = Ledger {
            dir: base.join("roots").join("%2Fx"),
            base: base.clone(),
        };
        let lock = ledger.lock().unwrap();
        assert_eq!(ledger.entry("j"), Entry::NotOurs);
        assert!(ledger.take(&lock, "j").is_none(), "not ours: never taken");
        let claim = ledger.record(&lock, "j").unwrap();
        assert_eq!(ledger.entry("j"), Entry::Claimed);
        assert!(ledger.take(&lock, "j").is_none(), "claimed: not taken");
        drop(claim);
        assert_eq!(ledger.entry("j"), Entry::Unclaimed);
        assert!(ledger.take(&lock, "j").is_some());
        assert_eq!(ledger.jobs(), vec!["j".to_string()]);
        ledger.forget(&lock, "j");
        assert!(ledger.jobs().is_empty());
        // A second lock waits, then says who holds it.
        let err = flock_within(
            open_private(&ledger.lock_file(), false).unwrap(),
            FlockArg::LockExclusiveNonblock,
            Duration::from_millis(20),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(lock);
        fs::remove_dir_all(&base).unwrap();
    }
}
