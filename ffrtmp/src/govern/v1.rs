//! Job cgroups on cgroup v1 hierarchies (v1 and hybrid hosts): one directory
//! per controller hierarchy, each limit written to its own controller (the
//! upstream wrapper wrote memory limits into the cpu hierarchy), every
//! write read back and reported in v2 terms.
use std::{collections::BTreeMap, fs, io, path::PathBuf};

use serde_json::{Value, json};

use super::{
    Applied, Existing, GovernError, Stats,
    layout::{CgroupPath, Mount},
    limits::{Count, CpuMax, Limits, Size},
};

/// v1 reads an unlimited memory limit back as this (PAGE_COUNTER_MAX pages).
const V1_MEMORY_UNLIMITED_MIN: u64 = 1 << 62;
/// `cpu.shares` for the v2 default weight (100 → 1024, as systemd maps it).
const SHARES_PER_WEIGHT_100: u64 = 1024;

/// A job's cgroups, one per v1 hierarchy (co-mounted controllers share one).
#[derive(Debug)]
pub struct Job {
    dirs: BTreeMap<String, PathBuf>,
}

/// The v1 controllers a job needs: those of its limits, plus cpuacct and
/// memory, whose statistics feed the exit report. Every v1 hierarchy costs a
/// directory to make, a migration to join and a directory to remove, so a
/// job is not put in hierarchies nothing asked for.
fn controllers_for(limits: &Limits) -> Vec<&'static str> {
    let mut c = vec!["cpuacct", "memory"];
    if limits.cpu_max.is_some() || limits.cpu_weight.is_some() {
        c.push("cpu");
    }
    if !limits.io_max.is_empty() {
        c.push("blkio");
    }
    if limits.pids_max.is_some() {
        c.push("pids");
    }
    c
}

impl Job {
    pub fn create(
        mounts: &BTreeMap<String, Mount>,
        path: &CgroupPath,
        limits: &Limits,
        existing: Existing,
    ) -> Result<(Self, Applied), GovernError> {
        let mut dirs = BTreeMap::new();
        let mut made: Vec<PathBuf> = Vec::new();
        let needed = controllers_for(limits);
        // Sorted by directory: the first one carries the job's claim.
        let mut wanted: Vec<(&String, &Mount)> = mounts
            .iter()
            .filter(|(c, _)| needed.contains(&c.as_str()))
            .collect();
        wanted.sort_by_key(|(_, m)| m.dir_of(path));
        for (controller, mount) in wanted {
            let dir = mount.dir_of(path);
            // Co-mounted controllers share one directory.
            if !dirs.values().any(|d| *d == dir) {
                // The root usually exists: make it only when missing.
                let mut made_dir = fs::create_dir(&dir);
                if let (Err(e), Some(parent)) = (&made_dir, dir.parent())
                    && e.kind() == io::ErrorKind::NotFound
                {
                    fs::create_dir_all(parent)
                        .map_err(|e| GovernError::io("creating", parent, e))?;
                    made_dir = fs::create_dir(&dir);
                }
                match made_dir {
                    Ok(()) => made.push(dir.clone()),
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && existing == Existing::Update => {}
                    Err(e) => {
                        // Undo what this job made so far; never touch a
                        // directory it did not make.
                        for d in &made {
                            let _ = fs::remove_dir(d);
                        }
                        return Err(GovernError::create_job(&dir, e));
                    }
                }
            }
            dirs.insert(controller.clone(), dir);
        }
        let job = Job { dirs };
        let mut applied = Applied::default();
        job.apply(limits, &mut applied);
        Ok((job, applied))
    }

    /// A job's existing directories (every hierarchy that has one).
    pub fn existing(mounts: &BTreeMap<String, Mount>, path: &CgroupPath) -> Option<Self> {
        let dirs: BTreeMap<String, PathBuf> = mounts
            .iter()
            .map(|(c, m)| (c.clone(), m.dir_of(path)))
            .filter(|(_, d)| d.is_dir())
            .collect();
        (!dirs.is_empty()).then_some(Job { dirs })
    }

