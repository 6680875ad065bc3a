//! Per-process settings: nice (every thread) and oom_score_adj. They need
//! no cgroup; the placement sets them on the process and reads them back
//! (`govern/place.rs`; `run`'s child sets them before exec).
use super::{Controllers, Limit, LimitError, values::int_in};

/// Nice, -20..19, for every thread (below 0 only when privileged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nice(pub i32);

/// `/proc/PID/oom_score_adj`, -1000..1000 (lowering only when privileged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomScoreAdj(pub i32);

impl Limit for Nice {
    const HELP: &'static str =
        "Nice value -20..19 for every thread (below 0 only when privileged).";
    const VALUE_NAME: &'static str = "N";
    const NEGATIVE: bool = true;
    const CGROUP: Option<Controllers> = None;
    /// The process's nice, read back from it.
    type Back = i32;

    fn parse(text: &str) -> Result<Self, LimitError> {
        int_in(text, -20..=19, LimitError::Nice).map(Nice)
    }
}

impl Limit for OomScoreAdj {
    const HELP: &'static str = "OOM score adjustment -1000..1000 (lowering only when privileged).";
    const VALUE_NAME: &'static str = "N";
    const NEGATIVE: bool = true;
    const CGROUP: Option<Controllers> = None;
    /// `/proc/PID/oom_score_adj`, read back.
    type Back = i32;

    fn parse(text: &str) -> Result<Self, LimitError> {
        int_in(text, -1000..=1000, LimitError::OomScoreAdj).map(OomScoreAdj)
    }
}

super::values::display_inner!(Nice, OomScoreAdj);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_and_oom_score_adj_have_their_ranges() {
        assert_eq!(Nice::parse("-20"), Ok(Nice(-20)));
        assert!(Nice::parse("20").is_err());
        assert_eq!(OomScoreAdj::parse("-1000"), Ok(OomScoreAdj(-1000)));
        assert!(OomScoreAdj::parse("1001").is_err());
    }
}
