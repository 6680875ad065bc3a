//! The stream between the backend and the outputs: governs, reports,
//! filters, and keeps the order the contract promises (docs/EVENTS.md).
//!
//! - Events are handled per batch (the backend flushes after each), so that
//!   a batch's execs are governed before the exits queued ahead of them are
//!   reported: a new transcoder never waits behind the job reports of exits
//!   that arrived just before it.
//! - Each `governed` follows its `exec`. An exit whose job the maker thread
//!   is still making is held until that job's `governed` is out, and then
//!   carries the job's report.
//! - A `lost` event makes the next flush rescan /proc.
//! - The same filter the kernel applies (names some rule may govern) is
//!   applied here too, for the procfs backend, unless `--all`.
use std::{
    collections::{BTreeSet, HashSet},
    time::Duration,
};

use super::{Events, Govern, MadeJobs};
use crate::{
    events::{Body, Event, Sink},
    observe::{Consumer, ExitFilter, ObserveError},
};

/// Events handled at once at most (a bound on memory in a storm).
const MAX_BATCH: usize = 4096;

/// How long a stopping `watch` waits for jobs being made (each takes
/// about a millisecond; the processes are under their limits meanwhile).
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);

/// Between the backend and the outputs.
pub(crate) struct Stream<G: Govern, O: Sink> {
    out: O,
    governor: Option<G>,
    /// The backend's exit filter, told of processes followed without their
    /// exec having passed it.
    exit_filter: Option<Box<dyn ExitFilter>>,
    /// Process names whose execs are reported (`None`: all).
    filter: Option<BTreeSet<String>>,
    /// Processes whose exec was reported: their exit is too.
    passed: HashSet<u32>,
    /// The batch being received.
    pending: Vec<Event>,
    /// Exits of processes whose job the maker thread is still making.
    held_exits: Vec<Event>,
}

impl<G: Govern, O: Sink> Stream<G, O> {
    /// `governor`: `None` with `--observe-only`. `filter`: the names whose
    /// execs are reported (`None` with `--all`).
    pub(crate) fn new(
        out: O,
        governor: Option<G>,
        exit_filter: Option<Box<dyn ExitFilter>>,
        filter: Option<BTreeSet<String>>,
    ) -> Self {
        Stream {
            out,
            governor,
            exit_filter,
            filter,
            passed: HashSet::new(),
            pending: Vec::new(),
            held_exits: Vec::new(),
        }
    }

    /// The backend's exit filter (known once the backend has started).
    pub(crate) fn set_exit_filter(&mut self, filter: Option<Box<dyn ExitFilter>>) {
        self.exit_filter = filter;
    }

    /// Where jobs made on the maker thread come back (once).
    pub(crate) fn take_made_jobs(&mut self) -> Option<MadeJobs<G::Made>> {
        self.governor.as_mut()?.take_made_jobs()
    }

    /// Writes an event of ffrtmp's own (`started`, `degraded`) at once.
    pub(crate) fn emit(&mut self, event: &Event) -> Result<(), ObserveError> {
        Ok(self.out.emit(event)?)
    }

    /// When a process left in staging is next due for another try.
    pub(crate) fn next_retry(&self) -> Option<std::time::Instant> {
        self.governor.as_ref()?.next_retry()
    }

    /// Tries again for the processes left in staging that are due.
    pub(crate) fn retry(&mut self) -> Result<(), ObserveError> {
        let Some(governor) = &mut self.governor else {
            return Ok(());
        };
        let events = governor.retry();
        self.emit_all(events)?;
        Ok(self.out.flush()?)
    }

    /// A reloaded policy (SIGHUP): the governor's rules and the names the
    /// stream passes (`filter`, as at start) for processes that start from
    /// now on.
    pub(crate) fn reload(
        &mut self,
        policy: crate::policy::Policy,
        filter: Option<BTreeSet<String>>,
    ) -> Result<(), ObserveError> {
        self.filter = filter;
        let Some(governor) = &mut self.governor else {
            return Ok(());
        };
        let events = governor.reload(policy);
        self.emit_all(events)?;
        Ok(self.out.flush()?)
    }

    /// Processes followed in their jobs (0 when observing only).
    pub(crate) fn followed(&self) -> usize {
        self.governor.as_ref().map_or(0, Govern::followed)
    }

    /// Rebuilds the state from the cgroup tree and governs what runs.
    pub(crate) fn start_up(&mut self) -> Result<(), ObserveError> {
        let Some(governor) = &mut self.governor else {
            return Ok(());
        };
        let events = governor.start_up()?;
        self.emit_all(events)?;
        Ok(self.out.flush()?)
    }

