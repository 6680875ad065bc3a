//! Outputs that never hold up governing: a bounded queue in front of a
//! thread of its own that does the blocking writes.
//!
//! Why: `watch` wrote its events on the thread that governs. Measured before
//! this, a reader that stopped reading stdout (a pipe to a stalled consumer,
//! a stalled journald) filled the pipe after ~200 events, and the next 200
//! matching processes stayed ungoverned for 11.75 s — as long as the reader
//! slept; `> /dev/full` ended `watch` at its first event. Now the governing
//! thread only appends encoded lines to a [`Queue`] (a memory copy under an
//! uncontended lock) and the writer thread takes whole batches out. When
//! the queue is full, lines are dropped — events, never governing — and
//! counted; once the consumer catches up, a `lost` event with
//! `"reason":"output"` says how many. A write error (EPIPE, ENOSPC, EIO)
//! ends the output, not `watch`, unless the operator asked for that
//! (`--exit-on-output-loss`). The same queue carries the logs to stderr
//! (see `cli`), which under systemd is the same journal stream.
use std::{
    collections::VecDeque,
    io::{self, Write},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use super::{Event, EventError, Lost, LostReason, Source, Timestamp, sink::Format, text};

/// How long the end of `watch` waits for a stalled consumer to take the
/// last events before giving up on them.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A bounded queue of bytes and the thread that writes them out.
#[derive(Clone)]
pub(crate) struct Queue {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when there is output to write, or on close.
    work: Condvar,
    /// Signalled when the writer has emptied the queue, or ended.
    idle: Condvar,
    /// Told when the output ended, for an event loop that must stop then.
    ended: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    capacity: usize,
    /// Why the output ended (the writer stopped), if it did.
    ended: Option<io::ErrorKind>,
    ended_message: Option<String>,
    closing: bool,
    /// The writer is writing a batch it took out.
    busy: bool,
}

/// What [`Queue::push`] did with a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// No room: dropped.
    Full,
    /// The output ended earlier: dropped.
    Ended,
}

impl Queue {
    /// Starts a writer thread named `name` that writes to `out`.
    pub(crate) fn spawn<W: Write + Send + 'static>(
        name: &str,
        out: W,
        capacity: usize,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                capacity,
                ..State::default()
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            ended: Arc::new(tokio::sync::Notify::new()),
        });
        let writer = Arc::clone(&shared);
        thread::Builder::new()
            .name(name.into())
            .spawn(move || writer.write_out(out))?;
        Ok(Queue { shared })
    }

    /// Appends `chunk` if it fits; never waits for the writer.
    pub(crate) fn push(&self, chunk: Vec<u8>) -> Pushed {
        if chunk.is_empty() {
            return Pushed::Queued;
        }
        let mut state = self.shared.lock();
        if state.ended.is_some() {
            return Pushed::Ended;
        }
        if state.bytes + chunk.len() > state.capacity {
            return Pushed::Full;
        }
        state.bytes += chunk.len();
        state.chunks.push_back(chunk);
        drop(state);
        self.shared.work.notify_one();
        Pushed::Queued
    }

    /// Room for `bytes` more now.
    pub(crate) fn has_room(&self, bytes: usize) -> bool {
        let state = self.shared.lock();
        state.bytes + bytes <= state.capacity
    }

    /// Why the output ended, if it did.
    pub(crate) fn ended(&self) -> Option<io::Error> {
        let state = self.shared.lock();
        let kind = state.ended?;
        Some(io::Error::new(
            kind,
            state.ended_message.clone().unwrap_or_default(),
        ))
    }

    /// Notified once when the output ends (a permit is stored if nobody
    /// waits yet).
    pub(crate) fn on_end(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.shared.ended)
    }

    /// Waits (at most `wait`) until the writer has written everything.
    /// Returns whether it did.
    pub(crate) fn drain(&self, wait: Duration) -> bool {
        let state = self.shared.lock();
        let (state, _) = self
            .shared
            .idle
            .wait_timeout_while(state, wait, |s| {
                s.ended.is_none() && (s.bytes > 0 || s.busy)
            })
            .unwrap_or_else(PoisonError::into_inner);
        state.bytes == 0 && !state.busy
    }

    /// No more output: the writer ends once it has written what is queued.
    pub(crate) fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the output down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer thread: takes every queued chunk at once and writes them.
    fn write_out<W: Write>(&self, mut out: W) {
        loop {
            let batch: Vec<Vec<u8>> = {
                let mut state = self.lock();
                state.busy = false;
                self.idle.notify_all();
                while state.chunks.is_empty() && !state.closing {
                    state = self
                        .work
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.chunks.is_empty() {
                    return; // closing, all written
                }
                state.busy = true;
                state.bytes = 0;
                state.chunks.drain(..).collect()
            };
            let written = batch
                .iter()
                .try_for_each(|c| out.write_all(c))
                .and_then(|()| out.flush());
            if let Err(e) = written {
                let mut state = self.lock();
                state.ended = Some(e.kind());
                state.ended_message = Some(e.to_string());
                state.chunks.clear();
                state.bytes = 0;
                state.busy = false;
                self.idle.notify_all();
                self.ended.notify_one();
                return;
            }
        }
    }
}

