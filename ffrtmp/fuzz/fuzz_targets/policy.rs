//! The policy parser: any text either loads or is refused with a line
//! within the text; a loaded policy decides about a process without panics.
#![no_main]
use ffrtmp::policy::{Candidate, Policy, PolicyError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match Policy::parse(text, "fuzz.toml") {
        Ok(policy) => {
            let _ = policy.comm_filter();
            let c = Candidate {
                pid: 4242,
                comm: "ffmpeg".into(),
                uid: 0,
                exe: Some("/usr/bin/ffmpeg".into()),
                argv: Some(vec!["ffmpeg".into(), "-i".into(), "rtmp://x/live/k".into()]),
                parent_comm: Some("sh".into()),
            };
            let _ = policy.decide(&c);
        }
        Err(PolicyError::Invalid { line, .. }) => {
            assert!(
                line >= 1 && line <= text.lines().count().max(1) + 1,
                "line {line}"
            );
        }
        Err(e) => panic!("parse gave {e}"),
    }
});
