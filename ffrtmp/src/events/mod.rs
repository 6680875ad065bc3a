//! The event stream: ffrtmp's output contract (docs/EVENTS.md).
//!
//! Every fact ffrtmp observes becomes one [`Event`]: a header (`event`, `ts`,
//! `source`) followed by the fields of its [`Body`]. Events are written to
//! [`Sink`]s ([`sink`]): the [`Emitter`] writes them as one JSON object per
//! line (or one human line with `--format text`), flushed before the daemon
//! waits for more, so a consumer never waits on a buffer; [`metrics`] counts
//! them for Prometheus.
//!
//! The JSON field order is header-first (`{"event":"exec","ts":…,"source":…,
//! …}`) so a person reading the stream sees what kind of event a line is at
//! once; consumers must not depend on order.
pub(crate) mod file;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod queued;
#[cfg(test)]
mod schema;
pub(crate) mod sink;
mod text;

pub use node::{ProcessId, process_key};
pub use sink::{Emitter, Format, Sink, Sinks};

use std::{fmt, io, time::SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{LimitName, Tier};

/// `governed.limits`: each limit in force, as the kernel reads it back,
/// typed per limit ([`crate::limits::Limit::Back`]).
pub type Limits = crate::limits::InForce;

/// Version of the event schema; bumped on any incompatible change.
/// 2: `host`, `boot_id` and `process_key`; durations in integer
/// microseconds (`exit.duration_us`, `pressure.window_us`); limits that
/// are one number are JSON integers.
/// 3: `degraded.fallback`, `governed.mode`, `started.mode` and
/// `started.layout` are enumerations; a process left in its staging
/// cgroup says `fallback: staging` (its reason names the cgroup).
pub const SCHEMA_VERSION: u32 = 3;

/// How much ffrtmp may do on this node (`governed.mode`, `started.mode`).
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Cgroups anywhere (root, or CAP_DAC_OVERRIDE on v2).
    Privileged,
    /// Only in a subtree delegated to ffrtmp's user.
    Delegated,
    /// No cgroups: nice only.
    Unprivileged,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Privileged => "privileged",
            Mode::Delegated => "delegated",
            Mode::Unprivileged => "unprivileged",
        }
    }
}

/// The node's cgroup layout (`started.layout`).
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// Pure cgroup v2.
    V2,
    /// cgroup v1 only.
    V1,
    /// v1 controllers beside a v2 hierarchy.
    Hybrid,
}

impl CgroupLayout {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupLayout::V2 => "v2",
            CgroupLayout::V1 => "v1",
            CgroupLayout::Hybrid => "hybrid",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Mode, CgroupLayout, Fallback);

/// What ffrtmp does instead of what it could not do (`degraded.fallback`).
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fallback {
    /// Nothing stands in for it.
    #[serde(rename = "none")]
    None,
    /// The job runs at nice 10 (a limit deciding its CPU share could not
    /// be applied).
    #[serde(rename = "nice 10")]
    Nice10,
    /// Governing waits for an RCU grace period per move (favordynmods off).
    #[serde(rename = "slow migrations")]
    SlowMigrations,
    /// New processes are found by polling /proc.
    #[serde(rename = "procfs")]
    Procfs,
    /// The process stays in its rule's staging cgroup, under the rule's
    /// limits, and its own job is tried again while it runs.
    #[serde(rename = "staging")]
    Staging,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::None => "none",
            Fallback::Nice10 => "nice 10",
            Fallback::SlowMigrations => "slow migrations",
            Fallback::Procfs => "procfs",
            Fallback::Staging => "staging",
        }
    }
}

/// Errors while writing events.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("writing an event to the output")]
    Write(#[source] io::Error),
    #[error("encoding an event as JSON")]
    Encode(#[source] serde_json::Error),
}

/// A duration as the events write it: integer microseconds (saturating).
pub fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// When an event happened, as wall-clock time (RFC 3339, UTC, nanoseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Self(SystemTime::now())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_nanos(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?Z$",
            "description": "RFC 3339, UTC, up to nanoseconds"
        })
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339(&s)
            .map(Timestamp)
            .map_err(serde::de::Error::custom)
    }
}

/// Which part of ffrtmp produced an event.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The kernel programs (exec/exit tracepoints).
    Ebpf,
    /// Polling of /proc.
    Procfs,
    /// ffrtmp itself (start-up, degradation).
    Ffrtmp,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ebpf => "ebpf",
            Source::Procfs => "procfs",
            Source::Ffrtmp => "ffrtmp",
        }
    }
}

/// One event of the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub ts: Timestamp,
    pub source: Source,
    pub body: Body,
    /// Kernel facts that travel with an eBPF event for the governor but are
    /// not part of the JSON contract.
    pub kernel: Option<KernelStamp>,
}

