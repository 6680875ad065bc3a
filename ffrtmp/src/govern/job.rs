//! Jobs as the cgroup tree holds them: the one model of "a job" that
//! `status`, the daemon's recovery, the pressure watch and `cleanup` read,
//! and the one place that finds them ([`list`], [`open`]).
//!
//! A job has an id, a cgroup and a home:
//! - [`Home::Tree`]: directories ffrtmp made under its root
//!   (`<root>/<id>`, one per v1 hierarchy), with what the root's ledger
//!   says of them (ours? looked after?);
//! - [`Home::Scope`]: a transient scope `ffrtmp-<id>.scope` that systemd
//!   made and holds, in the slice of the unit its process came from (on a
//!   systemd host, [`super::scope`]).
//!
//! What ffrtmp knows of a job beyond its cgroup — its tier, which command
//! made it — is its [`Record`] in the ledger, for both homes alike
//! ([`super::ledger`]). Reading takes no lock and writes nothing: one
//! directory listing per root (per slice for scopes) and one record per
//! job.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{
    Context, JobCgroup,
    layout::{CgroupPath, Kind, Mount},
    ledger::{Entry, Ledger, Record},
    root_dirs, scope,
};
use crate::limits::{JobId, Tier};

/// One job, as the tree holds it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Job {
    pub id: String,
    pub cgroup: CgroupPath,
    pub home: Home,
    /// Its record (the default, with no tier, when it has none: made by
    /// an older ffrtmp, or its ledger cannot be read, as by another user).
    pub record: Record,
}

/// Where a job lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Home {
    /// Under ffrtmp's root: its directory in each hierarchy (sorted; one
    /// on v2).
    Tree { dirs: Vec<PathBuf> },
    /// A transient scope systemd holds: its unit and its directory.
    Scope { unit: String, dir: PathBuf },
}

impl Job {
    pub(crate) fn tier(&self) -> Option<Tier> {
        self.record.tier
    }

    /// Its cgroup directories: one per hierarchy in the tree, a scope's one.
    pub(crate) fn dirs(&self) -> &[PathBuf] {
        match &self.home {
            Home::Tree { dirs, .. } => dirs,
            Home::Scope { dir, .. } => std::slice::from_ref(dir),
        }
    }

    /// A scope's unit.
    pub(crate) fn unit(&self) -> Option<&str> {
        match &self.home {
            Home::Scope { unit, .. } => Some(unit),
            Home::Tree { .. } => None,
        }
    }

    /// What the ledger says of a job in the tree ([`Entry::NotOurs`] too
    /// when the ledger cannot be read); `None` for a scope. Asked only by
    /// those who need it (`status`, `cleanup`): the probe takes the
    /// marker's lock for a moment, which the pressure watch, listing jobs
    /// twice a second, must not contend for with the reaper.
    pub(crate) fn entry(&self, ctx: &Context) -> Option<Entry> {
        match self.home {
            Home::Tree { .. } => Some(ctx.ledger().map_or(Entry::NotOurs, |l| l.entry(&self.id))),
            Home::Scope { .. } => None,
        }
    }

    /// A live ffrtmp (`run`, `attach` or `watch`) holds its claim.
    pub(crate) fn supervised(&self, ctx: &Context) -> bool {
        self.entry(ctx) == Some(Entry::Claimed)
    }

    /// Its directory in the cpu controller's hierarchy, and whether that
    /// hierarchy is v2 (`None`: it has none there).
    pub(crate) fn cpu_dir(&self, ctx: &Context) -> Option<(PathBuf, bool)> {
        if let Home::Scope { dir, .. } = &self.home {
            return Some((dir.clone(), true));
        }
        let v2 = ctx.layout.kind() == Kind::V2;
        let mount = if v2 {
            ctx.layout.v2.as_ref()
        } else {
            ctx.layout.v1.get("cpu")
        }?;
        let dir = mount.dir_of(&self.cgroup);
        self.dirs().contains(&dir).then_some((dir, v2))
    }

    /// The processes in it now, from every directory, each once.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for dir in self.dirs() {
            let text =
                crate::observe::proc::read_text(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in text.split_whitespace().filter_map(|p| p.parse().ok()) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// A handle on its cgroup, for its statistics and its removal once
    /// empty (it takes no claim: a job found, not made).
    pub(crate) fn handle(&self, ctx: &Context) -> Option<JobCgroup> {
        match &self.home {
            Home::Scope { dir, .. } => Some(JobCgroup::of_scope(self.cgroup.clone(), dir.clone())),
            Home::Tree { .. } => JobCgroup::open_existing(ctx, &self.id),
        }
    }
}

/// Every job under `ctx`'s root and, on a systemd host, every job scope.
pub(crate) fn list(ctx: &Context) -> Vec<Job> {
    list_cached(ctx, &mut Records::default())
}

/// [`list`], reading each job's record once per cgroup: for the pressure
/// watch, which lists the jobs twice a second.
pub(crate) fn list_cached(ctx: &Context, records: &mut Records) -> Vec<Job> {
    let mut jobs = tree_jobs(ctx, None, records);
    if let Some(mount) = scope_mount(ctx) {
        jobs.extend(scopes(mount, None, records));
    }
    records.keep(&jobs);
    jobs
}

/// The records read so far, by job and cgroup inode. A record never
/// changes once written, so one found is kept for as long as its cgroup
/// is listed (a `stat` a listing instead of an open and a read); one not
/// found yet (the job was listed between its `mkdir` and its record) is
/// read again next time.
#[derive(Default)]
pub(crate) struct Records(HashMap<(String, u64), Record>);

impl Records {
    fn read(&mut self, ledger: &Ledger, id: &str, dir: &Path) -> Record {
        let Ok(ino) = cgroup_ino(dir) else {
            return Record::default();
        };
        let key = (id.to_string(), ino);
        if let Some(r) = self.0.get(&key) {
            return *r;
        }
        match ledger.record_of(id, ino) {
            Some(r) => {
                self.0.insert(key, r);
                r
            }
            None => Record::default(),
        }
    }

