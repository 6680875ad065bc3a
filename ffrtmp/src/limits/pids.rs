//! The process (and thread) count limit, `pids.max`.

use super::{Controllers, Count, Files, Limit, LimitError, Outcome, Property};

/// `pids.max`: at most this many processes and threads in the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidsMax(pub Count);

impl Limit for PidsMax {
    const HELP: &'static str = "Maximum number of processes and threads.";
    const VALUE_NAME: &'static str = "N";
    const CGROUP: Option<Controllers> = Some(Controllers {
        v2: "pids",
        v1: "pids",
    });
    const STATUS_V2: &'static [&'static str] = &["pids.max"];
    const STATUS_V1: &'static [&'static str] = &["pids.max"];

    /// A count, or `max`.
    type Back = Count;

    fn parse(text: &str) -> Result<Self, LimitError> {
        Count::parse(text)
            .map(PidsMax)
            .ok_or_else(|| LimitError::PidsMax(text.to_string()))
    }

    fn apply_v2(&self, files: &dyn Files) -> Outcome<Count> {
        write(files, self.0)
    }

    fn apply_v1(&self, files: &dyn Files) -> Outcome<Count> {
        write(files, self.0)
    }

    fn systemd(&self) -> Result<Vec<Property>, super::NoProperty> {
        let value = match self.0 {
            Count::Max => Property::INFINITY,
            Count::N(n) => n,
        };
        Ok(vec![Property::number("TasksMax", value)])
    }
}

fn write(files: &dyn Files, max: Count) -> Outcome<Count> {
    super::values::write_read(files, "pids.max", max)
}

super::values::display_inner!(PidsMax);
