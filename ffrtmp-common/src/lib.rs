//! Wire types shared by the kernel programs (`ffrtmp-ebpf`) and the user side.
//!
//! Every record the kernel sends through the `EVENTS` ring buffer starts with
//! an [`EventHeader`]; its `kind` says which record follows. All types are
//! `#[repr(C)]`, contain only integers and byte arrays (any bit pattern is
//! valid), and have their size pinned by compile-time assertions so that a
//! layout change on one side cannot silently disagree with the other.
//!
//! Kernel struct field offsets are not known at compile time (they differ
//! between kernel builds), so the user side resolves them from the running
//! kernel's BTF and hands them to the programs as [`Offsets`] before load.
#![no_std]

/// Length of `task_struct.comm`, including the trailing NUL.
pub const TASK_COMM_LEN: usize = 16;
/// Bytes of the exec'd file name kept; longer names are truncated.
pub const FILENAME_CAP: usize = 256;
/// Bytes of the NUL-separated argument block kept; longer blocks are truncated.
/// A power of two so the kernel side can bound reads with a mask.
pub const ARGV_CAP: usize = 1024;

/// Name of the ring buffer map that carries records to user space.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array that counts ring-buffer reservation failures.
pub const LOST_MAP: &str = "LOST";
/// Name of the global holding the loader's thread-group id (filtered out).
pub const SELF_TGID_GLOBAL: &str = "FFRTMP_SELF_TGID";
/// Name of the global holding the kernel struct [`Offsets`].
pub const OFFSETS_GLOBAL: &str = "FFRTMP_OFFSETS";
/// Name of the global that turns the comm pre-filter on (non-zero) or off.
pub const FILTER_GLOBAL: &str = "FFRTMP_FILTER";
/// Name of the hash map of process names whose execs pass the pre-filter
/// (key: `comm`, NUL-padded to [`TASK_COMM_LEN`]; value unused).
pub const COMMS_MAP: &str = "COMMS";
/// Capacity of [`COMMS_MAP`].
pub const COMMS_MAX: u32 = 256;
/// Name of the hash map of thread-group ids whose exit passes the
/// pre-filter: those whose exec passed, and those user space adds (adopted
/// and recovered processes). The exit program removes each on exit.
pub const TRACKED_MAP: &str = "TRACKED";
/// Capacity of [`TRACKED_MAP`]: live tracked processes, with room to spare.
pub const TRACKED_MAX: u32 = 65_536;
/// Program names, which are also the raw tracepoint names they attach to.
pub const EXEC_PROGRAM: &str = "sched_process_exec";
pub const EXIT_PROGRAM: &str = "sched_process_exit";

/// Wake-up coalescing window shared by both sides. The kernel wakes the
/// consumer for a record only when no wake-up was sent in the last window
/// (or the ring is half full); the consumer, once woken, polls every window
/// until a poll at least one window after its last wake-up finds the ring
/// empty. An isolated event is thus delivered at once, and a storm costs at
/// most one wake-up (an inter-processor interrupt) per window instead of one
/// per event.
pub const WAKE_COALESCE_NS: u64 = 10_000_000;

/// `signal_struct.flags` bit set once the whole group is exiting
/// (`exit_group(2)` or a fatal signal); then `group_exit_code` is the status.
pub const SIGNAL_GROUP_EXIT: u32 = 0x0000_0004;
/// `task_struct.flags` bit of kernel threads, whose exits are not reported.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// What follows an [`EventHeader`].
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const EXIT: u32 = 2;
}

/// Flags of an [`ExecRecord`].
pub mod exec_flags {
    /// The argument block did not fit in [`super::ARGV_CAP`] bytes.
    pub const ARGV_TRUNCATED: u32 = 1 << 0;
    /// The argument block could not be read (no mm, or a fault).
    pub const ARGV_UNREADABLE: u32 = 1 << 1;
    /// The parent could not be read.
    pub const PPID_UNREADABLE: u32 = 1 << 2;
}

/// First bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Thread-group id (what user space calls the pid).
    pub pid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub ktime_ns: u64,
}

/// A successful `execve`/`execveat`, seen at `sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    pub header: EventHeader,
    /// Thread id that called exec; differs from `header.pid` when a
    /// non-leader thread exec'd (the kernel then gives it the leader's id).
    pub old_pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// [`exec_flags`].
    pub flags: u32,
    /// Bytes used in `filename`, without the NUL.
    pub filename_len: u16,
    /// Bytes used in `argv` (NUL-separated, as in /proc/PID/cmdline).
    pub argv_len: u16,
    /// The process's `start_boottime` (ns since boot, at fork): its identity,
    /// as /proc/PID/stat's start time (field 22) is this in clock ticks.
    pub start_boottime_ns: u64,
    pub comm: [u8; TASK_COMM_LEN],
    pub filename: [u8; FILENAME_CAP],
    pub argv: [u8; ARGV_CAP],
}

/// The last thread of a thread group exited, seen at `sched_process_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    pub header: EventHeader,
    /// Wait status as `wait(2)` would report it (`exit << 8 | signal`).
    pub status: u32,
    pub pad: u32,
    /// Group leader's `start_time` (CLOCK_MONOTONIC ns at fork).
    pub start_ns: u64,
    /// Group leader's `start_boottime` (ns since boot at fork): the
    /// process's identity, as in [`ExecRecord::start_boottime_ns`].
    pub start_boottime_ns: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Byte offsets of the kernel struct fields the programs read, resolved from
/// the running kernel's BTF. A zero-initialised value is never valid: the
/// user side refuses to load without every offset resolved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    pub task_start_time: u32,
    pub signal_live: u32,
    pub signal_flags: u32,
    pub signal_group_exit_code: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub binprm_filename: u32,
    pub task_flags: u32,
    pub task_start_boottime: u32,
    pub pad: u32,
}

// The wire layout: changing a size is a protocol change on both sides.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
const _: () =
    assert!(core::mem::size_of::<ExecRecord>() == 16 + 24 + 8 + 16 + FILENAME_CAP + ARGV_CAP);
const _: () = assert!(core::mem::size_of::<ExitRecord>() == 16 + 24 + TASK_COMM_LEN);
const _: () = assert!(core::mem::size_of::<Offsets>() == 16 * 4);
const _: () = assert!(ARGV_CAP.is_power_of_two() && FILENAME_CAP.is_power_of_two());

/// Types that may be read from any byte pattern of their size.
///
/// # Safety
/// Implementors are `#[repr(C)]`, made only of integers and byte arrays.
pub unsafe trait Plain: Copy {}
// SAFETY: each is `#[repr(C)]`, made only of integers and byte arrays, with
// explicit padding fields (the size asserts above pin the layout).
unsafe impl Plain for EventHeader {}
// SAFETY: as above.
unsafe impl Plain for ExecRecord {}
// SAFETY: as above.
unsafe impl Plain for ExitRecord {}
// SAFETY: as above.
unsafe impl Plain for Offsets {}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers, see `Plain`.
    unsafe impl aya::Pod for super::Offsets {}
}
