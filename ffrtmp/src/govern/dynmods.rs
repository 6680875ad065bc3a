//! Why moving a running process into a cgroup can take 5–30 ms, and the
//! switch that makes it take a fraction of a millisecond.
//!
//! Every migration (a write to `cgroup.procs`) takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing. Since Linux 6.0 that lock favours
//! its readers (fork, exit, exec) unless a cgroup hierarchy is mounted with
//! `favordynmods`; a writer then waits for an RCU grace period — measured
//! here at 7 ms median, up to 30 ms, per isolated migration. Before 6.0 the
//! kernel always favoured writers. `run` mostly avoids the cost (its child
//! joins before exec, usually within a grace period of the last migration);
//! `watch` and `attach` move processes that already run and pay it each
//! time. With `favordynmods`, forks and exits take a slightly slower path
//! and migrations are fast: the trade the kernel documentation describes
//! for "dynamic cgroup modifications", which is what a governing daemon
//! does all day.
//!
//! It is a host-wide setting, so ffrtmp never changes it on its own:
//! `watch --favordynmods` remounts the cgroup2 hierarchy with it (keeping
//! every other option), and otherwise `watch` says, with a `degraded` event,
//! that governing will be slow. The setting outlives the daemon.
use std::path::PathBuf;

use nix::mount::{MsFlags, mount};

use super::layout::Layout;

/// First kernel whose migrations wait for a grace period without it.
const SLOW_SINCE: (u32, u32) = (6, 0);

/// Errors while enabling favordynmods.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DynmodsError {
    #[error("no cgroup2 hierarchy is mounted (favordynmods is a cgroup2 mount option)")]
    NoCgroup2,
    #[error("remounting {point} with favordynmods")]
    Remount {
        point: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Whether migrations are fast here: favordynmods is on, or the kernel
/// predates the change (then it cannot be turned on, nor needs to be).
pub(crate) fn migrations_are_fast(layout: &Layout) -> bool {
    layout.favordynmods || kernel_version().is_some_and(|v| v < SLOW_SINCE)
}

/// Remounts the cgroup2 hierarchy with favordynmods, keeping its other
/// per-mount flags and superblock options.
pub(crate) fn enable(layout: &Layout) -> Result<(), DynmodsError> {
    let (Some(v2), Some((mount_opts, super_opts))) = (&layout.v2, &layout.v2_options) else {
        return Err(DynmodsError::NoCgroup2);
    };
    let mut flags = MsFlags::MS_REMOUNT;
    for opt in mount_opts.split(',') {
        flags |= match opt {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        };
    }
    // Superblock options, minus the generic rw/ro (given by the flags).
    let mut data: Vec<&str> = super_opts
        .split(',')
        .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
        .collect();
    data.push("favordynmods");
    mount(
        None::<&str>,
        &v2.point,
        None::<&str>,
        flags,
        Some(data.join(",").as_str()),
    )
    .map_err(|source| DynmodsError::Remount {
        point: v2.point.clone(),
        source,
    })
}

/// The running kernel's (major, minor).
fn kernel_version() -> Option<(u32, u32)> {
    let uts = nix::sys::utsname::uname().ok()?;
    let release = uts.release().to_str()?;
    let mut parts = release.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_option_from_mountinfo() {
        let off = Layout::parse(
            "35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert!(!off.favordynmods);
        assert_eq!(
            off.v2_options,
            Some((
                "rw,nosuid,nodev,noexec,relatime".into(),
                "rw,nsdelegate,memory_recursiveprot".into()
            ))
        );
        let on = Layout::parse(
            "35 25 0:30 / /sys/fs/cgroup rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,favordynmods\n",
        );
        assert!(on.favordynmods);
    }

    #[test]
    fn knows_the_running_kernel() {
        assert!(kernel_version().is_some_and(|(major, _)| major >= 5));
    }
}
