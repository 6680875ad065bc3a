//! How the daemon learned of a process it considers (the kernel's exec
//! record, a /proc scan, the procfs backend), and the clocks that say how
//! long after its exec it was governed. Where the process itself came
//! from (its unit) is `govern::scope::Origin`.
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// How a candidate was seen.
#[derive(Clone, Copy, Debug)]
pub(super) enum Seen {
    /// An eBPF exec: its kernel time, and the process's start (ticks).
    Kernel {
        ktime_ns: u64,
        start_ticks: Option<u64>,
    },
    /// A /proc scan (adoption, rescan), with the start time it read.
    Scan(u64),
    /// The procfs backend's exec (found by polling).
    Polled,
}

impl Seen {
    /// µs since the kernel saw the exec (eBPF only).
    pub(super) fn since_exec_us(self) -> Option<u64> {
        match self {
            Seen::Kernel { ktime_ns, .. } => monotonic_ns()
                .and_then(|now| now.checked_sub(ktime_ns))
                .map(|ns| ns / 1_000),
            _ => None,
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel programs' timestamps.
pub(super) fn monotonic_ns() -> Option<u64> {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
    let d = Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    );
    u64::try_from(d.as_nanos()).ok()
}
