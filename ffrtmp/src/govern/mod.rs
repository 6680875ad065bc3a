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
//!    hierarchy ([`v1`]). Each limit is written and read back; [`Applied`](crate::limits::Applied)
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
mod cgroup;
pub(crate) mod cleanup;
pub(crate) mod dynmods;
pub(crate) mod job;
pub mod layout;
pub(crate) mod ledger;
pub(crate) mod place;
pub(crate) mod plan;
pub(crate) mod process;
mod reap;
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

use crate::limits::{FileError, JobId};
pub use caps::{Cap, has_cap};
use caps::{Caps, Need};
pub(crate) use cgroup::{Existing, JobCgroup, ProcsWriter, cgroup_paths_of, pid_in_cgroup};
use layout::{CgroupPath, Kind, Layout, LayoutError, own_v2_cgroup};
use ledger::Ledger;
pub(crate) use reap::{is_empty_leaf, reap_empty, reap_empty_besides, reap_job};

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
        Err(e) => tracing::warn!("{}", crate::errors::chain(&e)),
    }
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
