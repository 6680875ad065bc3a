//! Automatic governance: the engine of `ffrtmp watch`. Each exec the
//! observer reports goes to the [`Policy`]; a process a rule governs is
//! placed in its job cgroup the way `attach` does it — held by a pidfd
//! whose start time was checked, the cgroup made and its limits read back,
//! the whole thread group moved, nice and oom_score_adj set — and a
//! `governed` event says what is in force and how long after the exec it
//! took (`latency_us`). A new exec gets there in two moves: here, at once,
//! into its rule's pre-made staging cgroup (its limits are in force from
//! then on); then, on the job maker thread (`govern/maker.rs`), into its own
//! job. Processes found by a /proc scan go straight to their job.
//!
//! State is only a cache of the cgroup tree: which processes of which jobs
//! the daemon follows, so that their exits carry the job's report and empty
//! job cgroups are removed. At start ([`Governor::recover`]) it is rebuilt
//! from the tree — jobs of `run`, `attach` or an earlier daemon are
//! followed where they are (`tracked`), never moved — and [`Governor::scan`]
//! governs matching processes already running (`adopted`); the same scan
//! runs again after the kernel lost events. The daemon never signals,
//! stops or kills a workload: killing it changes nothing for its jobs.
//!
//! A process already inside an ffrtmp job (a child of a governed one, or a
//! `run` workload) is never governed again: children stay in their parent's
//! job by kernel semantics.
use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    fs,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{self, RecvTimeoutError, Sender, channel},
    },
    time::{Duration, Instant},
};

use nix::time::{ClockId, clock_gettime};

use super::{
    Context, Existing, JobCgroup, ProcsWriter, cgroup_paths_of, job_dirs, job_exists,
    maker::{self, Made, Maker, MakerThread, Unmade},
    reap_empty, reap_job,
    target::{Target, TargetError},
};
use crate::{
    errors::chain,
    events::{self, Degraded, Event, Exec, Exit, KernelStamp, Source, Timestamp, Tracked},
    limits::{JobId, Limits},
    observe::proc::{self, ProcError, Stat},
    policy::{Action, Candidate, Decision, Needs, Policy, template::sanitise},
};

/// A process the daemon follows, and its job.
#[derive(Debug)]
struct Followed {
    job: String,
    /// The job's cgroup: made by this daemon (holding its claim), or found
    /// in the tree. `None` without cgroups (nice only).
    cgroup: Option<JobCgroup>,
}

/// The daemon's governor.
pub struct Governor {
    ctx: Context,
    policy: Policy,
    needs: Needs,
    /// Names some governing rule may match (`None`: any).
    comm_filter: Option<BTreeSet<String>>,
    self_pid: u32,
    /// Cgroup path prefix of job cgroups (`/ffrtmp/`).
    job_prefix: Option<String>,
    followed: HashMap<u32, Followed>,
    /// Staging cgroups by rule name ([`Governor::prepare_staging`]).
    staging: HashMap<String, Staging>,
    /// Ended jobs to remove, to the reaper thread.
    reaper: Option<Sender<String>>,
    /// Processes to add to the kernel's exit filter (adopted, recovered).
    newly_followed: Vec<u32>,
    /// Makes jobs (the second move), inline or on its thread.
    maker: Arc<Maker>,
    maker_thread: Option<MakerThread>,
    /// Staged processes whose job the maker thread is making.
    in_flight: HashSet<u32>,
    /// Made jobs received while waiting ([`Governor::wait_made`]).
    made: VecDeque<Made>,
    rescan: bool,
}

/// What happened to one process, for the caller to emit.
pub type Events = Vec<Event>;

impl Governor {
    pub fn new(ctx: Context, policy: Policy) -> Self {
        let last_governed = Arc::new(AtomicU64::new(0));
        let reaper = spawn_reaper(&ctx, Arc::clone(&last_governed));
        let maker = Arc::new(Maker {
            ctx: ctx.clone(),
            last_governed: Arc::clone(&last_governed),
        });
        let needs = policy.needs();
        let job_prefix = ctx
            .root
            .as_ref()
            .map(|r| format!("{}/", r.as_str().trim_end_matches('/')));
        Governor {
            ctx,
            comm_filter: policy.comm_filter(),
            policy,
            needs,
            self_pid: std::process::id(),
            job_prefix,
            followed: HashMap::new(),
            staging: HashMap::new(),
            reaper,
            newly_followed: Vec::new(),
            maker_thread: maker::spawn(Arc::clone(&maker)),
            maker,
            in_flight: HashSet::new(),
            made: VecDeque::new(),
            rescan: false,
        }
    }

