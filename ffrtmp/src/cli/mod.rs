//! Command-line interface: the `ffrtmp` commands and their options.
//!
//! Exit statuses: [`exit`].
mod attach;
mod cleanup;
mod completions;
mod deferred;
pub(crate) mod exit;
mod govern_args;
mod governance;
mod logs;
pub(crate) mod manual;
mod policy;
mod run;
mod spawn;
mod status;
pub(crate) mod version;
mod watch;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use self::deferred::Deferred;
use crate::{events::Format, observe::Backend};

/// Observe and govern live-transcoding workloads (FFmpeg, GStreamer).
#[derive(Debug, Parser)]
#[command(name = "ffrtmp", version = version::SHORT, long_version = version::LONG, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Govern new transcoders by policy, and stream what happens as JSON lines on stdout.
    ///
    /// eBPF programs on the sched_process_exec/sched_process_exit
    /// tracepoints see every exec; the kernel passes only those whose name
    /// a policy rule may govern (all with --all). A matching process is
    /// placed in its job cgroup with the rule's limits (`governed`, with
    /// `latency_us` from its exec). At start, jobs already in the cgroup tree
    /// are followed where they are (`tracked`) and matching processes
    /// already running are governed (`adopted`). Without --policy, the
    /// embedded policy governs ffmpeg and gst-launch-1.0 (docs/POLICY.md).
    /// Without eBPF, /proc is polled instead, with a `degraded` event. The
    /// daemon never stops a workload: SIGINT or SIGTERM exits 0 and leaves
    /// every job running and limited. SIGHUP reads the policy again: a valid
    /// one governs the processes that start from then on, a bad one leaves
    /// the running policy in force (a `policy` event says which). Logs go
    /// to stderr (RUST_LOG).
    /// Events: docs/EVENTS.md.
    Watch(Deferred<WatchArgs>),
    /// Start CMD already inside its own cgroup with CPU, memory, IO and pids limits.
    ///
    /// The cgroup is made and configured first, and the workload joins it
    /// before its first instruction. The workload gets its own session and
    /// this terminal's stdin/stdout/stderr; events go to stderr (or
    /// --events FILE). Exit status: the workload's; 128+N if killed by signal
    /// N; 125 if ffrtmp fails; 126 not executable; 127 not found. SIGTERM,
    /// SIGINT or SIGHUP detach (the workload runs on, still limited); so
    /// does SIGUSR1, even with --forward-signals.
    Run(Deferred<run::RunArgs>),
    /// Govern a running process without restarting it.
    ///
    /// The pid is held by a pidfd and its identity (start time) checked
    /// before every step; PID 1, kernel threads and ffrtmp itself are
    /// refused. The whole thread group moves into the job cgroup; nice
    /// applies to every thread. Without --detach, ffrtmp stays, follows the
    /// exit through the pidfd and reports it (the exit status of a process
    /// that is not ffrtmp's child is unknown: null). A missing, exited or
    /// reused pid exits 2.
    Attach(Deferred<attach::AttachArgs>),
    /// Mode, cgroup layout, controllers, eBPF prerequisites, and the jobs
    /// governed now (read from the cgroup tree), as JSON or text on stdout.
    Status(Deferred<status::StatusArgs>),
    /// Check a policy file, or print the embedded one.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Remove the empty job cgroups ffrtmp left behind, and nothing else.
    ///
    /// Under every root ffrtmp made jobs under since boot (its ledger,
    /// /run/ffrtmp as root), removes each job cgroup it made that holds no
    /// process and that no running ffrtmp looks after, then emptied staging
    /// cgroups. Jobs with processes stay, with their limits, and are listed
    /// with the reason; so are cgroups other programs made. Package removal
    /// runs it after stopping the daemon.
    Cleanup(Deferred<cleanup::CleanupArgs>),
    /// Print the version, git commit, target and whether the kernel programs are embedded.
    ///
    /// `--format json` prints one object for fleet inventory: name,
    /// version, commit, target, libc (musl or gnu), kernel_programs and
    /// events_schema.
    Version(Deferred<version::VersionArgs>),
    /// Print a shell completion script (bash, zsh, fish, …) on stdout.
    ///
    /// The package installs bash's, zsh's and fish's. By hand, e.g.:
    /// `ffrtmp completions bash > /usr/share/bash-completion/completions/ffrtmp`.
    Completions(Deferred<completions::CompletionsArgs>),
    /// Write the manual pages into DIR (for packaging).
    #[command(hide = true)]
    Manual(Deferred<manual::ManualArgs>),
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Where events come from.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Polling interval of the procfs backend (e.g. 100ms, 1s).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_interval)]
    pub interval: Duration,
    /// At start, also report running processes as `exec` events with
    /// `"adopted": true` (those the filter passes; all with --all).
    #[arg(long)]
    pub adopt: bool,
    /// Policy file (TOML, docs/POLICY.md) [default: the embedded policy].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
    /// Report every exec and exit, not only those of processes a rule may govern.
    #[arg(long)]
    pub all: bool,
    /// Observe only: govern nothing.
    #[arg(long)]
    pub observe_only: bool,
    /// Parent of job cgroups, as a cgroup path (the option's help names its default).
    #[arg(
        long,
        value_name = "PATH",
        help = "Parent of job cgroups, as a cgroup path [default: /ffrtmp, or <delegated subtree>/ffrtmp]."
    )]
    pub cgroup_root: Option<String>,
    /// Remount the cgroup2 hierarchy with `favordynmods` (host-wide; it
    /// stays after exit) so that moving a process into its cgroup does not
    /// wait for an RCU grace period (5-30 ms on Linux >= 6.0). See
    /// docs/OPERATIONS.md.
    #[arg(long)]
    pub favordynmods: bool,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9464) at /metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Write events to FILE (appended; created 0640; never through a
    /// symbolic link) instead of stdout. SIGHUP (`systemctl reload`) reopens
    /// it by name, for logrotate.
    #[arg(long, value_name = "FILE")]
    pub events: Option<std::path::PathBuf>,
    /// Stop when the event output ends (a closed pipe, a full disk). By
    /// default governing goes on without it: events are dropped, never
    /// governing (docs/EVENTS.md, `lost`).
    #[arg(long)]
    pub exit_on_output_loss: bool,
    /// How much event output may wait for a slow reader (64K..=1G) before
    /// events are dropped and counted (`lost`, reason `output`).
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_output_buffer)]
    pub output_buffer: usize,
    /// Size of the kernel ring buffer in bytes (a power of two, 4096..=1073741824).
    #[arg(long, value_name = "BYTES", default_value_t = crate::observe::ebpf::DEFAULT_RING_BUFFER_BYTES,
          value_parser = parse_ring_buffer_size)]
    pub ring_buffer_size: u32,
}

