//! `ffrtmp --version` and `ffrtmp version`: what this binary is, for an
//! operator and for fleet inventory — the version, the git commit, the
//! target (and so musl or glibc), whether the kernel programs are embedded
//! (a binary built with `FFRTMP_SKIP_EBPF=1` can only poll /proc) and the
//! event schema it writes. The facts come from the build script
//! (ffrtmp/build.rs), so they cost nothing at run time.
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::events::{Format, SCHEMA_VERSION};

/// `-V`: one line.
pub const SHORT: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FFRTMP_COMMIT"), ")");

/// `--version`: every fact, one per line.
pub const LONG: &str = concat!(
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
pub struct Build {
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

pub const BUILD: Build = Build {
    name: env!("CARGO_PKG_NAME"),
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("FFRTMP_COMMIT"),
    target: env!("FFRTMP_TARGET"),
    libc: if cfg!(target_env = "musl") {
        "musl"
    } else {
        "gnu"
    },
    kernel_programs: const_eq(env!("FFRTMP_KERNEL_PROGRAMS"), "embedded"),
    events_schema: SCHEMA_VERSION,
};

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

pub fn version(args: VersionArgs) -> ExitCode {
    match args.format {
        Format::Text => println!("{} {LONG}", BUILD.name),
        Format::Json => match serde_json::to_string(&BUILD) {
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
        assert_eq!(BUILD.version, env!("CARGO_PKG_VERSION"));
        assert!(!BUILD.commit.is_empty());
        assert!(
            BUILD.target.contains(std::env::consts::ARCH),
            "{}",
            BUILD.target
        );
        assert_eq!(BUILD.libc == "musl", BUILD.target.ends_with("-musl"));
        assert_eq!(
            BUILD.kernel_programs,
            !crate::observe::ebpf::kernel_programs_missing()
        );
        let json: serde_json::Value = serde_json::to_value(&BUILD).unwrap();
        assert_eq!(json["events_schema"], SCHEMA_VERSION);
        assert!(LONG.contains(BUILD.commit) && SHORT.contains(BUILD.commit));
    }
}
