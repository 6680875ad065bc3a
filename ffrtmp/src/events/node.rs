//! Which node and which boot an event comes from, and which process it is
//! about: what a fleet's event store needs to tell thousands of nodes'
//! streams apart and to join a process's `exec`, `governed` and `exit`.
//!
//! - `host`: the hostname, and `boot_id`: the kernel's random id of this
//!   boot (`/proc/sys/kernel/random/boot_id`), read once when ffrtmp
//!   starts; every event carries both.
//! - `process_key`: `BOOT_ID:START:PID`, where START is the process's start
//!   time in clock ticks after boot (`/proc/PID/stat` field 22; the kernel
//!   programs read the same `start_boottime` in ns). A pid repeats, across
//!   reboots and within one; with its start time and the boot it does not:
//!   a pid is reused only after the number space wrapped, which takes far
//!   longer than one tick (10 ms).
use std::sync::LazyLock;

/// This node's identity, as every event carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub host: String,
    pub boot_id: String,
}

/// Where the kernel says which boot this is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The boot id from whoever started ffrtmp, read only when the kernel's
/// file cannot be: the shipped unit's `ProcSubset=pid` hides /proc/sys, so
/// it passes systemd's `%b` here (`Environment=FFRTMP_BOOT_ID=%b`).
pub(crate) const BOOT_ID_ENV: &str = "FFRTMP_BOOT_ID";

static NODE: LazyLock<Node> = LazyLock::new(|| Node {
    host: nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default(),
    // Empty when neither says (no /proc, no unit): keys are then null.
    boot_id: boot_id(
        std::fs::read_to_string(BOOT_ID).ok().as_deref(),
        std::env::var(BOOT_ID_ENV).ok().as_deref(),
    )
    .unwrap_or_default(),
});

/// The boot id: the kernel's, else the one passed in [`BOOT_ID_ENV`], in
/// the kernel's spelling either way, so a daemon in the unit and a `run`
/// in a shell key the same process alike.
fn boot_id(kernel: Option<&str>, passed: Option<&str>) -> Option<String> {
    kernel
        .and_then(canonical)
        .or_else(|| passed.and_then(canonical))
}

/// A boot id as the kernel spells it (`8-4-4-4-12` lowercase hex), from
/// that or from systemd's `%b` (32 hex digits); `None` for anything else.
fn canonical(id: &str) -> Option<String> {
    let id = id.trim();
    let hex: String = match id.len() {
        32 => id.to_string(),
        36 if [8, 13, 18, 23].iter().all(|&i| id.as_bytes()[i] == b'-') => {
            id.chars().filter(|&c| c != '-').collect()
        }
        _ => return None,
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// This node, read on first use: `watch`, `run` and `attach` call it
/// before their first event, so no event waits on reading it.
pub(crate) fn node() -> &'static Node {
    &NODE
}

/// A process as an event names it: its pid and its start time (clock ticks
/// after boot), when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub start_ticks: Option<u64>,
}

impl ProcessId {
    pub fn key(self) -> Option<String> {
        process_key(self.pid, self.start_ticks)
    }
}

/// The key of process `pid` that started `start_ticks` clock ticks after
/// boot; `None` when its start time (or the boot id) is unknown.
pub fn process_key(pid: u32, start_ticks: Option<u64>) -> Option<String> {
    let boot_id = &node().boot_id;
    match start_ticks {
        Some(start) if !boot_id.is_empty() => Some(format!("{boot_id}:{start}:{pid}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_this_node_and_keys_a_process_by_its_boot_start_and_pid() {
        let n = node();
        assert!(!n.host.is_empty());
        assert_eq!(n.boot_id.len(), 36, "{n:?}");
        assert_eq!(
            process_key(42, Some(987)),
            Some(format!("{}:987:42", n.boot_id))
        );
        assert_eq!(process_key(42, None), None);
        assert_ne!(process_key(42, Some(987)), process_key(42, Some(988)));
    }

    #[test]
    fn a_boot_id_passed_by_systemd_is_spelled_as_the_kernel_spells_it() {
        let kernel = "9392d258-532b-40d2-9bad-7521372afc8d\n";
        let systemd = "9392D258532B40D29BAD7521372AFC8D";
        let want = Some("9392d258-532b-40d2-9bad-7521372afc8d".to_string());
        assert_eq!(boot_id(Some(kernel), None), want);
        // /proc/sys hidden (ProcSubset=pid): the unit's %b.
        assert_eq!(boot_id(None, Some(systemd)), want);
        // The kernel's wins over what an invoker passed.
        assert_eq!(
            boot_id(Some(kernel), Some("00000000000000000000000000000000")),
            want
        );
        for bad in [
            "",
            "%b",
            "9392d258-532b-40d2-9bad",
            "9392d258x532b-40d2-9bad-7521372afc8d",
        ] {
            assert_eq!(boot_id(None, Some(bad)), None, "{bad}");
        }
        assert_eq!(boot_id(None, None), None);
    }
}
