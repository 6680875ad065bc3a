//! Prometheus metrics of `watch` (`--metrics-addr`; the list and the
//! alert rules built on them: docs/OPERATIONS.md).
//!
//! What the daemon did is derived from the events it writes, so the two
//! never disagree: events by kind, processes governed by rule and tier,
//! `degraded` by limit, OOM kills by rule, lost events by reason, the
//! processes followed now by tier, exec→governed latency, live jobs at
//! risk. Beside them: this build (`ffrtmp_build_info`), the backend and
//! mode of the running daemon (`ffrtmp_daemon_info`, from `started`), and
//! what the process costs (`process_*`, read when scraped: `process.rs`).
//!
//! Labels stay bounded: an event kind, a policy rule's name, a tier, a
//! limit, a loss reason. Never a pid or a job id, whose number grows with
//! every stream a node ever ran.
//!
//! Served by `http.rs`: OpenMetrics to a scraper that asks for it,
//! Prometheus text 0.0.4 otherwise (`classic.rs`).
mod classic;
mod http;
mod process;

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

pub(crate) use process::{Sampler, Usage};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
        info::Info,
    },
    registry::Registry,
};

use super::{Body, Event, EventError, Sink};
use crate::limits::{LimitName, Tier};

/// Latency buckets, in seconds: the target (≤ 1 ms) sits in the middle.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
];
/// The label value of "no rule", "no tier", "no limit".
const NONE: &str = "none";

type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn tier_label(tier: Option<Tier>) -> &'static str {
    tier.map_or(NONE, Tier::as_str)
}

/// The formats served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exposition {
    /// OpenMetrics 1.0 text (`application/openmetrics-text`).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain`).
    Classic,
}

/// A process followed in a job: what its exit is counted under.
struct Followed {
    rule: String,
    tier: &'static str,
}

/// The metrics, updated from events; cheap to clone (shared counters).
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Arc<Registry>,
    events: Family<Labels, Counter>,
    governed: Family<Labels, Counter>,
    processes: Family<Labels, Gauge>,
    degraded: Family<Labels, Counter>,
    oom_kills: Family<Labels, Counter>,
    latency: Histogram,
    at_risk: Family<Labels, Gauge>,
    pressure: Family<Labels, Counter>,
    lost: Arc<Lost>,
    daemon: Arc<Daemon>,
    /// Processes followed now, by pid: bounded by what the daemon follows.
    followed: Arc<Mutex<HashMap<u32, Followed>>>,
}

/// `ffrtmp_lost_events_total{reason}`: the kernel's losses come as `lost`
/// events; the output's are counted by its queue as it drops them (its
/// own `lost` events never pass through the sinks).
#[derive(Debug, Default)]
struct Lost {
    ring: AtomicU64,
    output: OnceLock<Arc<AtomicU64>>,
}

impl Collector for Lost {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let output = self.output.get().map_or(0, |o| o.load(Ordering::Relaxed));
        let mut family = encoder.encode_descriptor(
            "lost_events",
            "Events dropped: ring, the kernel's ring buffer was full (execs and exits not seen); output, the output's queue was full (events not written).",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in [
            ("ring", self.ring.load(Ordering::Relaxed)),
            ("output", output),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&labels([("reason", reason)]))?)?;
        }
        Ok(())
    }
}

/// `ffrtmp_daemon_info{backend,mode,layout}`, once `started` said them.
#[derive(Debug, Default)]
struct Daemon(Mutex<Option<Labels>>);

impl Collector for Daemon {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(labels) = self.0.lock().ok().and_then(|l| l.clone()) else {
            return Ok(());
        };
        let info = Info::new(labels);
        info.encode(encoder.encode_descriptor(
            "daemon",
            "The running daemon: its observation backend, its governing mode and the cgroup layout (none when it governs nothing).",
            None,
            info.metric_type(),
        )?)
    }
}

impl Metrics {
    /// The metrics of this build; `usage` samples what the process costs.
    pub(crate) fn new(usage: Sampler) -> Self {
        Self::of_build(env!("CARGO_PKG_VERSION"), env!("FFRTMP_COMMIT"), usage)
    }

