//! `ffrtmp cleanup`: remove the empty job cgroups ffrtmp left behind
//! ([`crate::govern::cleanup`]); what stays is listed with the reason.
use std::process::ExitCode;

use clap::Args;

use super::exit;
use crate::{events::Format, govern::Context};

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

pub(super) fn cleanup(args: CleanupArgs) -> ExitCode {
    let ctx = match Context::detect(None) {
        Ok(c) => c,
        Err(e) => return exit::fail(exit::FAILURE, &e),
    };
    let done = crate::govern::cleanup::cleanup(&ctx.layout, ctx.mode);
    match args.format {
        Format::Json => match serde_json::to_string(&done) {
            Ok(line) => println!("{line}"),
            Err(e) => return exit::fail(exit::FAILURE, &e),
        },
        Format::Text => {
            for dir in &done.removed {
                println!("removed {}", dir.display());
            }
            for kept in &done.kept {
                println!("kept {}: {}", kept.cgroup, kept.why);
            }
        }
    }
    ExitCode::SUCCESS
}
