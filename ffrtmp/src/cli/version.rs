//! `ffrtmp --version` and `ffrtmp version`: what this binary is, for an
//! operator and for fleet inventory — the version, the git commit, the
//! target (and so musl or glibc), whether the kernel programs are embedded
//! (a binary built with `FFRTMP_SKIP_EBPF=1` can only poll /proc) and the
//! event schema it writes. The facts come from the build script
//! (ffrtmp/build.rs) as constants, so `--version` costs nothing at start-up;
//! `version --format json` reads the embedded object itself.
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::events::{Format, SCHEMA_VERSION};

/// `-V`: one line.
pub(crate) const SHORT: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FFRTMP_COMMIT"), ")");

/// `--version`: every fact, one per line.
pub(crate) const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("FFRTMP_COMMIT"),
    "\ntarget: ",
    env!("FFRTMP_TARGET"),
    "\nkernel programs: ",
    env!("FFRTMP_KERNEL_PROGRAMS"),
);

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// The build, as `ffrtmp version --format json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct Build {
    pub name: &'static str,
    pub version: &'static str,
    pub commit: &'static str,
    pub target: &'static str,
    /// `musl` (the shipped, static build) or `gnu` (glibc).
    pub libc: &'static str,
    /// Whether the eBPF programs are in the binary.
    pub kernel_programs: bool,
    /// The `schema` of the events it writes (docs/EVENTS.md).
    pub events_schema: u32,
}

/// This binary's build; whether its kernel programs are in it is read
/// from the embedded object itself.
pub(crate) fn build() -> Build {
    Build {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("FFRTMP_COMMIT"),
        target: env!("FFRTMP_TARGET"),
        libc: if cfg!(target_env = "musl") {
            "musl"
        } else {
            "gnu"
        },
        kernel_programs: !crate::observe::ebpf::kernel_programs_missing(),
        events_schema: SCHEMA_VERSION,
    }
}

pub(crate) fn version(args: VersionArgs) -> ExitCode {
    match args.format {
        Format::Text => println!("{} {LONG}", env!("CARGO_PKG_NAME")),
        Format::Json => match serde_json::to_string(&build()) {
            Ok(line) => println!("{line}"),
            Err(e) => return super::exit::fail(super::exit::FAILURE, &e),
        },
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_facts_agree_with_the_binary() {
        let build = build();
        assert_eq!(build.version, env!("CARGO_PKG_VERSION"));
        assert!(!build.commit.is_empty());
        assert!(
            build.target.contains(std::env::consts::ARCH),
            "{}",
            build.target
        );
        assert_eq!(build.libc == "musl", build.target.ends_with("-musl"));
        // `--version`'s line (from the build script) says what the object is.
        assert_eq!(
            LONG.contains("kernel programs: embedded"),
            build.kernel_programs
        );
        let json: serde_json::Value = serde_json::to_value(&build).unwrap();
        assert_eq!(json["events_schema"], SCHEMA_VERSION);
        assert!(LONG.contains(build.commit) && SHORT.contains(build.commit));
    }
}
