//! `ffrtmp completions SHELL`: shell completions generated from the CLI
//! definition (clap_complete), so they never drift from it. The package
//! installs bash's, zsh's and fish's in their standard directories.
use std::process::ExitCode;

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

pub(super) fn completions(args: CompletionsArgs) -> ExitCode {
    let mut cmd = Cli::command();
    // Builds every deferred subcommand (cli::deferred), so each one's
    // options are completed too.
    cmd.build();
    clap_complete::generate(args.shell, &mut cmd, "ffrtmp", &mut std::io::stdout());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand's options reach the script, deferred ones too.
    #[test]
    fn completions_name_every_subcommand_and_option() {
        let mut cmd = Cli::command();
        cmd.build();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), "ffrtmp", &mut out);
            let script = String::from_utf8(out).unwrap();
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                assert!(
                    script.contains(sub.get_name()),
                    "{shell}: {}",
                    sub.get_name()
                );
                for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                    if let Some(long) = arg.get_long() {
                        assert!(
                            script.contains(long),
                            "{shell}: {} --{long}",
                            sub.get_name()
                        );
                    }
                }
            }
        }
    }
}
