//! Where events are written: a [`Sink`] each. The [`Emitter`] writes JSON
//! lines (or text) to stdout or a file, `metrics::Metrics` counts them, and
//! [`Sinks`] is the list `watch` writes to — a new output is a new file
//! with a `Sink` impl and one line where `watch` builds its list.
use std::io::{self, Write};

use super::{Event, EventError, text};

/// How events are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// One line per event for people.
    Text,
}

/// An output of the event stream. `flush` is called whenever the producer
/// is about to wait (end of a ring-buffer batch, end of a /proc scan), so no
/// event ever waits in a buffer for a later one.
pub trait Sink {
    /// Takes one event (it may be buffered until `flush`).
    fn send(&mut self, event: &Event) -> Result<(), EventError>;
    /// Writes out everything sent so far.
    fn flush(&mut self) -> Result<(), EventError>;
    /// `send` then `flush`.
    fn emit(&mut self, event: &Event) -> Result<(), EventError> {
        self.send(event)?;
        self.flush()
    }
}

/// Writes events to an output, one per line. Lines are collected until
/// [`Sink::flush`] (or 64 KiB), then written with one `write` and flushed:
/// one system call per batch instead of one per event.
pub struct Emitter<W: Write> {
    out: W,
    format: Format,
    pending: Vec<u8>,
}

/// Pending output that triggers a write even before `flush`.
const EMITTER_HIGH_WATER: usize = 64 * 1024;

impl<W: Write> Emitter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            pending: Vec::with_capacity(EMITTER_HIGH_WATER),
        }
    }
}

impl<W: Write> Sink for Emitter<W> {
    fn send(&mut self, event: &Event) -> Result<(), EventError> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.pending, event).map_err(EventError::Encode)?;
            }
            Format::Text => text::write(&mut self.pending, event).map_err(EventError::Write)?,
        }
        self.pending.push(b'\n');
        if self.pending.len() >= EMITTER_HIGH_WATER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EventError> {
        if !self.pending.is_empty() {
            let result = self.out.write_all(&self.pending);
            self.pending.clear();
            result.map_err(EventError::Write)?;
        }
        self.out.flush().map_err(EventError::Write)
    }
}

/// Every output, in order: each event goes to each. A failed write of one
/// stops the stream (a closed stdout ends `watch`); the outputs before it
/// have the event.
#[derive(Default)]
pub struct Sinks<'a>(Vec<Box<dyn Sink + 'a>>);

impl<'a> Sinks<'a> {
    pub fn push(&mut self, sink: impl Sink + 'a) {
        self.0.push(Box::new(sink));
    }
}

impl Sink for Sinks<'_> {
    fn send(&mut self, event: &Event) -> Result<(), EventError> {
        self.0.iter_mut().try_for_each(|s| s.send(event))
    }

    fn flush(&mut self) -> Result<(), EventError> {
        self.0.iter_mut().try_for_each(|s| s.flush())
    }
}

/// Writes nothing (a test's or a disabled output).
impl Sink for io::Sink {
    fn send(&mut self, _: &Event) -> Result<(), EventError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EventError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::samples;

    #[test]
    fn emitter_writes_one_line_per_event() {
        let mut out = Vec::new();
        let mut emitter = Emitter::new(&mut out, Format::Json);
        for e in samples() {
            emitter.send(&e).unwrap();
        }
        emitter.flush().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), samples().len());
        for line in text.lines() {
            serde_json::from_str::<Event>(line).unwrap();
        }
    }

    #[test]
    fn every_sink_of_the_list_gets_every_event() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut sinks = Sinks::default();
        sinks.push(Emitter::new(&mut a, Format::Json));
        sinks.push(Emitter::new(&mut b, Format::Text));
        for e in samples() {
            sinks.send(&e).unwrap();
        }
        sinks.flush().unwrap();
        drop(sinks);
        let lines = |out: &[u8]| out.split(|&c| c == b'\n').count() - 1;
        assert_eq!(lines(&a), samples().len());
        assert_eq!(lines(&b), samples().len());
    }
}
