//! `cargo xtask bench …`: what ffrtmp costs and what it buys, measured on
//! this machine (figures go to docs/BENCHMARKS.md). One file a benchmark:
//! `run.rs` (`ffrtmp run`/`attach` against a bare exec and `cgexec`),
//! `govern.rs` (`watch` against cgrulesengd), `qos.rs` (live streams on an
//! oversubscribed node), `observe.rs` (the observer's cost in an exec
//! storm); `kit.rs` is what they share (no benchmark uses another).
mod govern;
pub(crate) mod kit;
mod observe;
mod qos;
mod run;

use std::{path::Path, time::Duration};

#[derive(clap::Subcommand)]
pub(crate) enum Bench {
    /// `ffrtmp run` and `cgexec` against a bare exec; attach latency;
    /// wrapper RSS while a job runs.
    Run {
        /// Runs per measurement.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Also time `BIN run -- /bin/true` in the same rounds: another
        /// build of ffrtmp (another link order, say), side by side.
        #[arg(long, value_name = "BIN")]
        against: Option<std::path::PathBuf>,
    },
    /// `watch` governing new matching processes, against cgrulesengd:
    /// exec→in-cgroup latency idle and under an exec storm; daemon RSS and
    /// idle CPU.
    Govern {
        /// Matching execs per measurement.
        #[arg(long, default_value_t = 500)]
        execs: usize,
        /// Seconds of idle CPU measurement.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
    },
    /// Live streams on an oversubscribed node, with real ffmpeg: no
    /// governor, equal weights, tiers, the live tier oversubscribed.
    Qos {
        /// Seconds of media per live encode.
        #[arg(long, default_value_t = 20)]
        secs: u64,
    },
    /// Exec storm with and without `watch`; loss, probe cost, CPU and RSS.
    Observe {
        /// Execs per forker per round.
        #[arg(long, default_value_t = 2000)]
        execs: usize,
        /// Rounds of (without, with) watch.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Seconds of idle measurement.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
    },
}

pub(crate) fn run(root: &Path, bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Run { runs, against } => run::run(root, runs, against.as_deref()),
        Bench::Qos { secs } => qos::run(root, secs),
        Bench::Govern { execs, idle_secs } => {
            govern::run(root, execs, Duration::from_secs(idle_secs))
        }
        Bench::Observe {
            execs,
            rounds,
            idle_secs,
        } => observe::run(root, execs, rounds, Duration::from_secs(idle_secs)),
    }
}
