//! The governor: decides about each process the observer reports (the
//! [`Policy`]), makes the first move of a new exec into its rule's staging
//! cgroup ([`super::staging`]), hands the second move to the job maker
//! ([`super::maker`]), parks what cannot be made yet ([`super::retry`]),
//! and follows governed and recovered processes until they exit
//! ([`super::follow`]). Everything it asks of the machine goes through
//! [`Host`], so these decisions are unit-tested with a host of the tests'
//! own (below), without root.
use std::{
    collections::{BTreeSet, HashSet},
    sync::{Arc, mpsc},
    time::Instant,
};

use super::{
    Events, Govern, MadeJobs,
    follow::{Followed, Following},
    host::{Held as _, Host, Made, MakeJobs, Unmade},
    maker, note,
    retry::{RETRY_FIRST, Waiting},
    seen::Seen,
    staging::Stagings,
};
use crate::{
    errors::chain,
    events::{Body, Exec, Exit, KernelStamp},
    govern::{scope, target::TargetError},
    limits::{JobId, Limits, Tier},
    observe::proc::ProcError,
    policy::{Candidate, Decision, Needs, Policy},
};

/// The daemon's governor, over the machine `H`.
pub(crate) struct Governor<H: Host> {
    host: H,
    policy: Policy,
    needs: Needs,
    /// Names some governing rule may match (`None`: any).
    comm_filter: Option<BTreeSet<String>>,
    self_pid: u32,
    following: Following<H::Cgroup>,
    stagings: Stagings<H::Staging>,
    /// Makes jobs (the second move), inline or on its thread.
    maker: Arc<H::Maker>,
    /// Jobs to the maker thread (`None`: made inline).
    maker_thread: Option<mpsc::Sender<Unmade<H::Held>>>,
    /// Made jobs from the maker thread, until the event loop takes them.
    made_jobs: Option<MadeJobs<Made<H::Cgroup>>>,
    /// Staged processes whose job the maker thread is making.
    in_flight: HashSet<u32>,
    /// Staged processes whose job could not be made, until their next try.
    waiting: Waiting,
    rescan: bool,
    /// A scan to make later (one failed, or a process could not be held).
    rescan_at: Option<Instant>,
}

impl<H: Host> Governor<H> {
    /// A governor of `host`, with its job maker thread when one can be
    /// started (else jobs are made inline).
    pub(crate) fn new(host: H, policy: Policy) -> Self {
        let mut g = Self::inline(host, policy);
        if let Some((jobs, made)) = maker::spawn(Arc::clone(&g.maker)) {
            g.maker_thread = Some(jobs);
            g.made_jobs = Some(made);
        }
        g
    }

    /// A governor that makes every job inline, on the caller's thread.
    pub(super) fn inline(host: H, policy: Policy) -> Self {
        Governor {
            maker: host.maker(),
            host,
            comm_filter: policy.comm_filter(),
            needs: policy.needs(),
            policy,
            self_pid: std::process::id(),
            following: Following::default(),
            stagings: Stagings::default(),
            maker_thread: None,
            made_jobs: None,
            in_flight: HashSet::new(),
            waiting: Waiting::default(),
            rescan: false,
            rescan_at: None,
        }
    }

    /// Governs every running process that the policy matches and that is
    /// in no job yet (`adopted`). A scan that cannot read what it needs
    /// fails (and is retried): at the fd limit, a process whose uid could
    /// not be read was skipped, and nothing looked at it again.
    fn scan(&mut self) -> Result<Events, ProcError> {
        self.rescan = false;
        let scanned = self.scan_procs();
        self.host.scanned();
        scanned
    }

    fn scan_procs(&mut self) -> Result<Events, ProcError> {
        let pids = self.host.pids()?;
        self.consider_pids(&pids)
    }

