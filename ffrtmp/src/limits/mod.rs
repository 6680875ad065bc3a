//! The limits a job can ask for: one table, one type per limit.
//!
//! Every limit is a row of the table in `limits/table.rs` — its name, its field in
//! [`Limits`] and its type — and the type's [`Limit`] impl says everything
//! else about it: the `--help` text, how its text is parsed (the same for
//! `--cpu-max` and a policy's `cpu_max`), which controller it needs, how it is
//! written to a v2 and to a v1 cgroup and read back, and which files `status`
//! shows. From the table come the [`LimitName`] enum (the `limit` of a
//! `degraded` event, the keys of `governed.limits`), the [`Limits`] struct,
//! the command-line options of `run` and `attach` (`cli/govern_args.rs`),
//! the policy keys (`policy/`) and the order in which limits are written.
//! Adding a limit is one row and one impl; the compiler refuses the row
//! until the impl is complete.
//!
//! Syntax follows cgroup v2's files, so the deployment guide's forms work
//! verbatim (`--cpu-max "100000 100000"`, `--memory-max
//! $((4*1024*1024*1024))`, `--io-max "8:0 rbps=104857600"`); on v1 hosts each
//! limit is translated to its v1 files and reported back in v2 terms.
//!
//! This module is a leaf: it knows no cgroup paths, no events, no CLI. The
//! cgroup writers (`govern/v1.rs`, `govern/v2.rs`) hand a limit a [`Files`]
//! and record its [`Outcome`] in an [`Applied`].
mod applied;
mod cpu;
mod io;
mod job_id;
mod memory;
mod pids;
mod process;
mod table;
mod tier;
mod values;

use std::fmt;

pub use applied::{Applied, Failure, Outcome};
pub use cpu::{CpuIdle, CpuMax, CpuMaxBurst, CpuWeight};
pub use io::{IoLine, IoMax};
pub use job_id::JobId;
pub use memory::{MemoryHigh, MemoryMax};
pub use pids::PidsMax;
pub use process::{Nice, OomScoreAdj};
pub use table::{InForce, LimitName, Limits};
pub use tier::Tier;
pub use values::{Count, Size};

/// Errors in a limit or a job id, worded for the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error(
        "job id {0:?} must be 1 to 64 characters of [A-Za-z0-9._-], and not \".\", \"..\" or \".staging\" (reserved)"
    )]
    JobId(String),
    #[error(
        "cpu max {0:?} must be \"QUOTA PERIOD\", \"max\" or \"max PERIOD\" (microseconds, period 1000..=1000000, quota >= 1000)"
    )]
    CpuMax(String),
    #[error(
        "cpu max burst {0:?} must be a whole number of microseconds from 0 to {max}",
        max = CpuMaxBurst::MAX
    )]
    CpuMaxBurst(String),
    #[error(
        "cpu max burst {burst} must not exceed the cpu max quota {quota}: the kernel lets a job save up at most one period's quota"
    )]
    BurstAboveQuota { burst: u64, quota: u64 },
    #[error("cpu weight {0:?} must be an integer from 1 to 10000")]
    CpuWeight(String),
    #[error("cpu idle {0:?} must be 0 or 1")]
    CpuIdle(String),
    #[error(
        "cpu weight and cpu idle 1 cannot both be set: an idle job has no weight (the kernel refuses it); set cpu idle 0 with a weight"
    )]
    WeightWhenIdle,
    #[error("size {0:?} must be bytes, a number with K, M, G or T (powers of 1024), or \"max\"")]
    Size(String),
    #[error("memory limit {0:?} is below 1M: no program can start in it (exec fails with ENOMEM)")]
    MemoryTooSmall(String),
    #[error(
        "io max {0:?} must be \"MAJ:MIN\" followed by one or more of rbps=N wbps=N riops=N wiops=N (N a positive integer or \"max\")"
    )]
    IoMax(String),
    #[error("pids max {0:?} must be a positive integer or \"max\"")]
    PidsMax(String),
    #[error("tier {0:?} must be \"live\", \"standard\" or \"batch\"")]
    Tier(String),
    #[error("nice {0:?} must be an integer from -20 to 19")]
    Nice(String),
    #[error("oom score adj {0:?} must be an integer from -1000 to 1000")]
    OomScoreAdj(String),
}

