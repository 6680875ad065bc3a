//! `process_*`: what the daemon itself costs, sampled at each scrape under
//! the names every Prometheus exporter uses (CPU seconds, resident and
//! virtual memory, open and allowed file descriptors, start time), so
//! fleet dashboards made for any exporter show it. Reading /proc is the
//! observing layer's job (`observe::proc::own_usage`); this only encodes.
use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// What the process costs now; a figure that could not be read is `None`
/// and left out of the exposition.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// Samples [`Usage`] when scraped.
pub(crate) type Sampler = fn() -> Usage;

#[derive(Debug)]
pub(super) struct Process(pub Sampler);

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let usage = (self.0)();
        if let Some(v) = usage.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time the daemon used, user and system, in seconds.",
                None,
                c.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory of the daemon, in bytes.",
                usage.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory of the daemon, in bytes.",
                usage.virtual_bytes,
            ),
            (
                "process_start_time_seconds",
                "When the daemon started, in seconds since the Unix epoch.",
                usage.start_time_seconds,
            ),
            (
                "process_open_fds",
                "File descriptors the daemon has open.",
                usage.open_fds,
            ),
            (
                "process_max_fds",
                "The daemon's limit on open file descriptors.",
                usage.max_fds,
            ),
        ] {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}
