//! Staged processes whose own job could not be made (the fd limit, a lock
//! held too long, systemd not answering): they stay under their rule's
//! limits in staging and are tried again with a growing pause, parked
//! without their pidfd meanwhile (waiting costs no descriptor).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::host::Parked;

/// The first pause before a staged process's job is tried again, doubled
/// after each failure up to [`RETRY_MAX`]: the causes (the fd limit, a
/// stuck lock holder) pass in seconds or last, and a retry costs a job's
/// worth of system calls.
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(1);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(8);

/// The parked processes, by pid, with when each is due.
#[derive(Default)]
pub(super) struct Waiting {
    parked: HashMap<u32, (Instant, Parked)>,
}

impl Waiting {
    /// Parks `parked` after a failed try: due after the pause its number
    /// of earlier tries calls for.
    pub(super) fn park(&mut self, parked: Parked, now: Instant) {
        let pause = pause_after(parked.attempts);
        self.parked.insert(parked.pid, (now + pause, parked));
    }

    /// Parks `parked` to be tried at `due`, whatever its tries.
    pub(super) fn park_until(&mut self, parked: Parked, due: Instant) {
        self.parked.insert(parked.pid, (due, parked));
    }

    /// A try worked: its cause has passed, so every process waiting is
    /// tried now, not after a pause of up to [`RETRY_MAX`].
    pub(super) fn all_due(&mut self, now: Instant) {
        for (due, _) in self.parked.values_mut() {
            *due = (*due).min(now);
        }
    }

    /// Takes the processes due at `now`.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Parked> {
        let due: Vec<u32> = self
            .parked
            .iter()
            .filter(|(_, (when, _))| *when <= now)
            .map(|(pid, _)| *pid)
            .collect();
        due.into_iter()
            .filter_map(|pid| self.parked.remove(&pid).map(|(_, p)| p))
            .collect()
    }

    /// When the next one is due.
    pub(super) fn next(&self) -> Option<Instant> {
        self.parked.values().map(|(due, _)| *due).min()
    }

    pub(super) fn contains(&self, pid: u32) -> bool {
        self.parked.contains_key(&pid)
    }

    /// `pid` ended: nothing to try any more.
    pub(super) fn remove(&mut self, pid: u32) {
        self.parked.remove(&pid);
    }
}

/// The pause after `attempts` earlier tries: 1 s, 2 s, 4 s, then 8 s.
pub(super) fn pause_after(attempts: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << attempts.min(8))
        .min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_one_second_up_to_eight() {
        let pauses: Vec<u64> = (0..6).map(|a| pause_after(a).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 8, 8]);
        assert_eq!(pause_after(u32::MAX), RETRY_MAX);
    }
}
