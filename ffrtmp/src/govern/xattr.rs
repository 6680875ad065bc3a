//! Extended attributes of cgroup directories: systemd's delegation marks,
//! read (`systemd.rs`). ffrtmp writes none: a job's labels are its ledger
//! record (`ledger.rs`).
use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

/// The longest value read: a mark is a word.
const MAX_VALUE: usize = 64;

fn c_strings(dir: &Path, name: &str) -> io::Result<(CString, CString)> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok((path, name))
}

/// Attribute `name` of `dir` (not following a link), if it has one.
pub(crate) fn get(dir: &Path, name: &str) -> Option<Vec<u8>> {
    let (path, name) = c_strings(dir, name).ok()?;
    let mut value = [0u8; MAX_VALUE];
    // SAFETY: both strings are NUL-terminated and live across the call; the
    // kernel writes at most `value.len()` bytes into `value`.
    let len = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    let len = usize::try_from(len).ok()?;
    Some(value[..len.min(MAX_VALUE)].to_vec())
}
