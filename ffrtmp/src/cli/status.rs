//! `ffrtmp status`: what ffrtmp can do on this machine (mode, cgroup layout,
//! controllers, eBPF prerequisites) and the jobs it governs now, read from
//! the cgroup tree (the tree is the state: nothing else is kept).
use std::{collections::BTreeMap, fs, path::Path, process::ExitCode};

use clap::Args;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::exit;
use crate::{
    events::Format,
    govern::{
        Context,
        caps::{Cap, Caps, Need},
        job::{self, Job},
        ledger::MadeBy,
    },
    limits::{LimitName, Tier},
    observe::ebpf::btf::VMLINUX_BTF,
    pressure::{self, TierDemand},
};

/// The limit files reported per job, by hierarchy kind: each limit's own
/// (its row in the limits table), once each.
fn limit_files(v2: bool) -> Vec<&'static str> {
    let mut files: Vec<&'static str> = LimitName::ALL
        .iter()
        .flat_map(|n| {
            let row = n.row();
            if v2 { row.status_v2 } else { row.status_v1 }
        })
        .copied()
        .collect();
    files.dedup();
    files
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// ffrtmp's root cgroup, as for run/attach.
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<String>,
    /// How long the jobs' CPU use is sampled for `capacity` (1ms..1h).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = super::parse_interval)]
    pub window: std::time::Duration,
}

#[derive(Serialize)]
struct Status {
    mode: String,
    layout: Value,
    root: Option<String>,
    /// Where jobs go: `tree` (under the root) or `scopes` (systemd's
    /// transient scopes, on a systemd host).
    placement: &'static str,
    ebpf: Value,
    /// The capabilities ffrtmp uses that it has, and what each feature needs.
    capabilities: Value,
    /// The node's CPUs against what each tier's jobs use and ask for.
    capacity: Capacity,
    jobs: Vec<Shown>,
}

#[derive(Serialize)]
struct Capacity {
    /// CPUs this node can run ffrtmp's jobs on.
    cpus: usize,
    window_ms: u128,
    /// By tier (`none`: jobs without one).
    tiers: BTreeMap<String, TierDemand>,
}

/// One job as `status` shows it.
#[derive(Serialize)]
struct Shown {
    job_id: String,
    cgroup: String,
    pids: Vec<u32>,
    /// A live ffrtmp (run, attach or watch) holds the job; false for
    /// detached jobs.
    supervised: bool,
    /// Limit files as the kernel reads them, by hierarchy directory.
    limits: Map<String, Value>,
    /// Its tier, from its record in the ledger; null when it has none (or
    /// the ledger cannot be read: another user's, say).
    tier: Option<Tier>,
    /// The command that made it (`run`, `attach`, `watch`), from the same
    /// record.
    made_by: Option<MadeBy>,
    /// On a systemd host: the job's transient scope, which systemd holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
}

impl Shown {
    /// What `status` shows of `job`, read from its directories.
    fn of(ctx: &Context, job: &Job, v2: bool) -> Self {
        let mut limits = Map::new();
        let dirs = job.dirs();
        let files = limit_files(dirs.len() == 1 && v2);
        for dir in dirs {
            for f in &files {
                if let Ok(v) = fs::read_to_string(dir.join(f)) {
                    limits.insert(f.to_string(), json!(v.trim()));
                }
            }
        }
        Shown {
            job_id: job.id.clone(),
            cgroup: job.cgroup.as_str().to_string(),
            pids: job.pids(),
            supervised: job.supervised(ctx),
            limits,
            tier: job.tier(),
            made_by: job.record.by,
            unit: job.unit().map(String::from),
        }
    }
}

pub(super) fn status(args: StatusArgs) -> ExitCode {
    let ctx = match Context::detect(args.cgroup_root.as_deref()) {
        Ok(c) => c,
        Err(e) if e.is_usage() => return exit::fail(exit::USAGE, &e),
        Err(e) => {
            return exit::fail(exit::FAILURE, &e);
        }
    };
    let v2 = ctx.layout.kind() == crate::govern::layout::Kind::V2;
    let listed = job::list(&ctx);
    let jobs = listed.iter().map(|j| Shown::of(&ctx, j, v2)).collect();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let capacity = Capacity {
        cpus,
        window_ms: args.window.as_millis(),
        tiers: pressure::demand(&ctx, &listed, args.window),
    };
    let caps = Caps::effective();
    let status = Status {
        mode: ctx.mode.as_str().into(),
        layout: layout(&ctx),
        root: ctx.root.as_ref().map(|r| r.as_str().to_string()),
        placement: if ctx.scopes { "scopes" } else { "tree" },
        ebpf: json!({
            "btf": Path::new(VMLINUX_BTF).exists(),
            "capable": caps.allows(Need::Ebpf),
        }),
        capabilities: json!({
            "effective": Cap::ALL.iter().filter(|c| caps.has(**c)).map(|c| c.name()).collect::<Vec<_>>(),
            "features": caps.features(),
        }),
        capacity,
        jobs,
    };
    match args.format {
        Format::Json => match serde_json::to_string_pretty(&status) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ffrtmp: error: {e}");
                return ExitCode::from(exit::FAILURE);
            }
        },
        Format::Text => print_text(&status),
    }
    ExitCode::SUCCESS
}

/// The cgroup layout as `status` shows it.
fn layout(ctx: &Context) -> Value {
    let v1: BTreeMap<&str, String> = ctx
        .layout
        .v1
        .iter()
        .map(|(c, m)| (c.as_str(), m.point.display().to_string()))
        .collect();
    json!({
        "kind": ctx.layout.kind(),
        "v2": ctx.layout.v2.as_ref().map(|m| m.point.display().to_string()),
        "v2_controllers": ctx.layout.v2_controllers(),
        "v1": v1,
        "favordynmods": ctx.layout.favordynmods,
        // Whether moving a running process (attach, watch) avoids an RCU
        // grace period (govern::dynmods).
        "fast_migrations": crate::govern::dynmods::migrations_are_fast(&ctx.layout),
    })
}

/// `--format text`: a line per fact, a line per tier and per job (with
/// its unit on a systemd host).
fn print_text(status: &Status) {
    println!("mode: {}", status.mode);
    println!("cgroups: {}", status.layout);
    println!("root: {}", status.root.as_deref().unwrap_or("-"));
    println!("ebpf: {}", status.ebpf);
    println!("capabilities: {}", status.capabilities);
    println!(
        "capacity: {} CPUs; over {} ms:",
        status.capacity.cpus, status.capacity.window_ms
    );
    for (tier, d) in &status.capacity.tiers {
        println!(
            "  {tier}: {} jobs, using {:.2} CPUs, asking {:.2}, {} at risk",
            d.jobs, d.usage_cpus, d.demand_cpus, d.at_risk
        );
    }
    println!("jobs: {}", status.jobs.len());
    for j in &status.jobs {
        println!(
            "  {} {} pids={:?} supervised={} tier={} by={} unit={} {}",
            j.job_id,
            j.cgroup,
            j.pids,
            j.supervised,
            j.tier.map_or("-", Tier::as_str),
            j.made_by.map_or("-", MadeBy::as_str),
            j.unit.as_deref().unwrap_or("-"),
            Value::Object(j.limits.clone())
        );
    }
}
