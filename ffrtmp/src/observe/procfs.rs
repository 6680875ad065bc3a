//! The procfs backend: polls /proc at a fixed interval and reports processes
//! that appeared (`exec`) or disappeared (`exit`) since the last scan.
//!
//! It is the fallback when eBPF cannot be loaded, and it is weaker by nature:
//! a process that lives less than one interval may be missed, an exit's
//! status is unknown (we are not its parent, so `exit_code` and `signal` are
//! null), and `duration_ms` is measured up to the scan that noticed the exit
//! (an upper bound, at most one interval late).
//! A re-exec is noticed only when it changes the process's `comm`.
use std::{collections::HashMap, time::Duration};

use super::{
    Consumer, ObserveError, Observer, Options,
    proc::{self, ProcError, Stat},
};
use crate::events::{Event, Exit, Source, Timestamp, micros, process_key};

/// Default polling interval.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// What the last scan knew of a process.
struct Known {
    start_ticks: u64,
    comm: String,
}

/// Polls /proc; keeps the set of processes it has seen.
pub(crate) struct ProcfsObserver {
    interval: Duration,
    /// Made at the first step (start() has just scanned).
    tick: Option<tokio::time::Interval>,
    self_pid: u32,
    known: HashMap<u32, Known>,
    adopted: Vec<Event>,
}

/// The processes running now, as `exec` events (`adopted` marks them so).
pub(crate) fn running(adopted: bool) -> Result<Vec<Event>, ProcError> {
    let mut observer = ProcfsObserver::new(DEFAULT_INTERVAL);
    let mut events = Vec::new();
    observer.scan(&mut events, adopted)?;
    Ok(events)
}

impl ProcfsObserver {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            tick: None,
            self_pid: std::process::id(),
            known: HashMap::new(),
            adopted: Vec::new(),
        }
    }

    /// Records every process running now, so that only later changes are
    /// reported; keeps their exec events when `options.adopt` is set.
    pub(crate) fn start(options: &Options) -> Result<Self, ProcError> {
        let mut observer = Self::new(options.interval);
        let mut adopted = Vec::new();
        observer.scan(&mut adopted, true)?;
        if options.adopt {
            observer.adopted = adopted;
        }
        Ok(observer)
    }

    /// One pass over /proc. `adopted` marks the exec events of the first scan.
    fn scan(&mut self, out: &mut Vec<Event>, adopted: bool) -> Result<(), ProcError> {
        let pids = proc::list_pids()?;
        let mut alive = HashMap::with_capacity(pids.len());
        for pid in pids {
            if pid == self.self_pid {
                continue;
            }
            let stat = match Stat::read(pid) {
                Ok(s) if !s.is_kernel_thread() => s,
                Ok(_) | Err(ProcError::Gone(_)) => continue,
                Err(e) => return Err(e),
            };
            let prior = self.known.remove(&pid);
            let is_new = match &prior {
                None => true,
                // Same pid, other start time: the pid was reused.
                Some(k) if k.start_ticks != stat.start_ticks => {
                    out.push(exit_event(pid, k));
                    true
                }
                Some(k) => k.comm != stat.comm,
            };
            if is_new {
                match proc::exec_event(&stat, adopted) {
                    Ok(exec) => out.push(Event::new(Timestamp::now(), Source::Procfs, exec)),
                    Err(ProcError::Gone(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            alive.insert(
                pid,
                Known {
                    start_ticks: stat.start_ticks,
                    comm: stat.comm,
                },
            );
        }
        for (pid, gone) in self.known.drain() {
            out.push(exit_event(pid, &gone));
        }
        self.known = alive;
        Ok(())
    }
}

impl Observer for ProcfsObserver {
    fn name(&self) -> &'static str {
        "procfs"
    }

    /// Scans at each tick of the interval.
    fn poll_step(
        &mut self,
        cx: &mut std::task::Context<'_>,
        to: &mut dyn Consumer,
    ) -> std::task::Poll<Result<(), ObserveError>> {
        let interval = self.interval;
        let tick = self.tick.get_or_insert_with(|| {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        if tick.poll_tick(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        let mut events = Vec::new();
        self.scan(&mut events, false)?;
        for event in events {
            to.take(event)?;
        }
        std::task::Poll::Ready(to.flush())
    }

    fn take_adopted(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.adopted)
    }
}

fn exit_event(pid: u32, k: &Known) -> Event {
    Event::new(
        Timestamp::now(),
        Source::Procfs,
        Exit {
            pid,
            process_key: process_key(pid, Some(k.start_ticks)),
            comm: k.comm.clone(),
            exit_code: None,
            signal: None,
            duration_us: proc::age_of(k.start_ticks).map(micros),
            job: None,
        },
    )
}
