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
pub struct Node {
    pub host: String,
    pub boot_id: String,
}

/// Where the kernel says which boot this is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

static NODE: LazyLock<Node> = LazyLock::new(|| Node {
    host: nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default(),
    // Empty when it cannot be read (no /proc): keys are then null.
    boot_id: std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_string())
        .unwrap_or_default(),
});

/// This node, read on first use: `watch`, `run` and `attach` call it
/// before their first event, so no event waits on reading it.
pub fn node() -> &'static Node {
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
}
