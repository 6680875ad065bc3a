//! The job id: a job's name, which is its cgroup's directory name, so it
//! can never name a path.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::LimitError;

/// A job's name: its cgroup's directory name, so it can never name a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    pub const MAX_LEN: usize = 64;
    /// Reserved: `watch`'s staging cgroups live in `<root>/.staging`.
    pub const STAGING: &str = ".staging";

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobId {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, LimitError> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s != "."
            && s != ".."
            && s != Self::STAGING
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(JobId(s.to_string()))
        } else {
            Err(LimitError::JobId(s.to_string()))
        }
    }
}

impl TryFrom<String> for JobId {
    type Error = LimitError;
    fn try_from(s: String) -> Result<Self, LimitError> {
        s.parse()
    }
}

impl From<JobId> for String {
    fn from(j: JobId) -> String {
        j.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_names_never_paths() {
        for ok in ["a", "test-001", "stream_42.key", &"x".repeat(64)] {
            assert!(ok.parse::<JobId>().is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".staging",
            "../x",
            "/abs",
            "a/b",
            "a\0b",
            "a\nb",
            "a b",
            "ü",
            &"x".repeat(65),
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?}");
        }
    }
}