    /// Considers each of `pids` as a scan does.
    fn consider_pids(&mut self, pids: &[u32]) -> Result<Events, ProcError> {
        let mut events = Vec::new();
        for &pid in pids {
            if pid == self.self_pid || self.following.contains(pid) {
                continue;
            }
            let stat = match self.host.stat(pid) {
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
            let uid = match self.host.uid(pid) {
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

    /// Of a process's cgroup paths, its ffrtmp job's, if it is in one: a
    /// job under the root (not a staging cgroup), or a job's scope.
    fn job_of<'a>(&self, paths: &'a [String]) -> Option<&'a String> {
        let prefix = self.host.job_prefix();
        let staging = prefix.map(|p| format!("{p}{}/", JobId::STAGING));
        paths.iter().find(|p| {
            let under_root = prefix
                .zip(staging.as_deref())
                .is_some_and(|(prefix, staging)| p.starts_with(prefix) && !p.starts_with(staging));
            under_root || self.host.is_job_scope(p)
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
            c.exe = self.host.exe(c.pid);
        }
        if self.needs.argv && c.argv.is_none() {
            c.argv = self.host.argv(c.pid);
        }
        if self.needs.parent_comm {
            c.parent_comm = ppid.and_then(|p| self.host.stat(p).ok()).map(|s| s.comm);
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
        let paths = self.host.cgroups(c.pid);
        if self.job_of(&paths).is_some()
            || self.in_flight.contains(&c.pid)
            || self.waiting.contains(c.pid)
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
        let origin = self.host.origin(paths)?;
        let under_root = self
            .host
            .job_prefix()
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
        self.maker.mark_busy();
        let start_ticks = match seen {
            Seen::Kernel { start_ticks, .. } => start_ticks,
            Seen::Scan(ticks) => Some(ticks),
            Seen::Polled => None,
        };
        let target = match self.host.hold(pid, start_ticks) {
            Ok(t) => t,
            // Gone already (a short-lived process): nothing to govern.
            Err(TargetError::NoSuchProcess(_) | TargetError::Exited(_)) => return Vec::new(),
            Err(e) => {
                // A scan finds it again (in no job yet) and governs it.
                self.rescan_at.get_or_insert(self.host.now() + RETRY_FIRST);
                return vec![note(format!(
                    "process {pid} ({rule}) not governed yet: {}; /proc is scanned again in {} s",
                    chain(&e),
                    RETRY_FIRST.as_secs()
                ))];
            }
        };
        // A new exec goes first into its rule's staging cgroup, whose limits
        // are the rule's: governed within one move of its exec. So does one a
        // scan finds: at the fd limit its own job cannot be made (measured: a
        // storm's lost processes found by the rescan stayed outside every
        // limit), and staged it waits for one under its rule's limits.
        // Not checked again: its start time was verified a moment ago, and
        // while the pidfd says it lives the pid cannot name another
        // process; a second read of /proc/PID/stat would cost more than
        // the move.
        let staging = self.stagings.of_rule(&rule);
        let staged = staging.filter(|s| !target.has_exited() && self.host.stage(&s.cgroup, pid));
        let staged_at = staged.and_then(|_| seen.since_exec_us());
        // One a scan finds in a staging cgroup (left there by a daemon that
        // stopped) is staged too: it leaves only for a job with its limits.
        let staged = staged.or_else(|| match seen {
            Seen::Kernel { .. } => None,
            _ => self.stagings.holding(&self.host.cgroups(pid)),
        });
        let staged_report = staged.map(|s| (s.path.clone(), s.applied.clone()));
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
    fn hand_over(&mut self, job: Unmade<H::Held>) -> Events {
        let pid = job.pid;
        // A scope is made by a call to systemd, which the thread reading the
        // kernel's ring never waits for.
        if (job.staged_report.is_some() || self.host.jobs_are_slow())
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
    fn accept(&mut self, made: Made<H::Cgroup>) -> Events {
        self.in_flight.remove(&made.pid);
        if let Some((job, cgroup)) = made.follow {
            self.following.follow(
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
        let now = self.host.now();
        if made.retried {
            // Its cause (the fd limit, say) has passed: everyone waiting
            // is tried now.
            self.waiting.all_due(now);
        }
        if let Some(parked) = made.retry {
            self.waiting.park(parked, now);
        }
        made.events
    }
}

impl<H: Host> Govern for Governor<H> {
    type Made = Made<H::Cgroup>;

    /// Staging cgroups first (a new exec may arrive at once), then the
    /// state rebuilt from the cgroup tree, then the running matches.
    fn start_up(&mut self) -> Result<Events, ProcError> {
        let mut events = self.stagings.prepare(&mut self.host, &self.policy);
        events.extend(self.following.recover(&mut self.host, self.self_pid));
        events.extend(self.scan()?);
        // Earlier policies' staging cgroups, now empty (ours are claimed).
        self.host.reap_staging();
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
        let events = self.stagings.prepare(&mut self.host, &self.policy);
        self.host.reap_staging();
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
        self.waiting.remove(exit.pid);
        self.following.on_exit(&mut self.host, exit);
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
        self.following.len()
    }

    fn take_made_jobs(&mut self) -> Option<MadeJobs<Self::Made>> {
        self.made_jobs.take()
    }

    fn made(&mut self, made: Self::Made) -> Events {
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
                let all = self.following.pids();
                let gone = self.following.gone_among(&mut self.host, &all);
                // A pid that ended and now names a new process: the scan
                // skipped it (followed then), and its exec was lost too.
                let reused: Vec<u32> = gone
                    .iter()
                    .filter_map(|e| match &e.body {
                        Body::Exit(x) => Some(x.pid),
                        _ => None,
                    })
                    .collect();
                events.extend(gone);
                events.extend(self.consider_pids(&reused).unwrap_or_default());
                Ok(events)
            }
            Err(e) => {
                self.rescan_at = Some(self.host.now() + RETRY_FIRST);
                Ok(vec![note(format!(
                    "scanning /proc: {}; scanned again in {} s",
                    chain(&e),
                    RETRY_FIRST.as_secs()
                ))])
            }
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.waiting.next().into_iter().chain(self.rescan_at).min()
    }

    /// Tries again to make the jobs of staged processes that are due, and
    /// a /proc scan that could not be made.
    fn retry(&mut self) -> Events {
        let now = self.host.now();
        let mut events = Vec::new();
        if self.rescan_at.is_some_and(|t| t <= now) {
            self.rescan_at = None;
            self.rescan = true;
            events.extend(self.rescan().unwrap_or_default());
        }
        for parked in self.waiting.take_due(now) {
            match self.host.hold(parked.pid, Some(parked.start_ticks)) {
                Ok(target) => events.extend(self.hand_over(parked.unpark(target))),
                // Gone, or no longer the same process: nothing to make.
                Err(
                    TargetError::NoSuchProcess(_)
                    | TargetError::Exited(_)
                    | TargetError::Reused { .. },
                ) => {}
                // No pidfd now (the fd limit, say): later.
                Err(e) => {
                    tracing::debug!(pid = parked.pid, error = %chain(&e), "retry deferred");
                    self.waiting.park_until(parked, now + RETRY_FIRST);
                }
            }
        }
        events
    }

    /// Pids that started being followed since the last call (for the
    /// kernel's exit filter).
    fn take_newly_followed(&mut self) -> Vec<u32> {
        self.following.take_newly()
    }

    /// Measured with `cargo xtask soak`: a process adopted by a scan that
    /// ended before its pid reached the kernel's exit filter was followed
    /// for good (and its job kept), until the pid was reused.
    fn ended_unseen(&mut self, pids: &[u32]) -> Events {
        let untracked = self.following.untracked(pids);
        self.following.gone_among(&mut self.host, &untracked)
    }
}
