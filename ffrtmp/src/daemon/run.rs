//! `watch`'s event loop, on the governing thread (tokio current_thread):
//! the stop signals, a reload (SIGHUP), the watchdog, the backend's next
//! records, retries due, pressure events and the jobs made on the maker
//! thread — in that order of priority (`biased`): a new exec is governed
//! before the jobs made meanwhile are reported (their processes are under
//! their rules' limits already), and a storm cannot starve the watchdog,
//! whose ping is kept by this loop itself (a loop that stops turning stops
//! pinging, and systemd restarts the daemon).
//!
//! Start-up comes first ([`run`]): the backend is ready before the state
//! is rebuilt and the running matches governed, and all of that before
//! `started`, so a consumer that waits for `started` misses nothing.
use std::{collections::BTreeSet, io, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{
    Governor, Machine, MadeJobs, Stream, notify::Notifier, pressure::PressureWatch,
    reload::Reloader,
};
use crate::{
    events::{
        CgroupLayout, Degraded, Event, EventError, Fallback, Mode, Pressure, SCHEMA_VERSION, Sinks,
        Source, Started, Timestamp, file::Reopen, node::process_key,
    },
    govern::caps::{Caps, Need},
    observe::{self, Backend, ObserveError, Observer, Options},
};

/// The daemon as `watch` wired it.
pub(crate) struct Daemon {
    pub(crate) options: Options,
    /// The stream's name filter (`None`: every process, `--all`).
    pub(crate) filter: Option<BTreeSet<String>>,
    /// `--policy` (`None`: the embedded one) and `--all`, for reloads.
    pub(crate) policy_path: Option<PathBuf>,
    pub(crate) all: bool,
    /// Rules governing at start.
    pub(crate) rules: usize,
    /// `None` with `--observe-only`.
    pub(crate) governor: Option<Governor<Machine>>,
    pub(crate) pressure: Option<PressureWatch>,
    /// The mode and the cgroup layout, when it governs.
    pub(crate) mode_and_layout: Option<(Mode, CgroupLayout)>,
    /// Said before `started`.
    pub(crate) notes: Vec<Degraded>,
    /// Asks the `--events` file to be reopened by name (SIGHUP).
    pub(crate) reopen: Option<Reopen>,
    /// With `--exit-on-output-loss`: fires when the output ended.
    pub(crate) output_end: Option<Arc<tokio::sync::Notify>>,
}

/// The signals `watch` stops and reloads on, registered before anything
/// loads so that one arriving during start-up is not lost.
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
    /// SIGHUP reloads the policy (`systemctl reload`); it never stops
    /// `watch`.
    hup: Signal,
}

impl Signals {
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }
}

type DaemonStream = Stream<Governor<Machine>, Sinks<'static>>;

/// Starts the backend and the governing, then runs the loop until SIGINT
/// or SIGTERM; then drains what the backend still has.
pub(crate) async fn run(d: Daemon, sinks: Sinks<'static>, signals: Signals) -> anyhow::Result<()> {
    // Opened now: a ping at the fd limit needs no new descriptor.
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!("$NOTIFY_SOCKET cannot be used ({e}); the service manager is told nothing");
        None
    });
    let governs = d.governor.is_some();
    let reloader = Reloader {
        path: d.policy_path,
        all: d.all,
        governs,
        kernel_filters: d.filter.is_some(),
        rules: d.rules,
    };
    let mut stream = Stream::new(sinks, d.governor, None, d.filter);
    for note in d.notes {
        stream.emit(&Event::new(Timestamp::now(), Source::Ffrtmp, note))?;
    }
    let observer = start(&d.options, &mut stream, governs, d.mode_and_layout)?;
    let running = Running {
        stream,
        observer,
        notifier,
        reloader,
        reopen: d.reopen,
        pressure: d.pressure,
    };
    let result = running.serve(signals, d.output_end.as_deref()).await;
    match result {
        // With --exit-on-output-loss, a closed stdout (`| head`) ends
        // the stream, not in error.
        Err(ObserveError::Event(EventError::Write(e))) if e.kind() == io::ErrorKind::BrokenPipe => {
            Ok(())
        }
        other => other.context("watching processes"),
    }
}

/// The backend ready, the state rebuilt and the running matches governed,
/// then `started`.
fn start(
    options: &Options,
    stream: &mut DaemonStream,
    governs: bool,
    mode_and_layout: Option<(Mode, CgroupLayout)>,
) -> anyhow::Result<Box<dyn Observer>> {
    // Ready before `started`: from that event on, nothing is missed.
    let started = observe::start(options).map_err(|e| match options.backend {
        Backend::Ebpf => anyhow::Error::new(e).context("loading the eBPF backend (--backend ebpf)"),
        _ => e.into(),
    })?;
    let mut observer = started.observer;
    if let Some(reason) = backend_note(started.fell_back, options, governs) {
        stream.emit(&Event::new(
            Timestamp::now(),
            Source::Ffrtmp,
            Degraded {
                limit: None,
                reason,
                fallback: Fallback::Procfs,
            },
        ))?;
    }
    stream.set_exit_filter(observer.take_exit_filter());
    // Start-up, before `started`: the backend is ready first, so a process
    // that starts meanwhile is not missed (it may be seen twice; one
    // already in a job is never governed again).
    stream.start_up()?;
    for event in observer.take_adopted() {
        observe::Consumer::take(stream, event)?;
    }
    observe::Consumer::flush(stream)?;
    let pid = std::process::id();
    stream.emit(&Event::new(
        Timestamp::now(),
        Source::Ffrtmp,
        Started {
            schema: SCHEMA_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
            pid,
            process_key: process_key(
                pid,
                observe::proc::Stat::read(pid).ok().map(|s| s.start_ticks),
            ),
            backend: observer.name().into(),
            mode: mode_and_layout.map(|(mode, _)| mode),
            layout: mode_and_layout.map(|(_, layout)| layout),
        },
    ))?;
    Ok(observer)
}

