//! The real [`Host`]: /proc for a process's facts, pidfds to hold it, the
//! cgroup tree for jobs (`govern::job`), staging cgroups of ffrtmp's own,
//! the job maker ([`Maker`]: cgroups or systemd scopes) and the reaper
//! thread. The fd reserve lives here: it is about the machine's limits,
//! not about what to govern.
use std::{
    fs,
    sync::{Arc, atomic::AtomicU64, mpsc::Sender},
    time::Instant,
};

use super::{
    host::{Found, Held, Host, NoStaging, Staged},
    maker::Maker,
    reaper,
};
use crate::{
    errors::chain,
    govern::{
        Context, Existing, JobCgroup, ProcsWriter, Stats, cgroup_paths_of, job, reap_empty,
        reap_job, scope,
        target::{Target, TargetError},
    },
    limits::{JobId, Limits},
    observe::proc::{self, ProcError, Stat},
};

impl Held for Target {
    fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    fn has_exited(&self) -> bool {
        Target::has_exited(self)
    }
}

/// This machine, as the governor sees it.
pub(crate) struct Machine {
    ctx: Context,
    /// Cgroup path prefix of job cgroups (`/ffrtmp/`).
    job_prefix: Option<String>,
    maker: Arc<Maker>,
    /// Ended jobs to remove, to the reaper thread (`None`: inline).
    reaper: Option<Sender<String>>,
    /// Descriptors set aside for holding new processes at the fd limit.
    reserve: FdReserve,
}

impl Machine {
    pub(crate) fn new(ctx: Context) -> Self {
        let last_governed = Arc::new(AtomicU64::new(0));
        let reaper = reaper::spawn(&ctx, Arc::clone(&last_governed));
        let maker = Arc::new(Maker::new(ctx.clone(), last_governed));
        let job_prefix = ctx
            .root
            .as_ref()
            .map(|r| format!("{}/", r.as_str().trim_end_matches('/')));
        Machine {
            ctx,
            job_prefix,
            maker,
            reaper,
            reserve: FdReserve::new(),
        }
    }

    /// The context whose root is `<root>/.staging`.
    fn staging_ctx(&self) -> Option<Context> {
        // On a systemd host, only in a subtree delegated to the daemon.
        if self.ctx.scopes && self.ctx.subtree.is_none() {
            return None;
        }
        let root = self.ctx.root.as_ref()?;
        Some(Context {
            root: Some(root.child(JobId::STAGING)),
            ..self.ctx.clone()
        })
    }
}

impl Host for Machine {
    type Held = Target;
    type Cgroup = JobCgroup;
    type Staging = StagingCgroup;
    type Maker = Maker;

