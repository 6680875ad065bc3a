//! The limits a job can ask for, and the job id, parsed and validated before
//! anything is created or started. Syntax follows cgroup v2's files, so the
//! deployment guide's forms work verbatim (`--cpu-max "100000 100000"`,
//! `--memory-max $((4*1024*1024*1024))`, `--io-max "8:0 rbps=104857600"`).
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Errors in a limit or a job id, worded for the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error(
        "job id {0:?} must be 1 to 64 characters of [A-Za-z0-9._-], and not \".\", \"..\" or \".staging\" (reserved)"
    )]
    JobId(String),
    #[error(
        "cpu max {0:?} must be \"QUOTA PERIOD\", \"max\" or \"max PERIOD\" (microseconds, period 1000..=1000000, quota >= 1000)"
    )]
    CpuMax(String),
    #[error("cpu weight {0:?} must be an integer from 1 to 10000")]
    CpuWeight(String),
    #[error("size {0:?} must be bytes, a number with K, M, G or T (powers of 1024), or \"max\"")]
    Size(String),
    #[error(
        "io max {0:?} must be \"MAJ:MIN\" followed by one or more of rbps=N wbps=N riops=N wiops=N (N a positive integer or \"max\")"
    )]
    IoMax(String),
    #[error("pids max {0:?} must be a positive integer or \"max\"")]
    PidsMax(String),
    #[error("nice {0:?} must be an integer from -20 to 19")]
    Nice(String),
    #[error("oom score adj {0:?} must be an integer from -1000 to 1000")]
    OomScoreAdj(String),
}

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

/// `cpu.max`: `quota` microseconds of CPU per `period`; `None` = no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMax {
    pub quota: Option<u64>,
    pub period: u64,
}

impl CpuMax {
    pub const DEFAULT_PERIOD: u64 = 100_000;
}

impl FromStr for CpuMax {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, LimitError> {
        let err = || LimitError::CpuMax(s.to_string());
        let mut words = s.split_whitespace();
        let quota = match words.next().ok_or_else(err)? {
            "max" => None,
            q => Some(q.parse::<u64>().map_err(|_| err())?),
        };
        let period = match words.next() {
            Some(p) => p.parse::<u64>().map_err(|_| err())?,
            None => Self::DEFAULT_PERIOD,
        };
        // The kernel's bounds: period 1 ms..1 s, quota at least 1 ms.
        if words.next().is_some()
            || !(1_000..=1_000_000).contains(&period)
            || quota.is_some_and(|q| q < 1_000)
        {
            return Err(err());
        }
        Ok(CpuMax { quota, period })
    }
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quota {
            Some(q) => write!(f, "{q} {}", self.period),
            None => write!(f, "max {}", self.period),
        }
    }
}

/// A byte size or no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Max,
    Bytes(u64),
}

impl FromStr for Size {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, LimitError> {
        let err = || LimitError::Size(s.to_string());
        if s == "max" {
            return Ok(Size::Max);
        }
        let (digits, shift) = match s.char_indices().last().ok_or_else(err)? {
            (i, 'k' | 'K') => (&s[..i], 10),
            (i, 'm' | 'M') => (&s[..i], 20),
            (i, 'g' | 'G') => (&s[..i], 30),
            (i, 't' | 'T') => (&s[..i], 40),
            _ => (s, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        n.checked_mul(1 << shift).map(Size::Bytes).ok_or_else(err)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Max => f.write_str("max"),
            Size::Bytes(n) => write!(f, "{n}"),
        }
    }
}

/// A count or no limit (`pids.max`, io rates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    Max,
    N(u64),
}

impl Count {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "max" => Some(Count::Max),
            n => n.parse::<u64>().ok().filter(|&n| n > 0).map(Count::N),
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Max => f.write_str("max"),
            Count::N(n) => write!(f, "{n}"),
        }
    }
}

/// One `io.max` line: limits on one block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoMax {
    pub major: u32,
    pub minor: u32,
    pub rbps: Option<Count>,
    pub wbps: Option<Count>,
    pub riops: Option<Count>,
    pub wiops: Option<Count>,
}

impl FromStr for IoMax {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, LimitError> {
        let err = || LimitError::IoMax(s.to_string());
        let mut words = s.split_whitespace();
        let (major, minor) = words
            .next()
            .and_then(|d| d.split_once(':'))
            .ok_or_else(err)?;
        let mut io = IoMax {
            major: major.parse().map_err(|_| err())?,
            minor: minor.parse().map_err(|_| err())?,
            rbps: None,
            wbps: None,
            riops: None,
            wiops: None,
        };
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(err)?;
            let value = Count::parse(value).ok_or_else(err)?;
            let slot = match key {
                "rbps" => &mut io.rbps,
                "wbps" => &mut io.wbps,
                "riops" => &mut io.riops,
                "wiops" => &mut io.wiops,
                _ => return Err(err()),
            };
            if slot.replace(value).is_some() {
                return Err(err());
            }
        }
        if io.rbps.is_none() && io.wbps.is_none() && io.riops.is_none() && io.wiops.is_none() {
            return Err(err());
        }
        Ok(io)
    }
}

