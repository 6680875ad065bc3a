//! `ffrtmp cleanup`: remove what ffrtmp left behind and nothing else — the
//! empty job cgroups it made (by its [`ledger`]) that no live
//! ffrtmp looks after, under every root it has made jobs under since boot,
//! and then emptied staging directories (`<root>/.staging`, a name only
//! ffrtmp uses). Package removal runs it after stopping the daemon, so that
//! `dpkg -r` leaves no job cgroup without a process.
//!
//! A job with a process, a child cgroup, a live claim or no record stays,
//! and is listed with the reason: its limits stay in force for as long as
//! its workload runs. Roots (`/ffrtmp`, a `--cgroup-root`) stay too: an
//! operator may have made them, and an empty one costs nothing.
use std::{fs, path::PathBuf};

use serde::Serialize;

use super::{
    Context, Mode, is_empty_leaf, job,
    layout::{CgroupPath, Kind, Layout},
    ledger::{self, Entry},
    reap_empty, root_dirs,
};
use crate::limits::JobId;

/// What [`cleanup`] did.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Cleanup {
    /// The directories removed.
    pub removed: Vec<PathBuf>,
    /// The job cgroups left, and why.
    pub kept: Vec<Kept>,
}

/// A job cgroup [`cleanup`] left in place.
#[derive(Debug, Serialize)]
pub(crate) struct Kept {
    pub cgroup: String,
    pub why: &'static str,
}

/// Cleans up under every root this mode's ledger knows (see the module
/// doc). Unprivileged mode makes no cgroups: nothing to do.
pub(crate) fn cleanup(layout: &Layout, mode: Mode) -> Cleanup {
    let mut done = Cleanup::default();
    if mode == Mode::Unprivileged {
        return done;
    }
    for root in ledger::roots(mode) {
        let ctx = Context {
            layout: layout.clone(),
            mode,
            root: Some(root.clone()),
            subtree: None,
            scopes: false,
        };
        done.removed.extend(reap_empty(&ctx));
        for job in job::list(&ctx) {
            let Some(entry) = job.entry(&ctx) else {
                continue;
            };
            let why = match entry {
                Entry::NotOurs => "not made by ffrtmp",
                Entry::Claimed => "looked after by a running ffrtmp",
                Entry::Unclaimed => "it holds processes or child cgroups",
            };
            done.kept.push(Kept {
                cgroup: job.cgroup.as_str().to_string(),
                why,
            });
        }
        if is_staging(&root) {
            for dir in root_dirs(&ctx, &root) {
                if is_empty_leaf(&dir) && fs::remove_dir(&dir).is_ok() {
                    done.removed.push(dir);
                }
            }
        }
    }
    // The records of job scopes systemd has removed.
    if mode == Mode::Privileged {
        job::forget_ended_scopes(&Context {
            layout: layout.clone(),
            mode,
            root: None,
            subtree: None,
            scopes: super::systemd::manages_cgroups() && layout.kind() == Kind::V2,
        });
    }
    done
}

fn is_staging(root: &CgroupPath) -> bool {
    root.as_str().rsplit('/').next() == Some(JobId::STAGING)
}
