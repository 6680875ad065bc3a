//! The BTF resolver, which streams the kernel's type information: a file
//! that is not well-formed BTF is refused, never a panic, a hang or an
//! allocation sized by a field of the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // It reads a file (as it reads /sys/kernel/btf/vmlinux): one per run,
    // in memory.
    thread_local! {
        static PATH: std::path::PathBuf = {
            let dir = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, Into::into);
            dir.join(format!("ffrtmp-fuzz-btf-{}", std::process::id()))
        };
    }
    PATH.with(|path| {
        std::fs::write(path, data).expect("writing the input");
        let _ = ffrtmp::observe::ebpf::btf::offsets_from(path);
    });
});
