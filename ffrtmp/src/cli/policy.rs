//! `ffrtmp policy`: check a policy file before deploying it, or print the
//! embedded policy as a starting point.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::exit;
use crate::policy::{Action, EMBEDDED, Policy};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate FILE as `watch --policy` would; print its rules. Exit 2 (with the line of the mistake) if invalid.
    Check {
        /// The policy file (TOML, docs/POLICY.md).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the embedded policy (what `watch` uses without --policy).
    Default,
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Default => {
            print!("{EMBEDDED}");
            ExitCode::SUCCESS
        }
        PolicyCommand::Check { file } => match Policy::load(&file) {
            Ok(policy) => {
                for w in &policy.warnings {
                    eprintln!("ffrtmp: warning: {w}");
                }
                for rule in &policy.rules {
                    match &rule.action {
                        Action::Ignore => println!("{rule}: ignore"),
                        Action::Govern { limits, .. } => {
                            println!("{rule}: govern ({} limits)", limits.count());
                        }
                    }
                }
                match policy.comm_filter() {
                    Some(comms) => println!(
                        "kernel pre-filter: {}",
                        comms.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                    None => println!(
                        "kernel pre-filter: none (a governing rule does not name its comm: every exec goes to user space, and a match may wait up to 10 ms for watch to wake)"
                    ),
                }
                ExitCode::SUCCESS
            }
            Err(e) => exit::fail(exit::USAGE, &e),
        },
    }
}
