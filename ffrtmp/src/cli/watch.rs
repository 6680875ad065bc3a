//! `ffrtmp watch`: chooses a backend, reports what it chose (`started`, and
//! `degraded` when it fell back), adopts running processes on request, and
//! streams events until SIGINT/SIGTERM.
use std::io;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::WatchArgs;
use crate::{
    events::{
        Degraded, Emitter, Event, EventError, SCHEMA_VERSION, Sink, Source, Started, Timestamp,
    },
    observe::{
        Backend,
        ebpf::{EbpfError, EbpfObserver},
        proc::ProcError,
        procfs::ProcfsObserver,
    },
};

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

pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(watch(args))
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let mut sink = Output(Emitter::new(io::stdout().lock(), args.format));
    // Register before loading so a signal during start-up is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    let ebpf = match args.backend {
        Backend::Procfs => None,
        Backend::Ebpf => Some(
            EbpfObserver::load(args.ring_buffer_size)
                .context("loading the eBPF backend (--backend ebpf)")?,
        ),
        Backend::Auto => match EbpfObserver::load(args.ring_buffer_size) {
            Ok(o) => Some(o),
            Err(e) => {
                let reason = format!("eBPF backend unavailable: {:#}", anyhow::Error::new(e));
                tracing::warn!("{reason}; polling /proc instead");
                sink.emit(Event::new(
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
    // Ready before `started`: from that event on, nothing is missed.
    let observer = match ebpf {
        Some(observer) => Observer::Ebpf(observer),
        None => {
            let (observer, adopted) = ProcfsObserver::start(args.interval, args.adopt)?;
            Observer::Procfs(observer, adopted)
        }
    };
    let backend = match observer {
        Observer::Ebpf(_) => Source::Ebpf,
        Observer::Procfs(..) => Source::Procfs,
    };
    sink.emit(Event::new(
        Timestamp::now(),
        Source::Ffrtmp,
        Started {
            schema: SCHEMA_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            backend,
        },
    ))?;

    let result = match observer {
        Observer::Ebpf(mut observer) => {
            // Programs are attached first, so nothing that starts during the
            // scan is missed (it may be reported twice, once adopted).
            if args.adopt {
                let (_, adopted) = ProcfsObserver::start(args.interval, true)?;
                for event in adopted {
                    sink.send(event)?;
                }
                sink.flush()?;
            }
            let result = tokio::select! {
                r = observer.run(&mut sink) => r,
                _ = sigint.recv() => Ok(()),
                _ = sigterm.recv() => Ok(()),
            };
            result.and_then(|()| observer.drain(&mut sink))
        }
        Observer::Procfs(mut observer, adopted) => {
            for event in adopted {
                sink.send(event)?;
            }
            sink.flush()?;
            tokio::select! {
                r = observer.run(&mut sink) => r,
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

/// The event stream on stdout, with errors in `watch`'s terms.
struct Output<W: io::Write>(Emitter<W>);

impl<W: io::Write> Sink for Output<W> {
    type Error = WatchError;

    fn send(&mut self, event: Event) -> Result<(), WatchError> {
        Ok(self.0.send(event)?)
    }

    fn flush(&mut self) -> Result<(), WatchError> {
        Ok(self.0.flush()?)
    }
}

/// The backend `watch` runs, ready to stream.
enum Observer {
    Ebpf(EbpfObserver),
    /// With the adopted processes' exec events, when `--adopt` was given.
    Procfs(ProcfsObserver, Vec<Event>),
}
