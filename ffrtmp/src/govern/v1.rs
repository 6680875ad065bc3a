//! Job cgroups on cgroup v1 hierarchies (v1 and hybrid hosts): one directory
//! per controller hierarchy, each limit written to its own controller (the
//! upstream wrapper wrote memory limits into the cpu hierarchy), every
//! write read back and reported in v2 terms.
use std::{collections::BTreeMap, fs, io, path::PathBuf};

use super::{
    Existing, GovernError, Stats,
    layout::{CgroupPath, Mount},
    write_and_read_back,
};
use crate::limits::{Applied, FileError, Files, Limit, Limits, Visit};

/// A job's cgroups, one per v1 hierarchy (co-mounted controllers share one).
#[derive(Debug)]
pub(crate) struct Dirs {
    dirs: BTreeMap<String, PathBuf>,
}

/// The v1 controllers a job needs: those of its limits, plus cpuacct and
/// memory, whose statistics feed the exit report. Every v1 hierarchy costs a
/// directory to make, a migration to join and a directory to remove, so a
/// job is not put in hierarchies nothing asked for.
fn controllers_for(limits: &Limits) -> Vec<&'static str> {
    let mut c = vec!["cpuacct", "memory"];
    for name in limits.names() {
        if let Some(needed) = name.row().cgroup
            && !c.contains(&needed.v1)
        {
            c.push(needed.v1);
        }
    }
    c
}

impl Dirs {
    pub(crate) fn create(
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
        let job = Dirs { dirs };
        let mut apply = Apply {
            job: &job,
            applied: Applied::default(),
        };
        limits.visit(&mut apply);
        let applied = apply.applied;
        Ok((job, applied))
    }

    /// A job's existing directories (every hierarchy that has one).
    pub(crate) fn existing(mounts: &BTreeMap<String, Mount>, path: &CgroupPath) -> Option<Self> {
        let dirs: BTreeMap<String, PathBuf> = mounts
            .iter()
            .map(|(c, m)| (c.clone(), m.dir_of(path)))
            .filter(|(_, d)| d.is_dir())
            .collect();
        (!dirs.is_empty()).then_some(Dirs { dirs })
    }

    /// A statistics file of `controller`'s hierarchy, trimmed.
    fn read(&self, controller: &str, file: &str) -> Option<String> {
        let path = self.dirs.get(controller)?.join(file);
        crate::observe::proc::read_text(&path)
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    pub(crate) fn stats(&self) -> Stats {
        let read = |c: &str, f: &str| self.read(c, f);
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

    pub(crate) fn is_empty(&self) -> bool {
        self.procs_files()
            .iter()
            .all(|f| crate::observe::proc::read_text(f).is_ok_and(|s| s.trim().is_empty()))
    }

    /// The distinct directories, one per hierarchy.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.dirs.values().cloned().collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// A job's files in one controller's hierarchy: what a limit whose row
/// names that controller writes.
struct InHierarchy<'a> {
    job: &'a Dirs,
    controller: &'static str,
}

impl Files for InHierarchy<'_> {
    fn write(&self, file: &str, value: &str) -> Result<String, FileError> {
        let dir = self
            .job
            .dirs
            .get(self.controller)
            .ok_or(FileError::NotMounted(self.controller))?;
        write_and_read_back(&dir.join(file), value)
    }
}

/// Writes each cgroup limit to its own hierarchy (its row's controller).
struct Apply<'a> {
    job: &'a Dirs,
    applied: Applied,
}

impl Visit for Apply<'_> {
    fn visit<L: Limit>(&mut self, limit: &L) {
        if let Some(controllers) = L::CGROUP {
            let files = InHierarchy {
                job: self.job,
                controller: controllers.v1,
            };
            self.applied.record::<L>(limit.apply_v1(&files));
        }
    }
}