    /// Pids that started being followed since the last call (for the
    /// kernel's exit filter).
    pub fn take_newly_followed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.newly_followed)
    }

    /// Rebuilds the state from the cgroup tree: every process in a job
    /// cgroup is followed (`tracked`); empty unclaimed job cgroups are
    /// removed.
    pub fn recover(&mut self) -> Events {
        let mut events = Vec::new();
        reap_empty(&self.ctx);
        for (name, _, _) in job_dirs(&self.ctx) {
            let Some(cgroup) = JobCgroup::open_existing(&self.ctx, &name) else {
                continue;
            };
            for pid in cgroup.pids() {
                if self.followed.contains_key(&pid) || pid == self.self_pid {
                    continue;
                }
                let comm = Stat::read(pid).map(|s| s.comm).unwrap_or_default();
                events.push(Event::new(
                    Timestamp::now(),
                    Source::Ffrtmp,
                    Tracked {
                        pid,
                        comm,
                        job_id: name.clone(),
                        cgroup: cgroup.path.as_str().to_string(),
                    },
                ));
                self.follow(
                    pid,
                    name.clone(),
                    JobCgroup::open_existing(&self.ctx, &name),
                );
            }
        }
        events
    }

    /// Governs every running process that the policy matches and that is
    /// in no job yet (`adopted`).
    pub fn scan(&mut self) -> Result<Events, ProcError> {
        self.rescan = false;
        let mut events = Vec::new();
        for pid in proc::list_pids()? {
            if pid == self.self_pid || self.followed.contains_key(&pid) {
                continue;
            }
            let stat = match Stat::read(pid) {
                Ok(s) if !s.is_kernel_thread() && s.state != 'Z' => s,
                Ok(_) | Err(ProcError::Gone(_)) => continue,
                Err(e) => return Err(e),
            };
            // Most processes fail on their name: nothing more to read.
            if self
                .comm_filter
                .as_ref()
                .is_some_and(|c| !c.contains(&stat.comm))
            {
                continue;
            }
            let Ok(uid) = proc::read_uid(pid) else {
                continue;
            };
            let candidate = Candidate {
                pid,
                comm: stat.comm.clone(),
                uid,
                exe: None,
                argv: None,
                parent_comm: None,
            };
            events.extend(self.consider(
                candidate,
                Some(stat.ppid),
                Origin::Scan(stat.start_ticks),
            ));
        }
        Ok(events)
    }

    /// Asks for a [`Self::scan`] (the kernel lost events).
    pub fn request_rescan(&mut self) {
        self.rescan = true;
    }

    pub fn rescan_requested(&self) -> bool {
        self.rescan
    }

    /// An exec the observer reported: governs the process if a rule says so.
    /// Returns the events to emit after the exec event.
    pub fn on_exec(&mut self, kernel: Option<KernelStamp>, exec: &Exec) -> Events {
        if exec.pid == self.self_pid {
            return Vec::new();
        }
        let candidate = Candidate {
            pid: exec.pid,
            comm: exec.comm.clone(),
            uid: exec.uid,
            exe: Some(exec.filename.clone()).filter(|f| f.starts_with('/')),
            // The kernel keeps 1 KiB of arguments; read the rest if cut.
            argv: exec.argv.clone().filter(|_| !exec.argv_truncated),
            parent_comm: None,
        };
        let origin = match kernel {
            Some(k) => Origin::Kernel {
                ktime_ns: k.ktime_ns,
                start_ticks: k.start_boottime_ns.and_then(ns_to_ticks),
            },
            None => Origin::Polled,
        };
        self.consider(candidate, exec.ppid, origin)
    }

    /// An exit: the job's report for a followed process, and its cgroup
    /// removed once empty.
    pub fn on_exit(&mut self, exit: &mut Exit) {
        let Some(f) = self.followed.remove(&exit.pid) else {
            return;
        };
        let stats = f.cgroup.as_ref().map(JobCgroup::stats).unwrap_or_default();
        exit.job = Some(stats.report(f.job.clone()));
        let still_followed = self.followed.values().any(|o| o.job == f.job);
        // Our claim goes first, so that the reaper may take the job.
        drop(f.cgroup);
        if !still_followed {
            self.reap(f.job);
        }
    }

    /// Removes an ended job's cgroup, on the reaper thread: removing
    /// cgroups is the slowest thing the daemon does (a few hundred µs per
    /// job on v1) and must not delay the next exec.
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

    fn follow(&mut self, pid: u32, job: String, cgroup: Option<JobCgroup>) {
        self.followed.insert(pid, Followed { job, cgroup });
        self.newly_followed.push(pid);
    }

    /// The cgroup path of `pid`'s ffrtmp job, if it is in one.
    fn job_of(&self, pid: u32) -> Option<String> {
        let prefix = self.job_prefix.as_deref()?;
        let staging = format!("{prefix}{}/", JobId::STAGING);
        cgroup_paths_of(pid)
            .into_iter()
            .find(|p| p.starts_with(prefix) && !p.starts_with(&staging))
    }

    /// Decides about one process and governs it if a rule says so.
    fn consider(&mut self, mut c: Candidate, ppid: Option<u32>, origin: Origin) -> Events {
        // Most processes fail on comm: decide that before reading more.
        if let Some(comms) = &self.comm_filter
            && !comms.contains(&c.comm)
        {
            return Vec::new();
        }
        if self.needs.exe && c.exe.is_none() {
            c.exe = fs::read_link(format!("/proc/{}/exe", c.pid))
                .ok()
                .map(|p| p.to_string_lossy().into_owned());
        }
        if self.needs.argv && c.argv.is_none() {
            c.argv = proc::read_argv(c.pid);
        }
        if self.needs.parent_comm {
            c.parent_comm = ppid.and_then(|p| Stat::read(p).ok()).map(|s| s.comm);
        }
        let (rule, job_id, limits) = match self.policy.decide(&c) {
            Some(Decision::Govern {
                rule,
                job_id,
                limits,
            }) => (rule.name.clone(), job_id, limits.clone()),
            Some(Decision::Ignore { .. }) | None => return Vec::new(),
        };
        if self.job_of(c.pid).is_some() || self.in_flight.contains(&c.pid) {
            // Already governed (a child of a job, or a `run` workload), or
            // staged and waiting for its job (seen twice).
            return Vec::new();
        }
        self.govern(c.pid, rule, job_id, &limits, origin)
    }

    fn govern(
        &mut self,
        pid: u32,
        rule: String,
        job_id: JobId,
        limits: &Limits,
        origin: Origin,
    ) -> Events {
        let mut events = Vec::new();
        self.maker.mark_busy();
        let start_ticks = match origin {
            Origin::Kernel { start_ticks, .. } => start_ticks,
            Origin::Scan(ticks) => Some(ticks),
            Origin::Polled => None,
        };
        let target = match Target::open(pid, start_ticks) {
            Ok(t) => t,
            // Gone already (a short-lived process): nothing to govern.
            Err(TargetError::NoSuchProcess(_) | TargetError::Exited(_)) => return events,
            Err(e) => {
                events.push(note(format!("process {pid} ({rule}) not governed: {e}")));
                return events;
            }
        };
        // A new exec goes first into its rule's staging cgroup, whose limits
        // are the rule's: governed within one move of its exec.
        let staging = match origin {
            Origin::Kernel { .. } => self.staging.get(&rule),
            _ => None,
        };
        // Not `check()`: its start time was verified a moment ago, and while
        // the pidfd says it lives the pid cannot name another process; a
        // second read of /proc/PID/stat here would cost more than the move.
        let staged = staging.filter(|s| !target.has_exited() && s.procs.add(pid).is_ok());
        let staged_at = staged.and_then(|_| origin.since_exec_us());
        let staged_report = staged.map(|s| (s.cgroup.path.as_str().to_string(), s.applied.clone()));
        let job = Unmade {
            pid,
            rule,
            job_id,
            limits: limits.clone(),
            origin,
            target,
            staged_at,
            staged_report,
        };
        if job.staged_report.is_some()
            && let Some(thread) = &self.maker_thread
        {
            // Under its limits already: its own job is made on the maker
            // thread, and this one is free for the next exec.
            match thread.jobs.send(job) {
                Ok(()) => {
                    self.in_flight.insert(pid);
                    return events;
                }
                Err(mpsc::SendError(job)) => {
                    self.maker_thread = None;
                    return self.accept(self.maker.make(job));
                }
            }
        }
        let made = self.maker.make(job);
        self.accept(made)
    }

    /// Follows a made job; its events, for the caller to emit.
    fn accept(&mut self, made: Made) -> Events {
        self.in_flight.remove(&made.pid);
        if let Some((job, cgroup)) = made.follow {
            self.follow(made.pid, job, cgroup);
        }
        made.events
    }

    /// Whether the maker thread is making `pid`'s job: its exit must wait
    /// for its `governed` event and job report.
    pub fn is_in_flight(&self, pid: u32) -> bool {
        self.in_flight.contains(&pid)
    }

    /// How many jobs the maker thread is making.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Jobs the maker thread has made since the last call (now followed):
    /// their events.
    pub fn take_made(&mut self) -> Vec<Events> {
        let mut made: Vec<Made> = self.made.drain(..).collect();
        if let Some(thread) = &mut self.maker_thread {
            while let Ok(m) = thread.made.try_recv() {
                made.push(m);
            }
        }
        made.into_iter().map(|m| self.accept(m)).collect()
    }

    /// Resolves once the maker thread has made a job (never without the
    /// thread). Cancel-safe: what arrives is kept for [`Governor::take_made`].
    pub async fn wait_made(&mut self) {
        if !self.made.is_empty() {
            return;
        }
        let Some(thread) = &mut self.maker_thread else {
            return std::future::pending().await;
        };
        match thread.made.recv().await {
            Some(m) => self.made.push_back(m),
            None => {
                // The thread is gone (a bug): say so, make jobs inline from
                // now on, and let the held exits go. The processes it had
                // stay in their staging cgroups, under their rules' limits.
                self.maker_thread = None;
                let stranded = std::mem::take(&mut self.in_flight);
                self.made.push_back(Made {
                    pid: 0,
                    follow: None,
                    events: vec![note(format!(
                        "the job maker thread stopped; jobs are made inline from now on; processes {stranded:?} stay in their staging cgroups"
                    ))],
                });
            }
        }
    }

    /// Makes (or updates) each governing rule's staging cgroup under
    /// `<root>/.staging`, with the rule's limits. A rule whose staging
    /// cgroup cannot be made governs new processes directly, a little later.
    pub fn prepare_staging(&mut self) -> Events {
        let Some(root) = &self.ctx.root else {
            return Vec::new();
        };
        let ctx = Context {
            root: Some(root.child(JobId::STAGING)),
            ..self.ctx.clone()
        };
        let mut events = Vec::new();
        for rule in &self.policy.rules {
            let Action::Govern { limits, .. } = &rule.action else {
                continue;
            };
            let id = sanitise(&rule.name);
            let made = JobCgroup::create(&ctx, &id, limits, Existing::Update)
                .and_then(|(cgroup, applied)| Ok((cgroup.procs_writer()?, cgroup, applied)));
            match made {
                Ok((procs, cgroup, applied)) if applied.failures.is_empty() => {
                    self.staging.insert(
                        rule.name.clone(),
                        Staging {
                            cgroup,
                            procs,
                            applied: applied.limits,
                        },
                    );
                }
                Ok((_, _, applied)) => events.push(note(format!(
                    "rule {}: its staging cgroup cannot hold all its limits ({}); new processes go straight to their job",
                    rule.name,
                    applied
                        .failures
                        .iter()
                        .map(|f| format!("{}: {}", f.limit, f.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                ))),
                Err(e) => events.push(note(format!(
                    "rule {}: no staging cgroup ({}); new processes go straight to their job",
                    rule.name,
                    chain(&e)
                ))),
            }
        }
        events
    }
}

/// The reaper thread: removes ended jobs' cgroups in the background (the
/// root's lock keeps it and job creation from racing). `None` if it cannot
/// start: then jobs are removed inline.
///
/// Removing a cgroup holds the kernel's global `cgroup_mutex`, which every
/// move into a cgroup also needs: a removal under way delays the next
/// governing by a few hundred µs. So the reaper waits until the governor has
/// been quiet for [`REAP_QUIET`], unless [`REAP_BACKLOG`] jobs are waiting.
fn spawn_reaper(ctx: &Context, last_governed: Arc<AtomicU64>) -> Option<Sender<String>> {
    let (tx, rx) = channel::<String>();
    let ctx = ctx.clone();
    std::thread::Builder::new()
        .name("ffrtmp-reaper".into())
        .spawn(move || {
            // Background work: never ahead of the thread that governs.
            // SAFETY: setpriority on this thread's own id.
            unsafe {
                libc::setpriority(
                    libc::PRIO_PROCESS,
                    libc::gettid() as libc::id_t,
                    REAPER_NICE,
                );
            }
            let mut queue: VecDeque<Ending> = VecDeque::new();
            let fresh = |job| Ending {
                job,
                tries: 0,
                due: Instant::now(),
            };
            loop {
                if queue.is_empty() {
                    match rx.recv() {
                        Ok(job) => queue.push_back(fresh(job)),
                        Err(_) => return, // the governor is gone
                    }
                }
                queue.extend(rx.try_iter().map(fresh));
                let quiet = monotonic_ns()
                    .map(|now| {
                        Duration::from_nanos(now.saturating_sub(last_governed.load(Relaxed)))
                    })
                    .unwrap_or(REAP_QUIET);
                let now = Instant::now();
                let due = queue.iter().position(|e| e.due <= now);
                if let Some(i) = due
                    && (quiet >= REAP_QUIET || queue.len() >= REAP_BACKLOG)
                {
                    let Some(mut ending) = queue.remove(i) else {
                        continue;
                    };
                    // The exit event comes before the kernel has taken the
                    // task out of its cgroup; until then the cgroup is busy.
                    if reap_job(&ctx, &ending.job).is_empty()
                        && job_exists(&ctx, &ending.job)
                        && ending.tries < REAP_TRIES
                    {
                        ending.tries += 1;
                        ending.due = now + REAP_RETRY;
                        queue.push_back(ending);
                    }
                    continue;
                }
                let next_due = queue
                    .iter()
                    .map(|e| e.due.saturating_duration_since(now))
                    .min()
                    .unwrap_or(REAP_QUIET);
                let wait = next_due
                    .max(REAP_QUIET.saturating_sub(quiet))
                    .max(Duration::from_millis(1));
                match rx.recv_timeout(wait) {
                    Ok(job) => queue.push_back(fresh(job)),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .ok()
        .map(|_| tx)
}

/// An ended job waiting for its cgroup to be removed.
struct Ending {
    job: String,
    tries: u32,
    /// Not before then (a retry).
    due: Instant,
}

/// How often, and how far apart, a busy job cgroup is tried again (the
/// last process is still leaving it; longer in a slow VM): 5 s in all.
const REAP_TRIES: u32 = 50;
const REAP_RETRY: Duration = Duration::from_millis(100);

/// How long the governor must have been idle before a job is removed.
const REAP_QUIET: Duration = Duration::from_millis(20);
/// Jobs waiting for removal beyond which the reaper no longer waits.
const REAP_BACKLOG: usize = 256;

/// Nice of the reaper thread (the governing thread keeps the daemon's).
const REAPER_NICE: i32 = 10;

/// A rule's staging cgroup: where a new exec is moved first.
#[derive(Debug)]
struct Staging {
    cgroup: JobCgroup,
    /// Its `cgroup.procs` files, held open: one write per hierarchy moves a
    /// new process.
    procs: ProcsWriter,
    /// Its limits, read back.
    applied: events::Limits,
}

/// A `degraded` event about governing as a whole (no single limit).
pub(super) fn note(reason: String) -> Event {
    Event::new(
        Timestamp::now(),
        Source::Ffrtmp,
        Degraded {
            limit: None,
            reason,
            fallback: "none".into(),
        },
    )
}

/// Where a candidate came from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Origin {
    /// An eBPF exec: its kernel time, and the process's start (ticks).
    Kernel {
        ktime_ns: u64,
        start_ticks: Option<u64>,
    },
    /// A /proc scan (adoption, rescan), with the start time it read.
    Scan(u64),
    /// The procfs backend's exec (found by polling).
    Polled,
}

impl Origin {
    /// µs since the kernel saw the exec (eBPF only).
    pub(super) fn since_exec_us(self) -> Option<u64> {
        match self {
            Origin::Kernel { ktime_ns, .. } => monotonic_ns()
                .and_then(|now| now.checked_sub(ktime_ns))
                .map(|ns| ns / 1_000),
            _ => None,
        }
    }
}

pub(super) fn monotonic_ns() -> Option<u64> {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
    let d = Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    );
    u64::try_from(d.as_nanos()).ok()
}

/// A start time in ns since boot as /proc/PID/stat's clock ticks.
fn ns_to_ticks(ns: u64) -> Option<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    (hz > 0).then(|| ns / (1_000_000_000 / hz))
}
