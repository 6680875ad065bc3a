//! Following: the processes the daemon governs or found in jobs, until
//! they exit — their exit then carries their job's report, and a job whose
//! last followed process ended goes to the reaper. The state is a cache of
//! the cgroup tree, rebuilt from it at every start ([`Following::recover`]),
//! so kill -9 and a restart lose nothing; exits the kernel lost are found
//! by their absence from /proc ([`Following::gone_among`]).
use std::collections::HashMap;

use super::{Events, host::Host};
use crate::events::{Event, Exit, Source, Timestamp, Tracked, process_key};

/// A process the daemon follows, and its job.
pub(super) struct Followed<C> {
    pub(super) job: String,
    /// The job's cgroup: made by this daemon (holding its claim), or found
    /// in the tree. `None` without cgroups (nice only).
    pub(super) cgroup: Option<C>,
    pub(super) comm: String,
    /// Its start time (/proc/PID/stat), its identity; `None` if unknown.
    pub(super) start_ticks: Option<u64>,
    /// The kernel programs track its exit from its exec on; others (found
    /// by a scan) only once user space adds them to the exit filter.
    pub(super) kernel_tracked: bool,
}

/// The followed processes, by pid.
pub(super) struct Following<C> {
    by_pid: HashMap<u32, Followed<C>>,
    /// Followed since last asked (for the kernel's exit filter).
    newly: Vec<u32>,
}

impl<C> Default for Following<C> {
    fn default() -> Self {
        Following {
            by_pid: HashMap::new(),
            newly: Vec::new(),
        }
    }
}

impl<C> Following<C> {
    pub(super) fn follow(&mut self, pid: u32, followed: Followed<C>) {
        self.by_pid.insert(pid, followed);
        self.newly.push(pid);
    }

    pub(super) fn contains(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    pub(super) fn len(&self) -> usize {
        self.by_pid.len()
    }

    /// Pids followed since the last call.
    pub(super) fn take_newly(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.newly)
    }

    /// Rebuilds the state from the cgroup tree: every process in a job is
    /// followed (`tracked`), never moved. `self_pid` is the daemon's own.
    pub(super) fn recover<H: Host<Cgroup = C>>(&mut self, host: &mut H, self_pid: u32) -> Events {
        let mut events = Vec::new();
        for job in host.jobs() {
            for (pid, handle) in job.members {
                if self.contains(pid) || pid == self_pid {
                    continue;
                }
                let stat = host.stat(pid).ok();
                let comm = stat.as_ref().map(|s| s.comm.clone()).unwrap_or_default();
                let start_ticks = stat.as_ref().map(|s| s.start_ticks);
                events.push(Event::new(
                    Timestamp::now(),
                    Source::Ffrtmp,
                    Tracked {
                        pid,
                        process_key: process_key(pid, start_ticks),
                        comm: comm.clone(),
                        job_id: job.id.clone(),
                        cgroup: job.cgroup.clone(),
                        tier: job.tier,
                    },
                ));
                self.follow(
                    pid,
                    Followed {
                        job: job.id.clone(),
                        cgroup: handle,
                        comm,
                        start_ticks,
                        kernel_tracked: false,
                    },
                );
            }
        }
        events
    }

    /// An exit: the job's report for a followed process, and its job to
    /// the reaper once no followed process is left in it.
    pub(super) fn on_exit<H: Host<Cgroup = C>>(&mut self, host: &mut H, exit: &mut Exit) {
        let Some(f) = self.by_pid.remove(&exit.pid) else {
            return;
        };
        let stats = f.cgroup.as_ref().map(|c| host.stats(c)).unwrap_or_default();
        exit.job = Some(stats.report(f.job.clone()));
        let still_followed = self.by_pid.values().any(|o| o.job == f.job);
        // Our claim goes first, so that the reaper may take the job.
        drop(f.cgroup);
        if !still_followed {
            host.reap(f.job);
        }
    }

    /// Every followed process.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.by_pid.keys().copied().collect()
    }

    /// Of `pids`, those found by a scan, whose exits the kernel does not
    /// track until they are in its exit filter.
    pub(super) fn untracked(&self, pids: &[u32]) -> Vec<u32> {
        pids.iter()
            .copied()
            .filter(|pid| self.by_pid.get(pid).is_some_and(|f| !f.kernel_tracked))
            .collect()
    }

    /// Followed processes among `pids` that ended without their exit being
    /// seen (the kernel lost it: ring buffer full): their `exit`, with the
    /// job's report marked recovered, and their jobs to the reaper. A
    /// process is gone when /proc no longer has it with its start time.
    pub(super) fn gone_among<H: Host<Cgroup = C>>(&mut self, host: &mut H, pids: &[u32]) -> Events {
        let gone: Vec<u32> = pids
            .iter()
            .filter_map(|pid| self.by_pid.get(pid).map(|f| (pid, f)))
            .filter(|(pid, f)| match host.stat(**pid) {
                Ok(s) => s.state == 'Z' || f.start_ticks.is_some_and(|t| t != s.start_ticks),
                Err(e) => matches!(e, crate::observe::proc::ProcError::Gone(_)),
            })
            .map(|(pid, _)| *pid)
            .collect();
        let mut events = Vec::new();
        for pid in gone {
            let Some((comm, start)) = self
                .by_pid
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
            self.on_exit(host, &mut exit);
            if let Some(report) = &mut exit.job {
                report.recovered = true;
            }
            events.push(Event::new(Timestamp::now(), Source::Ffrtmp, exit));
        }
        events
    }
}
