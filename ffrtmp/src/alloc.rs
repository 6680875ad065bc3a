//! The memory allocator of the shipped (static musl) binary, chosen per
//! command.
//!
//! Two needs pull apart:
//! - `run` and `attach` add their whole start-up to every job. musl's own
//!   allocator maps and unmaps pages for small allocations: two dozen
//!   mmap/munmap pairs and their page faults, ~0.15 ms per `run` on our VMs.
//!   dlmalloc packs them into one region (docs/BENCHMARKS.md).
//! - `watch` lives for months. aya's loader parses the whole kernel BTF
//!   (~20 MB of small blocks) once at start; musl's allocator gives it back
//!   (0.4 MB of heap afterwards), dlmalloc keeps what fragmentation pins
//!   (26 MB with `--all`).
//!
//! So `ByCommand` serves `watch` from musl's allocator and every other
//! command (short-lived, or small like a following `attach`) from dlmalloc.
//! It decides once, at the first allocation, from `/proc/self/cmdline`, and
//! never changes its mind: every block is freed by the allocator that made
//! it. Without /proc it uses musl's. glibc builds keep glibc's allocator,
//! which does both jobs well.
#[cfg(target_env = "musl")]
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU8, Ordering::Relaxed},
};

/// The command that needs the C library's allocator (see the module docs).
const LONG_LIVED: &[u8] = b"watch";
/// Enough of the command line to reach the subcommand.
const CMDLINE_BYTES: usize = 4096;

/// The subcommand in a NUL-separated command line (`/proc/self/cmdline`):
/// the first argument after the program's own name that is not an option.
pub fn subcommand(cmdline: &[u8]) -> Option<&[u8]> {
    cmdline
        .split(|&b| b == 0)
        .skip(1)
        .find(|a| !a.is_empty() && !a.starts_with(b"-"))
}

/// Whether a process running `cmdline` should pack its allocations
/// (dlmalloc); `None` (unreadable) keeps the C library's allocator.
pub fn packs(cmdline: Option<&[u8]>) -> bool {
    cmdline.is_some_and(|c| subcommand(c) != Some(LONG_LIVED))
}

/// Reads this process's command line into `buf` without allocating (this
/// runs inside the allocator); the bytes read, `None` on failure.
#[cfg_attr(not(target_env = "musl"), allow(dead_code))]
fn read_cmdline(buf: &mut [u8]) -> Option<usize> {
    // SAFETY: plain system calls on a NUL-terminated path and a buffer we
    // own; the descriptor is closed on every path.
    unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        usize::try_from(n).ok()
    }
}

/// Whether this process packs its allocations, read from /proc.
#[cfg_attr(not(target_env = "musl"), allow(dead_code))]
fn decide() -> bool {
    let mut buf = [0u8; CMDLINE_BYTES];
    packs(read_cmdline(&mut buf).map(|n| &buf[..n]))
}

/// The global allocator of musl builds (see the module docs).
#[cfg(target_env = "musl")]
pub struct ByCommand;

#[cfg(target_env = "musl")]
const UNDECIDED: u8 = 0;
#[cfg(target_env = "musl")]
const SYSTEM: u8 = 1;
#[cfg(target_env = "musl")]
const PACKED: u8 = 2;

#[cfg(target_env = "musl")]
static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

#[cfg(target_env = "musl")]
impl ByCommand {
    /// The allocator chosen for this process.
    #[inline]
    fn chosen() -> &'static dyn GlobalAlloc {
        let packed = match CHOICE.load(Relaxed) {
            PACKED => true,
            SYSTEM => false,
            _ => Self::choose(),
        };
        if packed {
            &dlmalloc::GlobalDlmalloc
        } else {
            &System
        }
    }

    /// The first allocation comes before any second thread; were two to
    /// race, both would read the same command line.
    #[cold]
    fn choose() -> bool {
        let packed = decide();
        CHOICE.store(if packed { PACKED } else { SYSTEM }, Relaxed);
        packed
    }
}

// SAFETY: every call goes to the one allocator chosen for the process's
// lifetime (so a block is always freed or resized by the allocator that
// made it), which upholds GlobalAlloc's contract itself; the caller's
// guarantees are forwarded unchanged.
#[cfg(target_env = "musl")]
unsafe impl GlobalAlloc for ByCommand {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { Self::chosen().alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { Self::chosen().dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { Self::chosen().alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { Self::chosen().realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subcommand_is_the_first_argument_that_is_not_an_option() {
        assert_eq!(
            subcommand(b"/usr/bin/ffrtmp\0watch\0--all\0"),
            Some(&b"watch"[..])
        );
        assert_eq!(subcommand(b"ffrtmp\0run\0--\0watch\0"), Some(&b"run"[..]));
        assert_eq!(subcommand(b"ffrtmp\0--version\0"), None);
        assert_eq!(subcommand(b"ffrtmp"), None);
    }

    #[test]
    fn only_watch_keeps_the_c_library_allocator() {
        assert!(!packs(Some(b"ffrtmp\0watch\0--policy\0p.toml\0")));
        assert!(packs(Some(b"ffrtmp\0run\0--\0/bin/true\0")));
        assert!(packs(Some(b"ffrtmp\0attach\0--pid\x007\0")));
        assert!(packs(Some(b"ffrtmp\0--help\0")));
        // Unreadable: the allocator that suits everything.
        assert!(!packs(None));
    }

    #[test]
    fn reads_its_own_command_line() {
        let mut buf = [0u8; CMDLINE_BYTES];
        let n = read_cmdline(&mut buf).expect("/proc/self/cmdline");
        let program = std::env::args().next().unwrap();
        assert!(buf[..n].starts_with(program.as_bytes()));
        assert_eq!(decide(), packs(Some(&buf[..n])));
    }
}
