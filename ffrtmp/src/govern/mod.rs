//! Governance: putting a workload in a cgroup with limits that really apply,
//! without ever owning it.
//!
//! The design, in the order `run`/`attach` use it:
//!
//! 1. [`crate::limits`]: every option is parsed and validated first; bad
//!    input exits 2 before anything is created. A job id is a single cgroup
//!    directory name, so it can never name a path.
//! 2. [`Context::detect`]: the cgroup layout ([`layout`]: v2, v1 or hybrid,
//!    read from mountinfo) and the mode, from capabilities ([`caps`]):
//!    **privileged** (CAP_DAC_OVERRIDE, and on v1 uid 0; job cgroups under
//!    `/ffrtmp` in each hierarchy),
//!    **delegated** (a subtree we may write, found by walking up from our own
//!    v2 cgroup, as systemd's `Delegate=yes` hands one out; jobs under
//!    `<subtree>/ffrtmp`), or **unprivileged** (no cgroups; nice only).
//! 3. [`JobCgroup::create`]: the job cgroup, on v2 after enabling the needed
//!    controllers on every ancestor ([`v2`]), on v1 one directory per
//!    hierarchy ([`v1`]). Each limit is written and read back; [`Applied`]
//!    holds what the kernel accepted and, separately, what it refused and
//!    why (reported as `degraded`, or refused up front with `--strict`).
//! 4. The workload joins the cgroup before its first instruction (`run`:
//!    between fork and exec) or is moved whole (`attach`); nice and
//!    oom_score_adj ([`process`]) are set and read back.
//! 5. When it ends, [`JobCgroup::stats`] feeds the exit report and the empty
//!    cgroup is removed; [`reap_empty`] removes empty leftovers of crashed
//!    wrappers. The kernel refuses to remove a cgroup with processes, and we
//!    check first: a workload's cgroup is never removed under it.
//!
//! Claims: a job cgroup is empty between its creation and its workload's
//! join, so "empty" alone cannot tell a leftover from a job being set up by
//! another ffrtmp; nor can it tell ffrtmp's cgroups from another program's
//! under a shared `--cgroup-root`. The [`ledger`] — in a directory only
//! ffrtmp's user can open — records each job ffrtmp made; its maker holds a
//! shared lock on that record for as long as it looks after the job
//! (released by the kernel however it dies), and the reaper takes it
//! exclusively or leaves the job alone. Making (mkdir + record) and reaping
//! both hold the ledger's root lock, so a reaper never sees a job made but
//! not claimed. A job without a record is never removed.
//!
//! Nothing here writes outside the ffrtmp root except enabling controllers
//! in the `cgroup.subtree_control` of its ancestors, which v2 requires.
pub(crate) mod bus;
pub(crate) mod caps;
pub(crate) mod cleanup;
pub(crate) mod dynmods;
pub(crate) mod job;
pub mod layout;
pub(crate) mod ledger;
pub(crate) mod place;
pub(crate) mod plan;
pub(crate) mod process;
pub(crate) mod scope;
pub(crate) mod systemd;
pub(crate) mod target;
pub(crate) mod v1;
pub(crate) mod v2;
pub(crate) mod xattr;

use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
};

use crate::limits::{Applied, FileError, JobId, Limits, Tier};
pub use caps::{Cap, has_cap};
use caps::{Caps, Need};
use layout::{CgroupPath, Kind, Layout, LayoutError, own_v2_cgroup};
use ledger::{Claim, Ledger, MadeBy, Record};

/// Name of ffrtmp's root cgroup under a hierarchy or delegated subtree.
pub const ROOT_NAME: &str = "ffrtmp";
/// Errors while governing.
#[derive(Debug, thiserror::Error)]
pub enum GovernError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("job cgroup {0} already exists: another job uses this job id")]
    JobIdInUse(PathBuf),
    #[error("--cgroup-root {0:?} is not inside the cgroup hierarchy mounted at {1}")]
    RootOutsideHierarchy(String, PathBuf),
    #[error("--cgroup-root {0:?}: {1}")]
    ReservedRoot(String, &'static str),
    #[error(
        "{path} is not private to ffrtmp ({why}); it must be a directory owned by this user or root that no one else may write"
    )]
    UnsafeLedger { path: PathBuf, why: String },
    #[error("no cgroups in unprivileged mode")]
    NoCgroups,
    #[error(transparent)]
    Scope(#[from] scope::ScopeError),
}

