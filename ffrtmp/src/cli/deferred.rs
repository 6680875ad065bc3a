//! Subcommand options built only when their subcommand is used.
//!
//! clap builds every subcommand's options before it parses anything; each
//! `ffrtmp run` would pay for the daemon's options too (code pages faulted
//! in, allocations), and `run` and `attach` add their start-up to every job
//! (docs/BENCHMARKS.md). [`Deferred`] hands clap the options through
//! [`clap::Command::defer`], so only the chosen subcommand's are built.
//! Help, usage and errors are unchanged: clap builds a deferred subcommand
//! before it prints anything about it.
use clap::{ArgMatches, Args, Command, FromArgMatches};

/// `T`'s options, added to its subcommand only when clap enters it.
#[derive(Debug)]
pub struct Deferred<T>(pub T);

impl<T: Args> Args for Deferred<T> {
    fn augment_args(cmd: Command) -> Command {
        cmd.defer(T::augment_args)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        cmd.defer(T::augment_args_for_update)
    }

    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }
}

impl<T: FromArgMatches> FromArgMatches for Deferred<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Self)
    }

    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Self)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }

    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use crate::cli::{Cli, Command, deferred::Deferred};

    #[test]
    fn a_deferred_subcommand_parses_and_documents_its_options() {
        let cli = Cli::try_parse_from(["ffrtmp", "run", "--cpu-max", "max", "--", "true"]).unwrap();
        let Command::Run(Deferred(run)) = cli.command else {
            panic!("not run");
        };
        assert_eq!(run.command, ["true"]);
        let help = Cli::try_parse_from(["ffrtmp", "run", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(help.to_string().contains("--cpu-max"), "{help}");
        let bad = Cli::try_parse_from(["ffrtmp", "attach", "--bogus"]).unwrap_err();
        assert_eq!(bad.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn only_the_chosen_subcommand_is_built() {
        let cmd = Cli::command();
        let watch = cmd.find_subcommand("watch").unwrap();
        // Not built yet: clap runs the deferred builder when it enters it.
        assert_eq!(watch.get_arguments().count(), 0);
    }
}
