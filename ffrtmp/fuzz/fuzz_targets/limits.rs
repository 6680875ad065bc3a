//! The limit parsers (every row of the table, as the CLI and policies use
//! them), sizes and job ids: any text is a value or an error, never a panic,
//! and an accepted job id is a single safe directory name.
#![no_main]
use ffrtmp::limits::{JobId, LimitName, Limits, Size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let name = LimitName::ALL[usize::from(pick) % LimitName::ALL.len()];
    let mut limits = Limits::default();
    if limits.set(name, text).is_ok() {
        assert!(limits.has(name));
        let _ = limits.validate();
    }
    let _ = text.parse::<Size>();
    if let Ok(id) = text.parse::<JobId>() {
        let s = id.as_str();
        assert!(
            !s.contains('/') && s != "." && s != ".." && !s.is_empty(),
            "{s:?}"
        );
    }
});