fn parse_output_buffer(s: &str) -> Result<usize, String> {
    match s.parse::<crate::limits::Size>() {
        Ok(crate::limits::Size::Bytes(n)) if ((64 << 10)..=(1 << 30)).contains(&n) => {
            usize::try_from(n).map_err(|e| e.to_string())
        }
        _ => Err("a size between 64K and 1G (e.g. 4M)".into()),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 100ms or 1s)"))?;
    if d < Duration::from_millis(1) || d > Duration::from_hours(1) {
        return Err("must be between 1ms and 1h".into());
    }
    Ok(d)
}

fn parse_ring_buffer_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !n.is_power_of_two() || !(4096..=1 << 30).contains(&n) {
        return Err("must be a power of two between 4096 and 1073741824".into());
    }
    Ok(n)
}

/// Runs the command line; returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // Only the daemon logs (run, attach and status report by events and
        // messages), so only it pays for a subscriber.
        Command::Watch(Deferred(args)) => {
            logs::init();
            let code = watch::run(args);
            logs::drain();
            code
        }
        Command::Run(Deferred(args)) => run::run(args),
        Command::Attach(Deferred(args)) => attach::attach(args),
        Command::Status(Deferred(args)) => status::status(args),
        Command::Policy(command) => policy::run(command),
        Command::Cleanup(Deferred(args)) => cleanup::cleanup(args),
        Command::Version(Deferred(args)) => version::version(args),
        Command::Completions(Deferred(args)) => completions::completions(args),
        Command::Manual(Deferred(args)) => manual::manual(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The shipped unit's command line is valid for this CLI, and the unit
    /// never lets systemd reach the workloads.
    #[test]
    fn the_shipped_systemd_unit_runs_a_valid_watch() {
        let unit = include_str!("../../systemd/ffrtmp-watch.service");
        let exec = unit
            .replace("\\\n", " ")
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .expect("an ExecStart line");
        assert!(exec[0].ends_with("/ffrtmp"), "{exec:?}");
        let cli = Cli::try_parse_from(&exec).unwrap_or_else(|e| panic!("{exec:?}: {e}"));
        let Command::Watch(Deferred(w)) = cli.command else {
            panic!("the unit does not run watch");
        };
        assert!(w.policy.is_some() && w.metrics_addr.is_some());
        for line in [
            "KillMode=process",
            "Delegate=yes",
            "Restart=always",
            "ExecReload=/bin/kill -HUP $MAINPID",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing");
        }
    }

    #[test]
    fn watch_defaults() {
        let Command::Watch(Deferred(w)) = Cli::try_parse_from(["ffrtmp", "watch"]).unwrap().command
        else {
            panic!("not watch");
        };
        assert_eq!(w.backend, Backend::Auto);
        assert_eq!(w.interval, Duration::from_millis(100));
        assert_eq!(w.format, Format::Json);
        assert!(!w.adopt);
    }

    #[test]
    fn rejects_bad_values_with_usage_errors() {
        for args in [
            &["ffrtmp", "watch", "--interval", "0ms"][..],
            &["ffrtmp", "watch", "--interval", "soon"],
            &["ffrtmp", "watch", "--backend", "kprobe"],
            &["ffrtmp", "watch", "--ring-buffer-size", "5000"],
            &["ffrtmp", "watch", "--format", "xml"],
            &["ffrtmp", "watch", "--bogus"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(exit::USAGE), "{args:?}");
        }
    }
}
