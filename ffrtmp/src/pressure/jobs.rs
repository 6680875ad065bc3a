//! The jobs under governance now, with their tiers, read from the cgroup
//! tree as `status` reads them: the tree is the state.
use std::{collections::HashMap, fs, path::PathBuf};

use crate::{
    govern::{Context, layout::Kind, scope, tier_of},
    limits::{JobId, Tier},
};

/// The tiers of job scopes, read once per scope (a scope carries its tier
/// in its description, not in a label of ours: [`scope::tier_of`]).
#[derive(Default)]
pub struct ScopeTiers {
    known: HashMap<String, Option<Tier>>,
}

impl ScopeTiers {
    /// Job scope `unit`'s tier.
    pub fn of(&mut self, unit: &str) -> Option<Tier> {
        *self
            .known
            .entry(unit.to_string())
            .or_insert_with(|| scope::tier_of(unit))
    }
}

/// One job, as the pressure watch and `status` sample it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub job_id: String,
    /// Its cgroup path.
    pub cgroup: String,
    /// Its directory in the cpu hierarchy (v2: its only one).
    pub dir: PathBuf,
    pub v2: bool,
    /// From its label (a scope: its description); `None` for a job
    /// without one.
    pub tier: Option<Tier>,
}

/// Every job under `ctx`'s root (and, with scopes, every job scope). Reads
/// one directory per root and one attribute per job, and each new scope's
/// unit file once for its tier; takes no lock.
pub fn list(ctx: &Context, scopes: &mut ScopeTiers) -> Vec<Job> {
    let v2 = ctx.layout.kind() == Kind::V2;
    let cpu = if v2 {
        ctx.layout.v2.as_ref()
    } else {
        ctx.layout.v1.get("cpu")
    };
    let mut jobs = Vec::new();
    if let (Some(root), Some(mount)) = (&ctx.root, cpu) {
        let root_dir = mount.dir_of(root);
        for entry in fs::read_dir(&root_dir).into_iter().flatten().flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name == JobId::STAGING || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            jobs.push(Job {
                cgroup: root.child(&name).as_str().to_string(),
                tier: tier_of(std::slice::from_ref(&dir)),
                job_id: name,
                dir,
                v2,
            });
        }
    }
    if let (true, Some(mount)) = (ctx.scopes, &ctx.layout.v2) {
        let found = scope::jobs(mount);
        let units: Vec<String> = found.iter().map(|(n, _)| scope::unit_name(n)).collect();
        scopes.known.retain(|unit, _| units.contains(unit));
        for ((name, path), unit) in found.into_iter().zip(&units) {
            jobs.push(Job {
                dir: mount.dir_of(&path),
                cgroup: path.as_str().to_string(),
                job_id: name,
                v2: true,
                tier: scopes.of(unit),
            });
        }
    }
    jobs
}
