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

use crate::{
    events::{Event, Exit, Sink, Source, Timestamp},
    observe::proc::{self, ProcError, Stat},
};

/// Default polling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// What the last scan knew of a process.
struct Known {
    start_ticks: u64,
    comm: String,
}

/// Polls /proc; keeps the set of processes it has seen.
pub struct ProcfsObserver {
    interval: Duration,
    self_pid: u32,
    known: HashMap<u32, Known>,
}

impl ProcfsObserver {
    /// Records every process running now, so that only later changes are
    /// reported. Returns the exec events for them when `adopt` is set.
    pub fn start(interval: Duration, adopt: bool) -> Result<(Self, Vec<Event>), ProcError> {
        let mut observer = Self {
            interval,
            self_pid: std::process::id(),
            known: HashMap::new(),
        };
        let mut adopted = Collect(Vec::new());
        observer.scan(&mut adopted, true)?;
        let events = if adopt { adopted.0 } else { Vec::new() };
        Ok((observer, events))
    }

    /// Polls until `sink` fails or the future is dropped.
    pub async fn run<S: Sink>(&mut self, sink: &mut S) -> Result<(), S::Error>
    where
        S::Error: From<ProcError>,
    {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; start() just scanned
        loop {
            tick.tick().await;
            self.scan(sink, false)?;
        }
    }

    /// One pass over /proc. `adopted` marks the exec events of the first scan.
    fn scan<S: Sink>(&mut self, sink: &mut S, adopted: bool) -> Result<(), S::Error>
    where
        S::Error: From<ProcError>,
    {
        let pids = proc::list_pids()?;
        let mut alive = HashMap::with_capacity(pids.len());
        for pid in pids {
            if pid == self.self_pid {
                continue;
            }
            let stat = match Stat::read(pid) {
                Ok(s) if !s.is_kernel_thread() => s,
                Ok(_) | Err(ProcError::Gone(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let prior = self.known.remove(&pid);
            let is_new = match &prior {
                None => true,
                // Same pid, other start time: the pid was reused.
                Some(k) if k.start_ticks != stat.start_ticks => {
                    sink.send(exit_event(pid, k))?;
                    true
                }
                Some(k) => k.comm != stat.comm,
            };
            if is_new {
                match proc::exec_event(&stat, adopted) {
                    Ok(exec) => sink.send(Event::new(Timestamp::now(), Source::Procfs, exec))?,
                    Err(ProcError::Gone(_)) => continue,
                    Err(e) => return Err(e.into()),
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
            sink.send(exit_event(pid, &gone))?;
        }
        self.known = alive;
        sink.flush()
    }
}

/// Collects the first scan's events (the adopted processes).
struct Collect(Vec<Event>);

impl Sink for Collect {
    type Error = ProcError;

    fn send(&mut self, event: Event) -> Result<(), ProcError> {
        self.0.push(event);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ProcError> {
        Ok(())
    }
}

fn exit_event(pid: u32, k: &Known) -> Event {
    let duration_ms = proc::age_of(k.start_ticks).map(|a| a.as_micros() as f64 / 1_000.0);
    Event::new(
        Timestamp::now(),
        Source::Procfs,
        Exit {
            pid,
            comm: k.comm.clone(),
            exit_code: None,
            signal: None,
            duration_ms,
            job: None,
        },
    )
}