impl GovernError {
    /// Bad input (exit 2): a cgroup root that cannot be used.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            GovernError::Layout(LayoutError::BadRoot(_))
                | GovernError::RootOutsideHierarchy(..)
                | GovernError::ReservedRoot(..)
        )
    }

    pub fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        GovernError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    fn create_job(dir: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::AlreadyExists {
            GovernError::JobIdInUse(dir.to_path_buf())
        } else {
            GovernError::io("creating job cgroup", dir, source)
        }
    }
}

/// How much ffrtmp may do here: the event contract's type (`mode`).
pub(crate) use crate::events::Mode;

/// Writes `value` to a control file and reads it back (trimmed), for
/// [`crate::limits::Files`]. Opened without `O_CREAT`: a control file is
/// never made, and cgroupfs answers a create with EACCES, which would hide
/// the missing file.
fn write_and_read_back(path: &Path, value: &str) -> Result<String, FileError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()))
        .map_err(|source| FileError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })?;
    crate::observe::proc::read_text(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| FileError::ReadBack {
            path: path.to_path_buf(),
            source,
        })
}

/// A job's cgroup statistics for its exit report; `None` when unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub oom_killed: Option<bool>,
    pub cpu_usage_us: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
}

impl Stats {
    /// The exit report of job `job_id` (the one constructor of it).
    pub fn report(self, job_id: String) -> crate::events::JobReport {
        crate::events::JobReport {
            job_id,
            oom_killed: self.oom_killed,
            cpu_usage_us: self.cpu_usage_us,
            memory_peak_bytes: self.memory_peak_bytes,
            recovered: false,
        }
    }
}

/// The layout, the mode and ffrtmp's root cgroup.
#[derive(Clone, Debug)]
pub struct Context {
    pub layout: Layout,
    pub mode: Mode,
    /// ffrtmp's root cgroup path; `None` in unprivileged mode, and on a
    /// systemd host when no unit delegated a subtree to us.
    pub root: Option<CgroupPath>,
    /// The subtree systemd delegated to us, when the root is in one: no
    /// write ever goes above it.
    pub subtree: Option<CgroupPath>,
    /// Privileged on a host whose cgroup tree systemd manages: jobs are
    /// transient scopes systemd makes ([`scope`]); the root is in the
    /// subtree delegated to us if there is one (staging; `run`'s jobs
    /// there), else there is none.
    pub scopes: bool,
}

impl Context {
    /// Detects the layout and the mode; `cgroup_root` overrides the root
    /// (a cgroup path such as `/ffrtmp`, or a directory in the v2 mount).
    pub fn detect(cgroup_root: Option<&str>) -> Result<Self, GovernError> {
        let layout = Layout::detect()?;
        let delegated = || delegated_subtree(&layout);
        // systemd owns its tree (systemd.io/CGROUP_DELEGATION): a privileged
        // ffrtmp makes no cgroup outside what was delegated to it.
        let systemd = systemd::manages_cgroups() && layout.kind() == Kind::V2;
        let (mode, subtree, scopes) = if privileged(&layout) {
            if systemd && cgroup_root.is_none() {
                (Mode::Privileged, delegated(), true)
            } else {
                (Mode::Privileged, None, false)
            }
        } else if let Some(subtree) = delegated() {
            (Mode::Delegated, Some(subtree), false)
        } else {
            (Mode::Unprivileged, None, false)
        };
        let root = match (cgroup_root, mode) {
            (_, Mode::Unprivileged) => None,
            (Some(r), _) => Some(root_path(&layout, r)?),
            (None, Mode::Delegated) => subtree.as_ref().map(|s| s.child(ROOT_NAME)),
            // With scopes the root is in the subtree delegated to us, if
            // any: the daemon's staging, and `run`'s jobs there. Without
            // one there is none: `run` makes its job a scope holding the
            // wrapper, and the daemon stages nothing.
            (None, _) if scopes => subtree.as_ref().map(|s| s.child(ROOT_NAME)),
            (None, _) => Some(CgroupPath::new("/")?.child(ROOT_NAME)),
        };
        Ok(Context {
            layout,
            mode,
            root,
            subtree,
            scopes,
        })
    }
}

