//! `ffrtmp watch`: the daemon's wiring. It loads the policy (a bad one
//! exits 2 before anything starts), makes the governor and the pressure
//! watch (`crate::daemon`), builds the outputs (stdout behind a queue, the
//! metrics), then hands all of it to the daemon's event loop
//! (`daemon::run`) until SIGINT/SIGTERM.
use std::{io, os::fd::AsFd as _, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;

use super::{WatchArgs, exit};
use crate::{
    daemon::{
        Governor, Machine,
        pressure::PressureWatch,
        reload::names,
        run::{Daemon, Signals, with_needs},
    },
    errors::chain,
    events::{
        CgroupLayout, Degraded, Fallback, Mode, Sinks,
        file::{LineFile, Reopen, Reopening},
        metrics::Metrics,
        queued::{Queue, Queued},
    },
    govern::{Context, caps::Need, dynmods, process},
    observe::Options,
    policy::Policy,
};

/// The scheduler slice the governing thread asks for: shorter than the
/// default (0.75 ms × (1 + log2 CPUs)), so that it preempts a new
/// transcoder's loader instead of waiting for it to sleep, and longer than
/// one governing (~0.3 ms of CPU), so that it is not itself preempted
/// halfway. 0.1 ms (the kernel's minimum) and 1 ms measured worse
/// (docs/BENCHMARKS.md); see [`process::request_slice`].
const GOVERN_SLICE: Duration = Duration::from_micros(500);

pub(super) fn run(args: WatchArgs) -> ExitCode {
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
    raise_fd_limit();
    presize_fd_table();
    let Governing {
        governor,
        pressure,
        mode_and_layout,
    } = match governing(&args, &policy, &mut notes) {
        Ok(g) => g,
        Err(code) => return code,
    };
    let rules = policy.governing_rules();
    let (filter, urgent) = names(policy.comm_filter(), args.all, governor.is_some());
    let daemon = Daemon {
        options: Options {
            backend: args.backend,
            interval: args.interval,
            adopt: args.adopt,
            ring_buffer_bytes: args.ring_buffer_size,
            urgent_comms: urgent,
            filter: filter.is_some(),
        },
        filter,
        policy_path: args.policy.clone(),
        all: args.all,
        rules,
        governor,
        pressure,
        mode_and_layout,
        notes,
        reopen: events_file.as_ref().map(|(_, r)| r.clone()),
        output_end: None,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")
        .and_then(|rt| rt.block_on(watch(&args, events_file, daemon)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::fail(exit::FAILURE, e.as_ref()),
    }
}

/// What governs (nothing with `--observe-only`), the pressure watch, and
/// what `started` says of the daemon (and `ffrtmp_daemon_info`): the mode
/// and the cgroup layout. A cgroup root that cannot be used exits 2.
struct Governing {
    governor: Option<Governor<Machine>>,
    pressure: Option<PressureWatch>,
    mode_and_layout: Option<(Mode, CgroupLayout)>,
}

fn governing(
    args: &WatchArgs,
    policy: &Policy,
    notes: &mut Vec<Degraded>,
) -> Result<Governing, ExitCode> {
    if args.observe_only {
        return Ok(Governing {
            governor: None,
            pressure: None,
            mode_and_layout: None,
        });
    }
    let ctx = match Context::detect(args.cgroup_root.as_deref()) {
        Ok(ctx) => ctx,
        Err(e) if e.is_usage() => return Err(exit::fail(exit::USAGE, &e)),
        Err(e) => return Err(exit::fail(exit::FAILURE, &e)),
    };
    let mode_and_layout = Some((ctx.mode, ctx.layout.kind()));
    notes.extend(migration_speed(&ctx, args.favordynmods));
    // Its own thread, started before the governing thread asks for its
    // scheduler slice.
    let pressure = match PressureWatch::start(ctx.clone()) {
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
    Ok(Governing {
        governor: Some(governor),
        pressure,
        mode_and_layout,
    })
}

/// Signals first (one during start-up is not lost), the node's identity,
/// the outputs, then the daemon.
async fn watch(
    args: &WatchArgs,
    events_file: Option<(Reopening, Reopen)>,
    mut daemon: Daemon,
) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    // The node's identity, read now rather than at the first event.
    crate::events::node::node();
    let (sinks, output_end) = outputs(args, events_file.map(|(f, _)| f)).await?;
    daemon.output_end = output_end;
    crate::daemon::run::run(daemon, sinks, signals).await
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
        fallback: Fallback::SlowMigrations,
    })
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
