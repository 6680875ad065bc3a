//! `ffrtmp watch`: the daemon's wiring. It loads the policy (a bad one
//! exits 2 before anything starts), makes the governor (`crate::daemon`),
//! starts the backend (`crate::observe::start`) and says which (`started`,
//! and `degraded` when it fell back), builds the outputs (stdout, metrics),
//! then runs the event loop — the backend's next events, jobs made on the
//! maker thread, the stop signals — until SIGINT/SIGTERM.
use std::{
    collections::BTreeSet, io, os::fd::AsFd as _, process::ExitCode, sync::Arc, time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::{WatchArgs, exit};
use crate::{
    daemon::{Governor, Machine, MadeJobs, Stream, notify::Notifier, pressure::PressureWatch},
    errors::chain,
    events::{
        Degraded, Event, EventError, Pressure, Reloaded, SCHEMA_VERSION, Sinks, Source, Started,
        Timestamp,
        file::{LineFile, Reopen, Reopening},
        metrics::Metrics,
        node::process_key,
        queued::{Queue, Queued},
    },
    govern::{
        Context,
        caps::{Caps, Need},
        dynmods, process,
    },
    observe::{self, Backend, ObserveError, Options},
    policy::Policy,
};

/// The scheduler slice the governing thread asks for: shorter than the
/// default (0.75 ms × (1 + log2 CPUs)), so that it preempts a new
/// transcoder's loader instead of waiting for it to sleep, and longer than
/// one governing (~0.3 ms of CPU), so that it is not itself preempted
/// halfway. 0.1 ms (the kernel's minimum) and 1 ms measured worse
/// (docs/BENCHMARKS.md); see [`process::request_slice`].
const GOVERN_SLICE: Duration = Duration::from_micros(500);

pub fn run(args: WatchArgs) -> ExitCode {
    // Bad input exits 2 before anything is loaded or governed.
    let policy = match &args.policy {
        Some(path) => match Policy::load(path) {
            Ok(p) => p,
            Err(e) => return exit::fail(exit::USAGE, &e),
        },
        None => Policy::embedded(),
    };
    for w in &policy.warnings {
        tracing::warn!("{w}");
    }
    if let Some(addr) = args.metrics_addr
        && !addr.ip().is_loopback()
    {
        tracing::warn!(
            "--metrics-addr {addr} is reachable from other hosts: the metrics say what runs on this node; bind a loopback address behind a proxy, or firewall it (docs/OPERATIONS.md)"
        );
    }
    // Opened here: a link or an unwritable file is bad input (exit 2).
    let events_file = match &args.events {
        Some(path) => match Reopening::open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("ffrtmp: error: --events {}: {e}", path.display());
                return ExitCode::from(exit::USAGE);
            }
        },
        None => None,
    };
    let mut notes = Vec::new();
    let mut pressure = None;
    raise_fd_limit();
    presize_fd_table();
    // What `started` says of the daemon (and `ffrtmp_daemon_info`).
    let mut mode_and_layout = None;
    let governor = if args.observe_only {
        None
    } else {
        match Context::detect(args.cgroup_root.as_deref()) {
            Ok(ctx) => {
                mode_and_layout = Some((ctx.mode.as_str(), ctx.layout.kind().as_str()));
                notes.extend(migration_speed(&ctx, args.favordynmods));
                // Its own thread, started before the governing thread asks
                // for its scheduler slice.
                pressure = match PressureWatch::start(ctx.clone()) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        notes.push(Degraded::note(format!(
                            "starting the pressure watch: {e}; no pressure events"
                        )));
                        None
                    }
                };
                let governor = Governor::new(Machine::new(ctx), policy.clone());
                // After the reaper thread started: it must not inherit it.
                match process::request_slice(GOVERN_SLICE) {
                    Ok(slice) => tracing::debug!(?slice, "governing thread's scheduler slice"),
                    Err(e) => tracing::debug!("{}", chain(&e)),
                }
                Some(governor)
            }
            Err(e) if e.is_usage() => return exit::fail(exit::USAGE, &e),
            Err(e) => return exit::fail(exit::FAILURE, &e),
        }
    };
    let rules = policy.governing_rules();
    let (filter, urgent) = names(policy.comm_filter(), args.all, governor.is_some());
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")
        .and_then(|rt| {
            rt.block_on(watch(
                args,
                events_file,
                rules,
                Governing {
                    governor,
                    pressure,
                    mode_and_layout,
                },
                urgent,
                filter,
                notes,
            ))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::fail(exit::FAILURE, e.as_ref()),
    }
}

