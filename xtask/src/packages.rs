//! Debian packages the tests need on the host, installed with apt-get when
//! their command is missing (the project installs what it needs; nothing is
//! assumed from a hand-made machine).
use std::process::Command;

use crate::{run_command, toolchain::capture};

/// Installs the package of every `(command, package)` whose command is not
/// on PATH.
pub(crate) fn ensure(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| {
            capture(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_err()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run_command(Command::new("apt-get").args(["update", "-q"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
