//! CPU limits: bandwidth (`cpu.max`), its burst allowance (`cpu.max.burst`),
//! the proportional weight (`cpu.weight`) and idle scheduling (`cpu.idle`).
use std::{fmt, str::FromStr};

use super::{
    Controllers, FileError, Files, Limit, LimitError, Outcome, Property,
    values::{int_in, read_back, write_read},
};

const CPU: Option<Controllers> = Some(Controllers {
    v2: "cpu",
    v1: "cpu",
});

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

impl Limit for CpuMax {
    const HELP: &'static str = "CPU bandwidth, cgroup v2 syntax: \"QUOTA PERIOD\" in µs (\"200000 100000\" = 2 CPUs), \"max\", \"max PERIOD\".";
    const VALUE_NAME: &'static str = "SPEC";
    const CGROUP: Option<Controllers> = CPU;
    const STATUS_V2: &'static [&'static str] = &["cpu.max"];
    const STATUS_V1: &'static [&'static str] = &["cpu.cfs_quota_us", "cpu.cfs_period_us"];

    /// `cpu.max` as it reads back.
    type Back = CpuMax;

    fn parse(text: &str) -> Result<Self, LimitError> {
        text.parse()
    }

    fn apply_v2(&self, files: &dyn Files) -> Outcome<CpuMax> {
        write_read(files, "cpu.max", self)
    }

    fn apply_v1(&self, files: &dyn Files) -> Outcome<CpuMax> {
        let written = || {
            // Period first: the kernel checks the quota against it.
            let period = files.write("cpu.cfs_period_us", &self.period.to_string())?;
            let quota = self
                .quota
                .map_or_else(|| "-1".to_string(), |q| q.to_string());
            let quota = files.write("cpu.cfs_quota_us", &quota)?;
            Ok::<_, FileError>(CpuMax {
                quota: match quota.as_str() {
                    "-1" => None,
                    q => Some(read_back("cpu.cfs_quota_us", q)?),
                },
                period: read_back("cpu.cfs_period_us", &period)?,
            })
        };
        written().into()
    }

    /// systemd takes a quota per second and writes back
    /// `quota_per_sec * period / 1s`: the same quota whenever it is a whole
    /// number of µs per second, which the read-back checks.
    fn systemd(&self) -> Result<Vec<Property>, super::NoProperty> {
        let per_sec = self.quota.map_or(Property::INFINITY, |q| {
            q.saturating_mul(1_000_000) / self.period
        });
        Ok(vec![
            Property::number("CPUQuotaPerSecUSec", per_sec),
            Property::number("CPUQuotaPeriodUSec", self.period),
        ])
    }
}

/// `cpu.max.burst` (v1 `cpu.cfs_burst_us`, both Linux ≥ 5.14): microseconds
/// of unused quota a job may save up and spend above its quota in a later
/// period. A live encoder spends a burst of CPU at each GOP boundary; with
/// a burst allowance that costs it no throttling, while its average stays
/// within the quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMaxBurst(pub u64);

impl CpuMaxBurst {
    /// The kernel's bound on any quota or burst (`max_cfs_runtime`, in µs).
    pub const MAX: u64 = (1 << 44) - 1;
}

impl Limit for CpuMaxBurst {
    const HELP: &'static str = "CPU burst allowance in µs: unused quota a job may spend above --cpu-max later (at most the quota; Linux >= 5.14).";
    const VALUE_NAME: &'static str = "USEC";
    const CGROUP: Option<Controllers> = CPU;
    const STATUS_V2: &'static [&'static str] = &["cpu.max.burst"];
    const STATUS_V1: &'static [&'static str] = &["cpu.cfs_burst_us"];

    /// Microseconds.
    type Back = u64;

    fn parse(text: &str) -> Result<Self, LimitError> {
        int_in(text, 0..=Self::MAX, LimitError::CpuMaxBurst).map(CpuMaxBurst)
    }

    fn apply_v2(&self, files: &dyn Files) -> Outcome<u64> {
        write_read(files, "cpu.max.burst", self.0)
    }

    fn apply_v1(&self, files: &dyn Files) -> Outcome<u64> {
        write_read(files, "cpu.cfs_burst_us", self.0)
    }
}

/// `cpu.weight`: a share of the CPU against its siblings (100 = default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuWeight(pub u32);

/// `cpu.shares` for the v2 default weight (100 → 1024, as systemd maps it).
const SHARES_PER_WEIGHT_100: u64 = 1024;

