//! Where the cgroup hierarchies are and what ffrtmp may do with them: read
//! from /proc/self/mountinfo and /proc/self/cgroup, never assumed.
//!
//! - **v2**: one cgroup2 hierarchy carries the controllers (pure v2 hosts).
//! - **v1** / **hybrid**: cpu, memory, … are v1 hierarchies (a cgroup2 mount
//!   may exist beside them, e.g. /sys/fs/cgroup/unified with no controllers,
//!   as on our hosts); ffrtmp then governs through the v1 hierarchies.
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// v1 controllers ffrtmp uses, by their hierarchy name.
pub const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "blkio", "pids"];

/// Errors while reading the layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup hierarchy is mounted")]
    NoCgroups,
    #[error(
        "cgroup root {0:?} must be an absolute cgroup path (like /ffrtmp) without . or .. components"
    )]
    BadRoot(String),
}

/// Which hierarchy governs: the event contract's type (`started.layout`).
pub use crate::events::CgroupLayout as Kind;

/// A mounted hierarchy: where it is mounted, and which cgroup path its
/// mount point shows (not `/` inside some containers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub root: String,
}

impl Mount {
    /// The directory of cgroup `path` (absolute cgroup path) in this mount.
    pub fn dir_of(&self, path: &CgroupPath) -> PathBuf {
        let rel = path
            .0
            .strip_prefix(self.root.trim_end_matches('/'))
            .unwrap_or(&path.0)
            .trim_start_matches('/');
        self.point.join(rel)
    }
}

/// The cgroup mounts of this machine.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub v2: Option<Mount>,
    /// v1 hierarchies of [`V1_CONTROLLERS`], by controller.
    pub v1: BTreeMap<String, Mount>,
    /// The v2 mount's options as mountinfo shows them: per-mount (`rw,
    /// nosuid,…`) and per-superblock (`rw,nsdelegate,…`), for a remount
    /// that keeps them.
    pub v2_options: Option<(String, String)>,
    /// Some cgroup mount has `favordynmods` (see [`super::dynmods`]).
    pub favordynmods: bool,
}