/// What to say of the backend: eBPF fell back to polling (`fell_back`,
/// why), or polling was asked for while governing.
fn backend_note(fell_back: Option<String>, options: &Options, governs: bool) -> Option<String> {
    if let Some(why) = fell_back {
        let mut reason = with_needs(format!("eBPF backend unavailable: {why}"), Need::Ebpf);
        if governs {
            reason.push_str(
                "; new processes are found by polling /proc, so governing them is up to one interval late",
            );
        }
        tracing::warn!("{reason}; polling /proc instead");
        return Some(reason);
    }
    (options.backend == Backend::Procfs && governs).then(|| {
        format!(
            "governing by polling /proc every {}: a new process is governed up to one interval after it starts, and one that lives less may be missed",
            humantime::format_duration(options.interval)
        )
    })
}

/// `reason`, naming the capabilities `need` takes if ffrtmp lacks them.
pub(crate) fn with_needs(reason: String, need: Need) -> String {
    if Caps::effective().allows(need) {
        reason
    } else {
        format!(
            "{reason} (it needs {}, which ffrtmp does not have)",
            need.describe()
        )
    }
}

/// The daemon once `started` is out.
struct Running {
    stream: DaemonStream,
    observer: Box<dyn Observer>,
    notifier: Option<Notifier>,
    reloader: Reloader,
    reopen: Option<Reopen>,
    pressure: Option<PressureWatch>,
}

impl Running {
    fn status(&self) -> String {
        format!(
            "backend {}, {} processes followed in their jobs",
            self.observer.name(),
            self.stream.followed()
        )
    }

    /// The loop (see the module doc), then the backend drained.
    async fn serve(
        mut self,
        mut signals: Signals,
        output_end: Option<&tokio::sync::Notify>,
    ) -> Result<(), ObserveError> {
        // Ready: the kernel programs are attached and the start-up scan done.
        if let Some(n) = &self.notifier {
            n.ready(&self.status());
        }
        let mut pings = self
            .notifier
            .as_ref()
            .and_then(Notifier::ping_every)
            .map(|every| {
                let mut pings = tokio::time::interval(every);
                // After a stall, one ping, not a burst of the missed ones.
                pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                pings
            });
        let mut made = self.stream.take_made_jobs();
        let (int, term) = (&mut signals.int, &mut signals.term);
        let mut stop = std::pin::pin!(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        loop {
            let next_retry = self.stream.next_retry();
            tokio::select! {
                biased;
                () = &mut stop => break,
                _ = signals.hup.recv() => self.reload()?,
                // Before the observer: a storm must not starve the watchdog.
                () = ping_due(pings.as_mut()) => self.ping(),
                // Only with --exit-on-output-loss: the flush says why.
                () = output_ended(output_end) => observe::Consumer::flush(&mut self.stream)?,
                r = std::future::poll_fn(|cx| self.observer.poll_step(cx, &mut self.stream)) => r?,
                () = due(next_retry) => self.stream.retry()?,
                p = next_pressure(self.pressure.as_mut()) => match p {
                    Some(p) => self.stream.emit(&Event::new(Timestamp::now(), Source::Ffrtmp, p))?,
                    None => self.pressure = None, // its thread ended
                },
                m = next_made(&mut made) => self.made(m, &mut made)?,
            }
        }
        if let Some(n) = &self.notifier {
            n.stopping();
        }
        self.observer.drain(&mut self.stream)?;
        self.stream.finish(made.as_mut()).await
    }

    /// SIGHUP: the policy again, and the events file by its name
    /// (logrotate's postrotate).
    fn reload(&mut self) -> Result<(), ObserveError> {
        if let Some(n) = &self.notifier {
            n.reloading();
        }
        if let Some(r) = &self.reopen {
            r.request();
        }
        self.reloader
            .reload(&mut self.stream, self.observer.as_mut())?;
        if let Some(n) = &self.notifier {
            n.ready(&self.status());
        }
        Ok(())
    }

    fn ping(&self) {
        if let Some(n) = &self.notifier {
            n.ping();
            n.status(&self.status());
        }
    }

    /// A made job (`None`: the maker thread stopped), with those made
    /// since.
    fn made(
        &mut self,
        m: Option<<Governor<Machine> as super::Govern>::Made>,
        made: &mut Option<MadeJobs<<Governor<Machine> as super::Govern>::Made>>,
    ) -> Result<(), ObserveError> {
        let stopped = m.is_none();
        let more = made
            .as_mut()
            .filter(|_| !stopped)
            .map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).collect::<Vec<_>>());
        self.stream.made(m, more.into_iter().flatten())?;
        if stopped {
            *made = None;
        }
        Ok(())
    }
}

/// The next watchdog ping; never without a watchdog.
async fn ping_due(pings: Option<&mut tokio::time::Interval>) {
    match pings {
        Some(p) => {
            p.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next `pressure` event; never without a pressure watch.
async fn next_pressure(watch: Option<&mut PressureWatch>) -> Option<Pressure> {
    match watch {
        Some(w) => w.events.recv().await,
        None => std::future::pending().await,
    }
}

/// When the next retry is due; never, without one.
async fn due(when: Option<std::time::Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// When the event output ended, if that ends `watch`; never otherwise.
async fn output_ended(end: Option<&tokio::sync::Notify>) {
    match end {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// The next job made on the maker thread (`None`: the thread stopped);
/// never, without one.
async fn next_made<M>(made: &mut Option<MadeJobs<M>>) -> Option<M> {
    match made {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
