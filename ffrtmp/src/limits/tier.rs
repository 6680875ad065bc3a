//! Priority tiers: what kind of work a job is, and the CPU priority that
//! follows from it.
//!
//! A live stream must keep realtime; a batch transcode only has to finish.
//! Measured on our 2-CPU host with real ffmpeg (docs/BENCHMARKS.md, `bench
//! qos`): two live 720p30 encodes beside three batch encodes ran at 0.67x
//! realtime on equal shares, and at 0.98x in these tiers, the batch ones
//! still getting 94 % of the CPU the live ones left. A tier names that
//! intent once, instead of a weight in every rule:
//!
//! | tier | limits | why |
//! |---|---|---|
//! | `live` | `cpu_weight` 1000 | ten times a default job's share when the CPU is contended |
//! | `standard` | `cpu_weight` 100 | the kernel's default share |
//! | `batch` | `cpu_idle` 1 | only the CPU everything else leaves, all of it when the node is idle |
//!
//! The weights only split CPU that is contended: a service beside the jobs
//! that needs less than its share (nginx serving the streams, at weight
//! 100 against a live job's 1000: 1/11 of the node) loses nothing to them.
//!
//! A policy may replace a tier's limits (`[tier.live]`, `policy/`); the
//! limits a rule or the command line gives win over its tier's
//! ([`Tier::resolve`]).
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::{CpuIdle, CpuWeight, Limits};

/// A job's tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// A stream that must keep realtime.
    Live,
    /// Neither: the default share.
    Standard,
    /// Work that only has to finish: the CPU the others leave.
    Batch,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Live, Tier::Standard, Tier::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Live => "live",
            Tier::Standard => "standard",
            Tier::Batch => "batch",
        }
    }

    /// Its built-in limits (the table in the module doc).
    pub fn defaults(self) -> Limits {
        match self {
            Tier::Live => Limits {
                cpu_weight: Some(CpuWeight(1000)),
                ..Limits::default()
            },
            Tier::Standard => Limits {
                cpu_weight: Some(CpuWeight(100)),
                ..Limits::default()
            },
            Tier::Batch => Limits {
                cpu_idle: Some(CpuIdle(true)),
                ..Limits::default()
            },
        }
    }

    /// The limits of a job in this tier whose tier gives `tier_limits` and
    /// which asks for `explicit` itself: each explicit limit wins. The CPU
    /// priority is one choice — `cpu_weight` or `cpu_idle` — so an explicit
    /// one of them replaces both of the tier's (a weight given to a batch
    /// job means "not idle, this weight", not an error).
    pub fn resolve(tier_limits: &Limits, explicit: &Limits) -> Limits {
        let mut base = tier_limits.clone();
        if explicit.cpu_weight.is_some() || explicit.cpu_idle.is_some() {
            base.cpu_weight = None;
            base.cpu_idle = None;
        }
        explicit.or(&base)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = super::LimitError;

    fn from_str(s: &str) -> Result<Self, super::LimitError> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| super::LimitError::Tier(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{LimitName, MemoryMax, Size};

    #[test]
    fn every_tier_is_valid_and_named_as_in_events() {
        for t in Tier::ALL {
            assert_eq!(t.defaults().validate(), Ok(()), "{t}");
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
            assert_eq!(t.as_str().parse(), Ok(t));
        }
        assert!("gold".parse::<Tier>().is_err());
    }

    #[test]
    fn explicit_limits_win_and_a_weight_replaces_idle() {
        let mut explicit = Limits::default();
        explicit.set(LimitName::MemoryMax, "1G").unwrap();
        let batch = Tier::resolve(&Tier::Batch.defaults(), &explicit);
        assert_eq!(batch.cpu_idle, Some(CpuIdle(true)));
        assert_eq!(batch.memory_max, Some(MemoryMax(Size::Bytes(1 << 30))));
        explicit.set(LimitName::CpuWeight, "50").unwrap();
        let batch = Tier::resolve(&Tier::Batch.defaults(), &explicit);
        assert_eq!(
            (batch.cpu_weight, batch.cpu_idle),
            (Some(CpuWeight(50)), None)
        );
        assert_eq!(batch.validate(), Ok(()));
        let live = Tier::resolve(&Tier::Live.defaults(), &Limits::default());
        assert_eq!(live, Tier::Live.defaults());
    }
}
