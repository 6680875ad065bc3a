//! The eBPF backend: loads the kernel programs (`ffrtmp-ebpf`), attaches them
//! to the `sched_process_exec` and `sched_process_exit` raw tracepoints, and
//! turns ring-buffer records into events.
//!
//! Loading needs the kernel's BTF (for [`btf::kernel_offsets`]) and the
//! privilege to load tracing programs; any failure is returned as an
//! [`EbpfError`] so the caller can fall back to procfs and say why.
//!
//! Loss is counted in the kernel (a per-CPU counter of ring-buffer
//! reservation failures) and reported as `lost` events with the increase
//! since the last report.
pub mod btf;
pub mod record;

use std::{
    collections::BTreeSet,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use ffrtmp_common::{
    COMMS_MAP, COMMS_MAX, EVENTS_MAP, EXEC_PROGRAM, EXIT_PROGRAM, FILTER_GLOBAL, LOST_MAP,
    OFFSETS_GLOBAL, SELF_TGID_GLOBAL, TASK_COMM_LEN, TRACKED_MAP, WAKE_COALESCE_NS,
};
use tokio::io::unix::AsyncFd;

use super::{Consumer, ExitFilter, ObserveError, Observer, Options, proc::ProcError};
use crate::events::{Event, Lost, LostReason, Source, Timestamp};

/// The compiled kernel programs, built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ffrtmp"));

/// Whether this binary was built without its kernel programs
/// (`FFRTMP_SKIP_EBPF=1`; it can only poll /proc).
pub fn kernel_programs_missing() -> bool {
    EBPF_OBJECT.is_empty()
}

/// Default ring buffer size: about 390 exec records in flight, far more than
/// arrive in one wake-up window at this machine's maximum exec rate; mapped
/// twice by the consumer, so it counts double in RSS.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 512 * 1024;
/// How often the kernel's loss counter is read: a lost exec is governed by
/// the /proc scan that a loss triggers, so this bounds how long it waits
/// (the daemon promises its limits within 1 s; reading it once a second missed that
/// under `cargo xtask soak`). Reading it costs one map lookup per CPU.
const LOST_POLL: Duration = Duration::from_millis(250);

/// Errors of the eBPF backend.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "this binary was built without its kernel programs (FFRTMP_SKIP_EBPF=1); build it with `cargo xtask build`"
    )]
    NotBuilt,
    #[error("resolving kernel struct offsets from BTF")]
    Btf(#[from] btf::BtfError),
    #[error("loading the kernel programs")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the kernel object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("loading or attaching program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("opening map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer with the event loop")]
    Poll(#[source] std::io::Error),
    #[error("the pre-filter holds at most {COMMS_MAX} process names, not {0}")]
    TooManyComms(usize),
    #[error("process name {0:?} is longer than the kernel's {max} bytes", max = TASK_COMM_LEN - 1)]
    CommTooLong(String),
    #[error("scanning /proc for running processes (--adopt)")]
    Adopt(#[source] ProcError),
    #[error("updating map `{name}`")]
    Update {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Adds processes to the kernel's exit filter (those user space follows
/// without their exec having passed the filter: adopted and recovered).
pub struct Tracker(HashMap<MapData, u32, u8>);

impl ExitFilter for Tracker {
    fn follow(&mut self, pid: u32) -> Result<(), ObserveError> {
        self.0
            .insert(pid, 1, 0)
            .map_err(|source| EbpfError::Update {
                name: TRACKED_MAP,
                source,
            })
            .map_err(ObserveError::from)
    }
}

impl Observer for EbpfObserver {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    /// New names go in before old ones go out: an exec of a name in both
    /// policies is never dropped meanwhile.
    fn set_comms(&mut self, comms: &BTreeSet<String>) -> Result<(), ObserveError> {
        let keys = comm_keys(comms)?;
        let mut map = comms_map(&mut self.ebpf)?;
        let old: Vec<[u8; TASK_COMM_LEN]> = map.keys().filter_map(Result::ok).collect();
        insert_comms(&mut map, &keys)?;
        for key in old.iter().filter(|k| !keys.contains(k)) {
            map.remove(key).map_err(|source| EbpfError::Update {
                name: COMMS_MAP,
                source,
            })?;
        }
        Ok(())
    }

    /// The kernel coalesces wake-ups ([`WAKE_COALESCE_NS`]); so after each
    /// wake-up we keep polling every window until a poll at least one window
    /// after the last wake-up finds the ring empty. Idle, nothing runs but
    /// the loss check (`LOST_POLL`, 250 ms). The loss check comes first: behind a
    /// ring that stays busy (a daemon continued after a stop, its ring
    /// overflowing) it waited ~0.9 s under `cargo xtask soak`, and the
    /// execs it lost waited as long for the rescan that governs them.
    fn poll_step(
        &mut self,
        cx: &mut std::task::Context<'_>,
        to: &mut dyn Consumer,
    ) -> std::task::Poll<Result<(), ObserveError>> {
        use std::{future::Future as _, task::Poll};
        let window = Duration::from_nanos(WAKE_COALESCE_NS);
        if self.lost_tick.poll_tick(cx).is_ready() {
            self.report_lost(to)?;
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(guard) = self.events.poll_read_ready_mut(cx) {
            let mut guard = guard.map_err(EbpfError::Poll)?;
            guard.clear_ready();
            self.last_wake = Instant::now();
            self.polling = true;
            self.window
                .as_mut()
                .reset(tokio::time::Instant::now() + window);
            Self::consume(guard.get_inner_mut(), to)?;
            return Poll::Ready(Ok(()));
        }
        if self.polling && self.window.as_mut().poll(cx).is_ready() {
            let n = Self::consume(self.events.get_mut(), to)?;
            self.polling = n > 0 || self.last_wake.elapsed() < window;
            self.window
                .as_mut()
                .reset(tokio::time::Instant::now() + window);
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    /// Delivers what is left in the ring and the final loss count.
    fn drain(&mut self, to: &mut dyn Consumer) -> Result<(), ObserveError> {
        Self::consume(self.events.get_mut(), to)?;
        self.report_lost(to)
    }

    fn take_adopted(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.adopted)
    }

    /// With the kernel's pre-filter on ([`Options::filter`]).
    fn take_exit_filter(&mut self) -> Option<Box<dyn ExitFilter>> {
        self.tracker
            .take()
            .map(|t| Box::new(t) as Box<dyn ExitFilter>)
    }
}

/// Loaded and attached kernel programs. Dropping it detaches them.
pub struct EbpfObserver {
    // Field order is drop order: maps first, then the programs' owner.
    events: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    lost_reported: u64,
    /// Read every [`LOST_POLL`].
    lost_tick: tokio::time::Interval,
    /// Polling after a wake-up, every `window` (see `poll_step`).
    polling: bool,
    window: std::pin::Pin<Box<tokio::time::Sleep>>,
    last_wake: Instant,
    tracker: Option<Tracker>,
    adopted: Vec<Event>,
    /// The programs' owner (it keeps them attached); its comm list is
    /// updated on a policy reload ([`Observer::set_comms`]).
    ebpf: aya::Ebpf,
}

impl EbpfObserver {
    /// Loads and attaches the programs; with `adopt`, then scans /proc for
    /// what already runs. Must be called inside a tokio runtime (the ring
    /// buffer is registered with its reactor).
    pub fn start(options: &Options) -> Result<Self, EbpfError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let offsets = btf::kernel_offsets()?;
        let keys = comm_keys(&options.urgent_comms)?;
        raise_memlock_limit();
        let self_tgid = std::process::id();
        let filter = u32::from(options.filter);
        let mut ebpf = EbpfLoader::new()
            // No CO-RE relocations to apply (offsets come from `btf`).
            .btf(None)
            .override_global(SELF_TGID_GLOBAL, &self_tgid, true)
            .override_global(OFFSETS_GLOBAL, &offsets, true)
            .override_global(FILTER_GLOBAL, &filter, true)
            .map_max_entries(EVENTS_MAP, options.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(EbpfError::Load)?;
        // The names go in before the programs attach: no exec slips through
        // an empty filter.
        if !keys.is_empty() {
            insert_comms(&mut comms_map(&mut ebpf)?, &keys)?;
        }
        for name in [EXEC_PROGRAM, EXIT_PROGRAM] {
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram(name))?
                .try_into()
                .map_err(|source| EbpfError::Program { name, source })?;
            program
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
            // The program name is the tracepoint name.
            program
                .attach(name)
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        let events = ebpf
            .take_map(EVENTS_MAP)
            .ok_or(EbpfError::MissingMap(EVENTS_MAP))?;
        let events = RingBuf::try_from(events).map_err(|source| EbpfError::Map {
            name: EVENTS_MAP,
            source,
        })?;
        let lost = ebpf
            .take_map(LOST_MAP)
            .ok_or(EbpfError::MissingMap(LOST_MAP))?;
        let lost = PerCpuArray::try_from(lost).map_err(|source| EbpfError::Map {
            name: LOST_MAP,
            source,
        })?;
        let tracked = ebpf
            .take_map(TRACKED_MAP)
            .ok_or(EbpfError::MissingMap(TRACKED_MAP))?;
        let tracker = Tracker(HashMap::try_from(tracked).map_err(|source| EbpfError::Map {
            name: TRACKED_MAP,
            source,
        })?);
        tracing::debug!(
            fd = events.as_raw_fd(),
            ?offsets,
            "kernel programs attached"
        );
        release_freed_heap();
        // After the programs attached: a process that starts during the
        // scan is seen (perhaps twice; once adopted).
        let adopted = if options.adopt {
            super::procfs::running(true).map_err(EbpfError::Adopt)?
        } else {
            Vec::new()
        };
        Ok(Self {
            // SAFETY: the RingBuf owns the fd and moves into the AsyncFd,
            // so the fd stays open for as long as it is registered.
            events: unsafe { AsyncFd::register(events) }
                .map_err(|e| EbpfError::Poll(e.into_parts().1))?,
            lost,
            lost_reported: 0,
            lost_tick: tokio::time::interval(LOST_POLL),
            polling: false,
            window: Box::pin(tokio::time::sleep(Duration::from_nanos(WAKE_COALESCE_NS))),
            last_wake: Instant::now(),
            tracker: (options.filter).then_some(tracker),
            adopted,
            ebpf,
        })
    }

    /// Decodes every record in the ring, then flushes; returns how many.
    fn consume(ring: &mut RingBuf<MapData>, to: &mut dyn Consumer) -> Result<usize, ObserveError> {
        let mut n = 0;
        while let Some(item) = ring.next() {
            n += 1;
            match record::decode(&item) {
                Ok(event) => to.take(event)?,
                // A record we cannot read is a bug on one side; say so and
                // keep observing rather than stop the stream.
                Err(e) => tracing::error!(error = %e, "dropping an undecodable kernel record"),
            }
        }
        if n > 0 {
            to.flush()?;
        }
        Ok(n)
    }

    fn report_lost(&mut self, to: &mut dyn Consumer) -> Result<(), ObserveError> {
        let total: u64 = match self.lost.get(&0, 0) {
            Ok(per_cpu) => per_cpu.iter().sum(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kernel's loss counter");
                return Ok(());
            }
        };
        if total > self.lost_reported {
            let count = total - self.lost_reported;
            self.lost_reported = total;
            to.take(Event::new(
                Timestamp::now(),
                Source::Ebpf,
                Lost {
                    count,
                    reason: LostReason::Ring,
                },
            ))?;
            to.flush()?;
        }
        Ok(())
    }
}

/// The pre-filter's keys: each name NUL-padded as the kernel's `comm`.
/// The kernel's list of names (filter and urgent wake-ups).
fn comms_map(
    ebpf: &mut aya::Ebpf,
) -> Result<HashMap<&mut MapData, [u8; TASK_COMM_LEN], u8>, EbpfError> {
    let map = ebpf
        .map_mut(COMMS_MAP)
        .ok_or(EbpfError::MissingMap(COMMS_MAP))?;
    HashMap::try_from(map).map_err(|source| EbpfError::Map {
        name: COMMS_MAP,
        source,
    })
}

fn insert_comms(
    map: &mut HashMap<&mut MapData, [u8; TASK_COMM_LEN], u8>,
    keys: &[[u8; TASK_COMM_LEN]],
) -> Result<(), EbpfError> {
    for key in keys {
        map.insert(key, 1, 0).map_err(|source| EbpfError::Update {
            name: COMMS_MAP,
            source,
        })?;
    }
    Ok(())
}

fn comm_keys(comms: &BTreeSet<String>) -> Result<Vec<[u8; TASK_COMM_LEN]>, EbpfError> {
    if comms.len() > COMMS_MAX as usize {
        return Err(EbpfError::TooManyComms(comms.len()));
    }
    comms
        .iter()
        .map(|c| {
            let mut key = [0u8; TASK_COMM_LEN];
            if c.is_empty() || c.len() >= TASK_COMM_LEN {
                return Err(EbpfError::CommTooLong(c.clone()));
            }
            key[..c.len()].copy_from_slice(c.as_bytes());
            Ok(key)
        })
        .collect()
}

/// aya's loader parses the kernel's whole BTF (~20 MB of heap) in
/// `EbpfLoader::new`, even though we apply no relocations; hand the freed
/// memory back to the system rather than keep it for the daemon's lifetime.
/// glibc needs asking; musl's allocator, which the shipped binary's `watch`
/// uses (`crate::alloc`), gives it back by itself.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so that
/// loading works there too (later kernels use memory cgroup accounting).
fn raise_memlock_limit() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK");
    }
}
