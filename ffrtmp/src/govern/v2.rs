//! Job cgroups on a cgroup v2 hierarchy.
//!
//! A limit file only exists when its controller is enabled in the parent's
//! `cgroup.subtree_control` — the upstream wrapper's silent failure — so the
//! needed controllers are enabled on every ancestor from the hierarchy root
//! down to the job's parent before the job is made. Every write is read back.
use std::{fs, io, path::PathBuf};

use super::{
    Existing, GovernError, Stats,
    layout::{CgroupPath, Mount},
    write_and_read_back,
};
use crate::limits::{Applied, FileError, Files, Limit, Limits, Visit};

/// A job's cgroup in the v2 hierarchy.
#[derive(Debug)]
pub(crate) struct Dir {
    pub dir: PathBuf,
}

/// Controllers a job's limits (and its exit report) need.
fn controllers_for(limits: &Limits) -> Vec<&'static str> {
    // cpu and memory always: cpu.stat and memory.peak/events feed the exit
    // report even without a limit.
    let mut c = vec!["cpu", "memory"];
    for name in limits.names() {
        if let Some(needed) = name.row().cgroup
            && !c.contains(&needed.v2)
        {
            c.push(needed.v2);
        }
    }
    c
}

/// Enables `controllers` for the children of every cgroup from the root to
/// `parent`. Returns the controllers that could not be enabled, with why.
pub(crate) fn enable_controllers(
    mount: &Mount,
    floor: Option<&CgroupPath>,
    parent: &CgroupPath,
    controllers: &[&'static str],
) -> Vec<(&'static str, String)> {
    let mut failed = Vec::new();
    // Nothing above a delegated subtree is ours to write (systemd's).
    let from = floor.map_or(0, |f| f.lineage().len() - 1);
    for cg in parent.lineage().into_iter().skip(from) {
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

impl Dir {
    /// Makes the job cgroup under `root`, which the caller has created (and
    /// holds locked, see the claims in the module above).
    pub(crate) fn create(
        mount: &Mount,
        floor: Option<&CgroupPath>,
        root: &CgroupPath,
        path: &CgroupPath,
        limits: &Limits,
        existing: Existing,
    ) -> Result<(Self, Applied), GovernError> {
        let refused = enable_controllers(mount, floor, root, &controllers_for(limits));
        for (controller, reason) in &refused {
            // Only the exit report's statistics need it when no limit does.
            tracing::debug!(controller, reason, "controller not enabled");
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
        let job = Dir { dir };
        let mut apply = Apply {
            job: &job,
            refused: &refused,
            applied: Applied::default(),
        };
        limits.visit(&mut apply);
        let applied = apply.applied;
        Ok((job, applied))
    }

    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.dir.join("cgroup.procs")]
    }

    pub(crate) fn stats(&self) -> Stats {
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

    pub(crate) fn is_empty(&self) -> bool {
        crate::observe::proc::read_text(self.dir.join("cgroup.procs"))
            .is_ok_and(|s| s.trim().is_empty())
    }

    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }
}

impl Files for Dir {
    fn write(&self, file: &str, value: &str) -> Result<String, FileError> {
        write_and_read_back(&self.dir.join(file), value)
    }
}

/// Writes each cgroup limit, except those whose controller could not be
/// enabled: they fail with that reason (and only they: a controller the
/// exit report wanted is no limit's failure).
struct Apply<'a> {
    job: &'a Dir,
    refused: &'a [(&'static str, String)],
    applied: Applied,
}

impl Visit for Apply<'_> {
    fn visit<L: Limit>(&mut self, limit: &L) {
        let Some(needed) = L::CGROUP else { return };
        match self.refused.iter().find(|(c, _)| *c == needed.v2) {
            Some((_, reason)) => self.applied.fail(L::NAME, reason.clone()),
            None => self.applied.record::<L>(limit.apply_v2(self.job)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{LimitName, PidsMax};

    /// A controller that no requested limit needs is no limit's failure:
    /// `memory` and `cpu` are enabled for the exit report only. The
    /// kernel's refusal is stood in for by `cgroup.subtree_control` files
    /// that cannot be written (directories), so every controller is refused.
    #[test]
    fn a_refused_controller_fails_only_the_limits_needing_it() {
        let dir = std::env::temp_dir().join(format!("ffrtmp-v2-refused-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in [
            dir.join("cgroup.subtree_control"),
            dir.join("ffrtmp/cgroup.subtree_control"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        let mount = Mount {
            point: dir.clone(),
            root: "/".into(),
        };
        let root = CgroupPath::new("/ffrtmp").unwrap();
        let pids = Limits {
            pids_max: Some(PidsMax::parse("10").unwrap()),
            ..Limits::default()
        };

        let (_, applied) = Dir::create(
            &mount,
            None,
            &root,
            &root.child("a"),
            &pids,
            Existing::Refuse,
        )
        .unwrap();
        assert_eq!(applied.failures.len(), 1, "{applied:?}");
        assert_eq!(applied.failures[0].limit, LimitName::PidsMax);
        assert!(
            applied.failures[0].reason.contains("enabling pids"),
            "{applied:?}"
        );
        assert!(
            !dir.join("ffrtmp/a/pids.max").exists(),
            "written without its controller"
        );

        let (_, applied) = Dir::create(
            &mount,
            None,
            &root,
            &root.child("b"),
            &Limits::default(),
            Existing::Refuse,
        )
        .unwrap();
        assert_eq!(applied.failures, [], "no limit asked, none failed");
        let _ = fs::remove_dir_all(&dir);
    }
}
