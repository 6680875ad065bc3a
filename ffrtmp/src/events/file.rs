//! Event files written safely: opened without following a link, created
//! 0640, and written in whole lines only.
//!
//! Measured before this: `--events` followed a symlink and appended to its
//! 0600 target (a user who can create a link where root writes events
//! chooses what root appends to); on a full disk a 95-byte partial
//! `governed` line stayed in the file and the next run's first event was
//! glued onto it — not valid JSON for any collector. Now a batch of lines is
//! one write; when it fails part-way, the part written is cut off again
//! (when the file still ends where the batch began, so another writer's
//! lines are never touched), and if it cannot be, the next write begins
//! with a newline — as it does when the file was left ending mid-line.
//!
//! `watch --events FILE` reopens its file when asked ([`Reopening`]: on
//! SIGHUP, as logrotate's `postrotate` sends through `systemctl reload`);
//! the open happens on the writer thread, before its next write, so a slow
//! or full file system delays events, never governing.
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

/// A file or stream of JSON lines.
pub(crate) struct LineFile {
    file: File,
    /// Whether lengths mean anything (a regular file; not a pipe, socket
    /// or device).
    regular: bool,
    /// The file ends mid-line: the next write starts a new one.
    broken: bool,
}

impl LineFile {
    /// Opens `path` for appending: never through a symbolic link (ELOOP),
    /// created 0640 (less the umask) when missing.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        // Readable too: to see whether it ends mid-line.
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    io::Error::new(
                        e.kind(),
                        format!("{e}: it is a symbolic link; give the file it points to"),
                    )
                } else {
                    e
                }
            })?;
        Self::new(file)
    }

    /// Wraps an open file (stdout, say).
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let meta = file.metadata()?;
        let regular = meta.file_type().is_file();
        let broken =
            regular && meta.len() > 0 && ends_with_newline(&file, meta.len()) == Some(false);
        Ok(LineFile {
            file,
            regular,
            broken,
        })
    }

    fn len(&self) -> Option<u64> {
        self.regular
            .then(|| self.file.metadata().ok().map(|m| m.len()))
            .flatten()
    }
}

/// Whether the file's last byte is a newline; `None` when it cannot be read
/// (a write-only descriptor, as a shell's `>>` gives).
fn ends_with_newline(file: &File, len: u64) -> Option<bool> {
    let mut last = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut last, len - 1).ok()?;
    Some(last[0] == b'\n')
}

impl Write for LineFile {
    /// Writes `buf` — whole lines — entirely or not at all (as far as the
    /// file allows; see the module).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let start = self.len();
        let mut data = Vec::new();
        let out: &[u8] = if self.broken {
            data.reserve(buf.len() + 1);
            data.push(b'\n');
            data.extend_from_slice(buf);
            &data
        } else {
            buf
        };
        let mut written = 0;
        while written < out.len() {
            match self.file.write(&out[written..]) {
                Ok(0) => {
                    return Err(self.undo(start, written, io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.undo(start, written, e)),
            }
        }
        self.broken = false;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl LineFile {
    /// A write failed after `written` bytes: cut them off if the file still
    /// ends where this write left it, else make the next write start a line.
    fn undo(&mut self, start: Option<u64>, written: usize, e: io::Error) -> io::Error {
        if written == 0 {
            return e;
        }
        let cut = match (start, self.len()) {
            (Some(start), Some(now)) if now == start + written as u64 => {
                self.file.set_len(start).is_ok()
            }
            _ => false,
        };
        if !cut {
            self.broken = true;
        }
        e
    }
}

/// An event file that is opened again, by path, when asked ([`Reopen`]).
pub(crate) struct Reopening {
    path: PathBuf,
    file: LineFile,
    wanted: Arc<AtomicBool>,
}

/// Asks a [`Reopening`] file to reopen before its next write.
#[derive(Clone, Debug)]
pub(crate) struct Reopen(Arc<AtomicBool>);

impl Reopen {
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Reopening {
    /// Opens `path` as [`LineFile::open`] does (errors are the caller's:
    /// bad input before anything starts).
    pub(crate) fn open(path: &Path) -> io::Result<(Self, Reopen)> {
        let wanted = Arc::new(AtomicBool::new(false));
        let file = LineFile::open(path)?;
        Ok((
            Reopening {
                path: path.to_path_buf(),
                file,
                wanted: Arc::clone(&wanted),
            },
            Reopen(wanted),
        ))
    }

    /// Reopens if asked; a file that cannot be opened now keeps the old one
    /// (said once per request, to the log).
    fn reopen_if_wanted(&mut self) {
        if !self.wanted.swap(false, Ordering::Relaxed) {
            return;
        }
        match LineFile::open(&self.path) {
            Ok(file) => self.file = file,
            Err(e) => tracing::warn!(
                "reopening {}: {e}; events go on to the file open before",
                self.path.display()
            ),
        }
    }
}

impl Write for Reopening {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reopen_if_wanted();
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ffrtmp-linefile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_link_is_refused_and_a_new_file_is_not_world_readable() {
        let dir = scratch("link");
        let target = dir.join("secret");
        std::fs::write(&target, "").unwrap();
        let link = dir.join("events.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = LineFile::open(&link).err().expect("a link is refused");
        assert_eq!(err.raw_os_error(), None, "{err}");
        assert!(err.to_string().contains("os error 40"), "{err}");
        let made = dir.join("new.jsonl");
        LineFile::open(&made).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&made).unwrap().permissions(),
        );
        assert_eq!(mode & 0o007, 0, "{mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rotated_file_is_reopened_by_path_when_asked() {
        let dir = scratch("rotate");
        let path = dir.join("events.jsonl");
        let (mut f, reopen) = Reopening::open(&path).unwrap();
        f.write_all(b"{\"a\":1}\n").unwrap();
        std::fs::rename(&path, dir.join("events.jsonl.1")).unwrap();
        f.write_all(b"{\"b\":2}\n").unwrap();
        reopen.request();
        f.write_all(b"{\"c\":3}\n").unwrap();
        let old = std::fs::read_to_string(dir.join("events.jsonl.1")).unwrap();
        assert_eq!(old, "{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"c\":3}\n");
        // A path that cannot be opened now (a link): the open file goes on.
        std::fs::rename(&path, dir.join("events.jsonl.2")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        reopen.request();
        f.write_all(b"{\"d\":4}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("events.jsonl.2")).unwrap(),
            "{\"c\":3}\n{\"d\":4}\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_left_mid_line_gets_a_new_line_first() {
        let dir = scratch("mid");
        let path = dir.join("events.jsonl");
        std::fs::write(&path, "{\"event\":\"gov").unwrap();
        let mut f = LineFile::open(&path).unwrap();
        f.write_all(b"{\"a\":1}\n").unwrap();
        f.write_all(b"{\"b\":2}\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"event\":\"gov\n{\"a\":1}\n{\"b\":2}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
