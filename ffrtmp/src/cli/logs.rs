//! The daemon's logs: to stderr through a bounded queue (`events::queued`),
//! so that a stalled reader of stderr — under systemd the same journal
//! stream as the events — holds up no governing; lines that find the queue
//! full are dropped and counted. Colour only on a terminal.
use std::{
    io::{self, IsTerminal as _, Write},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use crate::events::queued::{Pushed, Queue};

/// Room for log lines waiting for stderr.
const LOG_QUEUE_BYTES: usize = 256 << 10;

/// The log queue, once logging is set up (drained at exit).
static QUEUE: OnceLock<Queue> = OnceLock::new();
/// Log lines dropped since the last one written.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Sets up logging (`RUST_LOG`, default `warn`) to stderr.
pub(super) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let ansi = io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match Queue::spawn("ffrtmp-logs", io::stderr(), LOG_QUEUE_BYTES) {
        Ok(queue) => {
            let _ = QUEUE.set(queue.clone());
            builder.with_writer(move || Line::new(queue.clone())).init();
        }
        // No thread: write directly (blocking) rather than not at all.
        Err(_) => builder.with_writer(io::stderr).init(),
    }
}

/// Gives the queued log lines a moment to be written before the process ends.
pub(super) fn drain() {
    if let Some(q) = QUEUE.get() {
        q.close();
        q.drain(Duration::from_secs(1));
    }
}

/// One log line, queued as a whole when the formatter is done with it.
struct Line {
    queue: Queue,
    buf: Vec<u8>,
}

impl Line {
    fn new(queue: Queue) -> Self {
        Line {
            queue,
            buf: Vec::with_capacity(256),
        }
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let mut line = Vec::new();
        let dropped = DROPPED.swap(0, Relaxed);
        if dropped > 0 {
            line.extend_from_slice(
                format!("ffrtmp: {dropped} log lines dropped (stderr was not read)\n").as_bytes(),
            );
        }
        line.append(&mut self.buf);
        if self.queue.push(line) != Pushed::Queued {
            DROPPED.fetch_add(dropped + 1, Relaxed);
        }
    }
}