impl Context {
    /// The cgroup path of job `job`; `None` without cgroups.
    pub fn job_path(&self, job: &JobId) -> Option<CgroupPath> {
        self.root.as_ref().map(|r| r.child(job.as_str()))
    }

    /// The ledger of the jobs ffrtmp made under the root.
    pub fn ledger(&self) -> Option<Ledger> {
        self.root.as_ref().map(|r| Ledger::of(self.mode, r))
    }
}

/// `--cgroup-root`: a cgroup path, or a directory inside the v2 mount.
/// Never the hierarchy's root (ffrtmp would own every cgroup on the node) nor
/// a staging cgroup (a daemon's, holding its processes).
fn root_path(layout: &Layout, given: &str) -> Result<CgroupPath, GovernError> {
    let path = given_root_path(layout, given)?;
    if path.as_str() == "/" {
        return Err(GovernError::ReservedRoot(
            given.to_string(),
            "the hierarchy's root holds every cgroup on the node, not only ffrtmp's jobs",
        ));
    }
    if path.as_str().split('/').any(|p| p == JobId::STAGING) {
        return Err(GovernError::ReservedRoot(
            given.to_string(),
            "a staging cgroup belongs to a `watch` daemon",
        ));
    }
    Ok(path)
}

fn given_root_path(layout: &Layout, given: &str) -> Result<CgroupPath, GovernError> {
    if let Some(v2) = &layout.v2
        && layout.kind() == Kind::V2
        && let Ok(rel) = Path::new(given).strip_prefix(&v2.point)
    {
        return Ok(CgroupPath::new(&format!("/{}", rel.display()))?);
    }
    if given.starts_with("/sys/fs/cgroup") {
        let mount = layout
            .v2
            .as_ref()
            .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), |m| m.point.clone());
        return Err(GovernError::RootOutsideHierarchy(given.to_string(), mount));
    }
    Ok(CgroupPath::new(given)?)
}

/// Privileged mode: cgroups anywhere in the hierarchy, other users'
/// processes. It takes CAP_DAC_OVERRIDE (a hierarchy's root is 0555: root
/// without it gets EACCES, measured), not uid 0; and v1 moves another
/// user's process only for euid 0 (`__cgroup1_procs_write`), so there both.
fn privileged(layout: &Layout) -> bool {
    Caps::effective().allows(Need::HierarchyRoot)
        && (layout.kind() == Kind::V2 || nix::unistd::geteuid().is_root())
}

/// Whether this process may govern other users' processes: move them
/// (privileged mode) and set their nice.
pub fn may_govern_others() -> bool {
    Layout::detect().is_ok_and(|l| privileged(&l))
}

/// The subtree delegated to us: under systemd, our own unit's cgroup if it
/// was delegated to us ([`systemd`]); elsewhere the highest v2 cgroup at or
/// above our own whose directory and `cgroup.procs` we may write.
fn delegated_subtree(layout: &Layout) -> Option<CgroupPath> {
    use nix::unistd::{AccessFlags, access};
    if layout.kind() != Kind::V2 {
        return None;
    }
    let mount = layout.v2.as_ref()?;
    let own = own_v2_cgroup()?;
    let writable = |cg: &CgroupPath| {
        let dir = mount.dir_of(cg);
        access(&dir, AccessFlags::W_OK).is_ok()
            && access(&dir.join("cgroup.procs"), AccessFlags::W_OK).is_ok()
    };
    if systemd::manages_cgroups() {
        // Only our own unit's cgroup, and only if systemd delegated it.
        let unit = systemd::unit_of(&own)?;
        return (writable(&unit) && systemd::delegated_to_us(&unit, &mount.dir_of(&unit)))
            .then_some(unit);
    }
    own.lineage()
        .into_iter()
        .find(|cg| cg.as_str() != "/" && writable(cg))
}

