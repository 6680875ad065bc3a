//! Observation backends: where `exec` and `exit` events come from.
//!
//! - [`ebpf`]: kernel programs on the `sched_process_exec`/`sched_process_exit`
//!   tracepoints; sees every process the instant it starts. Needs privilege
//!   and BTF.
//! - [`procfs`]: polling /proc; works anywhere, sees less (see its docs).
//! - [`proc`]: /proc readers shared by procfs polling and adoption.
//!
//! A backend is an [`Observer`]: [`start`] makes the one `--backend` asks
//! for (`auto` tries eBPF and falls back to procfs, saying why), and `watch`
//! then polls [`Observer::poll_step`] in its event loop, which hands what the
//! backend saw to a [`Consumer`] (the daemon's stream). A new backend is one
//! new file with an `Observer` impl and one arm in [`start`].
pub mod ebpf;
pub mod proc;
pub(crate) mod procfs;

use std::{
    collections::BTreeSet,
    task::{Context, Poll},
    time::Duration,
};

use crate::{
    errors::chain,
    events::{Event, EventError},
};
use ebpf::EbpfError;
use proc::ProcError;

/// Which backend `watch` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// eBPF when it can be loaded, else procfs (with a `degraded` event).
    Auto,
    /// eBPF only; fail if it cannot be loaded.
    Ebpf,
    /// Poll /proc.
    Procfs,
}

/// Why observing stopped: a backend failed, or its consumer did.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("reading /proc")]
    Proc(#[from] ProcError),
}

/// What a backend hands its events to.
pub trait Consumer {
    /// Takes one event (it may be held until `flush`).
    fn take(&mut self, event: Event) -> Result<(), ObserveError>;
    /// The backend is about to wait: everything taken must go out now.
    fn flush(&mut self) -> Result<(), ObserveError>;
}

/// An observation backend, started and ready (it has seen everything since
/// [`start`] returned).
pub trait Observer {
    /// Its name, as `started.backend` reports it (`ebpf`, `procfs`).
    fn name(&self) -> &'static str;

    /// One step, polled: when the backend has something (events, a timer
    /// of its own), hands it to `to`, flushes it and is ready; else
    /// registers `cx` to be woken. A poll function rather than a future, so
    /// that the event loop (`std::future::poll_fn`) allocates nothing per
    /// step: a boxed future per wake-up cost the daemon's first move
    /// (docs/BENCHMARKS.md). What was not handed over stays for the next.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut dyn Consumer,
    ) -> Poll<Result<(), ObserveError>>;

    /// On the way out: hands over what is left.
    fn drain(&mut self, to: &mut dyn Consumer) -> Result<(), ObserveError> {
        let _ = to;
        Ok(())
    }

    /// With [`Options::adopt`]: the processes that ran at start, as `exec`
    /// events with `adopted` (once).
    fn take_adopted(&mut self) -> Vec<Event> {
        Vec::new()
    }

    /// The backend's exit filter, when it has one (once): it reports only
    /// exits of processes whose exec it passed, and of those it is told of.
    fn take_exit_filter(&mut self) -> Option<Box<dyn ExitFilter>> {
        None
    }

    /// A reloaded policy's names ([`Options::urgent_comms`]): from now on
    /// the backend wakes for (and, when it filters, passes) these. A
    /// backend without a kernel-side list has nothing to do.
    fn set_comms(&mut self, comms: &BTreeSet<String>) -> Result<(), ObserveError> {
        let _ = comms;
        Ok(())
    }
}

/// Tells a backend's exit filter of a process followed without its exec
/// having passed the filter (adopted, recovered from the cgroup tree).
pub trait ExitFilter {
    fn follow(&mut self, pid: u32) -> Result<(), ObserveError>;
}

/// What `watch` asks of its backend.
#[derive(Clone, Debug)]
pub struct Options {
    pub backend: Backend,
    /// The procfs backend's polling interval.
    pub interval: Duration,
    /// Report the processes running at start ([`Observer::take_adopted`]).
    pub adopt: bool,
    /// The eBPF ring buffer's size in bytes.
    pub ring_buffer_bytes: u32,
    /// Process names the policy governs: their execs wake user space at
    /// once, bypassing wake-up coalescing.
    pub urgent_comms: BTreeSet<String>,
    /// Send only execs of the urgent names (and the exits of their
    /// processes); else everything.
    pub filter: bool,
}

/// A started backend, and why it is not the one asked for (`auto` fell
/// back to procfs: the error chain of the eBPF load).
pub struct Started {
    pub observer: Box<dyn Observer>,
    pub fell_back: Option<String>,
}

/// Starts the backend `options` ask for. Must be called inside a tokio
/// runtime (a backend may register with its reactor).
pub fn start(options: &Options) -> Result<Started, ObserveError> {
    let started = |observer: Box<dyn Observer>| Started {
        observer,
        fell_back: None,
    };
    match options.backend {
        Backend::Ebpf => Ok(started(Box::new(ebpf::EbpfObserver::start(options)?))),
        Backend::Procfs => Ok(started(Box::new(procfs::ProcfsObserver::start(options)?))),
        Backend::Auto => match ebpf::EbpfObserver::start(options) {
            Ok(o) => Ok(started(Box::new(o))),
            Err(e) => Ok(Started {
                observer: Box::new(procfs::ProcfsObserver::start(options)?),
                fell_back: Some(chain(&e).to_string()),
            }),
        },
    }
}
