//! ffrtmp's kernel side: two raw tracepoint programs on `sched_process_exec`
//! and `sched_process_exit` that send [`ExecRecord`]s and [`ExitRecord`]s to
//! user space through one ring buffer.
//!
//! Raw tracepoints are used instead of classic (tracefs) ones: they attach by
//! name without tracefs being mounted, and the kernel skips formatting a trace
//! record that we would only copy again. Their arguments are the tracepoint's
//! `TP_PROTO`: `(task, old_pid, bprm)` for exec and `(task, ...)` for exit.
//!
//! Struct field offsets come from user space ([`Offsets`], resolved from BTF)
//! because Rust eBPF has no CO-RE relocations. Every kernel read goes through
//! `bpf_probe_read_kernel`, so a wrong offset gives a wrong value, never a
//! crash, and the user side refuses to load without all offsets resolved.
#![no_std]
#![no_main]
// Every helper is inlined into its program: each program is then one
// function, checked by the verifier as a whole, with no BPF-to-BPF call
// (whose support and cost vary across the kernels we load on).
#![allow(
    clippy::inline_always,
    reason = "kernel programs are one function each (see above)"
)]

use core::{
    ffi::c_void,
    ptr::{addr_of_mut, read_volatile},
};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use ffrtmp_common::{
    ARGV_CAP, COMMS_MAX, EventHeader, ExecRecord, ExitRecord, FILENAME_CAP, Offsets, PF_KTHREAD,
    SIGNAL_GROUP_EXIT, TASK_COMM_LEN, TRACKED_MAX, WAKE_COALESCE_NS, exec_flags, kind,
};

/// The loader's thread-group id; its own execs and exit are not reported.
#[unsafe(no_mangle)]
static FFRTMP_SELF_TGID: u32 = 0;

/// Kernel struct offsets, written by the loader before the programs load.
#[unsafe(no_mangle)]
static FFRTMP_OFFSETS: Offsets = Offsets {
    task_tgid: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_mm: 0,
    task_exit_code: 0,
    task_signal: 0,
    task_start_time: 0,
    signal_live: 0,
    signal_flags: 0,
    signal_group_exit_code: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    binprm_filename: 0,
    task_flags: 0,
    task_start_boottime: 0,
    pad: 0,
};

/// Non-zero: only execs whose comm is in `COMMS` are sent, and only exits
/// of `TRACKED` processes (written by the loader; `watch --all` sets 0).
#[unsafe(no_mangle)]
static FFRTMP_FILTER: u32 = 0;

/// Process names the policy governs (filled by user space): their execs
/// wake user space at once, and with the filter on only they pass.
#[map]
static COMMS: HashMap<[u8; TASK_COMM_LEN], u8> = HashMap::with_max_entries(COMMS_MAX, 0);

/// Processes whose exit passes the filter.
#[map]
static TRACKED: HashMap<u32, u8> = HashMap::with_max_entries(TRACKED_MAX, 0);

/// Default size; the loader may resize it (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Reservation failures per CPU, summed and reported by user space as `lost`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `bpf_ktime_get_ns()` of the last wake-up sent to the consumer.
#[map]
static LAST_WAKE: Array<u64> = Array::with_max_entries(1, 0);

/// Submit flags for a record made at `now` (see `WAKE_COALESCE_NS`).
/// Races between CPUs only add or skip a wake-up inside one window, which
/// the consumer's polling covers.
#[inline(always)]
fn wake_flags(now: u64) -> u64 {
    let Some(last) = LAST_WAKE.get_ptr_mut(0) else {
        return 0; // cannot happen (index 0 of a 1-entry array); default rule
    };
    let half_full =
        EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) * 2 >= EVENTS.query(u64::from(BPF_RB_RING_SIZE));
    // SAFETY: a valid map value pointer; a torn read is impossible for u64.
    unsafe {
        if now.wrapping_sub(*last) >= WAKE_COALESCE_NS || half_full {
            *last = now;
            u64::from(BPF_RB_FORCE_WAKEUP)
        } else {
            u64::from(BPF_RB_NO_WAKEUP)
        }
    }
}

#[inline(always)]
fn offsets() -> Offsets {
    // Volatile: the value is patched into .rodata at load time, so the
    // compiler must not fold the all-zero initialiser.
    // SAFETY: a static's address, aligned and initialised; nothing writes
    // it after load.
    unsafe { read_volatile(&raw const FFRTMP_OFFSETS) }
}

#[inline(always)]
fn self_tgid() -> u32 {
    // SAFETY: as in `offsets`: a static patched at load, read-only after.
    unsafe { read_volatile(&raw const FFRTMP_SELF_TGID) }
}

#[inline(always)]
fn filtering() -> bool {
    // SAFETY: as in `offsets`: a static patched at load, read-only after.
    unsafe { read_volatile(&raw const FFRTMP_FILTER) != 0 }
}

/// Reads a `T` at `base + off` from kernel memory.
///
/// # Safety
/// None is needed for memory safety: the helper copies through the
/// kernel's fault-tolerant path and fails on a bad address. `unsafe` only
/// because `base.add` is pointer arithmetic on a kernel address.
#[inline(always)]
unsafe fn read_at<T>(base: *const u8, off: u32) -> Result<T, i32> {
    // SAFETY: the pointer is only handed to bpf_probe_read_kernel, which
    // checks it; `add` does not dereference.
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()) }
}