/// An event output behind a [`Queue`]: JSON lines (or text) written by a
/// thread of its own. Lines are collected until [`Sink::flush`](super::Sink)
/// and queued as one chunk (one `write` for the batch, as before).
pub(crate) struct Queued {
    queue: Queue,
    format: Format,
    pending: Vec<u8>,
    /// Events in `pending`.
    pending_events: u64,
    /// Events dropped since the last `lost` event was queued.
    dropped: u64,
    /// Events dropped ever, for the metrics (`lost_events_total`).
    dropped_total: Arc<AtomicU64>,
    /// Whether an ended output stops the stream (`--exit-on-output-loss`).
    exit_on_loss: bool,
    /// The end of the output was already told (logged once).
    told_end: bool,
}

/// Pending output that is queued even before `flush`.
const HIGH_WATER: usize = 64 * 1024;

impl Queued {
    pub(crate) fn new(queue: Queue, format: Format, exit_on_loss: bool) -> Self {
        Queued {
            queue,
            format,
            pending: Vec::with_capacity(HIGH_WATER),
            pending_events: 0,
            dropped: 0,
            dropped_total: Arc::default(),
            exit_on_loss,
            told_end: false,
        }
    }

    /// The running total of events dropped, shared (the metrics read it).
    pub(crate) fn losses(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped_total)
    }

    /// Counts `n` events dropped.
    fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
        self.dropped_total.fetch_add(n, Ordering::Relaxed);
    }

    #[cfg(test)]
    /// Events dropped and not yet reported by a `lost` event.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    fn encode(&self, out: &mut Vec<u8>, event: &Event) -> Result<(), EventError> {
        match self.format {
            Format::Json => serde_json::to_writer(&mut *out, event).map_err(EventError::Encode)?,
            Format::Text => text::write(&mut *out, event).map_err(EventError::Write)?,
        }
        out.push(b'\n');
        Ok(())
    }

    /// The output ended: an error with `--exit-on-output-loss`, else a
    /// warning once, and nothing more is written.
    fn output_ended(&mut self) -> Result<(), EventError> {
        let Some(e) = self.queue.ended() else {
            return Ok(());
        };
        if self.exit_on_loss {
            return Err(EventError::Write(e));
        }
        if !self.told_end {
            self.told_end = true;
            tracing::warn!(
                "the event output ended ({e}); governing goes on without it (--exit-on-output-loss stops instead)"
            );
        }
        Ok(())
    }
}

