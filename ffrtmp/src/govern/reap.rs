//! Removing the empty job cgroups ffrtmp made and nobody looks after: a
//! wrapper's own when its workload ends, the daemon's when a job's last
//! process exits, leftovers of crashed wrappers (`cleanup`, start-up).
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{Context, JobCgroup, existing_job_dirs, root_dirs};

/// Removes empty job cgroups left under the root by crashed wrappers.
/// Returns the directories removed. A job ffrtmp did not make (no record in
/// the ledger), one claimed by a live wrapper, a directory with processes,
/// or one with child cgroups is never removed (and the kernel would refuse
/// the last two anyway).
pub(crate) fn reap_empty(ctx: &Context) -> Vec<PathBuf> {
    reap(ctx, None)
}

/// [`reap_empty`] for a wrapper whose own job is `own`: first asks whether
/// the root holds any other cgroup at all (one `stat` per hierarchy, see
/// `subdirs`), so that the common case — nothing left over — costs a few
/// system calls instead of a scan.
pub(crate) fn reap_empty_besides(ctx: &Context, own: Option<&JobCgroup>) -> Vec<PathBuf> {
    let Some(root) = &ctx.root else {
        return Vec::new();
    };
    let own = own.map(JobCgroup::dirs).unwrap_or_default();
    let others = root_dirs(ctx, root).iter().any(|dir| {
        let ours = own
            .iter()
            .filter(|d| d.parent() == Some(dir.as_path()))
            .count() as u64;
        match subdirs(dir) {
            Ok(n) => n > ours,
            Err(e) => e.kind() != io::ErrorKind::NotFound, // let the scan decide
        }
    });
    if others { reap_empty(ctx) } else { Vec::new() }
}

/// Removes job `name`'s cgroup under the same rules as [`reap_empty`] (the
/// daemon, once the last process it followed in a job has exited).
pub(crate) fn reap_job(ctx: &Context, name: &str) -> Vec<PathBuf> {
    reap(ctx, Some(name))
}

fn reap(ctx: &Context, only: Option<&str>) -> Vec<PathBuf> {
    let (Some(root), Some(ledger)) = (&ctx.root, ctx.ledger()) else {
        return Vec::new();
    };
    let names = match only {
        Some(name) => vec![name.to_string()],
        None => ledger.jobs(),
    };
    if names.is_empty() {
        return Vec::new();
    }
    let dirs = root_dirs(ctx, root);
    let Ok(lock) = ledger.lock() else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in names {
        // Held until its directories are gone, so no wrapper claims it
        // meanwhile; `None`: not ours, or a live wrapper owns it.
        let Some(_taken) = ledger.take(&lock, &name) else {
            continue;
        };
        let job_dirs = existing_job_dirs(&dirs, &name);
        if job_dirs.iter().all(|d| is_empty_leaf(d)) {
            for d in job_dirs {
                if fs::remove_dir(&d).is_ok() {
                    removed.push(d);
                }
            }
        }
        if existing_job_dirs(&dirs, &name).is_empty() {
            ledger.forget(&lock, &name);
        }
    }
    removed
}

/// No process in it and no child cgroup under it.
pub(crate) fn is_empty_leaf(dir: &Path) -> bool {
    let no_procs = crate::observe::proc::read_text(dir.join("cgroup.procs"))
        .is_ok_and(|s| s.trim().is_empty());
    let no_children = subdirs(dir).is_ok_and(|n| n == 0);
    no_procs && no_children
}

/// How many subdirectories (child cgroups) a cgroup directory has:
/// cgroupfs keeps a directory's link count at 2 + that number, so one
/// `stat` says what listing it would.
fn subdirs(dir: &Path) -> io::Result<u64> {
    let links = std::os::unix::fs::MetadataExt::nlink(&fs::metadata(dir)?);
    Ok(links.saturating_sub(2))
}
