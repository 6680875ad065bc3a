//! Options shared by `run` and `attach`, and the event output they write to.
//!
//! The limit options are made from the limits table (`crate::limits`): one
//! `--NAME` per row, with its help, value name and check, so a new limit
//! is a new option with no change here.
use std::{io, path::PathBuf};

use clap::{
    ArgAction, ArgMatches, Args, FromArgMatches,
    builder::{TypedValueParser as _, ValueParser},
};

use crate::{
    errors::chain,
    events::{Emitter, Event, Format, Sink, file::LineFile},
    limits::{JobId, LimitName, Limits, Tier},
};

#[derive(Debug, Args)]
pub struct GovernArgs {
    /// Job name: 1..64 of [A-Za-z0-9._-], not ".", ".." or ".staging"; names the job's
    /// cgroup. A job id in use by a live job exits 2, except for `attach` to
    /// a process already in that job: its limits are then updated.
    #[arg(long, value_name = "ID")]
    pub job_id: Option<JobId>,
    /// The job's tier: its CPU priority (live: cpu weight 1000; standard:
    /// 100; batch: cpu idle). The limits given as options win over it.
    #[arg(long, value_name = "TIER", value_parser = tier_parser())]
    pub tier: Option<Tier>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Parent of job cgroups, as a cgroup path (the option's help names its default).
    #[arg(
        long,
        value_name = "PATH",
        help = "Parent of job cgroups, as a cgroup path (/ffrtmp) [default: /ffrtmp, or <delegated subtree>/ffrtmp]."
    )]
    pub cgroup_root: Option<String>,
    /// Refuse to start or attach if any requested limit cannot be applied.
    #[arg(long)]
    pub strict: bool,
    /// Event format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Write events to FILE (appended) instead of stderr; never to stdout.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
}

/// One option per row of the limits table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitArgs(pub Limits);

impl Args for LimitArgs {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for &name in LimitName::ALL {
            let row = name.row();
            let check = row.check;
            cmd = cmd.arg(
                clap::Arg::new(name.as_str())
                    .long(name.flag())
                    .value_name(row.value_name)
                    .help(row.help)
                    .allow_negative_numbers(row.negative)
                    .action(if row.repeatable {
                        ArgAction::Append
                    } else {
                        ArgAction::Set
                    })
                    .value_parser(ValueParser::new(move |text: &str| {
                        check(text).map(|()| text.to_string())
                    })),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for LimitArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = LimitArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let invalid = |e: crate::limits::LimitError| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        };
        for &name in LimitName::ALL {
            for text in matches
                .get_many::<String>(name.as_str())
                .into_iter()
                .flatten()
            {
                self.0.set(name, text).map_err(invalid)?;
            }
        }
        self.0.validate().map_err(invalid)
    }
}

/// Where `run` and `attach` write their events.
///
/// The rule for a failed write, the same everywhere: the wrapper warns on
/// stderr (once per failed write) and carries on. An events file that
/// cannot be written (a full disk, a closed pipe) never changes what
/// happens to the workload or the wrapper's exit status.
pub struct EventOut(Emitter<Box<dyn io::Write>>);

impl EventOut {
    /// Writes one event now.
    pub fn emit(&mut self, event: Event) {
        if let Err(e) = self.0.emit(&event) {
            eprintln!("ffrtmp: warning: writing events: {}", chain(&e));
        }
    }
}

/// `--tier`: one of the tiers' names (listed in `--help` and completions).
fn tier_parser() -> impl clap::builder::TypedValueParser<Value = Tier> {
    clap::builder::PossibleValuesParser::new(Tier::ALL.map(Tier::as_str))
        .try_map(|name: String| name.parse::<Tier>())
}

impl GovernArgs {
    /// The limits asked for: the options', over `--tier`'s.
    pub fn limits(&self) -> Limits {
        match self.tier {
            Some(tier) => Tier::resolve(&tier.defaults(), &self.limits.0),
            None => self.limits.0.clone(),
        }
    }

    /// The event output: stderr, or `--events FILE`.
    pub fn emitter(&self) -> io::Result<EventOut> {
        let out: Box<dyn io::Write> = match &self.events {
            Some(path) => Box::new(LineFile::open(path)?),
            None => Box::new(io::stderr()),
        };
        Ok(EventOut(Emitter::new(out, self.format)))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::{
        cli::{Cli, Command, deferred::Deferred},
        limits::{CpuIdle, CpuMaxBurst, CpuWeight, Nice},
    };

    fn run_limits(args: &[&str]) -> Result<super::Limits, clap::Error> {
        let argv = [&["ffrtmp", "run"][..], args, &["--", "true"]].concat();
        let cli = Cli::try_parse_from(argv)?;
        let Command::Run(Deferred(run)) = cli.command else {
            panic!("not run");
        };
        Ok(run.govern.limits())
    }

    #[test]
    fn every_limit_is_an_option_checked_by_its_row() {
        let l = run_limits(&["--cpu-max-burst", "20000", "--nice", "-5"]).unwrap();
        assert_eq!(l.cpu_max_burst, Some(CpuMaxBurst(20_000)));
        assert_eq!(l.nice, Some(Nice(-5)));
        let l = run_limits(&["--io-max", "8:0 rbps=1", "--io-max", "8:16 wbps=2"]).unwrap();
        assert_eq!(l.io_max.map(|io| io.0.len()), Some(2));
        for bad in [
            &["--cpu-max", "20000 100"][..],
            &["--cpu-max-burst", "5ms"],
            &["--cpu-max-burst", "-1"],
            &["--cpu-max", "20000 100000", "--cpu-max-burst", "30000"],
            &["--cpu-weight", "0"],
            &["--nice", "20"],
        ] {
            let e = run_limits(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_tier_gives_its_limits_under_the_options() {
        let l = run_limits(&["--tier", "batch"]).unwrap();
        assert_eq!((l.cpu_idle, l.cpu_weight), (Some(CpuIdle(true)), None));
        let l = run_limits(&["--tier", "batch", "--cpu-weight", "20"]).unwrap();
        assert_eq!((l.cpu_idle, l.cpu_weight), (None, Some(CpuWeight(20))));
        let l = run_limits(&["--tier", "live"]).unwrap();
        assert_eq!(l.cpu_weight, Some(CpuWeight(1000)));
        assert_eq!(run_limits(&["--tier", "gold"]).unwrap_err().exit_code(), 2);
        let e = run_limits(&["--cpu-idle", "1", "--cpu-weight", "5"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }
}
