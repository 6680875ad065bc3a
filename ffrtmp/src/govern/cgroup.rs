//! A job's cgroup as ffrtmp handles it: made with its limits (v2, v1, or
//! found as a systemd scope), its processes, its statistics, its record
//! in the ledger, and its removal once empty.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{
    Context, GovernError, Kind, Stats, job,
    layout::CgroupPath,
    ledger::{Claim, Ledger, MadeBy, Record},
    make_room, root_dirs, scope, systemd, v1, v2,
};
use crate::limits::{Applied, JobId, Limits, Tier};

/// A job's cgroup(s).
#[derive(Debug)]
pub(crate) struct JobCgroup {
    /// Its cgroup path (the same in every hierarchy).
    pub path: CgroupPath,
    inner: Inner,
    /// Its claim in the ledger, held while this value lives: "ffrtmp looks
    /// after this job" (`None`: found in the tree, not claimed).
    #[allow(dead_code, reason = "held for its lock, never read")]
    claim: Option<Claim>,
    /// `None`: a scope, which systemd removes, not ffrtmp.
    ledger: Option<Ledger>,
}

/// What [`JobCgroup::create`] does when the job's cgroup already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Refuse: another job uses this id ([`GovernError::JobIdInUse`]).
    Refuse,
    /// Use it and apply the limits to it (re-attaching to a job's process,
    /// a staging cgroup): it is recorded as ffrtmp's if it was not.
    Update,
}

