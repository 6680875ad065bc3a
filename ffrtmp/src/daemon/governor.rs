//! The governor: decides about each process the observer reports (the
//! [`Policy`]), makes the first move of a new exec into its rule's staging
//! cgroup, hands the second move to the job maker ([`super::maker`]),
//! follows governed and recovered processes until they exit, and sends
//! their ended jobs to the reaper ([`super::reaper`]).
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    sync::{
        Arc,
        atomic::AtomicU64,
        mpsc::{self, Sender},
    },
    time::{Duration, Instant},
};

use super::{
    Events, Govern, MadeJobs,
    maker::{self, Made, Maker, Parked, Unmade},
    note, reaper,
    seen::Seen,
};
use crate::{
    errors::chain,
    events::{self, Event, Exec, Exit, KernelStamp, Source, Timestamp, Tracked, process_key},
    govern::{
        Context, Existing, JobCgroup, ProcsWriter, cgroup_paths_of, job, reap_empty, reap_job,
        scope,
        target::{Target, TargetError},
    },
    limits::{JobId, Limits, Tier},
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
    comm: String,
    /// Its start time (/proc/PID/stat), its identity; `None` if unknown.
    start_ticks: Option<u64>,
    /// The kernel programs track its exit from its exec on; others (found
    /// by a scan) only once user space adds them to the exit filter.
    kernel_tracked: bool,
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
    /// Jobs to the maker thread (`None`: made inline).
    maker_thread: Option<mpsc::Sender<Unmade>>,
    /// Made jobs from the maker thread, until the event loop takes them.
    made_jobs: Option<MadeJobs<Made>>,
    /// Staged processes whose job the maker thread is making.
    in_flight: HashSet<u32>,
    /// Staged processes whose job could not be made, by pid: when they are
    /// tried again. They stay under their rule's limits meanwhile.
    waiting: HashMap<u32, (Instant, Parked)>,
    rescan: bool,
    /// A scan to make later (one failed, or a process could not be held).
    rescan_at: Option<Instant>,
    /// Descriptors set aside for holding new processes at the fd limit.
    reserve: FdReserve,
}

/// The first pause before a staged process's job is tried again, doubled
/// after each failure up to [`RETRY_MAX`]: the causes (the fd limit, a
/// stuck lock holder) pass in seconds or last, and a retry costs a job's
/// worth of system calls.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(8);

