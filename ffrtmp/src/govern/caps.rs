//! What ffrtmp may do, from its effective capabilities — never from its
//! uid alone. Root in a container or in a unit with
//! `CapabilityBoundingSet=` lacks most of them, and a process that is not
//! root may hold them (`AmbientCapabilities=`).
//!
//! Each feature names the capabilities it needs, measured on kernel 6.18 by
//! running `watch` as root under `setpriv --bounding-set=-all,+…` against a
//! process of `nobody` (docs/OPERATIONS.md, "Capabilities"):
//!
//! | feature | needs |
//! |---|---|
//! | the eBPF backend | CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): CAP_BPF alone creates the maps and then fails BPF_PROG_LOAD with EPERM |
//! | cgroups at the hierarchy's root (privileged mode) | CAP_DAC_OVERRIDE: a hierarchy's root directory is 0555, so even uid 0 gets EACCES on `mkdir` without it |
//! | nice of another user's process, or below 0 | CAP_SYS_NICE |
//! | oom_score_adj of another user's process | CAP_DAC_OVERRIDE (its `/proc/PID/oom_score_adj` is that user's, 0644) |
//! | lowering oom_score_adj | CAP_SYS_RESOURCE |
//! | `--favordynmods` | CAP_SYS_ADMIN (a remount) |
//!
//! A feature whose capability is missing is not attempted where that can
//! be known up front: it is reported `degraded`, naming the limit and the
//! capability, and the workload runs.
use serde::Serialize;

/// The capabilities ffrtmp uses: their bit numbers (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    DacOverride = 1,
    SysAdmin = 21,
    SysNice = 23,
    SysResource = 24,
    Perfmon = 38,
    Bpf = 39,
}

impl Cap {
    pub const ALL: [Cap; 6] = [
        Cap::DacOverride,
        Cap::SysAdmin,
        Cap::SysNice,
        Cap::SysResource,
        Cap::Perfmon,
        Cap::Bpf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cap::DacOverride => "CAP_DAC_OVERRIDE",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::SysNice => "CAP_SYS_NICE",
            Cap::SysResource => "CAP_SYS_RESOURCE",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        }
    }
}

/// A set of capabilities (a `CapEff` mask).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caps(u64);

impl Caps {
    /// This process's effective set; empty when it cannot be read.
    pub(crate) fn effective() -> Self {
        crate::observe::proc::read_text("/proc/self/status")
            .ok()
            .and_then(|s| Self::parse_status(&s))
            .unwrap_or_default()
    }

    /// The `CapEff:` line of a /proc/PID/status text.
    fn parse_status(status: &str) -> Option<Self> {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        u64::from_str_radix(hex.trim(), 16).ok().map(Caps)
    }

    pub(crate) fn has(self, cap: Cap) -> bool {
        self.0 & (1 << cap as u32) != 0
    }

    /// What each feature can do with these capabilities, for `status`.
    pub(crate) fn features(self) -> Vec<Feature> {
        Need::ALL
            .iter()
            .map(|need| Feature {
                feature: need.feature(),
                available: self.allows(*need),
                needs: need.describe(),
            })
            .collect()
    }

    pub(crate) fn allows(self, need: Need) -> bool {
        need.any_of()
            .iter()
            .any(|set| set.iter().all(|c| self.has(*c)))
    }
}

/// Whether this process has `cap` in its effective set.
pub fn has_cap(cap: Cap) -> bool {
    Caps::effective().has(cap)
}

/// A feature that needs capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    Ebpf,
    HierarchyRoot,
    NiceOthersOrNegative,
    OomScoreAdjOfOthers,
    LowerOomScoreAdj,
    Favordynmods,
}

impl Need {
    pub(crate) const ALL: [Need; 6] = [
        Need::Ebpf,
        Need::HierarchyRoot,
        Need::NiceOthersOrNegative,
        Need::OomScoreAdjOfOthers,
        Need::LowerOomScoreAdj,
        Need::Favordynmods,
    ];

    /// Sets of capabilities, any one of which is enough.
    fn any_of(self) -> &'static [&'static [Cap]] {
        match self {
            Need::Ebpf => &[&[Cap::Bpf, Cap::Perfmon], &[Cap::SysAdmin]],
            Need::HierarchyRoot | Need::OomScoreAdjOfOthers => &[&[Cap::DacOverride]],
            Need::NiceOthersOrNegative => &[&[Cap::SysNice]],
            Need::LowerOomScoreAdj => &[&[Cap::SysResource]],
            Need::Favordynmods => &[&[Cap::SysAdmin]],
        }
    }

    fn feature(self) -> &'static str {
        match self {
            Need::Ebpf => "ebpf",
            Need::HierarchyRoot => "cgroups_at_the_hierarchy_root",
            Need::NiceOthersOrNegative => "nice_of_others_or_below_0",
            Need::OomScoreAdjOfOthers => "oom_score_adj_of_others",
            Need::LowerOomScoreAdj => "lower_oom_score_adj",
            Need::Favordynmods => "favordynmods",
        }
    }

    /// "CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN".
    pub(crate) fn describe(self) -> String {
        self.any_of()
            .iter()
            .map(|set| {
                set.iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(" and ")
            })
            .collect::<Vec<_>>()
            .join(", or ")
    }
}

/// One line of `status`'s `capabilities.features`.
#[derive(Clone, Debug, Serialize)]
#[allow(
    clippy::struct_field_names,
    reason = "`feature` is the field's name in status's output"
)]
pub(crate) struct Feature {
    pub feature: &'static str,
    pub available: bool,
    pub needs: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read_from_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000000002\n";
        let caps = Caps::parse_status(status).expect("CapEff");
        assert!(caps.has(Cap::Bpf) && caps.has(Cap::Perfmon) && caps.has(Cap::DacOverride));
        assert!(!caps.has(Cap::SysAdmin));
        assert!(caps.allows(Need::Ebpf));
        assert!(!caps.allows(Need::LowerOomScoreAdj));
        assert!(Caps::parse_status("Name:\tx\n").is_none());
    }

    #[test]
    fn bpf_alone_is_not_enough_for_ebpf_but_sys_admin_is() {
        let bpf = Caps(1 << Cap::Bpf as u32);
        assert!(!bpf.allows(Need::Ebpf));
        assert!(Caps(1 << Cap::SysAdmin as u32).allows(Need::Ebpf));
        assert_eq!(
            Need::Ebpf.describe(),
            "CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN"
        );
    }
}
