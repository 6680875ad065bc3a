//! The /proc parsers: /proc/PID/stat (a comm may hold spaces and
//! parentheses) and NUL-separated argv.
#![no_main]
use ffrtmp::observe::proc::{Stat, split_nul};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(stat) = Stat::parse(42, data) {
        let _ = stat.is_kernel_thread();
    }
    let _ = split_nul(data);
});
