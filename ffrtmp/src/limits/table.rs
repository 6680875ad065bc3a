//! The table of limits: one row each, `Variant field "flag": Type`.
//!
//! Rows are in the order of their names, which is the order limits are
//! written in (`cpu_max` before `cpu_max_burst`: the kernel checks a burst
//! against the quota) and the order of `governed.limits`' keys.
use serde::{Deserialize, Serialize};

use super::{
    CpuIdle, CpuMax, CpuMaxBurst, CpuWeight, IoMax, Limit, LimitError, MemoryHigh, MemoryMax,
    Named, Nice, OomScoreAdj, PidsMax, Row, Visit,
};

/// Builds [`LimitName`], [`Limits`] and their dispatch from the rows.
macro_rules! table {
    ($($variant:ident $field:ident $flag:literal: $ty:ty),* $(,)?) => {
        /// A limit's name: `degraded.limit`, the keys of `governed.limits`,
        /// the policy key; its option is `--` and the name with dashes.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(test, derive(schemars::JsonSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum LimitName {
            $($variant),*
        }

        impl LimitName {
            /// Every limit, in table order.
            pub const ALL: &[LimitName] = &[$(LimitName::$variant),*];

            /// The snake_case name (as in events and policies).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(LimitName::$variant => stringify!($field)),*
                }
            }

            /// The long option, without its dashes (`cpu-max-burst`).
            pub fn flag(self) -> &'static str {
                match self {
                    $(LimitName::$variant => $flag),*
                }
            }

            /// What the table knows of it.
            pub fn row(self) -> Row {
                match self {
                    $(LimitName::$variant => Row::of::<$ty>()),*
                }
            }

            /// The limit a policy key names.
            pub fn from_key(key: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|n| n.as_str() == key)
            }
        }

        $(impl Named for $ty {
            const NAME: LimitName = LimitName::$variant;

            fn in_force(in_force: &mut InForce) -> &mut Option<<$ty as Limit>::Back> {
                &mut in_force.$field
            }
        })*

        /// Each limit in force, as the kernel reads it back (v2 terms):
        /// `governed.limits`. A limit not asked for, or refused, is absent.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(test, derive(schemars::JsonSchema), schemars(deny_unknown_fields))]
        pub struct InForce {
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<<$ty as Limit>::Back>,
            )*
        }

        impl InForce {
            /// The limits in force, in table order.
            pub fn names(&self) -> Vec<LimitName> {
                let mut names = Vec::new();
                $(if self.$field.is_some() {
                    names.push(LimitName::$variant);
                })*
                names
            }

            /// Each limit in force with its value as events write it, in
            /// table order (the text format's `key=value` pairs).
            pub fn values(&self) -> Vec<(LimitName, serde_json::Value)> {
                let mut values = Vec::new();
                $(if let Some(v) = &self.$field {
                    values.push((
                        LimitName::$variant,
                        serde_json::to_value(v).expect("a read-back value is JSON"),
                    ));
                })*
                values
            }
        }

        /// Everything a job asked for. `None`: not asked, left as it is.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Limits {
            $(pub $field: Option<$ty>,)*
        }

        impl Limits {
            /// Hands each limit that is set to `v`, in table order.
            pub fn visit(&self, v: &mut impl Visit) {
                $(if let Some(limit) = &self.$field {
                    v.visit(limit);
                })*
            }

            /// Parses `text` as limit `name` and sets it (a repeatable
            /// limit adds it to what is there).
            pub fn set(&mut self, name: LimitName, text: &str) -> Result<(), LimitError> {
                match name {
                    $(LimitName::$variant => set(&mut self.$field, <$ty as Limit>::parse(text)?)),*
                }
                Ok(())
            }

            /// Each limit of `self`, and where `self` has none, `base`'s.
            #[must_use]
            pub fn or(&self, base: &Limits) -> Limits {
                Limits {
                    $($field: self.$field.clone().or_else(|| base.$field.clone()),)*
                }
            }

            /// Whether limit `name` is set.
            pub fn has(&self, name: LimitName) -> bool {
                match name {
                    $(LimitName::$variant => self.$field.is_some()),*
                }
            }
        }
    };
}

table! {
    CpuIdle     cpu_idle      "cpu-idle":      CpuIdle,
    CpuMax      cpu_max       "cpu-max":       CpuMax,
    CpuMaxBurst cpu_max_burst "cpu-max-burst": CpuMaxBurst,
    CpuWeight   cpu_weight    "cpu-weight":    CpuWeight,
    IoMax       io_max        "io-max":        IoMax,
    MemoryHigh  memory_high   "memory-high":   MemoryHigh,
    MemoryMax   memory_max    "memory-max":    MemoryMax,
    Nice        nice          "nice":          Nice,
    OomScoreAdj oom_score_adj "oom-score-adj": OomScoreAdj,
    PidsMax     pids_max      "pids-max":      PidsMax,
}

fn set<L: Limit>(slot: &mut Option<L>, value: L) {
    match slot {
        Some(old) if L::REPEATABLE => old.merge(value),
        _ => *slot = Some(value),
    }
}