impl Layout {
    pub fn detect() -> Result<Self, LayoutError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = crate::observe::proc::read_text(path).map_err(|source| LayoutError::Io {
            path: path.into(),
            source,
        })?;
        let layout = Self::parse(&text);
        if layout.v2.is_none() && layout.v1.is_empty() {
            return Err(LayoutError::NoCgroups);
        }
        Ok(layout)
    }

    /// Parses mountinfo lines: `ID PARENT MAJ:MIN ROOT POINT OPTS … - FSTYPE SOURCE SUPEROPTS`.
    pub fn parse(mountinfo: &str) -> Self {
        let mut layout = Layout::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(point), Some(fstype)) = (left.get(3), left.get(4), right.first())
            else {
                continue;
            };
            let mount = Mount {
                point: PathBuf::from(unescape(point)),
                root: unescape(root),
            };
            let superopts = right.get(2).copied().unwrap_or("");
            if matches!(*fstype, "cgroup" | "cgroup2")
                && superopts.split(',').any(|o| o == "favordynmods")
            {
                layout.favordynmods = true;
            }
            match *fstype {
                "cgroup2" if layout.v2.is_none() => {
                    layout.v2 = Some(mount);
                    layout.v2_options = Some((
                        left.get(5).copied().unwrap_or("").to_string(),
                        superopts.to_string(),
                    ));
                }
                "cgroup" => {
                    for opt in right.get(2).map_or("", |o| o).split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            layout
                                .v1
                                .entry(opt.to_string())
                                .or_insert_with(|| mount.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// v1 when the v1 hierarchies hold cpu or memory, else v2.
    pub fn kind(&self) -> Kind {
        let v1_governs = self.v1.contains_key("cpu") || self.v1.contains_key("memory");
        match (v1_governs, self.v2.is_some()) {
            (true, true) => Kind::Hybrid,
            (true, false) => Kind::V1,
            _ => Kind::V2,
        }
    }

    /// Controllers available at the root of the v2 hierarchy.
    pub fn v2_controllers(&self) -> Vec<String> {
        self.v2
            .as_ref()
            .and_then(|m| crate::observe::proc::read_text(m.point.join("cgroup.controllers")).ok())
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    }
}

/// mountinfo escapes spaces and the like as `\NNN` (octal). Byte-wise: a
/// backslash before a multi-byte character is not an escape (slicing the
/// text there panicked; found by `cargo xtask fuzz mountinfo`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter().try_fold(0u16, |v, &b| {
                (b'0'..=b'7')
                    .contains(&b)
                    .then(|| v * 8 + u16::from(b - b'0'))
            })
        });
        match octal.and_then(|v| u8::try_from(v).ok()) {
            Some(v) if bytes[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An absolute cgroup path (`/ffrtmp`, `/user.slice/app.service/ffrtmp`),
/// normalised, with no `.` or `..`: joined to a mount it stays inside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CgroupPath(String);

impl CgroupPath {
    pub fn new(s: &str) -> Result<Self, LayoutError> {
        let bad = || LayoutError::BadRoot(s.to_string());
        if !s.starts_with('/') || s.contains(['\0', '\n']) {
            return Err(bad());
        }
        let mut out = String::new();
        for part in s.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(bad());
            }
            out.push('/');
            out.push_str(part);
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(CgroupPath(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `self/name`; `name` must be a single validated component.
    #[must_use]
    pub fn child(&self, name: &str) -> CgroupPath {
        if self.0 == "/" {
            CgroupPath(format!("/{name}"))
        } else {
            CgroupPath(format!("{}/{name}", self.0))
        }
    }

    /// The ancestors from the hierarchy root down to `self`, root first.
    pub fn lineage(&self) -> Vec<CgroupPath> {
        let mut out = vec![CgroupPath("/".into())];
        let mut acc = String::new();
        for part in self.0.split('/').filter(|p| !p.is_empty()) {
            acc.push('/');
            acc.push_str(part);
            out.push(CgroupPath(acc.clone()));
        }
        out
    }
}

/// This process's v2 cgroup path, from the `0::` line of /proc/self/cgroup.
pub fn own_v2_cgroup() -> Option<CgroupPath> {
    let text = crate::observe::proc::read_text("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    CgroupPath::new(path.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    /// Regression (cargo xtask fuzz mountinfo): a backslash before a
    /// multi-byte character, and octal escapes past 255, are kept as text.
    #[test]
    fn escapes_are_decoded_bytewise() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/\\х\\"), "/\\х\\");
        assert_eq!(unescape("/\\777"), "/\\777");
        assert_eq!(unescape("\\04"), "\\04");
        let found = "~\u{10}\0\0\0\0   \0\0\0[\\m/\0\0\0[\\m/х/\\\\/- /\\ /\\\\/- / - b";
        let _ = Layout::parse(found);
    }

    #[test]
    fn hybrid_hosts_govern_through_v1() {
        let l = Layout::parse(HYBRID);
        assert_eq!(l.kind(), Kind::Hybrid);
        assert_eq!(l.v1["memory"].point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(l.v1.len(), 5);
        assert_eq!(l.v2.unwrap().point, PathBuf::from("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn comounted_and_pure_v2_layouts() {
        let l = Layout::parse(
            "25 1 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        );
        assert_eq!(l.kind(), Kind::V1);
        assert_eq!(l.v1["cpu"], l.v1["cpuacct"]);
        let l =
            Layout::parse("29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate");
        assert_eq!(l.kind(), Kind::V2);
    }

    #[test]
    fn cgroup_paths_cannot_leave_their_hierarchy() {
        assert_eq!(CgroupPath::new("/ffrtmp/").unwrap().as_str(), "/ffrtmp");
        assert_eq!(CgroupPath::new("/").unwrap().as_str(), "/");
        for bad in ["ffrtmp", "/a/../b", "/a/./b", "", "/a\0"] {
            assert!(CgroupPath::new(bad).is_err(), "{bad:?}");
        }
        let m = Mount {
            point: "/sys/fs/cgroup".into(),
            root: "/".into(),
        };
        assert_eq!(
            m.dir_of(&CgroupPath::new("/ffrtmp").unwrap().child("j")),
            PathBuf::from("/sys/fs/cgroup/ffrtmp/j")
        );
        let lineage: Vec<String> = CgroupPath::new("/a/b")
            .unwrap()
            .lineage()
            .iter()
            .map(|p| p.0.clone())
            .collect();
        assert_eq!(lineage, ["/", "/a", "/a/b"]);
    }
}