    fn maker(&self) -> Arc<Maker> {
        Arc::clone(&self.maker)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn jobs_are_slow(&self) -> bool {
        self.ctx.scopes
    }

    /// Room to read /proc at all (two descriptors: a directory, a file),
    /// from the reserve if need be: measured, at the fd limit a full
    /// reserve left the scan none, and every lost process stayed lost. The
    /// reserve is not refilled until the scan ends ([`Host::scanned`]), so
    /// holding one process cannot take the descriptor reading the next
    /// needs.
    fn pids(&mut self) -> Result<Vec<u32>, ProcError> {
        self.reserve.lend(2);
        let room = (
            fs::File::open("/proc/self/stat"),
            fs::File::open("/proc/self/stat"),
        );
        if let (Err(e), _) | (_, Err(e)) = room {
            return Err(ProcError::Io {
                path: "/proc/self/stat".into(),
                source: e,
            });
        }
        drop(room);
        proc::list_pids()
    }

    fn scanned(&mut self) {
        self.reserve.settle();
    }

    fn stat(&self, pid: u32) -> Result<Stat, ProcError> {
        Stat::read(pid)
    }

    fn uid(&self, pid: u32) -> Result<u32, ProcError> {
        proc::read_uid(pid)
    }

    fn exe(&self, pid: u32) -> Option<String> {
        fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    fn argv(&self, pid: u32) -> Option<Vec<String>> {
        proc::read_argv(pid)
    }

    fn cgroups(&self, pid: u32) -> Vec<String> {
        cgroup_paths_of(pid)
    }

    fn hold(&mut self, pid: u32, start_ticks: Option<u64>) -> Result<Target, TargetError> {
        self.reserve.open_target(pid, start_ticks)
    }

    fn job_prefix(&self) -> Option<&str> {
        self.job_prefix.as_deref()
    }

    fn is_job_scope(&self, path: &str) -> bool {
        self.ctx.scopes && scope::job_of_cgroup(path).is_some()
    }

    fn origin(&self, paths: &[String]) -> Option<scope::Origin> {
        self.ctx.scopes.then(|| scope::Origin::of(paths)).flatten()
    }

    fn jobs(&mut self) -> Vec<Found<JobCgroup>> {
        reap_empty(&self.ctx);
        job::forget_ended_scopes(&self.ctx);
        job::list(&self.ctx)
            .into_iter()
            .map(|j| Found {
                members: j
                    .pids()
                    .into_iter()
                    .map(|pid| (pid, j.handle(&self.ctx)))
                    .collect(),
                tier: j.tier(),
                cgroup: j.cgroup.as_str().to_string(),
                id: j.id,
            })
            .collect()
    }

    fn stats(&self, cgroup: &JobCgroup) -> Stats {
        cgroup.stats()
    }

    /// On the reaper thread: removing cgroups is the slowest thing the
    /// daemon does (a few hundred µs per job on v1) and must not delay the
    /// next exec.
    fn reap(&mut self, job: String) {
        let job = match &self.reaper {
            Some(reaper) => match reaper.send(job) {
                Ok(()) => return,
                // The thread is gone: from now on, inline.
                Err(std::sync::mpsc::SendError(job)) => job,
            },
            None => job,
        };
        self.reaper = None;
        reap_job(&self.ctx, &job);
    }

    fn can_stage(&self) -> Result<(), NoStaging> {
        if self.staging_ctx().is_some() || !self.ctx.scopes {
            return Ok(());
        }
        Err(NoStaging::NotDelegated)
    }

    fn staging(
        &mut self,
        name: &JobId,
        limits: &Limits,
    ) -> Result<Staged<StagingCgroup>, NoStaging> {
        let ctx = self.staging_ctx().ok_or(NoStaging::NoCgroups)?;
        let made = JobCgroup::create(&ctx, name, limits, Existing::Update)
            .and_then(|(cgroup, applied)| Ok((cgroup.procs_writer()?, cgroup, applied)));
        match made {
            Ok((procs, cgroup, applied)) if applied.failures.is_empty() => Ok(Staged {
                path: cgroup.path.as_str().to_string(),
                cgroup: StagingCgroup {
                    _claimed: cgroup,
                    procs,
                },
                applied: applied.limits,
            }),
            Ok((_, _, applied)) => Err(NoStaging::CannotHold {
                failures: applied.failures,
            }),
            Err(e) => Err(NoStaging::NotMade(chain(&e).to_string())),
        }
    }

    fn stage(&self, staging: &StagingCgroup, pid: u32) -> bool {
        staging.procs.add(pid).is_ok()
    }

    fn reap_staging(&mut self) {
        if let Some(ctx) = self.staging_ctx() {
            reap_empty(&ctx);
        }
    }
}

/// A rule's staging cgroup, held: its claim (while the rule is in the
/// policy; a reload drops it, and an unused one is then reaped once
/// empty) and its `cgroup.procs` files, open, so one write per hierarchy
/// moves a new process in.
pub(crate) struct StagingCgroup {
    _claimed: JobCgroup,
    procs: ProcsWriter,
}

/// A few file descriptors (of /dev/null) set aside so that a new exec can
/// still be held by a pidfd, and so moved into its rule's staging cgroup,
/// when the daemon is at its fd limit: the first move needs one descriptor
/// and nothing else (the staging `cgroup.procs` files are held open).
struct FdReserve {
    fds: Vec<std::os::fd::OwnedFd>,
    /// Lent ([`FdReserve::lend`]): not refilled until [`FdReserve::settle`].
    lent: bool,
}

impl FdReserve {
    const SIZE: usize = 8;

    fn new() -> Self {
        let mut reserve = FdReserve {
            fds: Vec::with_capacity(Self::SIZE),
            lent: false,
        };
        reserve.refill();
        reserve
    }

    fn refill(&mut self) {
        while self.fds.len() < Self::SIZE {
            match fs::File::open("/dev/null") {
                Ok(f) => self.fds.push(f.into()),
                Err(_) => return,
            }
        }
    }

    /// Gives up `n` descriptors for a task's own use, and refills nothing
    /// until [`FdReserve::settle`].
    fn lend(&mut self, n: usize) {
        self.fds.truncate(self.fds.len().saturating_sub(n));
        self.lent = true;
    }

    fn settle(&mut self) {
        self.lent = false;
        self.refill();
    }

    /// [`Target::open`], giving up a reserved descriptor if it failed for
    /// want of one.
    fn open_target(&mut self, pid: u32, start: Option<u64>) -> Result<Target, TargetError> {
        let opened = match Target::open(pid, start) {
            // Two: the pidfd, and /proc/PID/stat for its identity.
            Err(e) if e.out_of_fds() && self.fds.len() >= 2 => {
                self.fds.truncate(self.fds.len() - 2);
                Target::open(pid, start)
            }
            other => other,
        };
        if !self.lent {
            self.refill();
        }
        opened
    }
}
