//! Resolves the kernel struct field offsets the kernel programs need
//! ([`Offsets`]) from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs have no CO-RE relocations, so the offsets of e.g.
//! `task_struct.real_parent` must be looked up at run time. A full BTF parse
//! of vmlinux (5+ MB, ~150k types) would dominate the daemon's memory, so this
//! resolver streams the file instead and keeps only what it looks for:
//!
//! 1. one pass over the string section finds the string offsets of the names
//!    we want (struct and member names);
//! 2. passes over the type section record the members of the wanted structs
//!    and of the anonymous structs/unions nested in them (fields such as
//!    `mm_struct.arg_start` live inside an anonymous struct), until every
//!    nested type has been seen.
//!
//! Memory stays at a few kilobytes whatever the size of the kernel's BTF.
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use ffrtmp_common::Offsets;

/// Where the running kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_HEADER_LEN: usize = 12;
/// Anonymous members are nested at most this deep in the structs we read.
const MAX_PASSES: usize = 6;

// BTF kinds (include/uapi/linux/btf.h) and the trailing bytes each carries.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
const KIND_MAX: u32 = 19;

/// Errors while resolving offsets from BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF from {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not BTF in this machine's byte order (magic {magic:#06x})")]
    BadMagic { path: PathBuf, magic: u16 },
    #[error("{path}: malformed BTF: {what}")]
    Malformed { path: PathBuf, what: String },
    #[error("kernel BTF has no `{structure}.{member}` (kernel too old or too new?)")]
    MissingField {
        structure: &'static str,
        member: &'static str,
    },
}

/// Every (struct, member) the kernel programs read.
const FIELDS: &[(&str, &str)] = &[
    ("task_struct", "tgid"),
    ("task_struct", "real_parent"),
    ("task_struct", "group_leader"),
    ("task_struct", "mm"),
    ("task_struct", "exit_code"),
    ("task_struct", "signal"),
    ("task_struct", "start_time"),
    ("task_struct", "start_boottime"),
    ("task_struct", "flags"),
    ("signal_struct", "live"),
    ("signal_struct", "flags"),
    ("signal_struct", "group_exit_code"),
    ("mm_struct", "arg_start"),
    ("mm_struct", "arg_end"),
    ("linux_binprm", "filename"),
];

/// Resolves [`Offsets`] from the running kernel's BTF.
pub fn kernel_offsets() -> Result<Offsets, BtfError> {
    offsets_from(Path::new(VMLINUX_BTF))
}

/// Resolves [`Offsets`] from the BTF file at `path`.
pub fn offsets_from(path: &Path) -> Result<Offsets, BtfError> {
    let fields = resolve(path, FIELDS)?;
    let get = |structure: &'static str, member: &'static str| {
        fields
            .get(&(structure, member))
            .copied()
            .ok_or(BtfError::MissingField { structure, member })
    };
    Ok(Offsets {
        task_tgid: get("task_struct", "tgid")?,
        task_real_parent: get("task_struct", "real_parent")?,
        task_group_leader: get("task_struct", "group_leader")?,
        task_mm: get("task_struct", "mm")?,
        task_exit_code: get("task_struct", "exit_code")?,
        task_signal: get("task_struct", "signal")?,
        task_start_time: get("task_struct", "start_time")?,
        signal_live: get("signal_struct", "live")?,
        signal_flags: get("signal_struct", "flags")?,
        signal_group_exit_code: get("signal_struct", "group_exit_code")?,
        mm_arg_start: get("mm_struct", "arg_start")?,
        mm_arg_end: get("mm_struct", "arg_end")?,
        binprm_filename: get("linux_binprm", "filename")?,
        task_flags: get("task_struct", "flags")?,
        task_start_boottime: get("task_struct", "start_boottime")?,
        pad: 0,
    })
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    byte_offset: u32,
}

