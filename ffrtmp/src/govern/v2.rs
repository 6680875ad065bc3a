//! Job cgroups on a cgroup v2 hierarchy.
//!
//! A limit file only exists when its controller is enabled in the parent's
//! `cgroup.subtree_control` — the upstream wrapper's silent failure — so the
//! needed controllers are enabled on every ancestor from the hierarchy root
//! down to the job's parent before the job is made. Every write is read back.
use std::{fs, io, path::PathBuf};

use serde_json::{Value, json};

use super::{
    Applied, Existing, GovernError, Stats,
    layout::{CgroupPath, Mount},
    limits::Limits,
};

/// A job's cgroup in the v2 hierarchy.
#[derive(Debug)]
pub struct Job {
    pub dir: PathBuf,
}

/// Controllers a job's limits (and its exit report) need.
fn controllers_for(limits: &Limits) -> Vec<&'static str> {
    // cpu and memory always: cpu.stat and memory.peak/events feed the exit
    // report even without a limit.
    let mut c = vec!["cpu", "memory"];
    if !limits.io_max.is_empty() {
        c.push("io");
    }
    if limits.pids_max.is_some() {
        c.push("pids");
    }
    c
}

/// Enables `controllers` for the children of every cgroup from the root to
/// `parent`. Returns the controllers that could not be enabled, with why.
pub fn enable_controllers(
    mount: &Mount,
    parent: &CgroupPath,
    controllers: &[&'static str],
) -> Vec<(&'static str, String)> {
    let mut failed = Vec::new();
    for cg in parent.lineage() {
        let file = mount.dir_of(&cg).join("cgroup.subtree_control");
        let enabled = crate::observe::proc::read_text(&file).unwrap_or_default();
        for &c in controllers {
            if failed.iter().any(|(f, _)| *f == c) || enabled.split_whitespace().any(|e| e == c) {
                continue;
            }
            if let Err(e) = fs::write(&file, format!("+{c}")) {
                failed.push((c, format!("enabling {c} in {}: {e}", file.display())));
            }
        }
    }
    failed
}

impl Job {
    /// Makes the job cgroup under `root`, which the caller has created (and
    /// holds locked, see the claims in the module above).
    pub fn create(
        mount: &Mount,
        root: &CgroupPath,
        path: &CgroupPath,
        limits: &Limits,
        existing: Existing,
    ) -> Result<(Self, Applied), GovernError> {
        let mut applied = Applied::default();
        for (controller, reason) in enable_controllers(mount, root, &controllers_for(limits)) {
            applied.fail(controller, reason);
        }
        let dir = mount.dir_of(path);
        match fs::create_dir(&dir) {
            Err(e)
                if !(e.kind() == io::ErrorKind::AlreadyExists && existing == Existing::Update) =>
            {
                return Err(GovernError::create_job(&dir, e));
            }
            _ => {}
        }
        let job = Job { dir };
        job.apply(limits, &mut applied);
        Ok((job, applied))
    }

    fn write(&self, file: &str, value: &str) -> Result<String, String> {
        let path = self.dir.join(file);
        fs::write(&path, value)
            .map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))?;
        crate::observe::proc::read_text(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("reading back {}: {e}", path.display()))
    }

    fn apply(&self, limits: &Limits, applied: &mut Applied) {
        // Values are reported as the kernel reads them back; a number where
        // the file holds one (cpu.weight), else the file's text.
        let mut set = |name: &'static str, file: &str, value: String, numeric: bool| {
            let back = self.write(file, &value).and_then(|back| {
                if !numeric {
                    return Ok(Value::String(back));
                }
                back.parse::<u64>()
                    .map(|n| json!(n))
                    .map_err(|_| format!("{file} reads {back:?}"))
            });
            match back {
                Ok(v) => applied.set(name, v),
                Err(reason) => applied.fail(name, reason),
            }
        };
        if let Some(v) = limits.cpu_max {
            set("cpu_max", "cpu.max", v.to_string(), false);
        }
        if let Some(v) = limits.cpu_weight {
            set("cpu_weight", "cpu.weight", v.to_string(), true);
        }
        if let Some(v) = limits.memory_max {
            set("memory_max", "memory.max", v.to_string(), false);
        }
        if let Some(v) = limits.memory_high {
            set("memory_high", "memory.high", v.to_string(), false);
        }
        if let Some(v) = limits.pids_max {
            set("pids_max", "pids.max", v.to_string(), false);
        }
        let mut io = Vec::new();
        for dev in &limits.io_max {
            match self.write("io.max", &dev.to_string()) {
                Ok(back) => {
                    let prefix = format!("{}:{} ", dev.major, dev.minor);
                    match back.lines().find(|l| l.starts_with(&prefix)) {
                        Some(line) => io.push(json!(line)),
                        None => applied.fail(
                            "io_max",
                            format!("io.max has no line for {prefix}after writing it"),
                        ),
                    }
                }
                Err(reason) => applied.fail("io_max", reason),
            }
        }
        if !io.is_empty() {
            applied.set("io_max", Value::Array(io));
        }
    }

    pub fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.dir.join("cgroup.procs")]
    }

    pub fn stats(&self) -> Stats {
        let flat = |file: &str, key: &str| -> Option<u64> {
            let text = crate::observe::proc::read_text(self.dir.join(file)).ok()?;
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok())?
            })
        };
        let single = |file: &str| -> Option<u64> {
            crate::observe::proc::read_text(self.dir.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Stats {
            oom_killed: flat("memory.events", "oom_kill").map(|n| n > 0),
            cpu_usage_us: flat("cpu.stat", "usage_usec"),
            // memory.peak exists from 5.19 on.
            memory_peak_bytes: single("memory.peak"),
        }
    }

    pub fn is_empty(&self) -> bool {
        crate::observe::proc::read_text(self.dir.join("cgroup.procs"))
            .is_ok_and(|s| s.trim().is_empty())
    }

    pub fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }
}