impl std::fmt::Display for LimitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Limits {
    /// Checks what single values cannot: a burst above the quota it saves
    /// up (the kernel would refuse it after the job is made).
    pub fn validate(&self) -> Result<(), LimitError> {
        if let (
            Some(CpuMax {
                quota: Some(quota), ..
            }),
            Some(CpuMaxBurst(burst)),
        ) = (self.cpu_max, self.cpu_max_burst)
            && burst > quota
        {
            return Err(LimitError::BurstAboveQuota { burst, quota });
        }
        if self.cpu_idle == Some(CpuIdle(true)) && self.cpu_weight.is_some() {
            return Err(LimitError::WeightWhenIdle);
        }
        Ok(())
    }

    /// How many limits are set (each io_max line counts once).
    pub fn count(&self) -> usize {
        let lines = self.io_max.as_ref().map_or(0, |io| io.0.len());
        self.names().len() + lines.saturating_sub(1)
    }

    /// Each limit that is set, as its option takes it, in table order.
    pub fn texts(&self) -> Vec<(LimitName, String)> {
        struct Texts(Vec<(LimitName, String)>);
        impl Visit for Texts {
            fn visit<L: Limit>(&mut self, limit: &L) {
                self.0.push((L::NAME, limit.to_string()));
            }
        }
        let mut texts = Texts(Vec::new());
        self.visit(&mut texts);
        texts.0
    }

    /// The names of the limits that are set, in table order.
    pub fn names(&self) -> Vec<LimitName> {
        LimitName::ALL
            .iter()
            .copied()
            .filter(|&n| self.has(n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_fields_and_their_serde_names_and_sorted() {
        for &name in LimitName::ALL {
            let json = serde_json::to_string(&name).unwrap();
            assert_eq!(json, format!("\"{}\"", name.as_str()));
            assert_eq!(name.flag(), name.as_str().replace('_', "-"));
            assert_eq!(LimitName::from_key(name.as_str()), Some(name));
        }
        // Write order = name order (see the module doc).
        let mut sorted = LimitName::ALL.to_vec();
        sorted.sort_by_key(|n| n.as_str());
        assert_eq!(sorted, LimitName::ALL);
    }

    #[test]
    fn set_parses_and_repeated_io_lines_add_up() {
        let mut l = Limits::default();
        l.set(LimitName::CpuMaxBurst, "20000").unwrap();
        l.set(LimitName::IoMax, "8:0 rbps=1").unwrap();
        l.set(LimitName::IoMax, "8:16 wbps=2").unwrap();
        assert_eq!(l.cpu_max_burst, Some(CpuMaxBurst(20_000)));
        assert_eq!(l.io_max.as_ref().map(|io| io.0.len()), Some(2));
        assert_eq!(l.count(), 3);
        assert!(l.set(LimitName::CpuMaxBurst, "-1").is_err());
    }

    #[test]
    fn every_limit_is_displayed_as_its_option_takes_it() {
        let mut l = Limits::default();
        for (name, text) in [
            (LimitName::CpuIdle, "1"),
            (LimitName::CpuMax, "20000 100000"),
            (LimitName::CpuMaxBurst, "5000"),
            (LimitName::IoMax, "8:0 rbps=1"),
            (LimitName::MemoryHigh, "3221225472"),
            (LimitName::MemoryMax, "max"),
            (LimitName::Nice, "-5"),
            (LimitName::OomScoreAdj, "500"),
            (LimitName::PidsMax, "512"),
        ] {
            l.set(name, text).unwrap();
        }
        l.set(LimitName::IoMax, "8:16 wbps=2").unwrap();
        let texts = l.texts();
        assert_eq!(texts.len(), LimitName::ALL.len() - 1, "all but cpu_weight");
        for (name, text) in &texts {
            let mut again = Limits::default();
            for part in text.split(", ") {
                again.set(*name, part).unwrap();
            }
            assert!(again.has(*name), "{name} {text}");
        }
        assert!(texts.contains(&(LimitName::IoMax, "8:0 rbps=1, 8:16 wbps=2".into())));
    }

    #[test]
    fn a_burst_above_its_quota_is_refused() {
        let mut l = Limits::default();
        l.set(LimitName::CpuMax, "20000 100000").unwrap();
        l.set(LimitName::CpuMaxBurst, "20000").unwrap();
        assert_eq!(l.validate(), Ok(()));
        l.set(LimitName::CpuMaxBurst, "20001").unwrap();
        assert!(l.validate().is_err());
        l.set(LimitName::CpuMax, "max").unwrap();
        assert_eq!(l.validate(), Ok(()), "no quota: any burst");
    }

    #[test]
    fn an_idle_job_has_no_weight() {
        let mut l = Limits::default();
        l.set(LimitName::CpuWeight, "50").unwrap();
        l.set(LimitName::CpuIdle, "0").unwrap();
        assert_eq!(l.validate(), Ok(()));
        l.set(LimitName::CpuIdle, "1").unwrap();
        assert_eq!(l.validate(), Err(LimitError::WeightWhenIdle));
    }
}
