//! Staging: each governing rule's pre-made cgroup under `<root>/.staging`,
//! with the rule's limits, where a new exec is moved first (one write per
//! hierarchy: its limits are in force within a move of its exec). Its
//! name is the rule's and a digest of its limits, so a changed rule gets a
//! fresh cgroup: an updated one kept limits the new rule no longer had
//! (measured: a `cpu.cfs_quota_us` of 1000 after restarting with the
//! default). Those of earlier policies go once empty (their processes are
//! governed by the start-up scan, under today's rules). A rule whose
//! staging cgroup cannot be made governs new processes directly, a little
//! later.
use std::collections::HashMap;

use super::{
    Events,
    host::{Host, Staged},
    note,
};
use crate::{
    limits::{JobId, Limits},
    policy::{Action, Policy, template::sanitise},
};

/// The staging cgroups of the rules in force, by rule name.
pub(super) struct Stagings<S> {
    by_rule: HashMap<String, Staged<S>>,
}

impl<S> Default for Stagings<S> {
    fn default() -> Self {
        Stagings {
            by_rule: HashMap::new(),
        }
    }
}

impl<S> Stagings<S> {
    /// Makes (or reuses) each governing rule's staging cgroup; drops those
    /// of rules no longer in `policy` first (their claims go with them).
    pub(super) fn prepare<H: Host<Staging = S>>(
        &mut self,
        host: &mut H,
        policy: &Policy,
    ) -> Events {
        self.by_rule.clear();
        if let Err(why) = host.can_stage() {
            return vec![note(why.to_string())];
        }
        let mut events = Vec::new();
        for rule in &policy.rules {
            let Action::Govern { limits, .. } = &rule.action else {
                continue;
            };
            let name = staging_name(&rule.name, limits);
            match host.staging(&name, limits) {
                Ok(staged) => {
                    self.by_rule.insert(rule.name.clone(), staged);
                }
                Err(why) => events.push(note(format!(
                    "rule {}: {why}; new processes go straight to their job",
                    rule.name
                ))),
            }
        }
        events
    }

    /// Rule `rule`'s staging cgroup, if it has one.
    pub(super) fn of_rule(&self, rule: &str) -> Option<&Staged<S>> {
        self.by_rule.get(rule)
    }

    /// The staging cgroup a process whose cgroups are `paths` is in, if
    /// it is in one of ours.
    pub(super) fn holding(&self, paths: &[String]) -> Option<&Staged<S>> {
        self.by_rule.values().find(|s| paths.contains(&s.path))
    }
}

/// A rule's staging cgroup's name: the rule's name (as a cgroup name, cut
/// to leave room) and 8 hex digits of a digest (FNV-1a) of its limits,
/// each `name=value` as its option takes it, sorted by name: a stable
/// encoding, not the program's `Debug` text.
pub(super) fn staging_name(rule: &str, limits: &Limits) -> JobId {
    let name = sanitise(rule);
    let cut = &name.as_str()[..name.as_str().len().min(JobId::MAX_LEN - 9)];
    let mut texts: Vec<String> = limits
        .texts()
        .into_iter()
        .map(|(limit, text)| format!("{limit}={text}"))
        .collect();
    texts.sort();
    let digest = texts
        .join("\n")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    sanitise(&format!("{cut}-{:08x}", digest as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_name_is_the_rule_and_a_stable_digest_of_its_limits() {
        let limits = |args: &[&str]| -> Limits {
            let policy = format!(
                "[[rule]]\nname = \"r\"\ncomm = \"x\"\n{}\n",
                args.join("\n")
            );
            let p = Policy::parse(&policy, "test").unwrap();
            match &p.rules[0].action {
                Action::Govern { limits, .. } => limits.clone(),
                Action::Ignore => unreachable!(),
            }
        };
        let a = staging_name(
            "ffmpeg-live",
            &limits(&["cpu_weight = 1000", "pids_max = 512"]),
        );
        let b = staging_name(
            "ffmpeg-live",
            &limits(&["pids_max = 512", "cpu_weight = 1000"]),
        );
        let c = staging_name(
            "ffmpeg-live",
            &limits(&["cpu_weight = 999", "pids_max = 512"]),
        );
        assert_eq!(a, b, "the same limits, in another order");
        assert_ne!(a, c, "a changed limit is a fresh staging cgroup");
        assert!(a.as_str().starts_with("ffmpeg-live-"), "{a}");
        // Pinned: a staging cgroup keeps its name across builds, so a
        // restart or upgrade reuses it instead of leaving the old one.
        assert_eq!(a.as_str(), "ffmpeg-live-cd4eb33c");
        let long = staging_name(&"x".repeat(100), &limits(&[]));
        assert!(long.as_str().len() <= JobId::MAX_LEN, "{long}");
    }
}