/// The controller a cgroup limit needs, in each kind of hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controllers {
    /// Enabled in every ancestor's `cgroup.subtree_control` (v2).
    pub v2: &'static str,
    /// The v1 hierarchy its files are in.
    pub v1: &'static str,
}

/// A job's cgroup files of one limit's controller, as the limit writes
/// them: the controller comes from the limit's row ([`Limit::CGROUP`]),
/// never from the limit's code (on v2 every file is in the one job
/// directory; on v1, in that controller's hierarchy).
pub trait Files {
    /// Writes `value` to `file` and returns the file's text as the kernel
    /// reads it back, trimmed.
    fn write(&self, file: &str, value: &str) -> Result<String, FileError>;
}

/// Why a limit's file was not written as asked.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The kernel refused the write (a file that does not exist is one this
    /// kernel lacks: its controller is enabled, or its hierarchy mounted,
    /// by then).
    #[error("writing {value:?} to {}: {source}{}", path.display(), lacking(path, source))]
    Write {
        path: std::path::PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("reading back {}: {source}", path.display())]
    ReadBack {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The file reads back something that is not the limit's value.
    #[error("{file} reads {back:?}")]
    Unexpected { file: String, back: String },
    /// A file of lines (`io.max`, v1's `blkio.throttle.*`) has none for
    /// the device just written.
    #[error("{file} has no line for {device} after writing it")]
    NoLine { file: String, device: String },
    /// v1: the limit's hierarchy is not mounted.
    #[error("the {0} controller is not mounted")]
    NotMounted(&'static str),
    /// A scope's file, as systemd wrote it, is not what ffrtmp would have
    /// written.
    #[error("systemd set {} to {back:?}, not {value:?}", path.display())]
    Differs {
        path: std::path::PathBuf,
        back: String,
        value: String,
    },
}

/// `: this kernel has no FILE` when the write found no such file.
fn lacking(path: &std::path::Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        format!(": this kernel has no {file}")
    } else {
        String::new()
    }
}

/// A limit's failure reason (the `reason` of its `degraded` event) is the
/// error's text.
impl From<FileError> for String {
    fn from(e: FileError) -> Self {
        e.to_string()
    }
}

/// Its name and its field of [`InForce`], from the table (implemented by
/// the table for each row).
pub trait Named {
    const NAME: LimitName;

    /// Its read-back's slot in `in_force`.
    fn in_force(in_force: &mut InForce) -> &mut Option<Self::Back>
    where
        Self: Limit;
}

