//! `ffrtmp watch`: loads the policy (a bad one exits 2 before anything
//! starts), chooses a backend and says which (`started`, and `degraded` when
//! it fell back), rebuilds its state from the cgroup tree, governs what
//! already runs, then streams and governs until SIGINT/SIGTERM.
//!
//! The [`Stream`] sits between the backend and stdout: each exec goes to
//! the [`Governor`] before it is written (so `governed` follows its
//! `exec`), each exit of a followed process gets its job's report, and a
//! `lost` event makes the next flush rescan /proc. The same filter the
//! kernel applies (process names some rule may govern) is applied here too,
//! for the procfs backend, unless `--all`.
use std::{
    collections::{BTreeSet, HashSet},
    io,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::{WatchArgs, exit};
use crate::{
    events::{
        Body, Degraded, Emitter, Event, EventError, SCHEMA_VERSION, Sink, Source, Started,
        Timestamp, metrics::Metrics,
    },
    govern::{Context, GovernError, auto::Governor, dynmods, layout::LayoutError, process},
    observe::{
        Backend,
        ebpf::{EbpfError, EbpfObserver, LoadOptions, Tracker},
        proc::ProcError,
        procfs::ProcfsObserver,
    },
    policy::Policy,
};

/// The scheduler slice the governing thread asks for: shorter than the
/// default (0.75 ms × (1 + log2 CPUs)), so that it preempts a new
/// transcoder's loader instead of waiting for it to sleep, and longer than
/// one governing (~0.3 ms of CPU), so that it is not itself preempted
/// halfway. 0.1 ms (the kernel's minimum) and 1 ms measured worse
/// (docs/BENCHMARKS.md); see [`process::request_slice`].
const GOVERN_SLICE: Duration = Duration::from_micros(500);

/// Why the stream stopped early.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("reading /proc")]
    Proc(#[from] ProcError),
}

pub fn run(args: WatchArgs) -> ExitCode {
    // Bad input exits 2 before anything is loaded or governed.
    let policy = match &args.policy {
        Some(path) => match Policy::load(path) {
            Ok(p) => p,
            Err(e) => return usage(&anyhow::Error::new(e)),
        },
        None => Policy::embedded(),
    };
    let mut notes = Vec::new();
    let governor = if args.observe_only {
        None
    } else {
        match Context::detect(args.cgroup_root.as_deref()) {
            Ok(ctx) => {
                notes.extend(migration_speed(&ctx, args.favordynmods));
                let governor = Governor::new(ctx, policy.clone());
                // After the reaper thread started: it must not inherit it.
                match process::request_slice(GOVERN_SLICE) {
                    Ok(slice) => tracing::debug!(?slice, "governing thread's scheduler slice"),
                    Err(e) => tracing::debug!("{:#}", anyhow::Error::new(e)),
                }
                Some(governor)
            }
            Err(
                e @ (GovernError::Layout(LayoutError::BadRoot(_))
                | GovernError::RootOutsideHierarchy(..)),
            ) => {
                return usage(&anyhow::Error::new(e));
            }
            Err(e) => {
                eprintln!("ffrtmp: error: {:#}", anyhow::Error::new(e));
                return ExitCode::from(exit::FAILURE);
            }
        }
    };
    // The names the policy governs: with --observe-only nothing is urgent.
    let comms = policy.comm_filter();
    let filter = if args.all { None } else { comms.clone() };
    let urgent = comms.filter(|_| governor.is_some());
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")
        .and_then(|rt| rt.block_on(watch(args, governor, urgent, filter, notes)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ffrtmp: error: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// `--favordynmods`, or a note that governing will wait for grace periods.
fn migration_speed(ctx: &Context, enable: bool) -> Option<Degraded> {
    if ctx.root.is_none() || dynmods::migrations_are_fast(&ctx.layout) {
        return None;
    }
    let reason = if enable {
        match dynmods::enable(&ctx.layout) {
            Ok(()) => return None,
            Err(e) => format!("{:#}", anyhow::Error::new(e)),
        }
    } else {
        "favordynmods is off: moving a process into its cgroup waits for an RCU grace period (5-30 ms); --favordynmods turns it on".into()
    };
    Some(Degraded {
        limit: None,
        reason: format!("{reason} (docs/OPERATIONS.md)"),
        fallback: "slow migrations".into(),
    })
}

fn usage(e: &anyhow::Error) -> ExitCode {
    eprintln!("ffrtmp: error: {e:#}");
    ExitCode::from(exit::USAGE)
}

async fn watch(
    args: WatchArgs,
    governor: Option<Governor>,
    urgent: Option<BTreeSet<String>>,
    filter: Option<BTreeSet<String>>,
    notes: Vec<Degraded>,
) -> anyhow::Result<()> {
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let metrics = Metrics::default();
            tokio::spawn(metrics.clone().serve(addr).await?);
            Some(metrics)
        }
        None => None,
    };
    let mut out = Output(Emitter::new(io::stdout().lock(), args.format), metrics);
    for note in notes {
        out.emit(Event::new(Timestamp::now(), Source::Ffrtmp, note))?;
    }
    // Register before loading so a signal during start-up is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    let options = LoadOptions {
        ring_buffer_bytes: args.ring_buffer_size,
        // The filter's names when filtering (then they are all the kernel
        // sends), else the names governed.
        urgent_comms: filter.clone().or(urgent).unwrap_or_default(),
        filter: filter.is_some(),
    };
    let ebpf = match args.backend {
        Backend::Procfs => None,
        Backend::Ebpf => Some(
            EbpfObserver::load(&options).context("loading the eBPF backend (--backend ebpf)")?,
        ),
        Backend::Auto => match EbpfObserver::load(&options) {
            Ok(o) => Some(o),
            Err(e) => {
                let mut reason = format!("eBPF backend unavailable: {:#}", anyhow::Error::new(e));
                if governor.is_some() {
                    reason.push_str(
                        "; new processes are found by polling /proc, so governing them is up to one interval late",
                    );
                }
                tracing::warn!("{reason}; polling /proc instead");
                out.emit(Event::new(
                    Timestamp::now(),
                    Source::Ffrtmp,
                    Degraded {
                        limit: None,
                        reason,
                        fallback: "procfs".into(),
                    },
                ))?;
                None
            }
        },
    };
    if ebpf.is_none() && args.backend == Backend::Procfs && governor.is_some() {
        out.emit(Event::new(
            Timestamp::now(),
            Source::Ffrtmp,
            Degraded {
                limit: None,
                reason: format!(
                    "governing by polling /proc every {}: a new process is governed up to one interval after it starts, and one that lives less may be missed",
                    humantime::format_duration(args.interval)
                ),
                fallback: "procfs".into(),
            },
        ))?;
    }
    // Ready before `started`: from that event on, nothing is missed.
    let mut observer = match ebpf {
        Some(observer) => Observer::Ebpf(Box::new(observer)),
        None => {
            let (observer, adopted) = ProcfsObserver::start(args.interval, args.adopt)?;
            Observer::Procfs(observer, adopted)
        }
    };
    let backend = match observer {
        Observer::Ebpf(_) => Source::Ebpf,
        Observer::Procfs(..) => Source::Procfs,
    };
    let tracker = match &mut observer {
        Observer::Ebpf(o) if filter.is_some() => o.take_tracker(),
        _ => None,
    };
    let mut stream = Stream {
        out,
        governor,
        tracker,
        filter,
        passed: HashSet::new(),
        pending: Vec::new(),
        held_exits: Vec::new(),
    };
    // Start-up, before `started`: the programs are attached (or /proc was
    // scanned) first, so a process that starts meanwhile is not missed (it
    // may be seen twice; one already in a job is never governed again).
    stream.start_up()?;
    let adopted = match &mut observer {
        Observer::Ebpf(_) if args.adopt => ProcfsObserver::start(args.interval, true)?.1,
        Observer::Procfs(_, adopted) => std::mem::take(adopted),
        Observer::Ebpf(_) => Vec::new(),
    };
    for event in adopted {
        stream.send(event)?;
    }
    stream.handle_batch()?;
    stream.out.send(Event::new(
        Timestamp::now(),
        Source::Ffrtmp,
        Started {
            schema: SCHEMA_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            backend,
        },
    ))?;
    stream.flush()?;

    let result = match observer {
        Observer::Ebpf(mut observer) => {
            let result = tokio::select! {
                r = observer.run(&mut stream) => r,
                _ = sigint.recv() => Ok(()),
                _ = sigterm.recv() => Ok(()),
            };
            let result = result.and_then(|()| observer.drain(&mut stream));
            match result {
                Ok(()) => stream.finish_in_flight().await,
                e => e,
            }
        }
        Observer::Procfs(mut observer, _) => {
            tokio::select! {
                r = observer.run(&mut stream) => r,
                _ = sigint.recv() => Ok(()),
                _ = sigterm.recv() => Ok(()),
            }
        }
    };
    match result {
        // A closed stdout (e.g. `| head`) ends the stream, not in error.
        Err(WatchError::Event(EventError::Write(e))) if e.kind() == io::ErrorKind::BrokenPipe => {
            Ok(())
        }
        other => other.context("watching processes"),
    }
}

/// The event stream on stdout (and in the metrics), with errors in
/// `watch`'s terms.
struct Output<W: io::Write>(Emitter<W>, Option<Metrics>);

impl<W: io::Write> Sink for Output<W> {
    type Error = WatchError;

    fn send(&mut self, event: Event) -> Result<(), WatchError> {
        if let Some(m) = &self.1 {
            m.record(&event);
        }
        Ok(self.0.send(event)?)
    }

    fn flush(&mut self) -> Result<(), WatchError> {
        Ok(self.0.flush()?)
    }
}

/// Between the backend and the output: governs, reports, filters.
struct Stream<W: io::Write> {
    out: Output<W>,
    governor: Option<Governor>,
    /// The kernel's exit filter, told of processes followed without their
    /// exec having passed it.
    tracker: Option<Tracker>,
    /// Process names whose execs are reported (`None`: all).
    filter: Option<BTreeSet<String>>,
    /// Processes whose exec was reported: their exit is too.
    passed: HashSet<u32>,
    /// The batch being received.
    pending: Vec<Event>,
    /// Exits of processes whose job the maker thread is still making.
    held_exits: Vec<Event>,
}

impl<W: io::Write> Stream<W> {
    /// Rebuilds the state from the cgroup tree and governs what runs.
    fn start_up(&mut self) -> Result<(), WatchError> {
        let Some(governor) = &mut self.governor else {
            return Ok(());
        };
        let mut events = governor.prepare_staging();
        events.extend(governor.recover());
        events.extend(governor.scan()?);
        self.emit_all(events)?;
        self.out.flush()
    }

    fn emit_all(&mut self, events: Vec<Event>) -> Result<(), WatchError> {
        for event in events {
            match &event.body {
                Body::Governed(g) => {
                    self.passed.insert(g.pid);
                }
                Body::Tracked(t) => {
                    self.passed.insert(t.pid);
                }
                _ => {}
            }
            self.out.send(event)?;
        }
        if let (Some(governor), Some(tracker)) = (&mut self.governor, &mut self.tracker) {
            for pid in governor.take_newly_followed() {
                tracker.track(pid)?;
            }
        }
        Ok(())
    }
}

impl<W: io::Write> Sink for Stream<W> {
    type Error = WatchError;

    /// Events are handled per batch (the backend flushes after each), so
    /// that a batch's execs are governed before the exits queued ahead of
    /// them are reported.
    fn send(&mut self, event: Event) -> Result<(), WatchError> {
        self.pending.push(event);
        if self.pending.len() >= MAX_BATCH {
            self.handle_batch()?;
        }
        Ok(())
    }

    /// Emits the jobs the maker thread has made (their `governed`), then
    /// the exits that were held until their process's job was made.
    fn work(&mut self) -> Result<(), WatchError> {
        let Some(governor) = &mut self.governor else {
            return Ok(());
        };
        let made = governor.take_made();
        if made.is_empty() {
            return Ok(());
        }
        for events in made {
            self.emit_all(events)?;
        }
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
        self.out.flush()
    }

    async fn work_ready(&mut self) {
        match &mut self.governor {
            Some(governor) => governor.wait_made().await,
            None => std::future::pending().await,
        }
    }

    fn flush(&mut self) -> Result<(), WatchError> {
        self.handle_batch()?;
        if let Some(g) = &mut self.governor
            && g.rescan_requested()
        {
            let events = g.scan()?;
            self.emit_all(events)?;
        }
        self.out.flush()
    }
}

/// Events handled at once at most (a bound on memory in a storm).
const MAX_BATCH: usize = 4096;

/// How long a stopping `watch` waits for jobs being made (each takes
/// about a millisecond; the processes are under their limits meanwhile).
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);

