//! The reaper thread: ended jobs' cgroups are removed here, in the
//! background and at a low priority, so that removing never delays
//! governing.
use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{RecvTimeoutError, Sender, channel},
    },
    time::{Duration, Instant},
};

use super::seen::monotonic_ns;
use crate::govern::{Context, job, reap_empty, reap_job};

/// The reaper thread: removes ended jobs' cgroups in the background (the
/// root's lock keeps it and job creation from racing). `None` if it cannot
/// start: then jobs are removed inline.
///
/// Removing a cgroup holds the kernel's global `cgroup_mutex`, which every
/// move into a cgroup also needs: a removal under way delays the next
/// governing by a few hundred µs. So the reaper waits until the governor has
/// been quiet for [`REAP_QUIET`], unless [`REAP_BACKLOG`] jobs are waiting.
pub(super) fn spawn(ctx: &Context, last_governed: Arc<AtomicU64>) -> Option<Sender<String>> {
    let (tx, rx) = channel::<String>();
    let ctx = ctx.clone();
    std::thread::Builder::new()
        .name("ffrtmp-reaper".into())
        .spawn(move || {
            // Background work: never ahead of the thread that governs.
            // SAFETY: setpriority on this thread's own id.
            unsafe {
                libc::setpriority(
                    libc::PRIO_PROCESS,
                    libc::gettid() as libc::id_t,
                    REAPER_NICE,
                );
            }
            let mut queue: VecDeque<Ending> = VecDeque::new();
            let fresh = |job| Ending {
                job,
                tries: 0,
                due: Instant::now(),
            };
            let mut last_sweep = Instant::now();
            loop {
                if queue.is_empty() {
                    match rx.recv_timeout(SWEEP_EVERY) {
                        Ok(job) => queue.push_back(fresh(job)),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return, // the governor is gone
                    }
                }
                queue.extend(rx.try_iter().map(fresh));
                let quiet = monotonic_ns().map_or(REAP_QUIET, |now| {
                    Duration::from_nanos(now.saturating_sub(last_governed.load(Relaxed)))
                });
                let now = Instant::now();
                // The sweep (see SWEEP_EVERY), when governing is quiet.
                if now.duration_since(last_sweep) >= SWEEP_EVERY && quiet >= REAP_QUIET {
                    last_sweep = now;
                    reap_empty(&ctx);
                }
                if queue.is_empty() {
                    continue;
                }
                let due = queue.iter().position(|e| e.due <= now);
                if let Some(i) = due
                    && (quiet >= REAP_QUIET || queue.len() >= REAP_BACKLOG)
                {
                    let Some(mut ending) = queue.remove(i) else {
                        continue;
                    };
                    // The exit event comes before the kernel has taken the
                    // task out of its cgroup; until then the cgroup is busy.
                    if reap_job(&ctx, &ending.job).is_empty()
                        && job::in_tree(&ctx, &ending.job).is_some()
                        && ending.tries < REAP_TRIES
                    {
                        ending.tries += 1;
                        ending.due = now + REAP_RETRY;
                        queue.push_back(ending);
                    }
                    continue;
                }
                let next_due = queue
                    .iter()
                    .map(|e| e.due.saturating_duration_since(now))
                    .min()
                    .unwrap_or(REAP_QUIET);
                let wait = next_due
                    .max(REAP_QUIET.saturating_sub(quiet))
                    .max(Duration::from_millis(1));
                match rx.recv_timeout(wait) {
                    Ok(job) => queue.push_back(fresh(job)),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .ok()
        .map(|_| tx)
}

/// An ended job waiting for its cgroup to be removed.
struct Ending {
    job: String,
    tries: u32,
    /// Not before then (a retry).
    due: Instant,
}

/// How often, and how far apart, a busy job cgroup is tried again (the
/// last process is still leaving it; longer in a slow VM): 5 s in all.
const REAP_TRIES: u32 = 50;
const REAP_RETRY: Duration = Duration::from_millis(100);

/// How long the governor must have been idle before a job is removed.
const REAP_QUIET: Duration = Duration::from_millis(20);
/// Jobs waiting for removal beyond which the reaper no longer waits.
const REAP_BACKLOG: usize = 256;

/// How often an idle reaper removes every empty, unclaimed job ffrtmp
/// made: those whose removal failed (a process ended while no daemon ran,
/// and was still a zombie when the next one started; a job whose process
/// vanished before it moved in). Measured with `cargo xtask soak`: such
/// jobs stayed empty until the next restart.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Nice of the reaper thread (the governing thread keeps the daemon's).
const REAPER_NICE: i32 = 10;
