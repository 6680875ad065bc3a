use super::*;

#[test]
fn resolves_every_offset_from_the_running_kernel() {
    let path = Path::new(VMLINUX_BTF);
    if !path.exists() {
        // Straight to stderr, past libtest's capture: `cargo xtask test`
        // counts this test as skipped, not passed.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!(
                "SKIP resolves_every_offset_from_the_running_kernel: {VMLINUX_BTF} does not exist on this machine\n"
            ),
        );
        return;
    }
    let off = offsets_from(path).expect("offsets from the running kernel's BTF");
    // Layout facts that hold on every kernel we support: the fields are
    // distinct, word-aligned where they are pointers, and `arg_end`
    // directly follows `arg_start`.
    assert_eq!(off.mm_arg_end, off.mm_arg_start + 8);
    for ptr in [
        off.task_real_parent,
        off.task_group_leader,
        off.task_mm,
        off.task_signal,
    ] {
        assert_eq!(ptr % 8, 0, "pointer field offsets are 8-aligned: {off:?}");
    }
    assert_ne!(off.task_real_parent, off.task_group_leader);
    assert!(
        off.task_tgid > 0 && off.signal_live > 0 && off.binprm_filename > 0,
        "{off:?}"
    );
}

#[test]
fn rejects_a_file_that_is_not_btf() {
    let dir = std::env::temp_dir().join(format!("ffrtmp-btf-{}", std::process::id()));
    std::fs::write(&dir, b"not btf at all, but long enough for a header").unwrap();
    let err = offsets_from(&dir).unwrap_err();
    std::fs::remove_file(&dir).ok();
    assert!(matches!(err, BtfError::BadMagic { .. }), "{err}");
}