impl<W: io::Write> Stream<W> {
    /// On the way out: emits the jobs still being made and the exits held
    /// for them, so that the stream ends with nothing half said.
    async fn finish_in_flight(&mut self) -> Result<(), WatchError> {
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_GRACE;
        while self.governor.as_ref().is_some_and(|g| g.in_flight() > 0) {
            if tokio::time::timeout_at(deadline, self.work_ready())
                .await
                .is_err()
            {
                break;
            }
            self.work()?;
        }
        for exit in std::mem::take(&mut self.held_exits) {
            self.exit(exit)?;
        }
        self.out.flush()
    }

    /// Reports an exit, with its job's report if it was governed.
    fn exit(&mut self, mut event: Event) -> Result<(), WatchError> {
        let Body::Exit(exit) = &mut event.body else {
            return self.out.send(event);
        };
        if let Some(g) = &mut self.governor {
            g.on_exit(exit);
        }
        let reported = self.passed.remove(&exit.pid);
        if self.filter.is_none() || reported || exit.job.is_some() {
            self.out.send(event)?;
        }
        Ok(())
    }

    /// Governs the batch's execs first (a new transcoder must not wait
    /// behind the job reports of exits that arrived just before it), then
    /// writes everything in the order it happened, each `governed` after
    /// its `exec`.
    fn handle_batch(&mut self) -> Result<(), WatchError> {
        let batch = std::mem::take(&mut self.pending);
        let mut follow_ups: Vec<Vec<Event>> = batch
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
                        self.out.send(event)?;
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
                    self.out.send(event)?;
                }
                _ => self.out.send(event)?,
            }
        }
        Ok(())
    }
}

/// The backend `watch` runs, ready to stream.
enum Observer {
    Ebpf(Box<EbpfObserver>),
    /// With the adopted processes' exec events, when `--adopt` was given.
    Procfs(ProcfsObserver, Vec<Event>),
}