impl super::Sink for Queued {
    fn send(&mut self, event: &Event) -> Result<(), EventError> {
        let mut line = std::mem::take(&mut self.pending);
        let encoded = self.encode(&mut line, event);
        self.pending = line;
        encoded?;
        self.pending_events += 1;
        if self.pending.len() >= HIGH_WATER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EventError> {
        if self.pending.is_empty() {
            return self.output_ended();
        }
        let mut chunk = Vec::new();
        if self.dropped > 0 {
            let lost = Event::new(
                Timestamp::now(),
                Source::Ffrtmp,
                Lost {
                    count: self.dropped,
                    reason: LostReason::Output,
                },
            );
            self.encode(&mut chunk, &lost)?;
        }
        let told_loss = !chunk.is_empty();
        // Only when the whole batch fits: a `lost` event must never be
        // queued ahead of a gap it does not count.
        if !self.queue.has_room(chunk.len() + self.pending.len()) {
            self.count_dropped(self.pending_events);
            self.pending.clear();
            self.pending_events = 0;
            return self.output_ended();
        }
        chunk.extend_from_slice(&self.pending);
        self.pending.clear();
        let events = std::mem::take(&mut self.pending_events);
        match self.queue.push(chunk) {
            Pushed::Queued => {
                if told_loss {
                    self.dropped = 0;
                }
            }
            Pushed::Full | Pushed::Ended => self.count_dropped(events),
        }
        self.output_ended()
    }
}

impl Drop for Queued {
    /// The end of the stream: what is queued gets `CLOSE_WAIT` (2 s) to be
    /// written (a stalled consumer must not keep `watch` from exiting).
    fn drop(&mut self) {
        let _ = super::Sink::flush(self);
        self.queue.close();
        self.queue.drain(CLOSE_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Body, Sink as _, tests::samples};
    use std::sync::mpsc;

    /// A writer that blocks until told to go on, then collects.
    struct Gate {
        go: mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<u8>>>,
        open: bool,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.open {
                self.go.recv().ok();
                self.open = true;
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn events_in(out: &[u8]) -> Vec<Event> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_stalled_consumer_costs_events_never_a_wait_and_is_told_how_many() {
        let (go, gate) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let queue = Queue::spawn(
            "test-out",
            Gate {
                go: gate,
                out: Arc::clone(&out),
                open: false,
            },
            4096,
        )
        .unwrap();
        let mut sink = Queued::new(queue.clone(), Format::Json, false);
        let sample = &samples()[1];
        // The writer takes the first batch and blocks on it; then the queue
        // fills and the rest is dropped — and no call here waits.
        let mut sent = 0;
        while sink.dropped() < 50 {
            sink.emit(sample).unwrap();
            sent += 1;
            assert!(sent < 10_000, "nothing was ever dropped");
        }
        go.send(()).unwrap();
        assert!(queue.drain(Duration::from_secs(5)));
        // Caught up: the next batch says how many were lost, first.
        sink.emit(sample).unwrap();
        assert_eq!(sink.dropped(), 0);
        assert!(queue.drain(Duration::from_secs(5)));
        let events = events_in(&out.lock().unwrap());
        let lost: Vec<&Lost> = events
            .iter()
            .filter_map(|e| match &e.body {
                Body::Lost(l) => Some(l),
                _ => None,
            })
            .collect();
        assert!(!lost.is_empty());
        assert!(lost.iter().all(|l| l.reason == LostReason::Output));
        let counted: u64 = lost.iter().map(|l| l.count).sum();
        let written = (events.len() - lost.len()) as u64;
        assert_eq!(
            written + counted,
            sent + 1,
            "every event is written or counted as lost"
        );
        // A `lost` event comes after the gap it counts: never last.
        assert!(!matches!(events.last().unwrap().body, Body::Lost(_)));
    }

    /// A writer that always fails, as `/dev/full` does.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_ended_output_stops_the_stream_only_when_asked() {
        for exit_on_loss in [false, true] {
            let queue = Queue::spawn("test-full", Full, 1 << 20).unwrap();
            let mut sink = Queued::new(queue.clone(), Format::Json, exit_on_loss);
            sink.emit(&samples()[0]).unwrap();
            queue.drain(Duration::from_secs(5));
            let err = queue.ended().expect("the output ended");
            assert!(err.to_string().contains("os error 28"), "{err}");
            let next = sink.emit(&samples()[0]);
            assert_eq!(next.is_err(), exit_on_loss, "{next:?}");
        }
    }
}