/// What the kernel programs measured for an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelStamp {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC when it happened.
    pub ktime_ns: u64,
    /// For an exec: the process's start time (ns since boot), its identity.
    pub start_boottime_ns: Option<u64>,
}

impl Event {
    pub fn new(ts: Timestamp, source: Source, body: impl Into<Body>) -> Self {
        Self {
            ts,
            source,
            body: body.into(),
            kernel: None,
        }
    }
}

/// What happened; the variant name is the `event` field.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Body {
    Started(Started),
    Exec(Exec),
    Exit(Exit),
    Lost(Lost),
    Degraded(Degraded),
    Governed(Governed),
    Tracked(Tracked),
    Detached(Detached),
    Policy(Reloaded),
    Pressure(Pressure),
}

impl Body {
    /// The `event` field's value.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Started(_) => "started",
            Body::Exec(_) => "exec",
            Body::Exit(_) => "exit",
            Body::Lost(_) => "lost",
            Body::Degraded(_) => "degraded",
            Body::Governed(_) => "governed",
            Body::Tracked(_) => "tracked",
            Body::Detached(_) => "detached",
            Body::Policy(_) => "policy",
            Body::Pressure(_) => "pressure",
        }
    }
}

/// First event of a `watch` stream: what is running and which backend.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub schema: u32,
    pub version: String,
    pub pid: u32,
    /// The daemon's own key ([`node`]).
    #[serde(default)]
    pub process_key: Option<String>,
    /// The backend that observes processes (`ebpf`, `procfs`): its name,
    /// not an event [`Source`], so a new backend needs no new source.
    pub backend: String,
    /// Null when it governs nothing (`--observe-only`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Null with `--observe-only`.
    #[serde(default)]
    pub layout: Option<CgroupLayout>,
}

/// A program was executed (or, with `adopted`, was already running).
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exec {
    pub pid: u32,
    /// Unique across the node's lifetime ([`node`]); null when its start
    /// time could not be read.
    #[serde(default)]
    pub process_key: Option<String>,
    /// Thread that called exec; differs from `pid` when a non-leader thread
    /// exec'd (the kernel then gives it the leader's id).
    pub tid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub comm: String,
    /// Path as passed to exec (eBPF); the resolved executable for procfs and
    /// adopted processes.
    pub filename: String,
    /// Arguments, best effort; `null` when they could not be read.
    pub argv: Option<Vec<String>>,
    /// The argument list was longer than what is kept, and was cut.
    #[serde(default)]
    pub argv_truncated: bool,
    pub adopted: bool,
}

/// A process (its whole thread group) ended.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    pub pid: u32,
    #[serde(default)]
    pub process_key: Option<String>,
    pub comm: String,
    /// Exit status when it exited normally; `null` when killed or unknown.
    pub exit_code: Option<i32>,
    /// Signal that killed it; `null` when it exited normally or unknown.
    pub signal: Option<i32>,
    /// Lifetime since the process was forked, in microseconds; `null`
    /// when unknown.
    pub duration_us: Option<u64>,
    /// For a governed job: its report. Absent for other processes.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobReport>,
}

/// The exit report of a governed job, from its cgroup.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    pub job_id: String,
    /// The kernel OOM-killed a process of the job; `null` when unknown.
    pub oom_killed: Option<bool>,
    pub cpu_usage_us: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    /// The exit was not seen (the kernel lost it); a /proc scan found the
    /// process gone, and the report was read from the cgroup then.
    #[serde(default)]
    pub recovered: bool,
}

/// A workload was placed under governance.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Governed {
    pub pid: u32,
    #[serde(default)]
    pub process_key: Option<String>,
    pub job_id: String,
    /// The job's cgroup path (the same in every v1 hierarchy); `null` in
    /// unprivileged mode.
    pub cgroup: Option<String>,
    pub mode: Mode,
    /// What is in force, read back from the kernel (v2 syntax).
    pub limits: Limits,
    /// The job's tier (`live`, `standard`, `batch`): its rule's, or `run`'s
    /// and `attach`'s `--tier`; null when none was given.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// `watch`: the policy rule that matched; null for `run` and `attach`.
    #[serde(default)]
    pub rule: Option<String>,
    /// `watch`: found by a /proc scan (at start-up, or after lost events)
    /// rather than at its exec.
    #[serde(default)]
    pub adopted: bool,
    /// `watch` with eBPF: microseconds from the kernel's exec timestamp to
    /// the completed move into the job cgroup; null otherwise.
    #[serde(default)]
    pub latency_us: Option<u64>,
}

/// `watch` found a process already in an ffrtmp job cgroup (made by `run`,
/// `attach` or an earlier daemon) and left it there; its exit will be
/// reported with the job's report.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    pub pid: u32,
    #[serde(default)]
    pub process_key: Option<String>,
    pub comm: String,
    pub job_id: String,
    pub cgroup: String,
    /// The tier its job was made in, from the job's record in the
    /// ledger; null when it has none.
    #[serde(default)]
    pub tier: Option<Tier>,
}