    /// The metrics of a daemon of this `version` built from `commit`.
    pub(crate) fn of_build(version: &str, commit: &str, usage: Sampler) -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::Process(usage)));
        let registry = root.sub_registry_with_prefix("ffrtmp");
        registry.register(
            "build",
            "This build of ffrtmp",
            Info::new(labels([("version", version), ("commit", commit)])),
        );
        let lost = Arc::new(Lost::default());
        registry.register_collector(Box::new(Arc::clone(&lost)));
        let daemon = Arc::new(Daemon::default());
        registry.register_collector(Box::new(Arc::clone(&daemon)));
        let events: Family<Labels, Counter> =
            registered(registry, "events", "Events written, by kind");
        let governed: Family<Labels, Counter> = registered(
            registry,
            "governed",
            "Processes the policy placed in a job, by rule and tier",
        );
        let processes: Family<Labels, Gauge> = registered(
            registry,
            "governed_processes",
            "Processes followed in jobs now (governed, adopted or tracked), by tier",
        );
        let degraded: Family<Labels, Counter> = registered(
            registry,
            "degraded",
            "Degraded events: ffrtmp did less than asked, by the limit not applied (none: not about one limit)",
        );
        let oom_kills: Family<Labels, Counter> = registered(
            registry,
            "oom_kills",
            "Jobs that ended with an OOM kill in their cgroup, by the rule that governed them",
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "govern_latency_seconds",
            "From the kernel's exec timestamp to the process in its job cgroup, in seconds",
            latency.clone(),
        );
        let at_risk: Family<Labels, Gauge> = registered(
            registry,
            "jobs_at_risk",
            "Jobs whose threads wait for a CPU so much that they may fall behind realtime now (pressure events), by tier",
        );
        let pressure: Family<Labels, Counter> = registered(
            registry,
            "pressure",
            "Times a job came under pressure (pressure events that are not cleared), by tier and cause",
        );
        zero_series(&processes, &at_risk, &pressure, &degraded);
        Metrics {
            registry: Arc::new(root),
            events,
            governed,
            processes,
            degraded,
            oom_kills,
            latency,
            at_risk,
            pressure,
            lost,
            daemon,
            followed: Arc::default(),
        }
    }

    /// Counts what the output's queue drops (`lost` with reason `output`):
    /// its running total of events dropped.
    pub(crate) fn count_output_losses(&self, dropped: Arc<AtomicU64>) {
        let _ = self.lost.output.set(dropped);
    }

    /// Accounts for one event written.
    pub(crate) fn record(&self, event: &Event) {
        self.events
            .get_or_create(&labels([("event", event.body.name())]))
            .inc();
        match &event.body {
            Body::Started(s) => {
                if let Ok(mut d) = self.daemon.0.lock() {
                    *d = Some(labels([
                        ("backend", &s.backend),
                        ("mode", s.mode.map_or(NONE, super::Mode::as_str)),
                        ("layout", s.layout.map_or(NONE, super::CgroupLayout::as_str)),
                    ]));
                }
            }
            Body::Lost(l) if l.reason == super::LostReason::Ring => {
                self.lost.ring.fetch_add(l.count, Ordering::Relaxed);
            }
            Body::Governed(g) => {
                let tier = tier_label(g.tier);
                let rule = g.rule.as_deref().unwrap_or(NONE);
                // A second `governed` of one process (its own job made
                // after it was left in staging) is not a second process.
                if self.follow(g.pid, rule, tier) {
                    self.governed
                        .get_or_create(&labels([("rule", rule), ("tier", tier)]))
                        .inc();
                    if let Some(us) = g.latency_us {
                        self.latency.observe(us as f64 / 1e6);
                    }
                }
                // Exists at 0 before a job of the rule is OOM-killed.
                drop(self.oom_kills.get_or_create(&labels([("rule", rule)])));
            }
            Body::Tracked(t) => {
                self.follow(t.pid, NONE, tier_label(t.tier));
            }
            Body::Exit(x) => {
                let Some(job) = &x.job else { return };
                let followed = self.followed.lock().ok().and_then(|mut f| f.remove(&x.pid));
                if let Some(f) = &followed {
                    self.processes
                        .get_or_create(&labels([("tier", f.tier)]))
                        .dec();
                }
                if job.oom_killed == Some(true) {
                    let rule = followed.as_ref().map_or(NONE, |f| f.rule.as_str());
                    self.oom_kills
                        .get_or_create(&labels([("rule", rule)]))
                        .inc();
                }
            }
            Body::Degraded(d) => {
                let limit = d.limit.map_or(NONE, LimitName::as_str);
                self.degraded
                    .get_or_create(&labels([("limit", limit)]))
                    .inc();
            }
            Body::Pressure(p) => {
                let tier = p.tier.as_str();
                let gauge = self.at_risk.get_or_create(&labels([("tier", tier)]));
                if p.cleared {
                    gauge.dec();
                } else {
                    gauge.inc();
                    let cause = match p.cause {
                        super::Cause::Throttled => "throttled",
                        super::Cause::Contended => "contended",
                    };
                    self.pressure
                        .get_or_create(&labels([("tier", tier), ("cause", cause)]))
                        .inc();
                }
            }
            _ => {}
        }
    }

    /// A process now followed in a job; one governed again (re-attached,
    /// or out of staging) moves from its old tier to the new one. Whether
    /// it was new.
    fn follow(&self, pid: u32, rule: &str, tier: &'static str) -> bool {
        let Ok(mut followed) = self.followed.lock() else {
            return true;
        };
        let old = followed.insert(
            pid,
            Followed {
                rule: rule.to_string(),
                tier,
            },
        );
        if let Some(old) = &old {
            self.processes
                .get_or_create(&labels([("tier", old.tier)]))
                .dec();
        }
        self.processes
            .get_or_create(&labels([("tier", tier)]))
            .inc();
        old.is_none()
    }

    /// The exposition in `format`.
    pub(crate) fn render(&self, format: Exposition) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        match format {
            Exposition::OpenMetrics => out,
            Exposition::Classic => classic::from_openmetrics(&out),
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

/// A new metric of kind `M`, registered as `name` with `help`.
fn registered<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: Default + Clone + prometheus_client::registry::Metric,
{
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// Series that exist from the start, at 0: an alert on `increase()` sees
/// the first one, and a dashboard shows 0 rather than nothing.
fn zero_series(
    processes: &Family<Labels, Gauge>,
    at_risk: &Family<Labels, Gauge>,
    pressure: &Family<Labels, Counter>,
    degraded: &Family<Labels, Counter>,
) {
    for tier in Tier::ALL.iter().map(|t| t.as_str()).chain([NONE]) {
        drop(processes.get_or_create(&labels([("tier", tier)])));
    }
    for tier in Tier::ALL {
        drop(at_risk.get_or_create(&labels([("tier", tier.as_str())])));
        for cause in ["throttled", "contended"] {
            drop(pressure.get_or_create(&labels([("tier", tier.as_str()), ("cause", cause)])));
        }
    }
    for limit in LimitName::ALL.iter().map(|l| l.as_str()).chain([NONE]) {
        drop(degraded.get_or_create(&labels([("limit", limit)])));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{
        Degraded, Exit, Governed, JobReport, Lost, LostReason, Source, Started, Timestamp,
    };

    fn event(source: Source, body: impl Into<Body>) -> Event {
        Event::new(Timestamp::now(), source, body)
    }

    fn governed(pid: u32, rule: &str, tier: Option<Tier>) -> Event {
        event(
            Source::Ffrtmp,
            Governed {
                pid,
                process_key: None,
                job_id: format!("{rule}-{pid}"),
                cgroup: None,
                mode: crate::events::Mode::Privileged,
                limits: Default::default(),
                tier,
                rule: Some(rule.into()),
                adopted: false,
                latency_us: Some(150),
            },
        )
    }

    fn exit(pid: u32, oom: bool) -> Event {
        event(
            Source::Ebpf,
            Exit {
                pid,
                process_key: None,
                comm: "ffmpeg".into(),
                exit_code: None,
                signal: Some(9),
                duration_us: None,
                job: Some(JobReport {
                    job_id: "j".into(),
                    oom_killed: Some(oom),
                    cpu_usage_us: None,
                    memory_peak_bytes: None,
                    recovered: false,
                }),
            },
        )
    }

    fn assert_has(text: &str, needles: &[&str]) {
        for needle in needles {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }
    }

    #[test]
    fn counts_what_the_events_say_by_bounded_labels() {
        let m = Metrics::of_build("1.2.3", "abc", || Usage {
            cpu_seconds: Some(1.5),
            resident_bytes: Some(4096.0),
            open_fds: Some(9.0),
            ..Usage::default()
        });
        m.record(&event(
            Source::Ffrtmp,
            Started {
                schema: 2,
                version: "1.2.3".into(),
                pid: 1,
                process_key: None,
                backend: "ebpf".into(),
                mode: Some(crate::events::Mode::Privileged),
                layout: None,
            },
        ));
        m.record(&event(
            Source::Ebpf,
            Lost {
                count: 7,
                reason: LostReason::Ring,
            },
        ));
        m.record(&governed(10, "ffmpeg-live", Some(Tier::Live)));
        m.record(&governed(11, "ffmpeg-live", Some(Tier::Live)));
        m.record(&governed(12, "ffmpeg-batch", Some(Tier::Batch)));
        // Its own job made after staging: the same process, not a new one.
        m.record(&governed(11, "ffmpeg-live", Some(Tier::Live)));
        m.record(&exit(10, true));
        m.record(&exit(12, false));
        m.record(&event(
            Source::Ffrtmp,
            Degraded {
                limit: Some(LimitName::CpuIdle),
                reason: "old kernel".into(),
                fallback: crate::events::Fallback::Nice10,
            },
        ));
        let dropped = Arc::new(AtomicU64::new(5));
        m.count_output_losses(Arc::clone(&dropped));
        let om = m.render(Exposition::OpenMetrics);
        assert_has(
            &om,
            &[
                "# TYPE ffrtmp_build info\nffrtmp_build_info{version=\"1.2.3\",commit=\"abc\"} 1\n",
                "ffrtmp_daemon_info{backend=\"ebpf\",mode=\"privileged\",layout=\"none\"} 1",
                "ffrtmp_events_total{event=\"governed\"} 4",
                "ffrtmp_lost_events_total{reason=\"ring\"} 7",
                "ffrtmp_lost_events_total{reason=\"output\"} 5",
                "ffrtmp_governed_total{rule=\"ffmpeg-live\",tier=\"live\"} 2",
                "ffrtmp_governed_total{rule=\"ffmpeg-batch\",tier=\"batch\"} 1",
                "ffrtmp_governed_processes{tier=\"live\"} 1",
                "ffrtmp_governed_processes{tier=\"batch\"} 0",
                "ffrtmp_oom_kills_total{rule=\"ffmpeg-live\"} 1",
                "ffrtmp_oom_kills_total{rule=\"ffmpeg-batch\"} 0",
                "ffrtmp_degraded_total{limit=\"cpu_idle\"} 1",
                "ffrtmp_degraded_total{limit=\"memory_max\"} 0",
                "ffrtmp_jobs_at_risk{tier=\"live\"} 0",
                "ffrtmp_pressure_total{tier=\"live\",cause=\"contended\"} 0",
                "ffrtmp_govern_latency_seconds_bucket{le=\"0.0002\"} 3",
                "ffrtmp_govern_latency_seconds_bucket{le=\"0.0001\"} 0",
                "# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total 1.5\n",
                "process_resident_memory_bytes 4096.0\n",
                "process_open_fds 9.0\n",
            ],
        );
        assert!(om.ends_with("# EOF\n"), "{om}");
        // What could not be read is left out, not invented.
        assert!(!om.contains("process_start_time_seconds"), "{om}");
        let classic = m.render(Exposition::Classic);
        assert_has(
            &classic,
            &[
                "# HELP ffrtmp_events_total Events written, by kind.\n# TYPE ffrtmp_events_total counter\n",
                "# TYPE ffrtmp_build_info gauge\nffrtmp_build_info{",
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ",
            ],
        );
        assert!(!classic.contains("# EOF"), "{classic}");
        // No label takes a pid or a job id.
        assert!(
            !om.contains("ffmpeg-live-10") && !om.contains("=\"10\""),
            "{om}"
        );
    }
}