    fn file(&self, controller: &str, file: &str) -> Result<PathBuf, String> {
        self.dirs
            .get(controller)
            .map(|d| d.join(file))
            .ok_or_else(|| format!("the {controller} controller is not mounted"))
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<String, String> {
        let path = self.file(controller, file)?;
        fs::write(&path, value)
            .map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))?;
        self.read(controller, file)
    }

    fn read(&self, controller: &str, file: &str) -> Result<String, String> {
        let path = self.file(controller, file)?;
        crate::observe::proc::read_text(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("reading back {}: {e}", path.display()))
    }

    fn apply(&self, limits: &Limits, applied: &mut Applied) {
        let mut record = |name: &'static str, r: Result<Value, String>| match r {
            Ok(v) => applied.set(name, v),
            Err(reason) => applied.fail(name, reason),
        };
        if let Some(max) = limits.cpu_max {
            record("cpu_max", self.cpu_max(max));
        }
        if let Some(w) = limits.cpu_weight {
            let shares = (u64::from(w) * SHARES_PER_WEIGHT_100 / 100).max(2);
            record(
                "cpu_weight",
                self.write("cpu", "cpu.shares", &shares.to_string())
                    .and_then(|back| {
                        let shares: u64 = back
                            .parse()
                            .map_err(|_| format!("cpu.shares reads {back:?}"))?;
                        Ok(json!((shares * 100).div_ceil(SHARES_PER_WEIGHT_100)))
                    }),
            );
        }
        if let Some(size) = limits.memory_max {
            record("memory_max", self.memory("memory.limit_in_bytes", size));
        }
        if let Some(size) = limits.memory_high {
            // v1 has no throttling "high"; the soft limit is the closest:
            // reclaim pressure under contention.
            record(
                "memory_high",
                self.memory("memory.soft_limit_in_bytes", size),
            );
        }
        if let Some(max) = limits.pids_max {
            record(
                "pids_max",
                self.write("pids", "pids.max", &max.to_string())
                    .map(Value::String),
            );
        }
        let mut io = Vec::new();
        for dev in &limits.io_max {
            match self.io_max(dev) {
                Ok(line) => io.push(json!(line)),
                Err(reason) => applied.fail("io_max", reason),
            }
        }
        if !io.is_empty() {
            applied.set("io_max", Value::Array(io));
        }
    }

    fn cpu_max(&self, max: CpuMax) -> Result<Value, String> {
        // Period first: the kernel checks the quota against it.
        let period = self.write("cpu", "cpu.cfs_period_us", &max.period.to_string())?;
        let quota = max
            .quota
            .map_or_else(|| "-1".to_string(), |q| q.to_string());
        let quota = self.write("cpu", "cpu.cfs_quota_us", &quota)?;
        let quota = if quota == "-1" {
            "max".to_string()
        } else {
            quota
        };
        Ok(Value::String(format!("{quota} {period}")))
    }

    fn memory(&self, file: &str, size: Size) -> Result<Value, String> {
        let value = match size {
            Size::Max => "-1".to_string(),
            Size::Bytes(n) => n.to_string(),
        };
        let back = self.write("memory", file, &value)?;
        let n: u64 = back.parse().map_err(|_| format!("{file} reads {back:?}"))?;
        Ok(Value::String(if n >= V1_MEMORY_UNLIMITED_MIN {
            "max".into()
        } else {
            n.to_string()
        }))
    }

    fn io_max(&self, dev: &super::limits::IoMax) -> Result<String, String> {
        let device = format!("{}:{}", dev.major, dev.minor);
        let mut parts = vec![device.clone()];
        for (key, value) in dev.fields() {
            let file = match key {
                "rbps" => "blkio.throttle.read_bps_device",
                "wbps" => "blkio.throttle.write_bps_device",
                "riops" => "blkio.throttle.read_iops_device",
                _ => "blkio.throttle.write_iops_device",
            };
            // v1 removes a device's limit when it is set to 0.
            let n = match value {
                Count::Max => 0,
                Count::N(n) => n,
            };
            let back = self.write("blkio", file, &format!("{device} {n}"))?;
            let line = back.lines().find(|l| l.starts_with(&format!("{device} ")));
            match (value, line) {
                (Count::Max, None) => parts.push(format!("{key}=max")),
                (_, Some(l)) => parts.push(format!(
                    "{key}={}",
                    l.split_whitespace().nth(1).unwrap_or("?")
                )),
                (Count::N(_), None) => {
                    return Err(format!("{file} has no line for {device} after writing it"));
                }
            }
        }
        Ok(parts.join(" "))
    }

    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let read = |c: &str, f: &str| self.read(c, f).ok();
        let oom_kill = read("memory", "memory.oom_control").and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        });
        Stats {
            oom_killed: oom_kill.map(|n| n > 0),
            cpu_usage_us: read("cpuacct", "cpuacct.usage")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|ns| ns / 1000),
            memory_peak_bytes: read("memory", "memory.max_usage_in_bytes")
                .and_then(|n| n.parse().ok()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.procs_files()
            .iter()
            .all(|f| crate::observe::proc::read_text(f).is_ok_and(|s| s.trim().is_empty()))
    }

    /// The distinct directories, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.dirs.values().cloned().collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}