/// The wrapper left; the workload runs on, still governed.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detached {
    pub pid: u32,
    #[serde(default)]
    pub process_key: Option<String>,
    pub job_id: String,
    /// What made the wrapper leave (e.g. `SIGTERM`).
    pub reason: String,
}

/// `watch` read its policy again (SIGHUP, `systemctl reload`): whether the
/// new one is in force, or why the running one stays.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The policy file; `None` for the embedded policy.
    pub path: Option<String>,
    /// Whether the file's policy now governs new processes.
    pub applied: bool,
    /// How many rules govern now (the new policy's, or the running one's).
    pub rules: usize,
    /// Why the running policy stays, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A live job's threads wait for a CPU so much that it is at risk of
/// falling behind realtime (`watch`'s pressure watch, `pressure/`); or,
/// with `cleared`, it no longer is.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    pub job_id: String,
    pub cgroup: String,
    pub tier: Tier,
    /// Share of the window its threads spent waiting for a CPU (0..1).
    pub waiting: f64,
    /// CPUs it used in the window.
    pub usage_cpus: f64,
    /// The window measured, in microseconds.
    pub window_us: u64,
    /// Why it waits: its own quota, or CPUs busy with others.
    pub cause: Cause,
    /// Which counter `waiting` comes from.
    pub signal: Signal,
    /// It recovered (or ended): no longer at risk.
    pub cleared: bool,
}

/// Why a job waits for a CPU.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Its `cpu_max` quota throttled it for part of the window.
    Throttled,
    /// The CPUs were busy with other work.
    Contended,
}

/// Which counter a waiting share came from.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// `cpu.pressure` of the job's cgroup (cgroup v2 with PSI): the time
    /// at least one of its threads waited.
    Psi,
    /// Its threads' run-queue waits summed (`/proc/TID/schedstat`; v1, or
    /// v2 without PSI), capped at the window.
    Schedstat,
}

/// Events dropped since the last `lost` event of the same reason.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lost {
    pub count: u64,
    /// Where they were dropped (absent before this field existed: `ring`).
    #[serde(default)]
    pub reason: LostReason,
}

/// Where events were dropped.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LostReason {
    /// The kernel's ring buffer was full: execs and exits were not seen
    /// (`watch` rescans /proc).
    #[default]
    Ring,
    /// The output's queue was full (a consumer that does not keep up):
    /// events were not written; governing went on.
    Output,
}

/// ffrtmp does less than asked, and says why.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Degraded {
    /// The limit not applied, when the degradation is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitName>,
    pub reason: String,
    /// What ffrtmp does instead.
    pub fallback: Fallback,
}

impl Degraded {
    /// ffrtmp does less than asked, about no single limit.
    pub fn note(reason: String) -> Self {
        Degraded {
            limit: None,
            reason,
            fallback: Fallback::None,
        }
    }
}

macro_rules! into_body {
    ($($v:ident),*) => {$(
        impl From<$v> for Body {
            fn from(b: $v) -> Self { Body::$v(b) }
        }
    )*};
}
into_body!(
    Started, Exec, Exit, Lost, Degraded, Governed, Tracked, Detached, Pressure
);

impl From<Reloaded> for Body {
    fn from(b: Reloaded) -> Self {
        Body::Policy(b)
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// Header first, then the body's own fields.
        #[derive(Serialize)]
        struct Wire<'a, B> {
            event: &'static str,
            ts: Timestamp,
            source: Source,
            host: &'static str,
            boot_id: &'static str,
            #[serde(flatten)]
            body: &'a B,
        }
        fn wire<'a, B>(e: &Event, body: &'a B) -> Wire<'a, B> {
            let node = node::node();
            Wire {
                event: e.body.name(),
                ts: e.ts,
                source: e.source,
                host: &node.host,
                boot_id: &node.boot_id,
                body,
            }
        }
        match &self.body {
            Body::Started(b) => wire(self, b).serialize(s),
            Body::Exec(b) => wire(self, b).serialize(s),
            Body::Exit(b) => wire(self, b).serialize(s),
            Body::Lost(b) => wire(self, b).serialize(s),
            Body::Degraded(b) => wire(self, b).serialize(s),
            Body::Governed(b) => wire(self, b).serialize(s),
            Body::Tracked(b) => wire(self, b).serialize(s),
            Body::Detached(b) => wire(self, b).serialize(s),
            Body::Policy(b) => wire(self, b).serialize(s),
            Body::Pressure(b) => wire(self, b).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            ts: Timestamp,
            source: Source,
            #[serde(flatten)]
            body: Body,
        }
        let w = Wire::deserialize(d)?;
        Ok(Event {
            ts: w.ts,
            source: w.source,
            body: w.body,
            kernel: None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
