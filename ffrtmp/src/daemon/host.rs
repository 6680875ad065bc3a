//! The seam between the governor's decisions and the machine: everything
//! the daemon asks of the kernel — a process's facts, holding it, the jobs
//! in the cgroup tree, staging cgroups, moving a pid, making a job — goes
//! through [`Host`]. `daemon/machine.rs` is the real one (/proc, pidfds,
//! cgroups, systemd); the governor's unit tests drive the same
//! [`super::Governor`] with a host of their own, without root: staging,
//! retries and their back-off, recovery after a restart, lost exits, the
//! fd limit and which processes are already in a job are decided in one
//! place and tested there.
use std::{sync::Arc, time::Instant};

use super::{Events, seen::Seen};
use crate::{
    events,
    govern::{Stats, scope, target::TargetError},
    limits::{JobId, Limits, Tier},
    observe::proc::{ProcError, Stat},
};

/// A process held while it is governed: the real one is a pidfd whose
/// start time was checked (`govern::target::Target`), so its pid cannot
/// name another process while it is held.
pub(crate) trait Held: Send + 'static {
    /// Its start time (clock ticks since boot): its identity.
    fn start_ticks(&self) -> u64;
    /// Whether it has exited (its pid may name another process now).
    fn has_exited(&self) -> bool;
}

/// A job found in the cgroup tree at start (`govern::job::list`).
pub(crate) struct Found<C> {
    pub(crate) id: String,
    pub(crate) cgroup: String,
    pub(crate) tier: Option<Tier>,
    /// Its processes, each with a handle on the job's cgroup for its exit
    /// report (`None`: not readable).
    pub(crate) members: Vec<(u32, Option<C>)>,
}

/// Why there is no staging cgroup (a `degraded` note's reason; new
/// processes then go straight to their job).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoStaging {
    /// Not in a unit with `Delegate=yes` (started by hand, say).
    #[error(
        "no staging cgroups: no subtree was delegated to this daemon (its unit has no Delegate=yes); each new process waits for systemd to make its scope before its limits apply"
    )]
    NotDelegated,
    /// Unprivileged: no cgroups at all.
    #[error("no cgroups")]
    NoCgroups,
    /// It was made, but refused some of the rule's limits: a process
    /// staged there would be under fewer limits than its rule's.
    #[error("its staging cgroup cannot hold all its limits ({})", failures.iter().map(|f| format!("{}: {}", f.limit, f.reason)).collect::<Vec<_>>().join("; "))]
    CannotHold {
        failures: Vec<crate::limits::Failure>,
    },
    /// Making it failed (the error's whole chain).
    #[error("no staging cgroup ({0})")]
    NotMade(String),
}

/// A rule's staging cgroup, made with the rule's limits.
pub(crate) struct Staged<S> {
    /// What receives processes (the real one: its `cgroup.procs` files,
    /// held open).
    pub(crate) cgroup: S,
    /// Its cgroup path.
    pub(crate) path: String,
    /// Its limits, read back.
    pub(crate) applied: events::Limits,
}

/// Makes a governed process's own job (the second move) and moves it
/// there. Shared by the governor and the job maker thread.
pub(crate) trait MakeJobs: Send + Sync + 'static {
    type Held: Held;
    type Cgroup: Send + 'static;
    fn make(&self, job: Unmade<Self::Held>) -> Made<Self::Cgroup>;
    /// Governing is going on now (the reaper waits for quiet).
    fn mark_busy(&self);
}

/// What the governor asks of the machine.
pub(crate) trait Host {
    type Held: Held;
    /// A followed job's cgroup (its statistics; the real one holds the
    /// job's claim while the daemon made it).
    type Cgroup: Send + 'static;
    /// A rule's staging cgroup, ready to receive processes.
    type Staging;
    type Maker: MakeJobs<Held = Self::Held, Cgroup = Self::Cgroup>;

    /// The job maker, shared with its thread.
    fn maker(&self) -> Arc<Self::Maker>;
    /// The time now (retries and rescans are due by it).
    fn now(&self) -> Instant;
    /// Whether jobs are made by a call to another program (systemd), which
    /// the thread reading the kernel's ring never waits for.
    fn jobs_are_slow(&self) -> bool;

    /// The processes now (a /proc scan). Fails when /proc cannot be read
    /// (at the fd limit, say): the scan is then tried again.
    fn pids(&mut self) -> Result<Vec<u32>, ProcError>;
    /// The scan that [`Host::pids`] began has ended.
    fn scanned(&mut self);
    fn stat(&self, pid: u32) -> Result<Stat, ProcError>;
    fn uid(&self, pid: u32) -> Result<u32, ProcError>;
    fn exe(&self, pid: u32) -> Option<String>;
    fn argv(&self, pid: u32) -> Option<Vec<String>>;
    /// Its cgroup paths, one per hierarchy (empty when it is gone).
    fn cgroups(&self, pid: u32) -> Vec<String>;
    /// Holds `pid`, checking its start time when known.
    fn hold(&mut self, pid: u32, start_ticks: Option<u64>) -> Result<Self::Held, TargetError>;

