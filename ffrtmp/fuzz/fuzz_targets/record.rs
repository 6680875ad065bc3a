//! The ring-buffer record decoder: whatever bytes the ring holds, a record
//! decodes to an event or an error, never a panic or an over-read.
#![no_main]
use ffrtmp::observe::ebpf::record::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode(data) {
        // What is decoded can be written.
        let _ = serde_json::to_string(&event).expect("a decoded event encodes");
    }
});