impl fmt::Display for IoMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)?;
        for (key, value) in self.fields() {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

impl IoMax {
    /// The limits that were asked for, by their v2 key.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, Count)> {
        [
            ("rbps", self.rbps),
            ("wbps", self.wbps),
            ("riops", self.riops),
            ("wiops", self.wiops),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
    }
}

pub fn parse_cpu_weight(s: &str) -> Result<u32, LimitError> {
    s.parse::<u32>()
        .ok()
        .filter(|w| (1..=10_000).contains(w))
        .ok_or_else(|| LimitError::CpuWeight(s.to_string()))
}

pub fn parse_pids_max(s: &str) -> Result<Count, LimitError> {
    Count::parse(s).ok_or_else(|| LimitError::PidsMax(s.to_string()))
}

pub fn parse_nice(s: &str) -> Result<i32, LimitError> {
    s.parse::<i32>()
        .ok()
        .filter(|n| (-20..=19).contains(n))
        .ok_or_else(|| LimitError::Nice(s.to_string()))
}

pub fn parse_oom_score_adj(s: &str) -> Result<i32, LimitError> {
    s.parse::<i32>()
        .ok()
        .filter(|n| (-1000..=1000).contains(n))
        .ok_or_else(|| LimitError::OomScoreAdj(s.to_string()))
}

/// Everything a job asked for. `None` / empty: not asked, left as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_max: Option<CpuMax>,
    pub cpu_weight: Option<u32>,
    pub memory_max: Option<Size>,
    pub memory_high: Option<Size>,
    pub io_max: Vec<IoMax>,
    pub pids_max: Option<Count>,
    pub nice: Option<i32>,
    pub oom_score_adj: Option<i32>,
}

impl Limits {
    /// Whether any limit needs a cgroup (nice and oom_score_adj do not).
    pub fn needs_cgroup(&self) -> bool {
        self.cpu_max.is_some()
            || self.cpu_weight.is_some()
            || self.memory_max.is_some()
            || self.memory_high.is_some()
            || !self.io_max.is_empty()
            || self.pids_max.is_some()
    }

    /// How many limits are set (an io_max line counts once).
    pub fn count(&self) -> usize {
        [
            self.cpu_max.is_some(),
            self.cpu_weight.is_some(),
            self.memory_max.is_some(),
            self.memory_high.is_some(),
            self.pids_max.is_some(),
            self.nice.is_some(),
            self.oom_score_adj.is_some(),
        ]
        .into_iter()
        .filter(|&set| set)
        .count()
            + self.io_max.len()
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

    #[test]
    fn cpu_max_takes_the_v2_forms() {
        assert_eq!(
            "100000 100000".parse(),
            Ok(CpuMax {
                quota: Some(100_000),
                period: 100_000
            })
        );
        assert_eq!(
            "200000 100000".parse(),
            Ok(CpuMax {
                quota: Some(200_000),
                period: 100_000
            })
        );
        assert_eq!(
            "max".parse(),
            Ok(CpuMax {
                quota: None,
                period: 100_000
            })
        );
        assert_eq!(
            "max 50000".parse(),
            Ok(CpuMax {
                quota: None,
                period: 50_000
            })
        );
        assert_eq!(
            "20000".parse(),
            Ok(CpuMax {
                quota: Some(20_000),
                period: 100_000
            })
        );
        for bad in [
            "",
            "x",
            "100 100000",
            "20000 100",
            "20000 2000000",
            "1 2 3",
            "-5 100000",
        ] {
            assert!(bad.parse::<CpuMax>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_take_bytes_suffixes_and_max() {
        assert_eq!("4294967296".parse(), Ok(Size::Bytes(4 << 30)));
        assert_eq!("512M".parse(), Ok(Size::Bytes(512 << 20)));
        assert_eq!("4G".parse(), Ok(Size::Bytes(4 << 30)));
        assert_eq!("64k".parse(), Ok(Size::Bytes(64 << 10)));
        assert_eq!("max".parse(), Ok(Size::Max));
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "4GB",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn io_max_takes_any_subset_of_keys() {
        let io: IoMax = "8:0 rbps=104857600 wbps=104857600".parse().unwrap();
        assert_eq!((io.major, io.minor), (8, 0));
        assert_eq!(io.to_string(), "8:0 rbps=104857600 wbps=104857600");
        assert_eq!(
            "259:1 wiops=max".parse::<IoMax>().unwrap().wiops,
            Some(Count::Max)
        );
        for bad in [
            "8:0",
            "8 rbps=1",
            "8:0 rbps=",
            "8:0 rbps=0",
            "8:0 xbps=1",
            "8:0 rbps=1 rbps=2",
            "a:b rbps=1",
        ] {
            assert!(bad.parse::<IoMax>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scalar_limits_have_their_ranges() {
        assert_eq!(parse_cpu_weight("150"), Ok(150));
        assert!(parse_cpu_weight("0").is_err() && parse_cpu_weight("10001").is_err());
        assert_eq!(parse_pids_max("64"), Ok(Count::N(64)));
        assert!(parse_pids_max("0").is_err());
        assert_eq!(parse_nice("-20"), Ok(-20));
        assert!(parse_nice("20").is_err());
        assert_eq!(parse_oom_score_adj("-1000"), Ok(-1000));
        assert!(parse_oom_score_adj("1001").is_err());
    }
}
