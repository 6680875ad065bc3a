//! Every exit status ffrtmp itself chooses, in one place. `run` passes on
//! its workload's own status (128+N when signal N killed it); these are the
//! others.
use std::process::ExitCode;

use crate::errors::chain;

/// A failure while running (`watch`, `status`, `policy`).
pub(crate) const FAILURE: u8 = 1;
/// Bad usage or input, before anything is created or started (clap uses 2
/// for malformed options too).
pub(crate) const USAGE: u8 = 2;
/// `run` and `attach`: ffrtmp itself failed (as env(1) and timeout(1)).
pub(crate) const WRAPPER: u8 = 125;
/// `run`: the command was found but cannot be executed (as env(1)).
pub(crate) const NOT_EXECUTABLE: u8 = 126;
/// `run`: the command was not found (as env(1)).
pub(crate) const NOT_FOUND: u8 = 127;

/// Prints `ffrtmp: error: ` and the error's chain; returns `code`.
pub(crate) fn fail(code: u8, e: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("ffrtmp: error: {}", chain(e));
    ExitCode::from(code)
}