/// The cgroup paths of `pid`, one per hierarchy (/proc/PID/cgroup); empty
/// when it is gone.
pub(crate) fn cgroup_paths_of(pid: u32) -> Vec<String> {
    crate::observe::proc::read_small(Path::new(&format!("/proc/{pid}/cgroup")))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is in cgroup `path` in any hierarchy.
pub(crate) fn pid_in_cgroup(pid: u32, path: &CgroupPath) -> bool {
    cgroup_paths_of(pid).iter().any(|p| p == path.as_str())
}

/// A cgroup's `cgroup.procs` files (one per hierarchy), held open.
#[derive(Debug, Default)]
pub(crate) struct ProcsWriter(Vec<(PathBuf, fs::File)>);

impl ProcsWriter {
    /// The open files, for a child to write `0` to before exec.
    pub(crate) fn raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd as _;
        self.0.iter().map(|(_, f)| f.as_raw_fd()).collect()
    }

    /// Moves a whole thread group in, as [`JobCgroup::add`] does, without
    /// opening and closing a file per hierarchy.
    pub(crate) fn add(&self, pid: u32) -> Result<(), GovernError> {
        let pid = pid.to_string();
        for (path, file) in &self.0 {
            // Each write is one request to the kernel, whatever the offset.
            std::os::unix::fs::FileExt::write_all_at(file, pid.as_bytes(), 0)
                .map_err(|e| GovernError::io("moving a process into", path, e))?;
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Inner {
    V2(v2::Dir),
    V1(v1::Dirs),
    /// A transient scope systemd made and owns ([`scope`]): read, never
    /// written or removed by ffrtmp.
    Scope(v2::Dir),
}

impl JobCgroup {
    /// Creates the job's cgroup (or, with [`Existing::Update`], uses the
    /// existing one) and applies `limits`.
    pub(crate) fn create(
        ctx: &Context,
        job: &JobId,
        limits: &Limits,
        existing: Existing,
    ) -> Result<(Self, Applied), GovernError> {
        let root = ctx.root.as_ref().ok_or(GovernError::NoCgroups)?;
        let ledger = Ledger::of(ctx.mode, root);
        let path = root.child(job.as_str());
        let primary = root_dirs(ctx, root)
            .into_iter()
            .next()
            .ok_or(GovernError::NoCgroups)?;
        let lock = ledger.lock()?;
        if !primary.is_dir() {
            fs::create_dir_all(&primary).map_err(|e| GovernError::io("creating", &primary, e))?;
        }
        let (inner, applied) = if let (Kind::V2, Some(mount)) = (ctx.layout.kind(), &ctx.layout.v2)
        {
            if let Some(unit) = &ctx.subtree
                && systemd::manages_cgroups()
            {
                make_room(mount, unit);
            }
            let floor = ctx.subtree.as_ref();
            let (job, applied) = v2::Dir::create(mount, floor, root, &path, limits, existing)?;
            (Inner::V2(job), applied)
        } else {
            let (job, applied) = v1::Dirs::create(&ctx.layout.v1, &path, limits, existing)?;
            (Inner::V1(job), applied)
        };
        let mut job = JobCgroup {
            path,
            inner,
            claim: None,
            ledger: Some(ledger.clone()),
        };
        match ledger.record(&lock, job.name()) {
            Ok(claim) => job.claim = Some(claim),
            Err(e) => {
                // Unrecorded, it could never be removed: undo what was made.
                if existing == Existing::Refuse {
                    for d in job.dirs() {
                        let _ = fs::remove_dir(d);
                    }
                }
                return Err(e);
            }
        }
        Ok((job, applied))
    }

    /// Job `job`'s cgroup as it is now in the tree (found by a restarted
    /// daemon, say); `None` if it does not exist. Takes no claim.
    pub(crate) fn open_existing(ctx: &Context, job: &str) -> Option<Self> {
        let path = ctx.root.as_ref()?.child(job);
        let inner = match (ctx.layout.kind(), &ctx.layout.v2) {
            (Kind::V2, Some(mount)) => {
                let dir = mount.dir_of(&path);
                Inner::V2(v2::Dir {
                    dir: dir.is_dir().then_some(dir)?,
                })
            }
            _ => Inner::V1(v1::Dirs::existing(&ctx.layout.v1, &path)?),
        };
        Some(JobCgroup {
            path,
            inner,
            claim: None,
            ledger: Some(ctx.ledger()?),
        })
    }

    /// A job's scope (`path`, directory `dir`), made by systemd.
    pub(crate) fn of_scope(path: CgroupPath, dir: PathBuf) -> Self {
        JobCgroup {
            path,
            inner: Inner::Scope(v2::Dir { dir }),
            claim: None,
            ledger: None,
        }
    }

    /// Records the job's labels — its tier, the command that made it — in
    /// the ledger ([`Record`]), where `status`, the pressure watch
    /// and a restarted daemon read them ([`job::list`]). Nothing is
    /// written to the cgroup, nor to a scope, which is systemd's.
    pub(crate) fn label(&self, by: MadeBy, tier: Option<Tier>) -> Result<(), GovernError> {
        let (ledger, dir) = match (&self.inner, &self.ledger) {
            (Inner::Scope(d), _) => (Ledger::scopes(), d.dir.clone()),
            (_, Some(ledger)) => (
                ledger.clone(),
                self.dirs()
                    .into_iter()
                    .next()
                    .ok_or(GovernError::NoCgroups)?,
            ),
            (_, None) => return Err(GovernError::NoCgroups),
        };
        let cgroup_ino = job::cgroup_ino(&dir).map_err(|e| GovernError::io("reading", &dir, e))?;
        let record = Record {
            tier,
            by: Some(by),
            cgroup_ino,
        };
        ledger.label(self.name(), &record)
    }

    /// Whether systemd made it (a scope), rather than ffrtmp.
    pub(crate) fn is_scope(&self) -> bool {
        matches!(self.inner, Inner::Scope(_))
    }

    /// The job's name (its directory name; a scope's job id).
    pub(crate) fn name(&self) -> &str {
        let last = self.path.as_str().rsplit('/').next().unwrap_or_default();
        match self.inner {
            Inner::Scope(_) => scope::job_of_cgroup(self.path.as_str()).unwrap_or(last),
            _ => last,
        }
    }

    /// The `cgroup.procs` file of each hierarchy.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::V2(j) | Inner::Scope(j) => j.procs_files(),
            Inner::V1(j) => j.procs_files(),
        }
    }

    /// Moves a whole thread group into the job (every hierarchy). A scope
    /// is systemd's to move processes into (it did, when it made it): there
    /// this only checks that the process is in it.
    pub(crate) fn add(&self, pid: u32) -> Result<(), GovernError> {
        if self.is_scope() {
            return if pid_in_cgroup(pid, &self.path) {
                Ok(())
            } else {
                Err(GovernError::io(
                    "finding the process in",
                    Path::new(self.path.as_str()),
                    io::Error::other("not in the scope systemd made for it"),
                ))
            };
        }
        for file in self.procs_files() {
            fs::write(&file, pid.to_string())
                .map_err(|e| GovernError::io("moving a process into", &file, e))?;
        }
        Ok(())
    }

    /// Its `cgroup.procs` files opened for writing, for a cgroup that
    /// receives many processes (a staging cgroup).
    pub(crate) fn procs_writer(&self) -> Result<ProcsWriter, GovernError> {
        self.procs_files()
            .into_iter()
            .map(|path| {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| GovernError::io("opening", &path, e))?;
                Ok((path, file))
            })
            .collect::<Result<_, _>>()
            .map(ProcsWriter)
    }

    pub(crate) fn stats(&self) -> Stats {
        match &self.inner {
            Inner::V2(j) | Inner::Scope(j) => j.stats(),
            Inner::V1(j) => j.stats(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match &self.inner {
            Inner::V2(j) | Inner::Scope(j) => j.is_empty(),
            Inner::V1(j) => j.is_empty(),
        }
    }

    /// Removes the job's cgroup(s) if no process is left in them: the
    /// kernel refuses to remove a cgroup that holds a process (EBUSY), so
    /// asking it is the check, without a race between looking and removing.
    /// On v1 a hierarchy whose directory is still busy keeps it while the
    /// others go; the job's name (and its record) stays until that one is
    /// reaped too. Only for a job this process made (it holds the claim).
    /// A scope is removed by systemd once empty: this only says whether
    /// it is.
    pub(crate) fn remove_if_empty(&self) -> bool {
        let Some(ledger) = &self.ledger else {
            let empty = self.is_empty();
            if empty {
                Ledger::scopes().forget_scope(self.name());
            }
            return empty;
        };
        let Ok(lock) = ledger.lock() else {
            return false; // left for a reaper
        };
        let removed = self.dirs().iter().all(|d| fs::remove_dir(d).is_ok());
        if removed {
            ledger.forget(&lock, self.name());
        }
        removed
    }

    /// Its directories, sorted (the first carries the claim); none of a
    /// scope's is ffrtmp's.
    pub(super) fn dirs(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::V2(j) => j.dirs(),
            Inner::V1(j) => j.dirs(),
            Inner::Scope(_) => Vec::new(),
        }
    }
}
