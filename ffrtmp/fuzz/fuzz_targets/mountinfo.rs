//! The mountinfo parser (octal escapes, optional fields) and cgroup paths:
//! a path accepted is absolute and has no `.` or `..` component.
#![no_main]
use ffrtmp::govern::layout::{CgroupPath, Layout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let layout = Layout::parse(text);
    let _ = layout.kind();
    let _ = layout.v2_controllers();
    if let Ok(path) = CgroupPath::new(text) {
        let s = path.as_str();
        assert!(s.starts_with('/'), "{s:?}");
        assert!(s.split('/').all(|p| p != "." && p != ".."), "{s:?}");
        let _ = path.lineage();
    }
});
