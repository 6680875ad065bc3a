//! What the kernel accepted and what it refused, limit by limit.
use std::collections::BTreeMap;

use serde_json::Value;

use super::LimitName;

/// What one limit's write came to: its value read back (in v2 terms), and
/// why any part of it was refused (an io_max line each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub value: Option<Value>,
    pub failures: Vec<String>,
}

impl Outcome {
    pub(super) fn not_a_cgroup_limit() -> Self {
        Outcome {
            value: None,
            failures: vec!["set on the process, not in a cgroup".into()],
        }
    }
}

impl<E: ToString> From<Result<Value, E>> for Outcome {
    fn from(r: Result<Value, E>) -> Self {
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
    pub limits: BTreeMap<LimitName, Value>,
    pub failures: Vec<Failure>,
}

/// A limit that was asked for and is not (wholly) in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub limit: LimitName,
    pub reason: String,
}

impl Applied {
    pub fn set(&mut self, limit: LimitName, value: Value) {
        self.limits.insert(limit, value);
    }

    pub fn fail(&mut self, limit: LimitName, reason: String) {
        self.failures.push(Failure { limit, reason });
    }

    /// Records one limit's outcome.
    pub fn record(&mut self, limit: LimitName, outcome: Outcome) {
        if let Some(v) = outcome.value {
            self.set(limit, v);
        }
        for reason in outcome.failures {
            self.fail(limit, reason);
        }
    }
}
