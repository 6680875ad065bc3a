//! The pressure watch's thread: every `pressure::INTERVAL` it lists the
//! jobs from the tree and samples the live ones (`pressure::Watch`), and
//! hands the events due to the event loop through a bounded channel. It
//! never waits on the loop: a full channel drops the event (said in the
//! log), and the loop never waits on it.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::Instant,
};

use tokio::sync::mpsc;

use crate::{
    events::Pressure,
    govern::{Context, job},
    pressure::{INTERVAL, Watch},
};

/// Events the loop has not taken yet, at most.
const QUEUE: usize = 256;

/// The running watch: its events, and a stop flag for its thread.
pub(crate) struct PressureWatch {
    pub events: mpsc::Receiver<Pressure>,
    stop: Arc<AtomicBool>,
}

impl PressureWatch {
    /// Starts the thread (`None` if it cannot be started: then nothing is
    /// watched, which the caller says).
    pub(crate) fn start(ctx: Context) -> std::io::Result<Self> {
        let (tx, events) = mpsc::channel(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::Builder::new()
            .name("ffrtmp-pressure".into())
            .spawn(move || {
                let mut watch = Watch::default();
                let mut records = job::Records::default();
                let mut next = Instant::now();
                while !stopped.load(Relaxed) {
                    for event in
                        watch.step(&ctx, &job::list_cached(&ctx, &mut records), Instant::now())
                    {
                        if let Err(e) = tx.try_send(event) {
                            tracing::warn!("pressure event not written: {e}");
                        }
                    }
                    next += INTERVAL;
                    let now = Instant::now();
                    if next < now {
                        next = now; // after a stall: no burst of samples
                    }
                    thread::sleep(next - now);
                }
            })?;
        Ok(PressureWatch { events, stop })
    }
}

impl Drop for PressureWatch {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}