/// systemd < 254 leaves a delegated service's processes in the unit's
/// cgroup itself, where they keep controllers from being enabled below it:
/// they go to its `supervisor` leaf first ([`systemd::make_room`]). What
/// cannot be done is left to the controller writes to report.
fn make_room(mount: &layout::Mount, unit: &CgroupPath) {
    match systemd::make_room(&mount.dir_of(unit)) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "moved {n} processes of {} into its {} leaf: controllers cannot be enabled below a cgroup with processes (systemd 254+ does this with DelegateSubgroup=)",
            unit.as_str(),
            systemd::SUPERVISOR
        ),
        Err(e) => tracing::warn!("{e}"),
    }
}

/// A job's cgroup(s).
#[derive(Debug)]
pub struct JobCgroup {
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

/// The directories of ffrtmp's root: the v2 one, or one per v1 hierarchy
/// (co-mounted controllers share one), sorted.
fn root_dirs(ctx: &Context, root: &CgroupPath) -> Vec<PathBuf> {
    let dirs: BTreeSet<PathBuf> = match (ctx.layout.kind(), &ctx.layout.v2) {
        (Kind::V2, Some(m)) => BTreeSet::from([m.dir_of(root)]),
        _ => ctx.layout.v1.values().map(|m| m.dir_of(root)).collect(),
    };
    dirs.into_iter().collect()
}

/// A job's directories under the root, sorted.
fn existing_job_dirs(root_dirs: &[PathBuf], name: &str) -> Vec<PathBuf> {
    root_dirs
        .iter()
        .map(|d| d.join(name))
        .filter(|d| d.is_dir())
        .collect()
}

/// What [`JobCgroup::create`] does when the job's cgroup already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse: another job uses this id ([`GovernError::JobIdInUse`]).
    Refuse,
    /// Use it and apply the limits to it (re-attaching to a job's process,
    /// a staging cgroup): it is recorded as ffrtmp's if it was not.
    Update,
}

