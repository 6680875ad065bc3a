//! Value types more than one limit uses: byte sizes and counts, in cgroup
//! v2's syntax, and how read-back values are written in events.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

impl FromStr for Count {
    type Err = ();

    /// A positive count or `max` (as `pids.max` and `io.max` read back).
    fn from_str(s: &str) -> Result<Self, ()> {
        Count::parse(s).ok_or(())
    }
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

/// A control file's read-back text as `T`, else [`super::FileError::Unexpected`].
pub(super) fn read_back<T: FromStr>(file: &str, back: &str) -> Result<T, super::FileError> {
    back.parse().map_err(|_| super::FileError::Unexpected {
        file: file.into(),
        back: back.into(),
    })
}

/// Writes `value` to `file` and reports what it reads back, as `T`.
pub(super) fn write_read<T: FromStr>(
    files: &dyn super::Files,
    file: &str,
    value: impl fmt::Display,
) -> super::Outcome<T> {
    files
        .write(file, &value.to_string())
        .and_then(|back| read_back(file, &back))
        .into()
}

/// Serde for a value that events write as a JSON integer, or the string
/// `"max"` for no limit (`memory.max`, `pids.max`): `Size` and `Count`.
macro_rules! number_or_max {
    ($($ty:ident :: $n:ident),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $ty::Max => s.serialize_str("max"),
                    $ty::$n(n) => s.serialize_u64(*n),
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Wire {
                    N(u64),
                    Text(String),
                }
                match Wire::deserialize(d)? {
                    Wire::N(n) => Ok($ty::$n(n)),
                    Wire::Text(t) if t == "max" => Ok($ty::Max),
                    Wire::Text(t) => Err(serde::de::Error::custom(format!(
                        "{t:?} is neither a number nor \"max\""
                    ))),
                }
            }
        }

        #[cfg(test)]
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                "NumberOrMax".into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "description": "A number, or \"max\": no limit.",
                    "anyOf": [
                        { "type": "integer", "minimum": 0 },
                        { "const": "max" }
                    ]
                })
            }
        }
    )*};
}
number_or_max!(Size::Bytes, Count::N);

/// Serde for a value that events write as its text, as a policy writes it
/// (`cpu.max`'s "QUOTA PERIOD", an `io.max` line).
macro_rules! as_text {
    ($($ty:ty: $what:literal),*) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(test)]
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "description": $what })
            }
        }
    )*};
}
pub(super) use as_text;

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