#[inline(always)]
fn count_lost() {
    if let Some(counter) = LOST.get_ptr_mut(0) {
        // SAFETY: a valid map value pointer to this CPU's slot: no other
        // writer can race with us.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub(crate) fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let tgid = current_tgid();
    if tgid == self_tgid() {
        return 0;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    // A name the policy governs: user space must act at once.
    // SAFETY: a lookup; the value is not used.
    let urgent = unsafe { COMMS.get(comm) }.is_some();
    if filtering() {
        if !urgent {
            return 0;
        }
        // Full map: the exit goes unseen (user space still governs).
        let _ = TRACKED.insert(tgid, 1, 0);
    }
    let task: *const u8 = ctx.arg(0);
    let old_pid: u64 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    let off = offsets();

    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    let mut flags = 0u32;
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `rec` points to reserved ring memory of the record's size; we
    // only write through raw pointers, never read uninitialised bytes.
    unsafe {
        (*rec).header = EventHeader {
            kind: kind::EXEC,
            pid: tgid,
            ktime_ns: now,
        };
        (*rec).old_pid = old_pid as u32;
        let ids = bpf_get_current_uid_gid();
        (*rec).uid = ids as u32;
        (*rec).gid = (ids >> 32) as u32;
        (*rec).comm = comm;
        (*rec).start_boottime_ns = read_at::<u64>(task, off.task_start_boottime).unwrap_or(0);

        (*rec).ppid = if let Ok(parent) = read_at::<*const u8>(task, off.task_real_parent) {
            read_at::<u32>(parent, off.task_tgid).unwrap_or_else(|_| {
                flags |= exec_flags::PPID_UNREADABLE;
                0
            })
        } else {
            flags |= exec_flags::PPID_UNREADABLE;
            0
        };

        // File name as passed to exec (kernel copy in the binprm).
        let mut name_len = 0u16;
        if let Ok(name) = read_at::<*const u8>(bprm, off.binprm_filename) {
            let n = bpf_probe_read_kernel_str(
                addr_of_mut!((*rec).filename).cast::<c_void>(),
                FILENAME_CAP as u32,
                name.cast::<c_void>(),
            );
            if n > 0 {
                // `n` counts the NUL.
                name_len = (n - 1) as u16;
            }
        }
        (*rec).filename_len = name_len;

        // Arguments: the new image's [arg_start, arg_end) in user memory,
        // written by the kernel just before this tracepoint.
        let mut argv_len = 0u16;
        match read_at::<*const u8>(task, off.task_mm) {
            Ok(mm) if !mm.is_null() => {
                let start = read_at::<u64>(mm, off.mm_arg_start).unwrap_or(0);
                let end = read_at::<u64>(mm, off.mm_arg_end).unwrap_or(0);
                let mut len = end.wrapping_sub(start);
                if start == 0 || end < start {
                    flags |= exec_flags::ARGV_UNREADABLE;
                    len = 0;
                }
                if len > ARGV_CAP as u64 {
                    flags |= exec_flags::ARGV_TRUNCATED;
                    len = ARGV_CAP as u64;
                }
                if len > 0 {
                    let rc = bpf_probe_read_user(
                        addr_of_mut!((*rec).argv).cast::<c_void>(),
                        len as u32,
                        start as *const c_void,
                    );
                    if rc == 0 {
                        argv_len = len as u16;
                    } else {
                        flags |= exec_flags::ARGV_UNREADABLE;
                    }
                }
            }
            _ => flags |= exec_flags::ARGV_UNREADABLE,
        }
        (*rec).argv_len = argv_len;
        (*rec).flags = flags;
    }
    // Governing waits for no coalescing window.
    entry.submit(if urgent {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        wake_flags(now)
    });
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub(crate) fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let off = offsets();
    let tgid = current_tgid();
    // Cheapest test first: in a storm of untracked processes, one lookup.
    // SAFETY: a lookup; the value is not used.
    if filtering() && unsafe { TRACKED.get(tgid) }.is_none() {
        return 0;
    }
    // SAFETY: every read goes through bpf_probe_read_kernel.
    unsafe {
        // The tracepoint fires for every thread; `signal->live` reached zero
        // (decremented before the tracepoint) only for the group's last one.
        let Ok(signal) = read_at::<*const u8>(task, off.task_signal) else {
            return 0;
        };
        match read_at::<i32>(signal, off.signal_live) {
            Ok(0) => {}
            _ => return 0,
        }
        if tgid == self_tgid() {
            return 0;
        }
        if filtering() {
            let _ = TRACKED.remove(tgid);
        }
        match read_at::<u32>(task, off.task_flags) {
            Ok(flags) if flags & PF_KTHREAD == 0 => {}
            _ => return 0,
        }
        // Same rule as wait(2): a group exit's code, else the leader's own.
        let leader = read_at::<*const u8>(task, off.task_group_leader).unwrap_or(task);
        let sig_flags = read_at::<u32>(signal, off.signal_flags).unwrap_or(0);
        let status = if sig_flags & SIGNAL_GROUP_EXIT != 0 {
            read_at::<u32>(signal, off.signal_group_exit_code).unwrap_or(0)
        } else {
            read_at::<u32>(leader, off.task_exit_code).unwrap_or(0)
        };
        let start_ns = read_at::<u64>(leader, off.task_start_time).unwrap_or(0);
        let start_boottime_ns = read_at::<u64>(leader, off.task_start_boottime).unwrap_or(0);

        let Some(mut entry) = EVENTS.reserve::<ExitRecord>(0) else {
            count_lost();
            return 0;
        };
        let rec = entry.as_mut_ptr();
        let now = bpf_ktime_get_ns();
        (*rec).header = EventHeader {
            kind: kind::EXIT,
            pid: tgid,
            ktime_ns: now,
        };
        (*rec).status = status;
        (*rec).pad = 0;
        (*rec).start_ns = start_ns;
        (*rec).start_boottime_ns = start_boottime_ns;
        (*rec).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        entry.submit(wake_flags(now));
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
