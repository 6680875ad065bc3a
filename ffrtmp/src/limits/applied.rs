//! What the kernel accepted and what it refused, limit by limit.
use super::{InForce, Limit, LimitName};

/// What one limit's write came to: its value read back (in v2 terms, typed
/// as the limit says: [`Limit::Back`]), and why any part of it was refused
/// (an io_max line each).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome<B> {
    pub value: Option<B>,
    pub failures: Vec<String>,
}

impl<B> Outcome<B> {
    pub(super) fn not_a_cgroup_limit() -> Self {
        Outcome {
            value: None,
            failures: vec!["set on the process, not in a cgroup".into()],
        }
    }
}

impl<B, E: ToString> From<Result<B, E>> for Outcome<B> {
    fn from(r: Result<B, E>) -> Self {
        match r {
            Ok(v) => Outcome {
                value: Some(v),
                failures: Vec::new(),
            },
            Err(reason) => Outcome {
                value: None,
                failures: vec![reason.to_string()],
            },
        }
    }
}

/// What the kernel accepted (read back, in v2 terms) and what it refused.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    pub limits: InForce,
    pub failures: Vec<Failure>,
}

/// A limit that was asked for and is not (wholly) in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub limit: LimitName,
    pub reason: String,
}

impl Applied {
    pub fn fail(&mut self, limit: LimitName, reason: String) {
        self.failures.push(Failure { limit, reason });
    }

    /// Records limit `L`'s outcome.
    pub fn record<L: Limit>(&mut self, outcome: Outcome<L::Back>) {
        if let Some(v) = outcome.value {
            *L::in_force(&mut self.limits) = Some(v);
        }
        for reason in outcome.failures {
            self.fail(L::NAME, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{FileError, Files, Limits};
    use super::*;

    /// A job's control files as the kernel reads them back after a write:
    /// `file` → its text, or the value written when absent.
    struct Kernel(HashMap<&'static str, &'static str>);

    impl Files for Kernel {
        fn write(&self, file: &str, value: &str) -> Result<String, FileError> {
            Ok(self.0.get(file).map_or(value, |back| back).to_string())
        }
    }

    struct Apply<'a>(&'a Kernel, bool, Applied);

    impl super::super::Visit for Apply<'_> {
        fn visit<L: Limit>(&mut self, limit: &L) {
            if L::CGROUP.is_some() {
                let outcome = if self.1 {
                    limit.apply_v1(self.0)
                } else {
                    limit.apply_v2(self.0)
                };
                self.2.record::<L>(outcome);
            }
        }
    }

    fn applied(v1: bool, kernel: &[(&'static str, &'static str)]) -> Applied {
        let mut limits = Limits::default();
        for (name, text) in [
            (LimitName::CpuMax, "max"),
            (LimitName::CpuWeight, "150"),
            (LimitName::IoMax, "8:0 wbps=1048576"),
            (LimitName::MemoryMax, "4G"),
            (LimitName::MemoryHigh, "max"),
            (LimitName::PidsMax, "64"),
        ] {
            limits.set(name, text).unwrap();
        }
        let mut apply = Apply(
            &Kernel(kernel.iter().copied().collect()),
            v1,
            Applied::default(),
        );
        limits.visit(&mut apply);
        apply.2
    }

    /// The wire form of each read-back is the contract (docs/EVENTS.md):
    /// one number as a JSON integer, no limit as "max", cpu.max and io.max
    /// lines as their text, whichever hierarchy they were read from.
    #[test]
    fn read_backs_are_typed_and_written_as_events_always_wrote_them() {
        let want = serde_json::json!({
            "cpu_max": "max 100000",
            "cpu_weight": 150,
            "io_max": ["8:0 rbps=max wbps=1048576 riops=max wiops=max"],
            "memory_high": "max",
            "memory_max": 4_294_967_296_u64,
            "pids_max": 64,
        });
        let v2 = applied(
            false,
            &[
                ("io.max", "8:0 rbps=max wbps=1048576 riops=max wiops=max"),
                ("memory.high", "max"),
            ],
        );
        assert_eq!(v2.failures, []);
        assert_eq!(serde_json::to_value(&v2.limits).unwrap(), want);
        let back: InForce = serde_json::from_value(want).unwrap();
        assert_eq!(
            back, v2.limits,
            "the wire form reads back as the same values"
        );

        let v1 = applied(
            true,
            &[
                ("cpu.cfs_quota_us", "-1"),
                ("cpu.shares", "1536"),
                ("blkio.throttle.write_bps_device", "8:0 1048576"),
                ("memory.soft_limit_in_bytes", "9223372036854771712"),
            ],
        );
        assert_eq!(v1.failures, []);
        let json = serde_json::to_value(&v1.limits).unwrap();
        assert_eq!(json["cpu_max"], "max 100000");
        assert_eq!(json["cpu_weight"], 150);
        assert_eq!(json["io_max"], serde_json::json!(["8:0 wbps=1048576"]));
        assert_eq!(json["memory_high"], "max", "v1's top of range is no limit");
    }

    /// Read back before report: a file that reads back something that is
    /// not the limit's value is a failure, and nothing is reported in force.
    #[test]
    fn a_read_back_that_is_not_the_value_is_a_failure() {
        let applied = applied(
            false,
            &[
                ("cpu.max", "garbage"),
                ("pids.max", "0"),
                ("io.max", "8:0 rbps=nonsense"),
            ],
        );
        let failed: Vec<LimitName> = applied.failures.iter().map(|f| f.limit).collect();
        assert_eq!(
            failed,
            [LimitName::CpuMax, LimitName::IoMax, LimitName::PidsMax]
        );
        assert!(
            applied.failures[0].reason.contains("\"garbage\""),
            "{applied:?}"
        );
        assert_eq!(
            applied.limits.names(),
            [
                LimitName::CpuWeight,
                LimitName::MemoryHigh,
                LimitName::MemoryMax
            ]
        );
    }
}
