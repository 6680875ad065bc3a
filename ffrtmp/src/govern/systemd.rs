//! systemd's rules for the cgroup tree (systemd.io/CGROUP_DELEGATION), as
//! far as choosing where ffrtmp may write goes.
//!
//! When systemd manages the tree (`/run/systemd/system` exists), a process
//! may write only inside a subtree systemd delegated to it: the cgroup of
//! its own unit (the nearest `.service` or `.scope` at or above its own
//! cgroup), and only if that unit has `Delegate=yes`. Nothing above it —
//! slices, `user@.service` of a user manager, another unit — is ours, even
//! where the file modes would let us write: a user manager's cgroups all
//! belong to its user, delegated or not.
//!
//! How delegation is told: systemd marks a delegated unit's cgroup with the
//! `trusted.delegate` extended attribute (readable by root only) and, for
//! unprivileged readers, chowns it to the unit's `User=`. A user manager's
//! units are all its user's, so ownership tells nothing there, and its
//! managers set neither attribute (systemd 252, measured in the systemd
//! VM): the unit's own `Delegate` property, asked of the user manager on
//! the user's bus ([`super::bus`]), does. No answer (no user bus, or none
//! within [`USER_TIMEOUT`]) is no delegation.
//!
//! systemd 252 (Debian 12) has no `DelegateSubgroup=`: a delegated service's
//! processes sit in the unit's cgroup itself, and by the kernel's
//! no-internal-processes rule no controller can then be enabled below it
//! (EBUSY). [`make_room`] moves them into a `supervisor` leaf of the same
//! subtree first — what `DelegateSubgroup=supervisor` does on 254+.
use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use super::{
    GovernError,
    bus::{Manager, Which},
    layout::CgroupPath,
};

/// The leaf a delegated unit's own processes are moved into.
pub(crate) const SUPERVISOR: &str = "supervisor";

/// Whether systemd manages the cgroup tree here (sd_booted(3)'s test).
pub(crate) fn manages_cgroups() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Whether a cgroup's name is a unit's that can hold processes.
#[allow(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "unit suffixes are lower case by definition (systemd.unit(5))"
)]
fn is_unit(cg: &CgroupPath) -> bool {
    let name = cg.as_str().rsplit('/').next().unwrap_or_default();
    name.ends_with(".service") || name.ends_with(".scope")
}

/// The cgroup of the unit `own` is in: the nearest `.service` or `.scope`
/// at or above it.
pub(crate) fn unit_of(own: &CgroupPath) -> Option<CgroupPath> {
    own.lineage().into_iter().rev().find(is_unit)
}

/// Whether `unit` (its directory `dir`) was delegated to this process.
pub(crate) fn delegated_to_us(unit: &CgroupPath, dir: &Path) -> bool {
    if xattr_is_one(dir, "trusted.delegate") || xattr_is_one(dir, "user.delegate") {
        return true;
    }
    let euid = nix::unistd::geteuid().as_raw();
    let owned = euid != 0 && fs::metadata(dir).is_ok_and(|m| m.uid() == euid);
    owned && (!in_user_manager(unit) || user_manager_delegates(unit))
}

/// Whether `cg` is inside a user manager's tree (`user@UID.service`),
/// whose cgroups all belong to its user.
pub(crate) fn in_user_manager(cg: &CgroupPath) -> bool {
    cg.as_str()
        .split('/')
        .any(|p| p.starts_with("user@") && p.ends_with(".service"))
}

/// How long the user manager may take to say whether it delegated a unit.
pub(crate) const USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the calling user's manager has `Delegate=yes` on `unit`.
fn user_manager_delegates(unit: &CgroupPath) -> bool {
    let name = unit.as_str().rsplit('/').next().unwrap_or_default();
    let Some(iface) = Manager::type_interface(name) else {
        return false;
    };
    let Ok(mut manager) = Manager::new(Which::User, USER_TIMEOUT) else {
        return false;
    };
    manager
        .value(name, iface, "Delegate")
        .and_then(|v| bool::try_from(v).ok())
        .unwrap_or(false)
}

/// Whether extended attribute `name` of `dir` reads "1".
fn xattr_is_one(dir: &Path, name: &str) -> bool {
    super::xattr::get(dir, name).is_some_and(|v| v == b"1")
}

/// Why [`make_room`] left processes in the delegated cgroup itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RoomError {
    /// Reading its `cgroup.procs`, or making the leaf.
    #[error(transparent)]
    Io(#[from] GovernError),
    #[error("moving {pid} into {}: {source}", path.display())]
    Move {
        pid: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Processes kept forking in faster than they were moved.
    #[error("{} still holds processes {pids:?}", procs.display())]
    StillHeld {
        procs: std::path::PathBuf,
        pids: Vec<String>,
    },
}

/// Moves the processes sitting in the delegated cgroup `dir` itself into
/// its `supervisor` leaf, so that controllers can be enabled below it.
/// Returns how many were moved; an error names the file.
pub(crate) fn make_room(dir: &Path) -> Result<usize, RoomError> {
    let procs = dir.join("cgroup.procs");
    let read = || {
        fs::read_to_string(&procs)
            .map_err(|e| GovernError::io("reading", &procs, e))
            .map(|t| t.split_whitespace().map(String::from).collect::<Vec<_>>())
    };
    let mut pids = read()?;
    if pids.is_empty() {
        return Ok(0);
    }
    let leaf = dir.join(SUPERVISOR);
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(GovernError::io("creating", &leaf, e).into()),
    }
    let leaf_procs = leaf.join("cgroup.procs");
    let mut moved = 0;
    // A process forked meanwhile is moved by the next round.
    for _ in 0..3 {
        for pid in &pids {
            match fs::write(&leaf_procs, pid) {
                Ok(()) => moved += 1,
                // Gone meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => {
                    return Err(RoomError::Move {
                        pid: pid.clone(),
                        path: leaf_procs,
                        source,
                    });
                }
            }
        }
        pids = read()?;
        if pids.is_empty() {
            return Ok(moved);
        }
    }
    Err(RoomError::StillHeld { procs, pids })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_the_nearest_service_or_scope() {
        let cg = |p: &str| CgroupPath::new(p).unwrap();
        assert_eq!(
            unit_of(&cg("/system.slice/agent.service/supervisor")),
            Some(cg("/system.slice/agent.service"))
        );
        assert_eq!(
            unit_of(&cg(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.scope"
            )),
            Some(cg(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.scope"
            ))
        );
        assert_eq!(unit_of(&cg("/system.slice")), None);
        assert_eq!(unit_of(&cg("/")), None);
    }
}
