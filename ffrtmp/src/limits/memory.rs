//! Memory limits: the hard limit (`memory.max`) and the throttling
//! threshold (`memory.high`; v1 has none, its soft limit is the closest).
use super::{Controllers, Files, Limit, LimitError, Outcome, Property, Size, values::read_back};

const MEMORY: Option<Controllers> = Some(Controllers {
    v2: "memory",
    v1: "memory",
});

/// v1 reads an unlimited memory limit back as this (PAGE_COUNTER_MAX pages).
const V1_MEMORY_UNLIMITED_MIN: u64 = 1 << 62;

/// The smallest memory limit accepted. Measured: `run --memory-max 4096 --
/// true` failed at exec with ENOMEM (exit 125); 1 MiB runs it (peak 256 KiB).
pub(super) const MEMORY_FLOOR: u64 = 1 << 20;

/// A size that a process can start in, or no limit.
fn memory_size(text: &str) -> Result<Size, LimitError> {
    match text.parse()? {
        Size::Bytes(n) if n < MEMORY_FLOOR => Err(LimitError::MemoryTooSmall(text.to_string())),
        size => Ok(size),
    }
}

/// `memory.max`: exceeding it OOM-kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMax(pub Size);

/// `memory.high`: above it the job is throttled and reclaimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryHigh(pub Size);

impl Limit for MemoryMax {
    const HELP: &'static str =
        "Memory limit: bytes, or 512M / 4G / …, or \"max\". Exceeding it OOM-kills.";
    const VALUE_NAME: &'static str = "SIZE";
    const CGROUP: Option<Controllers> = MEMORY;
    const STATUS_V2: &'static [&'static str] = &["memory.max"];
    const STATUS_V1: &'static [&'static str] = &["memory.limit_in_bytes"];

    /// Bytes, or `max` (v1: a limit at the top of its range).
    type Back = Size;

    fn parse(text: &str) -> Result<Self, LimitError> {
        memory_size(text).map(MemoryMax)
    }

    fn apply_v2(&self, files: &dyn Files) -> Outcome<Size> {
        v2(files, "memory.max", self.0)
    }

    fn apply_v1(&self, files: &dyn Files) -> Outcome<Size> {
        v1(files, "memory.limit_in_bytes", self.0)
    }

    fn systemd(&self) -> Result<Vec<Property>, super::NoProperty> {
        Ok(vec![property("MemoryMax", self.0)])
    }
}

impl Limit for MemoryHigh {
    const HELP: &'static str = "Memory throttling threshold (v1: soft limit): same syntax.";
    const VALUE_NAME: &'static str = "SIZE";
    const CGROUP: Option<Controllers> = MEMORY;
    const STATUS_V2: &'static [&'static str] = &["memory.high"];
    const STATUS_V1: &'static [&'static str] = &["memory.soft_limit_in_bytes"];

    /// Bytes, or `max`.
    type Back = Size;

    fn parse(text: &str) -> Result<Self, LimitError> {
        memory_size(text).map(MemoryHigh)
    }

    fn apply_v2(&self, files: &dyn Files) -> Outcome<Size> {
        v2(files, "memory.high", self.0)
    }

    /// v1 has no throttling "high"; the soft limit is the closest: reclaim
    /// pressure under contention.
    fn apply_v1(&self, files: &dyn Files) -> Outcome<Size> {
        v1(files, "memory.soft_limit_in_bytes", self.0)
    }

    fn systemd(&self) -> Result<Vec<Property>, super::NoProperty> {
        Ok(vec![property("MemoryHigh", self.0)])
    }
}

fn property(name: &'static str, size: Size) -> Property {
    let value = match size {
        Size::Max => Property::INFINITY,
        Size::Bytes(n) => n,
    };
    Property::number(name, value)
}

fn v2(files: &dyn Files, file: &str, size: Size) -> Outcome<Size> {
    super::values::write_read(files, file, size)
}

fn v1(files: &dyn Files, file: &str, size: Size) -> Outcome<Size> {
    let value = match size {
        Size::Max => "-1".to_string(),
        Size::Bytes(n) => n.to_string(),
    };
    files
        .write(file, &value)
        .and_then(|back| read_back::<u64>(file, &back))
        .map(|n| {
            if n >= V1_MEMORY_UNLIMITED_MIN {
                Size::Max
            } else {
                Size::Bytes(n)
            }
        })
        .into()
}

super::values::display_inner!(MemoryMax, MemoryHigh);