    /// A job the maker thread made (`None`: the thread stopped), and those
    /// that came with it (`more`, taken without waiting): emits their
    /// `governed`, then the exits that were held until their process's job
    /// was made, with one write.
    pub(crate) fn made(
        &mut self,
        made: Option<G::Made>,
        more: impl IntoIterator<Item = G::Made>,
    ) -> Result<(), ObserveError> {
        let Some(governor) = &mut self.governor else {
            return Ok(());
        };
        let mut events = match made {
            Some(m) => governor.made(m),
            None => governor.maker_stopped(),
        };
        for m in more {
            events.extend(governor.made(m));
        }
        self.emit_all(events)?;
        // Exits whose process is no longer being made, in arrival order.
        let (ready, held): (Vec<Event>, Vec<Event>) = std::mem::take(&mut self.held_exits)
            .into_iter()
            .partition(|e| match (&e.body, &self.governor) {
                (Body::Exit(x), Some(g)) => !g.is_in_flight(x.pid),
                _ => true,
            });
        self.held_exits = held;
        for exit in ready {
            self.exit(exit)?;
        }
        Ok(self.out.flush()?)
    }

    /// On the way out: emits the jobs still being made and the exits held
    /// for them, so that the stream ends with nothing half said.
    pub(crate) async fn finish(
        &mut self,
        made: Option<&mut MadeJobs<G::Made>>,
    ) -> Result<(), ObserveError> {
        if let Some(made) = made {
            let deadline = tokio::time::Instant::now() + IN_FLIGHT_GRACE;
            while self.governor.as_ref().is_some_and(|g| g.in_flight() > 0) {
                match tokio::time::timeout_at(deadline, made.recv()).await {
                    Ok(m) => {
                        let stopped = m.is_none();
                        self.made(m, std::iter::from_fn(|| made.try_recv().ok()))?;
                        if stopped {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        for exit in std::mem::take(&mut self.held_exits) {
            self.exit(exit)?;
        }
        Ok(self.out.flush()?)
    }

    fn emit_all(&mut self, events: Events) -> Result<(), ObserveError> {
        for event in events {
            match &event.body {
                Body::Governed(g) => {
                    self.passed.insert(g.pid);
                }
                Body::Tracked(t) => {
                    self.passed.insert(t.pid);
                }
                // An exit the governor recovered (the kernel lost it).
                Body::Exit(x) => {
                    self.passed.remove(&x.pid);
                }
                _ => {}
            }
            self.out.send(&event)?;
        }
        if let (Some(governor), Some(filter)) = (&mut self.governor, &mut self.exit_filter) {
            let pids = governor.take_newly_followed();
            for &pid in &pids {
                filter.follow(pid)?;
            }
            // An adopted process that ended before it was in the filter.
            for exit in governor.ended_unseen(&pids) {
                if let Body::Exit(x) = &exit.body {
                    self.passed.remove(&x.pid);
                }
                self.out.send(&exit)?;
            }
        }
        Ok(())
    }

    /// Reports an exit, with its job's report if it was governed.
    fn exit(&mut self, mut event: Event) -> Result<(), ObserveError> {
        let Body::Exit(exit) = &mut event.body else {
            return Ok(self.out.send(&event)?);
        };
        if let Some(g) = &mut self.governor {
            g.on_exit(exit);
        }
        let reported = self.passed.remove(&exit.pid);
        if self.filter.is_none() || reported || exit.job.is_some() {
            self.out.send(&event)?;
        }
        Ok(())
    }

    /// Governs the batch's execs first, then writes everything in the
    /// order it happened, each `governed` after its `exec`.
    fn handle_batch(&mut self) -> Result<(), ObserveError> {
        let batch = std::mem::take(&mut self.pending);
        let mut follow_ups: Vec<Events> = batch
            .iter()
            .map(|event| match (&mut self.governor, &event.body) {
                (Some(g), Body::Exec(exec)) => g.on_exec(event.kernel, exec),
                _ => Vec::new(),
            })
            .collect();
        for (mut event, follow_up) in batch.into_iter().zip(follow_ups.drain(..)) {
            match &mut event.body {
                Body::Exec(exec) => {
                    if self.filter.as_ref().is_none_or(|f| f.contains(&exec.comm)) {
                        self.passed.insert(exec.pid);
                        self.out.send(&event)?;
                    }
                    self.emit_all(follow_up)?;
                }
                Body::Exit(exit) => {
                    if self
                        .governor
                        .as_ref()
                        .is_some_and(|g| g.is_in_flight(exit.pid))
                    {
                        // After its `governed`, with its job's report.
                        self.held_exits.push(event);
                    } else {
                        self.exit(event)?;
                    }
                }
                Body::Lost(_) => {
                    if let Some(g) = &mut self.governor {
                        g.request_rescan();
                    }
                    self.out.send(&event)?;
                }
                _ => self.out.send(&event)?,
            }
        }
        Ok(())
    }
}

impl<G: Govern, O: Sink> Consumer for Stream<G, O> {
    fn take(&mut self, event: Event) -> Result<(), ObserveError> {
        self.pending.push(event);
        if self.pending.len() >= MAX_BATCH {
            self.handle_batch()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ObserveError> {
        self.handle_batch()?;
        if let Some(g) = &mut self.governor {
            let events = g.rescan()?;
            self.emit_all(events)?;
        }
        Ok(self.out.flush()?)
    }
}

#[cfg(test)]
mod tests;