/// A struct or union we recorded, or a typedef/modifier to follow.
#[derive(Debug)]
enum Recorded {
    Composite(Vec<Member>),
    Alias(u32),
}

#[derive(Clone, Copy)]
struct Header {
    type_start: u64,
    type_len: u64,
    str_start: u64,
    str_len: u64,
}

struct Source<'p> {
    path: &'p Path,
}

impl Source<'_> {
    fn io(&self, source: io::Error) -> BtfError {
        BtfError::Io {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn malformed(&self, what: impl Into<String>) -> BtfError {
        BtfError::Malformed {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }

    /// Opens the file positioned at `offset`. BTF in sysfs is not seekable
    /// everywhere, so we read and discard up to it.
    fn open_at(&self, offset: u64) -> Result<BufReader<File>, BtfError> {
        let file = File::open(self.path).map_err(|e| self.io(e))?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let skipped =
            io::copy(&mut (&mut reader).take(offset), &mut io::sink()).map_err(|e| self.io(e))?;
        if skipped != offset {
            return Err(self.malformed("file shorter than its header says"));
        }
        Ok(reader)
    }

    fn header(&self) -> Result<Header, BtfError> {
        let mut reader = self.open_at(0)?;
        let mut raw = [0u8; HEADER_LEN];
        reader.read_exact(&mut raw).map_err(|e| self.io(e))?;
        let magic = u16::from_ne_bytes([raw[0], raw[1]]);
        if magic != BTF_MAGIC {
            return Err(BtfError::BadMagic {
                path: self.path.to_path_buf(),
                magic,
            });
        }
        let word = |i: usize| {
            u64::from(u32::from_ne_bytes([
                raw[i],
                raw[i + 1],
                raw[i + 2],
                raw[i + 3],
            ]))
        };
        let hdr_len = word(4);
        Ok(Header {
            type_start: hdr_len + word(8),
            type_len: word(12),
            str_start: hdr_len + word(16),
            str_len: word(20),
        })
    }

    /// Pass 1: string offset → wanted name.
    fn name_offsets(
        &self,
        header: Header,
        wanted: &HashSet<&'static str>,
    ) -> Result<HashMap<u32, &'static str>, BtfError> {
        let mut reader = self.open_at(header.str_start)?.take(header.str_len);
        let mut found = HashMap::new();
        let mut offset = 0u64;
        let mut buf = Vec::with_capacity(128);
        loop {
            buf.clear();
            let n = reader.read_until(0, &mut buf).map_err(|e| self.io(e))?;
            if n == 0 {
                break;
            }
            let name = buf.strip_suffix(&[0]).unwrap_or(&buf);
            if let Ok(name) = std::str::from_utf8(name)
                && let Some(w) = wanted.get(name)
            {
                let off = u32::try_from(offset)
                    .map_err(|_| self.malformed("string section too large"))?;
                found.insert(off, *w);
            }
            offset += n as u64;
        }
        Ok(found)
    }

    /// One pass over the type section, recording the structs named in
    /// `struct_names` and the types whose ids are in `ids`.
    fn record_types(
        &self,
        header: Header,
        struct_names: &HashSet<u32>,
        ids: &HashSet<u32>,
        recorded: &mut HashMap<u32, Recorded>,
        roots: &mut HashMap<u32, u32>,
    ) -> Result<(), BtfError> {
        let mut reader = self.open_at(header.type_start)?.take(header.type_len);
        let mut id = 0u32;
        let mut raw = [0u8; TYPE_HEADER_LEN];
        loop {
            match reader.read_exact(&mut raw) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(self.io(e)),
            }
            id += 1;
            let name_off = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let info = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let size_or_type = u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            if kind == 0 || kind > KIND_MAX {
                return Err(self.malformed(format!("type {id} has unknown kind {kind}")));
            }
            let trailing = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            let composite = kind == KIND_STRUCT || kind == KIND_UNION;
            let wanted_root = composite && struct_names.contains(&name_off);
            if composite && (wanted_root || ids.contains(&id)) {
                let mut members = Vec::with_capacity(vlen);
                let mut m = [0u8; 12];
                for _ in 0..vlen {
                    reader.read_exact(&mut m).map_err(|e| self.io(e))?;
                    let word = |i: usize| u32::from_ne_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
                    let bits = if kind_flag {
                        word(8) & 0x00ff_ffff
                    } else {
                        word(8)
                    };
                    members.push(Member {
                        name_off: word(0),
                        type_id: word(4),
                        byte_offset: bits / 8,
                    });
                }
                // The first full definition of a name wins (later ones with
                // the same name would be unrelated duplicates).
                if wanted_root && vlen > 0 {
                    roots.entry(name_off).or_insert(id);
                }
                recorded.insert(id, Recorded::Composite(members));
                continue;
            }
            if ids.contains(&id)
                && matches!(
                    kind,
                    KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                )
            {
                recorded.insert(id, Recorded::Alias(size_or_type));
            }
            io::copy(&mut (&mut reader).take(trailing as u64), &mut io::sink())
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }
}

/// Resolves `(struct, member)` pairs to byte offsets. Missing pairs are
/// absent from the result.
fn resolve(
    path: &Path,
    fields: &[(&'static str, &'static str)],
) -> Result<HashMap<(&'static str, &'static str), u32>, BtfError> {
    let src = Source { path };
    let header = src.header()?;
    let wanted: HashSet<&'static str> = fields.iter().flat_map(|(s, m)| [*s, *m]).collect();
    let names = src.name_offsets(header, &wanted)?;
    let struct_names: HashSet<u32> = names
        .iter()
        .filter(|(_, n)| fields.iter().any(|(s, _)| s == *n))
        .map(|(off, _)| *off)
        .collect();

    let mut recorded = HashMap::new();
    let mut roots = HashMap::new();
    let mut ids = HashSet::new();
    for _ in 0..MAX_PASSES {
        src.record_types(header, &struct_names, &ids, &mut recorded, &mut roots)?;
        // Anonymous members (and aliases) that point at types not seen yet.
        let missing: HashSet<u32> = recorded
            .values()
            .flat_map(|r| match r {
                Recorded::Composite(members) => members
                    .iter()
                    .filter(|m| m.name_off == 0)
                    .map(|m| m.type_id)
                    .collect::<Vec<_>>(),
                Recorded::Alias(target) => vec![*target],
            })
            .filter(|id| !recorded.contains_key(id))
            .collect();
        if missing.is_empty() {
            break;
        }
        ids.extend(missing);
    }

    let mut out = HashMap::new();
    for &(structure, member) in fields {
        let root = names
            .iter()
            .filter(|(_, n)| **n == structure)
            .find_map(|(off, _)| roots.get(off));
        if let Some(&root) = root
            && let Some(offset) = find_member(&recorded, &names, root, member, 0)
        {
            out.insert((structure, member), offset);
        }
    }
    Ok(out)
}

/// Depth-first search for `member` in type `id`, through anonymous members.
fn find_member(
    recorded: &HashMap<u32, Recorded>,
    names: &HashMap<u32, &'static str>,
    id: u32,
    member: &str,
    depth: usize,
) -> Option<u32> {
    if depth > MAX_PASSES {
        return None;
    }
    match recorded.get(&id)? {
        Recorded::Alias(target) => find_member(recorded, names, *target, member, depth + 1),
        Recorded::Composite(members) => members.iter().find_map(|m| {
            if m.name_off == 0 {
                find_member(recorded, names, m.type_id, member, depth + 1)
                    .map(|inner| m.byte_offset + inner)
            } else if names.get(&m.name_off) == Some(&member) {
                Some(m.byte_offset)
            } else {
                None
            }
        }),
    }
}

#[cfg(test)]
mod tests;