    /// Forgets the records of jobs no longer listed.
    fn keep(&mut self, jobs: &[Job]) {
        let listed: std::collections::HashSet<(&str, u64)> = jobs
            .iter()
            .map(|j| (j.id.as_str(), j.record.cgroup_ino))
            .collect();
        self.0
            .retain(|(id, ino), _| listed.contains(&(id.as_str(), *ino)));
    }
}

/// Job `id`, wherever it lives (under the root first).
pub(crate) fn open(ctx: &Context, id: &str) -> Option<Job> {
    in_tree(ctx, id).or_else(|| scope(ctx, id))
}

/// Job `id` under the root, if it has a directory there.
pub(crate) fn in_tree(ctx: &Context, id: &str) -> Option<Job> {
    tree_jobs(ctx, Some(id), &mut Records::default()).pop()
}

/// Job `id`'s scope, if jobs are scopes here and it has one.
pub(crate) fn scope(ctx: &Context, id: &str) -> Option<Job> {
    let mount = scope_mount(ctx)?;
    scopes(mount, Some(id), &mut Records::default()).pop()
}

/// The v2 hierarchy, when jobs are scopes.
fn scope_mount(ctx: &Context) -> Option<&Mount> {
    ctx.layout.v2.as_ref().filter(|_| ctx.scopes)
}

/// The jobs under the root (only `only`, if given).
fn tree_jobs(ctx: &Context, only: Option<&str>, records: &mut Records) -> Vec<Job> {
    let (Some(root), Some(ledger)) = (&ctx.root, ctx.ledger()) else {
        return Vec::new();
    };
    let roots = root_dirs(ctx, root);
    let names = match only {
        Some(id) => vec![id.to_string()],
        None => names_under(&roots),
    };
    names
        .into_iter()
        .filter(|name| name != JobId::STAGING)
        .filter_map(|name| {
            let dirs: Vec<PathBuf> = roots
                .iter()
                .map(|d| d.join(&name))
                .filter(|d| d.is_dir())
                .collect();
            let record = records.read(&ledger, &name, dirs.first()?);
            Some(Job {
                cgroup: root.child(&name),
                home: Home::Tree { dirs },
                record,
                id: name,
            })
        })
        .collect()
}

/// The directory names under the root's directories, sorted and each
/// once (job ids are UTF-8 by construction; anything else is not ours).
fn names_under(roots: &[PathBuf]) -> Vec<String> {
    let names: std::collections::BTreeSet<String> = roots
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.into_iter().collect()
}

/// Every job scope in the tree (only `only`'s, if given). They sit in
/// slices, beside the units their processes came from, so only `.slice`
/// directories are walked.
#[allow(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "unit suffixes are lower case by definition (systemd.unit(5))"
)]
fn scopes(mount: &Mount, only: Option<&str>, records: &mut Records) -> Vec<Job> {
    let ledger = Ledger::scopes();
    let mut found = Vec::new();
    let mut slices = vec![CgroupPath::new("/").expect("\"/\" is a cgroup path")];
    while let Some(slice) = slices.pop() {
        let Ok(entries) = fs::read_dir(mount.dir_of(&slice)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if name.ends_with(".slice") {
                slices.push(slice.child(&name));
                continue;
            }
            let Some(id) = scope::job_of_cgroup(&name) else {
                continue;
            };
            if only.is_some_and(|o| o != id) {
                continue;
            }
            let dir = entry.path();
            found.push(Job {
                id: id.to_string(),
                cgroup: slice.child(&name),
                record: records.read(&ledger, id, &dir),
                home: Home::Scope {
                    unit: name.clone(),
                    dir,
                },
            });
        }
    }
    found
}

/// The identity a record names: the inode of cgroup directory `dir`.
pub(crate) fn cgroup_ino(dir: &Path) -> std::io::Result<u64> {
    fs::metadata(dir).map(|m| m.ino())
}

/// Forgets the records of job scopes that are gone (systemd removed
/// them): the daemon at start and `cleanup`. A record describes one
/// cgroup, so a stale one is never read as a new scope's; this only keeps
/// the ledger small.
pub(crate) fn forget_ended_scopes(ctx: &Context) {
    let Some(mount) = scope_mount(ctx) else {
        return;
    };
    let ledger = Ledger::scopes();
    let live: Vec<String> = scopes(mount, None, &mut Records::default())
        .into_iter()
        .map(|j| j.id)
        .collect();
    for id in ledger.jobs() {
        if !live.contains(&id) {
            ledger.forget_scope(&id);
        }
    }
}
