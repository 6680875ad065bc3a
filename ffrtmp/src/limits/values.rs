//! Value types more than one limit uses: byte sizes and counts, in cgroup
//! v2's syntax.
use std::{fmt, str::FromStr};

use serde_json::Value;

use super::LimitError;

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
    pub(super) fn parse(s: &str) -> Option<Self> {
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

/// `Display` for limits that are one value: the value, as a policy writes it.
macro_rules! display_inner {
    ($($ty:ty),*) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
pub(super) use display_inner;

/// A read-back value as events write it: a JSON integer when the file
/// holds one number (bytes, counts), else its text (`max`).
pub(super) fn number_or_text(back: String) -> Value {
    back.parse::<u64>().map_or(Value::String(back), Value::from)
}

/// A control file's read-back text as a JSON number.
pub(super) fn number(file: &str, back: &str) -> Result<Value, super::FileError> {
    back.parse::<u64>()
        .map(Value::from)
        .map_err(|_| super::FileError::Unexpected {
            file: file.into(),
            back: back.into(),
        })
}

/// Writes `value` to `file` and reports it read back as a number.
pub(super) fn write_number(
    files: &dyn super::Files,
    file: &str,
    value: impl fmt::Display,
) -> super::Outcome {
    files
        .write(file, &value.to_string())
        .and_then(|back| number(file, &back))
        .into()
}

/// An integer within `range`, else `err` of the text.
pub(super) fn int_in<T: FromStr + PartialOrd>(
    text: &str,
    range: std::ops::RangeInclusive<T>,
    err: fn(String) -> LimitError,
) -> Result<T, LimitError> {
    text.parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| err(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