/// One kind of limit. Its value is what was asked for, validated; it is
/// displayed as its option takes it.
pub trait Limit: Named + Clone + fmt::Debug + fmt::Display + PartialEq + Eq {
    /// `--help` text of its option.
    const HELP: &'static str;
    /// The option's value name (`SPEC`, `SIZE`, `N`, `USEC`).
    const VALUE_NAME: &'static str;
    /// Its values may be negative (`--nice -5` is a value, not an option).
    const NEGATIVE: bool = false;
    /// May be given more than once (a repeated option, or a policy list);
    /// the values add up through [`Limit::merge`].
    const REPEATABLE: bool = false;
    /// The controller it needs; `None` for a per-process setting (nice,
    /// oom_score_adj), which the placement applies to the process itself.
    const CGROUP: Option<Controllers>;
    /// The files `ffrtmp status` shows for it, on v2 and on v1.
    const STATUS_V2: &'static [&'static str] = &[];
    const STATUS_V1: &'static [&'static str] = &[];

    /// What the kernel reads back for it, in v2 terms: the value of its
    /// key in `governed.limits` (an integer, `"max"`, a "QUOTA PERIOD" text,
    /// a list of `io.max` lines), whose schema is generated from it.
    type Back: Clone + fmt::Debug + PartialEq + serde::Serialize;

    /// Parses the option's (or the policy key's) text.
    fn parse(text: &str) -> Result<Self, LimitError>;

    /// Adds a repeated value (see [`Limit::REPEATABLE`]); else it replaces.
    fn merge(&mut self, more: Self) {
        *self = more;
    }

    /// Writes it to a v2 job cgroup and reads it back. Only called when
    /// [`Limit::CGROUP`] is set.
    fn apply_v2(&self, files: &dyn Files) -> Outcome<Self::Back> {
        let _ = files;
        Outcome::not_a_cgroup_limit()
    }

    /// Writes it to a job's v1 cgroups and reads it back, reported in v2
    /// terms. Only called when [`Limit::CGROUP`] is set.
    fn apply_v1(&self, files: &dyn Files) -> Outcome<Self::Back> {
        let _ = files;
        Outcome::not_a_cgroup_limit()
    }

    /// The properties of a systemd unit that set it (a job that is a
    /// transient scope, `govern/scope.rs`); systemd then writes the same
    /// v2 files [`Limit::apply_v2`] would, and they are read back the same
    /// way. `Err`: why systemd cannot set it. Only called when
    /// [`Limit::CGROUP`] is set.
    fn systemd(&self) -> Result<Vec<Property>, NoProperty> {
        Err(NoProperty::Unsupported(Self::NAME))
    }
}

/// Why systemd cannot set a limit on a scope (the `degraded` reason).
#[derive(Debug, thiserror::Error)]
pub enum NoProperty {
    #[error("systemd (252) has no unit property for {0}")]
    Unsupported(LimitName),
    /// systemd names a device by its node; `MAJ:MIN` is not a block device.
    #[error("no block device {device} ({}: {source})", uevent.display())]
    NoDevice {
        device: String,
        uevent: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} names no device", .0.display())]
    Unnamed(std::path::PathBuf),
}

/// A systemd unit property that sets a limit (systemd.resource-control(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Property {
    pub name: &'static str,
    pub value: PropertyValue,
}

/// A property's value, as D-Bus carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropertyValue {
    /// `t`, with [`Property::INFINITY`] for "infinity".
    Number(u64),
    /// `a(st)`: (device path, value) pairs, as the `IO…Max=` ones take.
    Devices(Vec<(String, u64)>),
}

impl Property {
    /// systemd's "infinity".
    pub const INFINITY: u64 = u64::MAX;

    pub fn number(name: &'static str, value: u64) -> Self {
        Property {
            name,
            value: PropertyValue::Number(value),
        }
    }
}

/// Something done to each limit of a [`Limits`] that is set, in table order.
pub trait Visit {
    fn visit<L: Limit>(&mut self, limit: &L);
}

/// What the table knows of one limit, without its type: for the command
/// line and the policy, which handle every limit alike.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub name: LimitName,
    pub help: &'static str,
    pub value_name: &'static str,
    pub negative: bool,
    pub repeatable: bool,
    pub cgroup: Option<Controllers>,
    pub status_v2: &'static [&'static str],
    pub status_v1: &'static [&'static str],
    /// Checks a value's text (the CLI checks while parsing, then sets).
    pub check: fn(&str) -> Result<(), LimitError>,
}

impl Row {
    fn of<L: Limit>() -> Self {
        Row {
            name: L::NAME,
            help: L::HELP,
            value_name: L::VALUE_NAME,
            negative: L::NEGATIVE,
            repeatable: L::REPEATABLE,
            cgroup: L::CGROUP,
            status_v2: L::STATUS_V2,
            status_v1: L::STATUS_V1,
            check: |text| L::parse(text).map(drop),
        }
    }
}