/// The cgroup paths of `pid`, one per hierarchy (/proc/PID/cgroup); empty
/// when it is gone.
pub fn cgroup_paths_of(pid: u32) -> Vec<String> {
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
pub fn pid_in_cgroup(pid: u32, path: &CgroupPath) -> bool {
    cgroup_paths_of(pid).iter().any(|p| p == path.as_str())
}

/// A cgroup's `cgroup.procs` files (one per hierarchy), held open.
#[derive(Debug, Default)]
pub struct ProcsWriter(Vec<(PathBuf, fs::File)>);

impl ProcsWriter {
    /// The open files, for a child to write `0` to before exec.
    pub fn raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd as _;
        self.0.iter().map(|(_, f)| f.as_raw_fd()).collect()
    }

    /// Moves a whole thread group in, as [`JobCgroup::add`] does, without
    /// opening and closing a file per hierarchy.
    pub fn add(&self, pid: u32) -> Result<(), GovernError> {
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
    pub fn create(
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
    pub fn open_existing(ctx: &Context, job: &str) -> Option<Self> {
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
    pub fn of_scope(path: CgroupPath, dir: PathBuf) -> Self {
        JobCgroup {
            path,
            inner: Inner::Scope(v2::Dir { dir }),
            claim: None,
            ledger: None,
        }
    }

    /// Records the job's labels — its tier, the command that made it — in
    /// the ledger ([`ledger::Record`]), where `status`, the pressure watch
    /// and a restarted daemon read them ([`job::list`]). Nothing is
    /// written to the cgroup, nor to a scope, which is systemd's.
    pub fn label(&self, by: MadeBy, tier: Option<Tier>) -> Result<(), GovernError> {
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
    pub fn is_scope(&self) -> bool {
        matches!(self.inner, Inner::Scope(_))
    }

    /// The processes in the job now (from its first hierarchy).
    pub fn pids(&self) -> Vec<u32> {
        self.procs_files()
            .first()
            .and_then(|f| crate::observe::proc::read_text(f).ok())
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// The job's name (its directory name; a scope's job id).
    pub fn name(&self) -> &str {
        let last = self.path.as_str().rsplit('/').next().unwrap_or_default();
        match self.inner {
            Inner::Scope(_) => scope::job_of_cgroup(self.path.as_str()).unwrap_or(last),
            _ => last,
        }
    }

    /// The `cgroup.procs` file of each hierarchy.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::V2(j) | Inner::Scope(j) => j.procs_files(),
            Inner::V1(j) => j.procs_files(),
        }
    }

    /// Moves a whole thread group into the job (every hierarchy). A scope
    /// is systemd's to move processes into (it did, when it made it): there
    /// this only checks that the process is in it.
    pub fn add(&self, pid: u32) -> Result<(), GovernError> {
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
    pub fn procs_writer(&self) -> Result<ProcsWriter, GovernError> {
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

    pub fn stats(&self) -> Stats {
        match &self.inner {
            Inner::V2(j) | Inner::Scope(j) => j.stats(),
            Inner::V1(j) => j.stats(),
        }
    }

    pub fn is_empty(&self) -> bool {
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
    pub fn remove_if_empty(&self) -> bool {
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
    fn dirs(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::V2(j) => j.dirs(),
            Inner::V1(j) => j.dirs(),
            Inner::Scope(_) => Vec::new(),
        }
    }
}

/// Removes empty job cgroups left under the root by crashed wrappers.
/// Returns the directories removed. A job ffrtmp did not make (no record in
/// the ledger), one claimed by a live wrapper, a directory with processes,
/// or one with child cgroups is never removed (and the kernel would refuse
/// the last two anyway).
pub fn reap_empty(ctx: &Context) -> Vec<PathBuf> {
    reap(ctx, None)
}

/// [`reap_empty`] for a wrapper whose own job is `own`: first asks whether
/// the root holds any other cgroup at all (one `stat` per hierarchy, see
/// `subdirs`), so that the common case — nothing left over — costs a few
/// system calls instead of a scan.
pub fn reap_empty_besides(ctx: &Context, own: Option<&JobCgroup>) -> Vec<PathBuf> {
    let Some(root) = &ctx.root else {
        return Vec::new();
    };
    let own = own.map(JobCgroup::dirs).unwrap_or_default();
    let others = root_dirs(ctx, root).iter().any(|dir| {
        let ours = own
            .iter()
            .filter(|d| d.parent() == Some(dir.as_path()))
            .count() as u64;
        match subdirs(dir) {
            Ok(n) => n > ours,
            Err(e) => e.kind() != io::ErrorKind::NotFound, // let the scan decide
        }
    });
    if others { reap_empty(ctx) } else { Vec::new() }
}

/// Removes job `name`'s cgroup under the same rules as [`reap_empty`] (the
/// daemon, once the last process it followed in a job has exited).
pub fn reap_job(ctx: &Context, name: &str) -> Vec<PathBuf> {
    reap(ctx, Some(name))
}

fn reap(ctx: &Context, only: Option<&str>) -> Vec<PathBuf> {
    let (Some(root), Some(ledger)) = (&ctx.root, ctx.ledger()) else {
        return Vec::new();
    };
    let names = match only {
        Some(name) => vec![name.to_string()],
        None => ledger.jobs(),
    };
    if names.is_empty() {
        return Vec::new();
    }
    let dirs = root_dirs(ctx, root);
    let Ok(lock) = ledger.lock() else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in names {
        // Held until its directories are gone, so no wrapper claims it
        // meanwhile; `None`: not ours, or a live wrapper owns it.
        let Some(_taken) = ledger.take(&lock, &name) else {
            continue;
        };
        let job_dirs = existing_job_dirs(&dirs, &name);
        if job_dirs.iter().all(|d| is_empty_leaf(d)) {
            for d in job_dirs {
                if fs::remove_dir(&d).is_ok() {
                    removed.push(d);
                }
            }
        }
        if existing_job_dirs(&dirs, &name).is_empty() {
            ledger.forget(&lock, &name);
        }
    }
    removed
}

/// No process in it and no child cgroup under it.
fn is_empty_leaf(dir: &Path) -> bool {
    let no_procs = crate::observe::proc::read_text(dir.join("cgroup.procs"))
        .is_ok_and(|s| s.trim().is_empty());
    let no_children = subdirs(dir).is_ok_and(|n| n == 0);
    no_procs && no_children
}

/// How many subdirectories (child cgroups) a cgroup directory has:
/// cgroupfs keeps a directory's link count at 2 + that number, so one
/// `stat` says what listing it would.
fn subdirs(dir: &Path) -> io::Result<u64> {
    let links = std::os::unix::fs::MetadataExt::nlink(&fs::metadata(dir)?);
    Ok(links.saturating_sub(2))
}