/// Raises the soft limit on open files to the hard one: the daemon holds a
/// claim per job it follows (docs/OPERATIONS.md, `LimitNOFILE`), and the
/// usual soft limit of 1024 is a few hundred streams on a big node.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("raising the open-files limit from {soft} to {hard}: {e}");
    }
}

/// How many descriptors the daemon's fd table is sized for at start.
const FD_TABLE_AT_START: u64 = 16_384;

/// Grows the kernel's file table now, once, instead of while governing: in
/// a multi-threaded process each growth (at 256, 512, 1024 … open files —
/// the daemon holds one per job) waits for an RCU grace period inside
/// whatever `open` crossed the line. Measured with `bench govern`'s
/// reconnect row: the reading thread stalled 10-16 ms at the 256th and
/// 512th job, and the execs behind it waited as long for their limits.
/// Costs 8 bytes of kernel memory per slot (128 KiB).
fn presize_fd_table() {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};
    let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    else {
        return;
    };
    let Some(slot) = soft.min(FD_TABLE_AT_START).checked_sub(1) else {
        return;
    };
    let Ok(slot) = i32::try_from(slot) else {
        return;
    };
    let stdin = io::stdin();
    match nix::fcntl::fcntl(stdin.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(slot)) {
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing
        // else owns; it is closed at once (the table stays grown).
        Ok(fd) => drop(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) => tracing::debug!("presizing the fd table: {e}"),
    }
}

