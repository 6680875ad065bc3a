//! Prometheus metrics of the event stream (`watch --metrics-addr`).
//!
//! Every metric is derived from the events `watch` writes, so the two can
//! never disagree: events by kind, events the kernel lost, the processes
//! followed in jobs now, and a histogram of exec→governed latency. Served
//! as Prometheus text exposition on `GET /metrics` by a deliberately small
//! HTTP/1.0 responder (one request per connection, bounded in size and
//! time): the daemon's job is governing, not serving.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{Body, Event, EventError, Sink};

/// Latency buckets, in seconds: the target (≤ 1 ms) sits in the middle.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
];
/// Largest request read; anything longer is answered 400.
const MAX_REQUEST: usize = 8 * 1024;
/// A client has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog, so that
/// clients cannot take the file descriptors governing needs.
const MAX_CONNECTIONS: usize = 16;
/// The pause after a failed `accept` (at the fd limit it fails at once,
/// and a loop without a pause spun a core at 100 %).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("listening on {addr} for --metrics-addr")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The metrics, updated from events; cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    events: Family<Vec<(String, String)>, Counter>,
    lost: Counter,
    jobs: Gauge,
    latency: Histogram,
    at_risk: Family<Vec<(String, String)>, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ffrtmp");
        let events = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("events", "Events written, by kind", events.clone());
        let lost = Counter::default();
        registry.register(
            "lost_events",
            "Kernel records lost because the ring buffer was full",
            lost.clone(),
        );
        let jobs = Gauge::default();
        registry.register(
            "governed_processes",
            "Processes followed in job cgroups now (governed, adopted or tracked)",
            jobs.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "govern_latency_seconds",
            "From the kernel's exec timestamp to the process in its job cgroup",
            latency.clone(),
        );
        let at_risk = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "jobs_at_risk",
            "Jobs whose threads wait for a CPU so much that they may fall behind realtime now (pressure events), by tier",
            at_risk.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            events,
            lost,
            jobs,
            latency,
            at_risk,
        }
    }
}

/// The metrics are an output like stdout: each event written is counted.
impl Sink for Metrics {
    fn send(&mut self, event: &Event) -> Result<(), EventError> {
        self.record(event);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EventError> {
        Ok(())
    }
}

impl Metrics {
    /// Accounts for one event written.
    pub fn record(&self, event: &Event) {
        self.events
            .get_or_create(&vec![("event".into(), event.body.name().into())])
            .inc();
        match &event.body {
            Body::Lost(l) => {
                self.lost.inc_by(l.count);
            }
            Body::Governed(g) if g.rule.is_some() => {
                self.jobs.inc();
                if let Some(us) = g.latency_us {
                    self.latency.observe(us as f64 / 1e6);
                }
            }
            Body::Tracked(_) => {
                self.jobs.inc();
            }
            Body::Exit(x) if x.job.is_some() => {
                self.jobs.dec();
            }
            Body::Pressure(p) => {
                let tier = self
                    .at_risk
                    .get_or_create(&vec![("tier".into(), p.tier.as_str().into())]);
                if p.cleared {
                    tier.dec();
                } else {
                    tier.inc();
                }
            }
            _ => {}
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Binds `addr` (so a bad address fails before the stream starts) and
    /// returns the server task to spawn.
    pub async fn serve(
        self,
        addr: SocketAddr,
    ) -> Result<impl Future<Output = ()> + Send + 'static, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        Ok(async move {
            loop {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return; // closed: never
                };
                let conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics: accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let metrics = self.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, metrics.answer(conn)).await;
                    drop(slot);
                });
            }
        })
    }

    async fn answer(&self, mut conn: TcpStream) -> std::io::Result<()> {
        let mut request = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        // The end of the head: a blank line, CRLF or (tolerated) bare LF.
        let ended =
            |r: &[u8]| r.windows(4).any(|w| w == b"\r\n\r\n") || r.windows(2).any(|w| w == b"\n\n");
        while !ended(&request) {
            let n = conn.read(&mut buf).await?;
            if n == 0 || request.len() + n > MAX_REQUEST {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let line = request
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or_default();
        let (status, body) = if line.starts_with(b"GET /metrics ") {
            ("200 OK", self.render())
        } else {
            (
                "404 Not Found",
                "ffrtmp serves GET /metrics only\n".to_string(),
            )
        };
        let head = format!(
            "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body.as_bytes()).await?;
        conn.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Governed, Lost, Source, Timestamp};

    #[test]
    fn counts_events_lost_records_jobs_and_latency() {
        let m = Metrics::default();
        m.record(&Event::new(
            Timestamp::now(),
            Source::Ebpf,
            Lost {
                count: 7,
                reason: crate::events::LostReason::Ring,
            },
        ));
        m.record(&Event::new(
            Timestamp::now(),
            Source::Ffrtmp,
            Governed {
                pid: 1,
                job_id: "j".into(),
                cgroup: None,
                mode: "privileged".into(),
                limits: Default::default(),
                tier: None,
                rule: Some("r".into()),
                adopted: false,
                latency_us: Some(150),
            },
        ));
        let text = m.render();
        for needle in [
            "ffrtmp_events_total{event=\"lost\"} 1",
            "ffrtmp_events_total{event=\"governed\"} 1",
            "ffrtmp_lost_events_total 7",
            "ffrtmp_governed_processes 1",
            "ffrtmp_govern_latency_seconds_bucket{le=\"0.0002\"} 1",
            "ffrtmp_govern_latency_seconds_bucket{le=\"0.0001\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }
    }
}