    /// Cgroup path prefix of jobs under the root (`/ffrtmp/`), if any.
    fn job_prefix(&self) -> Option<&str>;
    /// Whether jobs are systemd's scopes (and `path` names one).
    fn is_job_scope(&self, path: &str) -> bool;
    /// With scopes: whether a process in `paths` may be given one (not in
    /// a user manager's tree), and where it came from.
    fn origin(&self, paths: &[String]) -> Option<crate::govern::scope::Origin>;

    /// The jobs in the tree, after removing empty ones nobody looks after.
    fn jobs(&mut self) -> Vec<Found<Self::Cgroup>>;
    fn stats(&self, cgroup: &Self::Cgroup) -> Stats;
    /// Removes an ended job's cgroup once empty (in the background).
    fn reap(&mut self, job: String);

    /// Whether staging cgroups can be made here; `Err` says why not.
    fn can_stage(&self) -> Result<(), NoStaging>;
    /// Makes (or reuses) a rule's staging cgroup named `name`.
    fn staging(
        &mut self,
        name: &JobId,
        limits: &Limits,
    ) -> Result<Staged<Self::Staging>, NoStaging>;
    /// Moves `pid` into a staging cgroup (one write per hierarchy).
    fn stage(&self, staging: &Self::Staging, pid: u32) -> bool;
    /// Removes the staging cgroups no rule uses any more, once empty.
    fn reap_staging(&mut self);
}

/// A process to govern whose own job is not made yet: waiting in its
/// rule's staging cgroup, or (found by a scan) not moved at all.
pub(crate) struct Unmade<H> {
    pub(super) pid: u32,
    pub(super) rule: String,
    pub(super) tier: Option<Tier>,
    pub(super) job_id: JobId,
    pub(super) limits: Limits,
    pub(super) seen: Seen,
    pub(super) target: H,
    /// µs from exec to the staging move.
    pub(super) staged_at: Option<u64>,
    /// The staging cgroup's path and limits (`None`: not staged).
    pub(super) staged_report: Option<(String, events::Limits)>,
    /// With scopes: the cgroup it came from (`None`: not known).
    pub(super) from: Option<scope::Origin>,
    /// Earlier tries to make its job (a retry says nothing until it works).
    pub(super) attempts: u32,
}

impl<H: Held> Unmade<H> {
    /// Lets go of the process (its pidfd) while it waits in staging for
    /// another try: a process waiting costs no file descriptor.
    pub(super) fn park(self) -> Parked {
        Parked {
            pid: self.pid,
            start_ticks: self.target.start_ticks(),
            rule: self.rule,
            tier: self.tier,
            job_id: self.job_id,
            limits: self.limits,
            seen: self.seen,
            staged_at: self.staged_at,
            staged_report: self.staged_report,
            from: self.from,
            attempts: self.attempts,
        }
    }
}

/// A staged process whose job could not be made, waiting for another try
/// (see `Governor::retry`). Holds no file descriptor.
pub(crate) struct Parked {
    pub(super) pid: u32,
    pub(super) start_ticks: u64,
    rule: String,
    tier: Option<Tier>,
    job_id: JobId,
    limits: Limits,
    seen: Seen,
    staged_at: Option<u64>,
    staged_report: Option<(String, events::Limits)>,
    from: Option<scope::Origin>,
    pub(super) attempts: u32,
}

impl Parked {
    /// The process held again (`target`, checked to be the same one).
    pub(super) fn unpark<H>(&self, target: H) -> Unmade<H> {
        Unmade {
            pid: self.pid,
            rule: self.rule.clone(),
            tier: self.tier,
            job_id: self.job_id.clone(),
            limits: self.limits.clone(),
            seen: self.seen,
            target,
            staged_at: self.staged_at,
            staged_report: self.staged_report.clone(),
            from: self.from.clone(),
            attempts: self.attempts + 1,
        }
    }
}

/// What became of a process whose job was made (opaque outside `daemon`).
pub(crate) struct Made<C> {
    pub(super) pid: u32,
    /// Its job and cgroup, to follow (`None`: not followed, e.g. it ended).
    pub(super) follow: Option<(String, Option<C>)>,
    /// Its name and start time (its identity), for following it.
    pub(super) comm: String,
    pub(super) start_ticks: u64,
    /// Seen at its exec by the kernel programs, which then track its exit.
    pub(super) kernel_tracked: bool,
    pub(super) events: Events,
    /// Left in its staging cgroup: to be tried again.
    pub(super) retry: Option<Parked>,
    /// Made at a retry: the cause that held it back has passed.
    pub(super) retried: bool,
}