impl Limit for CpuWeight {
    const HELP: &'static str = "Proportional CPU weight, 1..10000 (100 is the default share).";
    const VALUE_NAME: &'static str = "N";
    const CGROUP: Option<Controllers> = CPU;
    const STATUS_V2: &'static [&'static str] = &["cpu.weight"];
    const STATUS_V1: &'static [&'static str] = &["cpu.shares"];

    /// The weight (v1: the shares read back, as a weight).
    type Back = u64;

    fn parse(text: &str) -> Result<Self, LimitError> {
        int_in(text, 1..=10_000, LimitError::CpuWeight).map(CpuWeight)
    }

    fn apply_v2(&self, files: &dyn Files) -> Outcome<u64> {
        write_read(files, "cpu.weight", self.0)
    }

    fn apply_v1(&self, files: &dyn Files) -> Outcome<u64> {
        let shares = (u64::from(self.0) * SHARES_PER_WEIGHT_100 / 100).max(2);
        files
            .write("cpu.shares", &shares.to_string())
            .and_then(|back| read_back::<u64>("cpu.shares", &back))
            .map(|shares| (shares * 100).div_ceil(SHARES_PER_WEIGHT_100))
            .into()
    }

    fn systemd(&self) -> Result<Vec<Property>, super::NoProperty> {
        Ok(vec![Property::number("CPUWeight", u64::from(self.0))])
    }
}

/// `cpu.idle` (v2 and v1's cpu hierarchy, Linux >= 5.15): 1 makes the
/// job SCHED_IDLE as a group against its siblings. It runs on whatever CPU
/// the others leave (work-conserving: on an idle machine it gets all of it)
/// and a waking sibling preempts it at once, which the lowest weight does
/// not promise. An idle cgroup has no weight (the kernel refuses
/// `cpu.weight` there with EINVAL), so the two are not set together
/// ([`super::Limits::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuIdle(pub bool);

impl Limit for CpuIdle {
    const HELP: &'static str = "1: the job only gets CPU the others leave (SCHED_IDLE as a group; Linux >= 5.15); 0: normal.";
    const VALUE_NAME: &'static str = "0|1";
    const CGROUP: Option<Controllers> = CPU;
    const STATUS_V2: &'static [&'static str] = &["cpu.idle"];
    const STATUS_V1: &'static [&'static str] = &["cpu.idle"];

    /// 0 or 1.
    type Back = u8;

    fn parse(text: &str) -> Result<Self, LimitError> {
        int_in(text, 0..=1, LimitError::CpuIdle).map(|v: u8| CpuIdle(v == 1))
    }

    fn apply_v2(&self, files: &dyn Files) -> Outcome<u8> {
        write_read(files, "cpu.idle", u8::from(self.0))
    }

    fn apply_v1(&self, files: &dyn Files) -> Outcome<u8> {
        write_read(files, "cpu.idle", u8::from(self.0))
    }

    /// systemd's `CPUWeight=idle` (since 252) is weight 0 on the bus,
    /// which it writes as `cpu.idle` 1. A new scope is not idle: 0 needs no property (and
    /// is read back like any other).
    fn systemd(&self) -> Result<Vec<Property>, super::NoProperty> {
        Ok(if self.0 {
            vec![Property::number("CPUWeight", 0)]
        } else {
            Vec::new()
        })
    }
}

super::values::display_inner!(CpuMaxBurst, CpuWeight);
super::values::as_text!(CpuMax: "cpu.max: \"QUOTA PERIOD\" or \"max PERIOD\", in microseconds.");

impl fmt::Display for CpuIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "1" } else { "0" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_takes_the_v2_forms() {
        let q = |quota, period| Ok(CpuMax { quota, period });
        assert_eq!("100000 100000".parse(), q(Some(100_000), 100_000));
        assert_eq!("200000 100000".parse(), q(Some(200_000), 100_000));
        assert_eq!("max".parse(), q(None, 100_000));
        assert_eq!("max 50000".parse(), q(None, 50_000));
        assert_eq!("20000".parse(), q(Some(20_000), 100_000));
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
    fn burst_and_weight_have_their_ranges() {
        assert_eq!(CpuMaxBurst::parse("0"), Ok(CpuMaxBurst(0)));
        assert_eq!(CpuMaxBurst::parse("50000"), Ok(CpuMaxBurst(50_000)));
        for bad in ["", "-1", "1.5", "5ms", "17592186044416"] {
            assert!(CpuMaxBurst::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(CpuWeight::parse("150"), Ok(CpuWeight(150)));
        assert!(CpuWeight::parse("0").is_err() && CpuWeight::parse("10001").is_err());
        assert_eq!(CpuIdle::parse("1"), Ok(CpuIdle(true)));
        assert_eq!(CpuIdle::parse("0"), Ok(CpuIdle(false)));
        for bad in ["", "2", "-1", "yes", "true"] {
            assert!(CpuIdle::parse(bad).is_err(), "{bad:?}");
        }
    }
}
