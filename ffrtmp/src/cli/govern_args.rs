//! Options shared by `run` and `attach`, and the event output they write to.
use std::{fs::File, io, path::PathBuf};

use clap::Args;

use crate::{
    events::{Emitter, Format},
    govern::limits::{
        Count, CpuMax, IoMax, JobId, Limits, Size, parse_cpu_weight, parse_nice,
        parse_oom_score_adj, parse_pids_max,
    },
};

/// Where `run` and `attach` write their events.
pub type EventOut = Emitter<Box<dyn io::Write>>;

#[derive(Debug, Args)]
pub struct GovernArgs {
    /// Job name: 1..64 of [A-Za-z0-9._-], not ".", ".." or ".staging"; names the job's
    /// cgroup. A job id in use by a live job exits 2, except for `attach` to
    /// a process already in that job: its limits are then updated.
    #[arg(long, value_name = "ID")]
    pub job_id: Option<JobId>,
    /// CPU bandwidth, cgroup v2 syntax: "QUOTA PERIOD" in µs ("200000 100000" = 2 CPUs), "max", "max PERIOD".
    #[arg(long, value_name = "SPEC")]
    pub cpu_max: Option<CpuMax>,
    /// Proportional CPU weight, 1..10000 (100 is the default share).
    #[arg(long, value_name = "N", value_parser = parse_cpu_weight)]
    pub cpu_weight: Option<u32>,
    /// Memory limit: bytes, or 512M / 4G / …, or "max". Exceeding it OOM-kills.
    #[arg(long, value_name = "SIZE")]
    pub memory_max: Option<Size>,
    /// Memory throttling threshold (v1: soft limit): same syntax.
    #[arg(long, value_name = "SIZE")]
    pub memory_high: Option<Size>,
    /// IO limits for one device: "MAJ:MIN rbps=N wbps=N riops=N wiops=N" (any subset); repeatable.
    #[arg(long, value_name = "SPEC")]
    pub io_max: Vec<IoMax>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N", value_parser = parse_pids_max)]
    pub pids_max: Option<Count>,
    /// Nice value -20..19 for every thread (below 0 only when privileged).
    #[arg(long, value_name = "N", value_parser = parse_nice, allow_negative_numbers = true)]
    pub nice: Option<i32>,
    /// OOM score adjustment -1000..1000 (lowering only when privileged).
    #[arg(long, value_name = "N", value_parser = parse_oom_score_adj, allow_negative_numbers = true)]
    pub oom_score_adj: Option<i32>,
    /// Parent of job cgroups, as a cgroup path (/ffrtmp) [default: /ffrtmp, or <delegated subtree>/ffrtmp].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<String>,
    /// Refuse to start or attach if any requested limit cannot be applied.
    #[arg(long)]
    pub strict: bool,
    /// Event format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Write events to FILE (appended) instead of stderr; never to stdout.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
}

impl GovernArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            cpu_max: self.cpu_max,
            cpu_weight: self.cpu_weight,
            memory_max: self.memory_max,
            memory_high: self.memory_high,
            io_max: self.io_max.clone(),
            pids_max: self.pids_max,
            nice: self.nice,
            oom_score_adj: self.oom_score_adj,
        }
    }

    /// The event output: stderr, or `--events FILE`.
    pub fn emitter(&self) -> io::Result<EventOut> {
        let out: Box<dyn io::Write> = match &self.events {
            Some(path) => Box::new(File::options().create(true).append(true).open(path)?),
            None => Box::new(io::stderr()),
        };
        Ok(Emitter::new(out, self.format))
    }
}