impl Governor {
    pub fn new(ctx: Context, policy: Policy) -> Self {
        let last_governed = Arc::new(AtomicU64::new(0));
        let reaper = reaper::spawn(&ctx, Arc::clone(&last_governed));
        let maker = Arc::new(Maker::new(ctx.clone(), Arc::clone(&last_governed)));
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
            maker_thread: None,
            made_jobs: None,
            maker,
            in_flight: HashSet::new(),
            waiting: HashMap::new(),
            rescan: false,
            rescan_at: None,
            reserve: FdReserve::new(),
        }
        .with_maker_thread()
    }

    fn with_maker_thread(mut self) -> Self {
        if let Some((jobs, made)) = maker::spawn(Arc::clone(&self.maker)) {
            self.maker_thread = Some(jobs);
            self.made_jobs = Some(made);
        }
        self
    }

    /// Rebuilds the state from the cgroup tree: every process in a job
    /// cgroup is followed (`tracked`); empty unclaimed job cgroups are
    /// removed.
    fn recover(&mut self) -> Events {
        let mut events = Vec::new();
        reap_empty(&self.ctx);
        job::forget_ended_scopes(&self.ctx);
        for job in job::list(&self.ctx) {
            let tier = job.tier();
            for pid in job.pids() {
                if self.followed.contains_key(&pid) || pid == self.self_pid {
                    continue;
                }
                let stat = Stat::read(pid).ok();
                let comm = stat.as_ref().map(|s| s.comm.clone()).unwrap_or_default();
                events.push(Event::new(
                    Timestamp::now(),
                    Source::Ffrtmp,
                    Tracked {
                        pid,
                        process_key: process_key(pid, stat.as_ref().map(|s| s.start_ticks)),
                        comm: comm.clone(),
                        job_id: job.id.clone(),
                        cgroup: job.cgroup.as_str().to_string(),
                        tier,
                    },
                ));
                self.follow(
                    pid,
                    Followed {
                        job: job.id.clone(),
                        cgroup: job.handle(&self.ctx),
                        comm,
                        start_ticks: stat.map(|s| s.start_ticks),
                        kernel_tracked: false,
                    },
                );
            }
        }
        events
    }

    /// Governs every running process that the policy matches and that is
    /// in no job yet (`adopted`).
    /// A scan that cannot read what it needs fails (and is retried): at the
    /// fd limit, a process whose uid could not be read was skipped, and
    /// nothing looked at it again.
    fn scan(&mut self) -> Result<Events, ProcError> {
        self.rescan = false;
        // Room to read /proc at all (two descriptors: a directory, a file),
        // from the reserve if need be: measured, at the fd limit a full
        // reserve left the scan none, and every lost process stayed lost.
        // The reserve is not refilled until the scan ends, so holding one
        // process cannot take the descriptor reading the next needs.
        self.reserve.lend(2);
        let scanned = self.scan_procs();
        self.reserve.settle();
        scanned
    }

    fn scan_procs(&mut self) -> Result<Events, ProcError> {
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
            let uid = match proc::read_uid(pid) {
                Ok(uid) => uid,
                Err(ProcError::Gone(_)) => continue,
                Err(e) => return Err(e),
            };
            let candidate = Candidate {
                pid,
                comm: stat.comm.clone(),
                uid,
                exe: None,
                argv: None,
                parent_comm: None,
            };
            events.extend(self.consider(candidate, Some(stat.ppid), Seen::Scan(stat.start_ticks)));
        }
        Ok(events)
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

    fn follow(&mut self, pid: u32, followed: Followed) {
        self.followed.insert(pid, followed);
        self.newly_followed.push(pid);
    }

    /// Followed processes that ended without their exit being seen (the
    /// kernel lost it: ring buffer full): their `exit`, with the job's
    /// report marked recovered, and their jobs to the reaper. A process is
    /// gone when /proc no longer has it with its start time.
    fn lost_exits(&mut self) -> Events {
        let all: Vec<u32> = self.followed.keys().copied().collect();
        self.gone_among(&all)
    }

    /// [`Governor::lost_exits`] among `pids`.
    fn gone_among(&mut self, pids: &[u32]) -> Events {
        let gone: Vec<u32> = pids
            .iter()
            .filter_map(|pid| self.followed.get(pid).map(|f| (pid, f)))
            .filter(|(pid, f)| match Stat::read(**pid) {
                Ok(s) => s.state == 'Z' || f.start_ticks.is_some_and(|t| t != s.start_ticks),
                Err(e) => matches!(e, ProcError::Gone(_)),
            })
            .map(|(pid, _)| *pid)
            .collect();
        let mut events = Vec::new();
        for pid in gone {
            let Some((comm, start)) = self
                .followed
                .get(&pid)
                .map(|f| (f.comm.clone(), f.start_ticks))
            else {
                continue;
            };
            let mut exit = Exit {
                pid,
                process_key: process_key(pid, start),
                comm,
                exit_code: None,
                signal: None,
                duration_us: None,
                job: None,
            };
            self.on_exit(&mut exit);
            if let Some(report) = &mut exit.job {
                report.recovered = true;
            }
            events.push(Event::new(Timestamp::now(), Source::Ffrtmp, exit));
        }
        events
    }

    /// The staging cgroup `pid` is in, if it is in one of ours.
    fn staging_of(&self, pid: u32) -> Option<&Staging> {
        let paths = cgroup_paths_of(pid);
        self.staging
            .values()
            .find(|s| paths.iter().any(|p| p == s.cgroup.path.as_str()))
    }

    /// Of a process's cgroup paths, its ffrtmp job's, if it is in one: a
    /// job under the root, or a job's scope.
    fn job_of<'a>(&self, paths: &'a [String]) -> Option<&'a String> {
        let prefix = self.job_prefix.as_deref();
        let staging = prefix.map(|p| format!("{p}{}/", JobId::STAGING));
        paths.iter().find(|p| {
            let under_root = prefix
                .zip(staging.as_deref())
                .is_some_and(|(prefix, staging)| p.starts_with(prefix) && !p.starts_with(staging));
            under_root || (self.ctx.scopes && scope::job_of_cgroup(p).is_some())
        })
    }

    /// Decides about one process and governs it if a rule says so.
    fn consider(&mut self, mut c: Candidate, ppid: Option<u32>, seen: Seen) -> Events {
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
        let (rule, job_id, limits, tier) = match self.policy.decide(&c) {
            Some(Decision::Govern {
                rule,
                job_id,
                limits,
                tier,
            }) => (rule.name.clone(), job_id, limits.clone(), tier),
            Some(Decision::Ignore { .. }) | None => return Vec::new(),
        };
        let paths = cgroup_paths_of(c.pid);
        if self.job_of(&paths).is_some()
            || self.in_flight.contains(&c.pid)
            || self.waiting.contains_key(&c.pid)
        {
            // Already governed (a child of a job, or a `run` workload), or
            // staged and waiting for its job (seen twice, or found by a scan).
            return Vec::new();
        }
        // Where it came from, before anything moves it: its scope goes
        // beside that unit, bound to it (`govern/scope.rs`).
        let from = self.origin_of(&paths);
        if let Some(from) = &from
            && !from.movable()
        {
            return vec![note(format!(
                "process {} ({rule}) not governed: it is in {}, a user manager's tree, which belongs to its user (govern it there with that user's `ffrtmp run` or `attach`)",
                c.pid,
                from.cgroup.as_str()
            ))];
        }
        self.govern(c.pid, (rule, tier), job_id, &limits, seen, from)
    }

    /// With scopes: the v2 cgroup a process is in, unless it is one of
    /// ours (a staging cgroup: where it came from is not known any more).
    fn origin_of(&self, paths: &[String]) -> Option<scope::Origin> {
        if !self.ctx.scopes {
            return None;
        }
        let origin = scope::Origin::of(paths)?;
        let under_root = self
            .job_prefix
            .as_deref()
            .is_some_and(|prefix| origin.cgroup.as_str().starts_with(prefix));
        (!under_root).then_some(origin)
    }

    /// `(rule, tier)`: the rule that matched, and its tier.
    fn govern(
        &mut self,
        pid: u32,
        (rule, tier): (String, Option<Tier>),
        job_id: JobId,
        limits: &Limits,
        seen: Seen,
        from: Option<scope::Origin>,
    ) -> Events {
        let mut events = Vec::new();
        self.maker.mark_busy();
        let start_ticks = match seen {
            Seen::Kernel { start_ticks, .. } => start_ticks,
            Seen::Scan(ticks) => Some(ticks),
            Seen::Polled => None,
        };
        let target = match self.reserve.open_target(pid, start_ticks) {
            Ok(t) => t,
            // Gone already (a short-lived process): nothing to govern.
            Err(TargetError::NoSuchProcess(_) | TargetError::Exited(_)) => return events,
            Err(e) => {
                // A scan finds it again (in no job yet) and governs it.
                self.rescan_at.get_or_insert(Instant::now() + RETRY_FIRST);
                events.push(note(format!(
                    "process {pid} ({rule}) not governed yet: {}; /proc is scanned again in {} s",
                    chain(&e),
                    RETRY_FIRST.as_secs()
                )));
                return events;
            }
        };
        // A new exec goes first into its rule's staging cgroup, whose limits
        // are the rule's: governed within one move of its exec. So does one a
        // scan finds: at the fd limit its own job cannot be made (measured: a
        // storm's lost processes found by the rescan stayed outside every
        // limit), and staged it waits for one under its rule's limits.
        let staging = self.staging.get(&rule);
        // Not `check()`: its start time was verified a moment ago, and while
        // the pidfd says it lives the pid cannot name another process; a
        // second read of /proc/PID/stat here would cost more than the move.
        let staged = staging.filter(|s| !target.has_exited() && s.procs.add(pid).is_ok());
        let staged_at = staged.and_then(|_| seen.since_exec_us());
        // One a scan finds in a staging cgroup (left there by a daemon that
        // stopped) is staged too: it leaves only for a job with its limits.
        let staged = staged.or_else(|| match seen {
            Seen::Kernel { .. } => None,
            _ => self.staging_of(pid),
        });
        let staged_report = staged.map(|s| (s.cgroup.path.as_str().to_string(), s.applied.clone()));
        let job = Unmade {
            pid,
            rule,
            tier,
            job_id,
            limits: limits.clone(),
            seen,
            target,
            staged_at,
            staged_report,
            from,
            attempts: 0,
        };
        self.hand_over(job)
    }

    /// Sends a job to the maker thread (a staged one), or makes it here.
    fn hand_over(&mut self, job: Unmade) -> Events {
        let pid = job.pid;
        // A scope is made by a call to systemd, which the thread reading the
        // kernel's ring never waits for.
        if (job.staged_report.is_some() || self.ctx.scopes)
            && let Some(thread) = &self.maker_thread
        {
            // Under its limits already: its own job is made on the maker
            // thread, and this one is free for the next exec.
            match thread.send(job) {
                Ok(()) => {
                    self.in_flight.insert(pid);
                    return Vec::new();
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

    /// Follows a made job; its events, for the caller to emit. One left
    /// in staging waits for another try.
    fn accept(&mut self, made: Made) -> Events {
        self.in_flight.remove(&made.pid);
        if let Some((job, cgroup)) = made.follow {
            self.follow(
                made.pid,
                Followed {
                    job,
                    cgroup,
                    comm: made.comm,
                    start_ticks: Some(made.start_ticks),
                    kernel_tracked: made.kernel_tracked,
                },
            );
        }
        if made.retried {
            // Its cause (the fd limit, say) has passed: everyone waiting
            // is tried now, not after a backoff of up to RETRY_MAX.
            let now = Instant::now();
            for (due, _) in self.waiting.values_mut() {
                *due = (*due).min(now);
            }
        }
        if let Some(parked) = made.retry {
            let pause = RETRY_FIRST
                .saturating_mul(1 << parked.attempts.min(8))
                .min(RETRY_MAX);
            self.waiting
                .insert(parked.pid, (Instant::now() + pause, parked));
        }
        made.events
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

    /// Makes (or reuses) each governing rule's staging cgroup under
    /// `<root>/.staging`, with the rule's limits. Its name is the rule's and
    /// a digest of its limits, so a changed rule gets a fresh cgroup: an
    /// updated one kept limits the new rule no longer had (measured: a
    /// `cpu.cfs_quota_us` of 1000 after restarting with the default). Those
    /// of earlier policies go once empty (their processes are governed by
    /// the start-up scan, under today's rules). A rule whose staging cgroup
    /// cannot be made governs new processes directly, a little later.
    fn prepare_staging(&mut self) -> Events {
        let Some(ctx) = self.staging_ctx() else {
            if self.ctx.scopes {
                // Not in a unit with Delegate=yes (started by hand, say).
                return vec![note(
                    "no staging cgroups: no subtree was delegated to this daemon (its unit has no Delegate=yes); each new process waits for systemd to make its scope before its limits apply".into(),
                )];
            }
            return Vec::new();
        };
        let mut events = Vec::new();
        for rule in &self.policy.rules {
            let Action::Govern { limits, .. } = &rule.action else {
                continue;
            };
            let id = staging_name(&rule.name, limits);
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

/// A rule's staging cgroup's name: the rule's name (as a cgroup name, cut
/// to leave room) and 8 hex digits of a digest (FNV-1a) of its limits.
fn staging_name(rule: &str, limits: &Limits) -> JobId {
    let name = sanitise(rule);
    let cut = &name.as_str()[..name.as_str().len().min(JobId::MAX_LEN - 9)];
    let digest = format!("{limits:?}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    sanitise(&format!("{cut}-{:08x}", digest as u32))
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

impl Govern for Governor {
    type Made = Made;

    /// Staging cgroups first (a new exec may arrive at once), then the
    /// state rebuilt from the cgroup tree, then the running matches.
    fn start_up(&mut self) -> Result<Events, ProcError> {
        let mut events = self.prepare_staging();
        events.extend(self.recover());
        events.extend(self.scan()?);
        // Earlier policies' staging cgroups, now empty (ours are claimed).
        if let Some(ctx) = self.staging_ctx() {
            reap_empty(&ctx);
        }
        Ok(events)
    }

    /// The new rules decide for processes that start from now on; those
    /// governed keep their jobs. Each rule gets its staging cgroup (one
    /// whose rule and limits are unchanged is the same cgroup, kept), and
    /// the old ones go once empty: processes parked in one stay under its
    /// limits until their job is made, as at a restart.
    fn reload(&mut self, policy: Policy) -> Events {
        self.needs = policy.needs();
        self.comm_filter = policy.comm_filter();
        self.policy = policy;
        // Their claims go with them; unchanged ones are claimed again below.
        self.staging.clear();
        let events = self.prepare_staging();
        if let Some(ctx) = self.staging_ctx() {
            reap_empty(&ctx);
        }
        events
    }

    /// An exec the observer reported: governs the process if a rule says so.
    /// Returns the events to emit after the exec event.
    fn on_exec(&mut self, kernel: Option<KernelStamp>, exec: &Exec) -> Events {
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
        let seen = match kernel {
            Some(k) => Seen::Kernel {
                ktime_ns: k.ktime_ns,
                start_ticks: k
                    .start_boottime_ns
                    .and_then(crate::observe::proc::ticks_of_ns),
            },
            None => Seen::Polled,
        };
        self.consider(candidate, exec.ppid, seen)
    }

    /// An exit: the job's report for a followed process, and its cgroup
    /// removed once empty.
    fn on_exit(&mut self, exit: &mut Exit) {
        self.waiting.remove(&exit.pid);
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

    /// Whether the maker thread is making `pid`'s job: its exit must wait
    /// for its `governed` event and job report.
    fn is_in_flight(&self, pid: u32) -> bool {
        self.in_flight.contains(&pid)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn followed(&self) -> usize {
        self.followed.len()
    }

    fn take_made_jobs(&mut self) -> Option<MadeJobs<Made>> {
        self.made_jobs.take()
    }

    fn made(&mut self, made: Made) -> Events {
        self.accept(made)
    }

    /// The thread is gone (a bug): say so, make jobs inline from now on,
    /// and let the held exits go. The processes it had stay in their
    /// staging cgroups, under their rules' limits.
    fn maker_stopped(&mut self) -> Events {
        self.maker_thread = None;
        let stranded = std::mem::take(&mut self.in_flight);
        vec![note(format!(
            "the job maker thread stopped; jobs are made inline from now on; processes {stranded:?} stay in their staging cgroups"
        ))]
    }

    /// The kernel lost events: scan at the next flush.
    fn request_rescan(&mut self) {
        self.rescan = true;
    }

    /// A failed scan (at the fd limit, say) does not end the daemon: it is
    /// said, and tried again a little later.
    fn rescan(&mut self) -> Result<Events, ProcError> {
        if !self.rescan {
            return Ok(Vec::new());
        }
        match self.scan() {
            Ok(mut events) => {
                events.extend(self.lost_exits());
                Ok(events)
            }
            Err(e) => {
                self.rescan_at = Some(Instant::now() + RETRY_FIRST);
                Ok(vec![note(format!(
                    "scanning /proc: {}; scanned again in {} s",
                    chain(&e),
                    RETRY_FIRST.as_secs()
                ))])
            }
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.waiting
            .values()
            .map(|(due, _)| *due)
            .chain(self.rescan_at)
            .min()
    }

    /// Tries again to make the jobs of staged processes that are due, and
    /// a /proc scan that could not be made.
    fn retry(&mut self) -> Events {
        let now = Instant::now();
        let mut events = Vec::new();
        if self.rescan_at.is_some_and(|t| t <= now) {
            self.rescan_at = None;
            self.rescan = true;
            events.extend(self.rescan().unwrap_or_default());
        }
        let due: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(_, (when, _))| *when <= now)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in due {
            let Some((_, parked)) = self.waiting.remove(&pid) else {
                continue;
            };
            match parked.unpark() {
                Ok(job) => events.extend(self.hand_over(job)),
                // Gone, or no longer the same process: nothing to make.
                Err(
                    TargetError::NoSuchProcess(_)
                    | TargetError::Exited(_)
                    | TargetError::Reused { .. },
                ) => {}
                // No pidfd now (the fd limit, say): later.
                Err(e) => {
                    tracing::debug!(pid, error = %chain(&e), "retry deferred");
                    self.waiting.insert(pid, (now + RETRY_FIRST, parked));
                }
            }
        }
        events
    }

    /// Pids that started being followed since the last call (for the
    /// kernel's exit filter).
    fn take_newly_followed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.newly_followed)
    }

    /// Measured with `cargo xtask soak`: a process adopted by a scan that
    /// ended before its pid reached the kernel's exit filter was followed
    /// for good (and its job kept), until the pid was reused.
    fn ended_unseen(&mut self, pids: &[u32]) -> Events {
        let untracked: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| self.followed.get(pid).is_some_and(|f| !f.kernel_tracked))
            .collect();
        self.gone_among(&untracked)
    }
}