/// Builds BTF the way the kernel lays it out, for fixtures that test
/// the resolver beyond the running kernel's own layout.
struct Fixture {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

const KIND_PTR: u32 = 2;

impl Fixture {
    fn new() -> Self {
        Fixture {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    /// Its offset in the string section, each name once (as the
    /// kernel deduplicates them).
    fn name(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let mut off = 0;
        for s in self.strings.split(|&c| c == 0) {
            if s == name.as_bytes() {
                return off;
            }
            off += s.len() as u32 + 1;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_ne_bytes());
        }
    }

    /// A type header; returns its id.
    fn header(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size: u32) -> u32 {
        let name = self.name(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        self.words(&[name, info, size]);
        self.next_id += 1;
        self.next_id - 1
    }

    fn int(&mut self, name: &str, bytes: u32) -> u32 {
        let id = self.header(name, KIND_INT, 0, false, bytes);
        self.words(&[bytes * 8]);
        id
    }

    fn pointer(&mut self, to: u32) -> u32 {
        self.header("", KIND_PTR, 0, false, to)
    }

    fn alias(&mut self, name: &str, kind: u32, to: u32) -> u32 {
        self.header(name, kind, 0, false, to)
    }

    /// A struct or union: (member name, type id, offset word).
    fn composite(
        &mut self,
        kind: u32,
        name: &str,
        kind_flag: bool,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let id = self.header(name, kind, members.len() as u32, kind_flag, 64);
        for &(member, ty, offset) in members {
            let member = self.name(member);
            self.words(&[member, ty, offset]);
        }
        id
    }

    /// Kinds the resolver must step over: an enum and a function type.
    fn noise(&mut self, int: u32) {
        self.header("noise_enum", KIND_ENUM, 2, false, 4);
        let a = self.name("A");
        let b = self.name("B");
        self.words(&[a, 0, b, 1]);
        self.header("", KIND_FUNC_PROTO, 1, false, int);
        self.words(&[0, int]);
        self.header("noise_array", KIND_ARRAY, 0, false, 0);
        self.words(&[int, int, 16]);
    }

    fn write(self, path: &Path) {
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]); // version, flags
        for w in [
            HEADER_LEN as u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        std::fs::write(path, out).unwrap();
    }
}

/// The kernel's structs as a synthetic BTF file: the fields the programs
/// read sit after bitfields (a struct with `kind_flag`, whose offsets
/// carry the bitfield size in their top byte), inside anonymous members
/// nested two deep, and behind a chain of const and typedefs; decoys
/// (a forward declaration, a later duplicate, a same-named member of
/// another struct) must not be taken instead. `skip_member` leaves one
/// field out.
fn synthetic(path: &Path, skip_member: Option<&str>) {
    let mut b = Fixture::new();
    let int = b.int("int", 4);
    let ptr = b.pointer(int);
    b.noise(int);
    let keep = |m: &str| skip_member != Some(m);
    // A forward declaration of task_struct before the real one.
    b.composite(KIND_STRUCT, "task_struct", false, &[]);
    // tgid and real_parent in an anonymous struct inside an anonymous union.
    let inner = b.composite(
        KIND_STRUCT,
        "",
        false,
        &[("tgid", int, 0), ("real_parent", ptr, 64)],
    );
    let union = b.composite(KIND_UNION, "", false, &[("", inner, 0), ("other", int, 0)]);
    let bits = |size: u32, bit: u32| (size << 24) | bit;
    let mut task = vec![
        ("in_execve", int, bits(1, 0)),
        ("in_iowait", int, bits(1, 1)),
        ("", union, bits(0, 64 * 8)),
        ("group_leader", ptr, bits(0, 96 * 8)),
        ("mm", ptr, bits(0, 104 * 8)),
        // A full-width bitfield: its size sits in the offset's top byte.
        ("exit_code", int, bits(32, 112 * 8)),
        ("signal", ptr, bits(0, 120 * 8)),
        ("start_time", int, bits(0, 128 * 8)),
        ("start_boottime", int, bits(0, 136 * 8)),
        ("flags", int, bits(0, 44 * 8)),
    ];
    task.retain(|(m, _, _)| keep(m));
    b.composite(KIND_STRUCT, "task_struct", true, &task);
    // A later, unrelated struct of the same name.
    b.composite(KIND_STRUCT, "task_struct", false, &[("tgid", int, 8)]);
    b.composite(KIND_STRUCT, "unrelated", false, &[("live", int, 800)]);
    b.composite(
        KIND_STRUCT,
        "signal_struct",
        false,
        &[
            ("live", int, 4 * 8),
            ("flags", int, 12 * 8),
            ("group_exit_code", int, 16 * 8),
        ],
    );
    // mm_struct's args: anonymous member -> const -> typedef -> typedef -> struct.
    let args = b.composite(
        KIND_STRUCT,
        "",
        false,
        &[("arg_start", int, 0), ("arg_end", int, 8 * 8)],
    );
    let t1 = b.alias("mm_args_t", KIND_TYPEDEF, args);
    let t2 = b.alias("mm_args_alias_t", KIND_TYPEDEF, t1);
    let c = b.alias("", KIND_CONST, t2);
    b.composite(
        KIND_STRUCT,
        "mm_struct",
        false,
        &[("pgd", ptr, 0), ("", c, 200 * 8)],
    );
    b.composite(
        KIND_STRUCT,
        "linux_binprm",
        false,
        &[("vma", ptr, 0), ("filename", ptr, 72 * 8)],
    );
    b.write(path);
}

#[test]
fn resolves_bitfields_nested_anonymous_members_and_typedef_chains() {
    let path = std::env::temp_dir().join(format!("ffrtmp-btf-fixture-{}", std::process::id()));
    synthetic(&path, None);
    let off = offsets_from(&path);
    std::fs::remove_file(&path).ok();
    let off = off.expect("offsets from the fixture");
    assert_eq!(
        off,
        Offsets {
            task_tgid: 64,
            task_real_parent: 72,
            task_group_leader: 96,
            task_mm: 104,
            task_exit_code: 112,
            task_signal: 120,
            task_start_time: 128,
            signal_live: 4,
            signal_flags: 12,
            signal_group_exit_code: 16,
            mm_arg_start: 200,
            mm_arg_end: 208,
            binprm_filename: 72,
            task_flags: 44,
            task_start_boottime: 136,
            pad: 0,
        }
    );
}

#[test]
fn a_missing_field_is_named() {
    let path = std::env::temp_dir().join(format!("ffrtmp-btf-missing-{}", std::process::id()));
    synthetic(&path, Some("start_boottime"));
    let err = offsets_from(&path).unwrap_err();
    std::fs::remove_file(&path).ok();
    assert!(
        matches!(
            err,
            BtfError::MissingField {
                structure: "task_struct",
                member: "start_boottime"
            }
        ),
        "{err}"
    );
}
