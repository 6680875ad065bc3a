//! IO limits: `io.max` lines, one per block device (v1: the
//! `blkio.throttle.*_device` files).
use std::{fmt, str::FromStr};

use super::{Controllers, Count, FileError, Files, Limit, LimitError, Outcome, values::read_back};

/// `io.max`: limits on one or more block devices (the option repeats; a
/// policy gives a list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoMax(pub Vec<IoLine>);

impl Limit for IoMax {
    const HELP: &'static str = "IO limits for one device: \"MAJ:MIN rbps=N wbps=N riops=N wiops=N\" (any subset); repeatable.";
    const VALUE_NAME: &'static str = "SPEC";
    const REPEATABLE: bool = true;
    const CGROUP: Option<Controllers> = Some(Controllers {
        v2: "io",
        v1: "blkio",
    });
    const STATUS_V2: &'static [&'static str] = &["io.max"];
    const STATUS_V1: &'static [&'static str] = &[
        "blkio.throttle.read_bps_device",
        "blkio.throttle.write_bps_device",
    ];

    /// Each device's line as `io.max` reads it back (every key, `max`
    /// where there is no limit).
    type Back = Vec<IoLine>;

    fn parse(text: &str) -> Result<Self, LimitError> {
        Ok(IoMax(vec![text.parse()?]))
    }

    fn merge(&mut self, more: Self) {
        self.0.extend(more.0);
    }

    /// Each device's line as `io.max` reads it back; a device the kernel
    /// refused is a failure of its own, the others stay reported.
    fn apply_v2(&self, files: &dyn Files) -> Outcome<Vec<IoLine>> {
        self.each(|dev| {
            let back = files.write("io.max", &dev.to_string())?;
            let prefix = format!("{}:{} ", dev.major, dev.minor);
            let line = back
                .lines()
                .find(|l| l.starts_with(&prefix))
                .ok_or_else(|| FileError::NoLine {
                    file: "io.max".into(),
                    device: prefix.trim_end().into(),
                })?;
            read_back("io.max", line)
        })
    }

    /// systemd names a device by its path (`IOWriteBandwidthMax=/dev/… N`)
    /// and writes `io.max` from it: each MAJ:MIN becomes the kernel's own
    /// node name for it (`/sys/dev/block/MAJ:MIN/uevent`, `DEVNAME`, as
    /// devtmpfs names it). A key set to `max` is no limit: not passed.
    fn systemd(&self) -> Result<Vec<super::Property>, super::NoProperty> {
        const PROPERTIES: [(&str, &str); 4] = [
            ("rbps", "IOReadBandwidthMax"),
            ("wbps", "IOWriteBandwidthMax"),
            ("riops", "IOReadIOPSMax"),
            ("wiops", "IOWriteIOPSMax"),
        ];
        let lines = self
            .0
            .iter()
            .map(|line| line.device_path().map(|path| (path, line)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut properties = Vec::new();
        for (key, name) in PROPERTIES {
            let devices: Vec<(String, u64)> = lines
                .iter()
                .filter_map(
                    |(path, line)| match line.fields().find(|(k, _)| *k == key)? {
                        (_, Count::N(n)) => Some((path.clone(), n)),
                        (_, Count::Max) => None,
                    },
                )
                .collect();
            if !devices.is_empty() {
                properties.push(super::Property {
                    name,
                    value: super::PropertyValue::Devices(devices),
                });
            }
        }
        Ok(properties)
    }

    fn apply_v1(&self, files: &dyn Files) -> Outcome<Vec<IoLine>> {
        self.each(|dev| dev.apply_v1(files))
    }
}

impl IoMax {
    fn each(&self, apply: impl Fn(&IoLine) -> Result<IoLine, FileError>) -> Outcome<Vec<IoLine>> {
        let mut lines = Vec::new();
        let mut failures = Vec::new();
        for dev in &self.0 {
            match apply(dev) {
                Ok(line) => lines.push(line),
                Err(reason) => failures.push(reason.to_string()),
            }
        }
        Outcome {
            value: (!lines.is_empty()).then_some(lines),
            failures,
        }
    }
}

/// One `io.max` line: limits on one block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoLine {
    pub major: u32,
    pub minor: u32,
    pub rbps: Option<Count>,
    pub wbps: Option<Count>,
    pub riops: Option<Count>,
    pub wiops: Option<Count>,
}

impl FromStr for IoLine {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, LimitError> {
        let err = || LimitError::IoMax(s.to_string());
        let mut words = s.split_whitespace();
        let (major, minor) = words
            .next()
            .and_then(|d| d.split_once(':'))
            .ok_or_else(err)?;
        let mut io = IoLine {
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

/// Its lines, as `--io-max` takes them, joined by ", ".
impl fmt::Display for IoMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            line.fmt(f)?;
        }
        Ok(())
    }
}

impl fmt::Display for IoLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)?;
        for (key, value) in self.fields() {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

impl IoLine {
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

    /// The device node of MAJ:MIN, by the kernel's name for it.
    fn device_path(&self) -> Result<String, super::NoProperty> {
        let device = format!("{}:{}", self.major, self.minor);
        let uevent = std::path::PathBuf::from(format!("/sys/dev/block/{device}/uevent"));
        let text = match std::fs::read_to_string(&uevent) {
            Ok(text) => text,
            Err(source) => {
                return Err(super::NoProperty::NoDevice {
                    device,
                    uevent,
                    source,
                });
            }
        };
        text.lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .map(|name| format!("/dev/{}", name.trim()))
            .ok_or(super::NoProperty::Unnamed(uevent))
    }

    /// Writes one v1 file per key; the line as v2 would read it (only the
    /// keys asked for).
    fn apply_v1(&self, files: &dyn Files) -> Result<IoLine, FileError> {
        let device = format!("{}:{}", self.major, self.minor);
        let mut back_line = IoLine {
            rbps: None,
            wbps: None,
            riops: None,
            wiops: None,
            ..*self
        };
        for (key, value) in self.fields() {
            let (file, slot) = match key {
                "rbps" => ("blkio.throttle.read_bps_device", &mut back_line.rbps),
                "wbps" => ("blkio.throttle.write_bps_device", &mut back_line.wbps),
                "riops" => ("blkio.throttle.read_iops_device", &mut back_line.riops),
                _ => ("blkio.throttle.write_iops_device", &mut back_line.wiops),
            };
            // v1 removes a device's limit when it is set to 0.
            let n = match value {
                Count::Max => 0,
                Count::N(n) => n,
            };
            let back = files.write(file, &format!("{device} {n}"))?;
            let line = back.lines().find(|l| l.starts_with(&format!("{device} ")));
            *slot = Some(match (value, line) {
                (Count::Max, None) => Count::Max,
                (_, Some(l)) => read_back(file, l.split_whitespace().nth(1).unwrap_or(l))?,
                (Count::N(_), None) => {
                    return Err(FileError::NoLine {
                        file: file.into(),
                        device,
                    });
                }
            });
        }
        Ok(back_line)
    }
}

super::values::as_text!(IoLine: "An io.max line: \"MAJ:MIN rbps=N wbps=N riops=N wiops=N\" (N a number or max).");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_lines_take_any_subset_of_keys() {
        let io: IoLine = "8:0 rbps=104857600 wbps=104857600".parse().unwrap();
        assert_eq!((io.major, io.minor), (8, 0));
        assert_eq!(io.to_string(), "8:0 rbps=104857600 wbps=104857600");
        assert_eq!(
            "259:1 wiops=max".parse::<IoLine>().unwrap().wiops,
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
            assert!(bad.parse::<IoLine>().is_err(), "{bad:?}");
        }
    }
}