/// `reason`, naming the capabilities `need` takes if ffrtmp lacks them.
fn with_needs(reason: String, need: Need) -> String {
    if Caps::effective().allows(need) {
        reason
    } else {
        format!(
            "{reason} (it needs {}, which ffrtmp does not have)",
            need.describe()
        )
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
            Err(e) => with_needs(chain(&e).to_string(), Need::Favordynmods),
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

/// What governs (none with `--observe-only`), and the pressure watch.
struct Governing {
    governor: Option<Governor<Machine>>,
    pressure: Option<PressureWatch>,
    /// The mode and the cgroup layout, when it governs.
    mode_and_layout: Option<(&'static str, &'static str)>,
}

async fn watch(
    args: WatchArgs,
    events_file: Option<(Reopening, Reopen)>,
    rules: usize,
    Governing {
        governor,
        mut pressure,
        mode_and_layout,
    }: Governing,
    urgent: BTreeSet<String>,
    filter: Option<BTreeSet<String>>,
    notes: Vec<Degraded>,
) -> anyhow::Result<()> {
    // Register before loading so a signal during start-up is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    // SIGHUP reloads the policy (`systemctl reload`); it never stops `watch`.
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    // Opened now: a ping at the fd limit needs no new descriptor.
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!("$NOTIFY_SOCKET cannot be used ({e}); the service manager is told nothing");
        None
    });
    let governs = governor.is_some();
    let mut reloader = Reloader {
        path: args.policy.clone(),
        all: args.all,
        governs,
        kernel_filters: filter.is_some(),
        rules,
    };
    let options = Options {
        backend: args.backend,
        interval: args.interval,
        adopt: args.adopt,
        ring_buffer_bytes: args.ring_buffer_size,
        urgent_comms: urgent,
        filter: filter.is_some(),
    };
    let reopen = events_file.as_ref().map(|(_, r)| r.clone());
    // The node's identity, read now rather than at the first event.
    crate::events::node::node();
    let (sinks, output_end) = outputs(&args, events_file.map(|(f, _)| f)).await?;
    let mut stream = Stream::new(sinks, governor, None, filter);
    for note in notes {
        stream.emit(&Event::new(Timestamp::now(), Source::Ffrtmp, note))?;
    }
    // Ready before `started`: from that event on, nothing is missed.
    let started = observe::start(&options).map_err(|e| match args.backend {
        Backend::Ebpf => anyhow::Error::new(e).context("loading the eBPF backend (--backend ebpf)"),
        _ => e.into(),
    })?;
    let mut observer = started.observer;
    if let Some(why) = started.fell_back {
        let mut reason = with_needs(format!("eBPF backend unavailable: {why}"), Need::Ebpf);
        if governs {
            reason.push_str(
                "; new processes are found by polling /proc, so governing them is up to one interval late",
            );
        }
        tracing::warn!("{reason}; polling /proc instead");
        stream.emit(&Event::new(
            Timestamp::now(),
            Source::Ffrtmp,
            Degraded {
                limit: None,
                reason,
                fallback: "procfs".into(),
            },
        ))?;
    } else if args.backend == Backend::Procfs && governs {
        stream.emit(&Event::new(
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
    stream.set_exit_filter(observer.take_exit_filter());
    // Start-up, before `started`: the backend is ready first, so a process
    // that starts meanwhile is not missed (it may be seen twice; one
    // already in a job is never governed again).
    stream.start_up()?;
    for event in observer.take_adopted() {
        observe::Consumer::take(&mut stream, event)?;
    }
    observe::Consumer::flush(&mut stream)?;
    stream.emit(&Event::new(
        Timestamp::now(),
        Source::Ffrtmp,
        Started {
            schema: SCHEMA_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            process_key: process_key(
                std::process::id(),
                observe::proc::Stat::read(std::process::id())
                    .ok()
                    .map(|s| s.start_ticks),
            ),
            backend: observer.name().into(),
            mode: mode_and_layout.map(|(mode, _)| mode.into()),
            layout: mode_and_layout.map(|(_, layout)| layout.into()),
        },
    ))?;

    // Ready: the kernel programs are attached and the start-up scan done.
    let observer_name = observer.name();
    let status = |stream: &Stream<Governor<Machine>, Sinks<'static>>| {
        format!(
            "backend {observer_name}, {} processes followed in their jobs",
            stream.followed()
        )
    };
    if let Some(n) = &notifier {
        n.ready(&status(&stream));
    }
    // The watchdog is kept by this loop itself: a loop that stops turning
    // stops the pings, and systemd restarts the daemon.
    let mut pings = notifier
        .as_ref()
        .and_then(Notifier::ping_every)
        .map(|every| {
            let mut pings = tokio::time::interval(every);
            // After a stall, one ping, not a burst of the missed ones.
            pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            pings
        });

    let mut made = stream.take_made_jobs();
    let stop = async {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    };
    let mut stop = std::pin::pin!(stop);
    let result = async {
        loop {
            let next_retry = stream.next_retry();
            tokio::select! {
                // In this order: a new exec is governed before the jobs
                // made meanwhile are reported (their processes are under
                // their rules' limits already).
                biased;
                () = &mut stop => break,
                _ = sighup.recv() => {
                    if let Some(n) = &notifier {
                        n.reloading();
                    }
                    // logrotate's postrotate: the events file by its name.
                    if let Some(r) = &reopen {
                        r.request();
                    }
                    reloader.reload(&mut stream, observer.as_mut())?;
                    if let Some(n) = &notifier {
                        n.ready(&status(&stream));
                    }
                }
                // Before the observer: a storm must not starve the watchdog.
                () = ping_due(pings.as_mut()) => {
                    if let Some(n) = &notifier {
                        n.ping();
                        n.status(&status(&stream));
                    }
                }
                // Only with --exit-on-output-loss: the flush says why.
                () = output_ended(output_end.as_deref()) => observe::Consumer::flush(&mut stream)?,
                r = std::future::poll_fn(|cx| observer.poll_step(cx, &mut stream)) => r?,
                () = due(next_retry) => stream.retry()?,
                p = next_pressure(pressure.as_mut()) => match p {
                    Some(p) => stream.emit(&Event::new(Timestamp::now(), Source::Ffrtmp, p))?,
                    None => pressure = None, // its thread ended
                },
                m = next_made(&mut made) => {
                    let stopped = m.is_none();
                    let more = made.as_mut().filter(|_| !stopped).map(|rx| {
                        std::iter::from_fn(|| rx.try_recv().ok()).collect::<Vec<_>>()
                    });
                    stream.made(m, more.into_iter().flatten())?;
                    if stopped {
                        made = None;
                    }
                }
            }
        }
        if let Some(n) = &notifier {
            n.stopping();
        }
        observer.drain(&mut stream)?;
        stream.finish(made.as_mut()).await
    }
    .await;
    match result {
        // With --exit-on-output-loss, a closed stdout (`| head`) ends
        // the stream, not in error.
        Err(ObserveError::Event(EventError::Write(e))) if e.kind() == io::ErrorKind::BrokenPipe => {
            Ok(())
        }
        other => other.context("watching processes"),
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

/// From the names a policy governs (`None`: any), the names the stream
/// passes (`None`: all, with `--all`) and those the backend wakes at once
/// for (and, when filtering, the only ones the kernel passes): with
/// `--observe-only` and `--all`, none is urgent.
fn names(
    comms: Option<BTreeSet<String>>,
    all: bool,
    governs: bool,
) -> (Option<BTreeSet<String>>, BTreeSet<String>) {
    let filter = if all { None } else { comms.clone() };
    let urgent = filter
        .clone()
        .or(comms.filter(|_| governs))
        .unwrap_or_default();
    (filter, urgent)
}

/// What a reload (SIGHUP) needs to know of how `watch` started.
struct Reloader {
    /// `--policy`; `None`: the embedded policy, which a reload re-applies.
    path: Option<std::path::PathBuf>,
    all: bool,
    governs: bool,
    /// The kernel passes only the policy's names (no `--all`, and every
    /// governing rule named its comm at start).
    kernel_filters: bool,
    /// Rules governing now.
    rules: usize,
}

impl Reloader {
    /// Reads the policy again and, if it is valid and can be applied while
    /// running, puts it in force for processes that start from now on: the
    /// names the kernel passes first, then the stream's filter and the
    /// governor's rules. A `policy` event says what happened; a bad file
    /// keeps the running policy (and `watch` running).
    fn reload(
        &mut self,
        stream: &mut Stream<Governor<Machine>, Sinks<'static>>,
        observer: &mut dyn observe::Observer,
    ) -> Result<(), ObserveError> {
        let loaded = match &self.path {
            Some(path) => Policy::load(path).map_err(|e| chain(&e).to_string()),
            None => Ok(Policy::embedded()),
        };
        let checked = loaded.and_then(|policy| {
            let comms = policy.comm_filter();
            if self.kernel_filters && comms.is_none() {
                return Err("a governing rule names no comm, so every exec would have to reach user space: the kernel's pre-filter cannot be widened while running; restart `watch` to apply this policy".to_string());
            }
            let (filter, urgent) = names(comms, self.all, self.governs);
            observer
                .set_comms(&urgent)
                .map_err(|e| chain(&e).to_string())?;
            Ok((policy, filter))
        });
        let path = self.path.as_ref().map(|p| p.display().to_string());
        let event = match checked {
            Ok((policy, filter)) => {
                for w in &policy.warnings {
                    tracing::warn!("{w}");
                }
                self.rules = policy.governing_rules();
                stream.reload(policy, filter)?;
                tracing::info!("policy reloaded: {} governing rules", self.rules);
                Reloaded {
                    path,
                    applied: true,
                    rules: self.rules,
                    error: None,
                }
            }
            Err(error) => {
                tracing::warn!("policy not reloaded, the running one stays: {error}");
                Reloaded {
                    path,
                    applied: false,
                    rules: self.rules,
                    error: Some(error),
                }
            }
        };
        stream.emit(&Event::new(Timestamp::now(), Source::Ffrtmp, event))
    }
}

/// When the next retry is due; never, without one.
/// The next `pressure` event; never without a pressure watch.
async fn next_pressure(watch: Option<&mut PressureWatch>) -> Option<Pressure> {
    match watch {
        Some(w) => w.events.recv().await,
        None => std::future::pending().await,
    }
}

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

/// The outputs of the stream, in order: stdout (behind a queue, so that a
/// slow reader costs events, never governing), then the metrics when
/// `--metrics-addr` serves them. A new output is one more `push` here.
/// With `--exit-on-output-loss`, also what tells that stdout ended.
async fn outputs(
    args: &WatchArgs,
    events_file: Option<Reopening>,
) -> anyhow::Result<(Sinks<'static>, Option<Arc<tokio::sync::Notify>>)> {
    let mut sinks = Sinks::default();
    // Whole lines only when stdout is a file (`watch > events.jsonl`).
    let stdout: Box<dyn io::Write + Send> = match events_file {
        Some(file) => Box::new(file),
        None => match io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| LineFile::new(fd.into()))
        {
            Ok(file) => Box::new(file),
            // Not open at all: governing goes on, unheard.
            Err(e) => {
                tracing::warn!("stdout ({e}): events are not written");
                Box::new(io::sink())
            }
        },
    };
    let queue = Queue::spawn("ffrtmp-out", stdout, args.output_buffer)
        .context("starting the output thread")?;
    let end = args.exit_on_output_loss.then(|| queue.on_end());
    let queued = Queued::new(queue, args.format, args.exit_on_output_loss);
    let output_losses = queued.losses();
    sinks.push(queued);
    if let Some(addr) = args.metrics_addr {
        let metrics = Metrics::new(crate::observe::proc::own_usage);
        metrics.count_output_losses(output_losses);
        tokio::spawn(metrics.clone().serve(addr).await?);
        sinks.push(metrics);
    }
    Ok((sinks, end))
}
