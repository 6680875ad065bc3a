//! The crate's modules form layers, and no two files import each other.
//!
//! Each top-level module may use only the modules below it (docs/
//! ARCHITECTURE.md, "Layers"); within a folder, no two files depend on each
//! other. Read from the sources, so a new `use` that breaks either fails
//! here, without root.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Bottom first. A module may use those before it (and itself).
const LAYERS: &[&[&str]] = &[
    &["errors", "alloc"],
    &["limits"],
    &["events"],
    &["observe"],
    &["govern"],
    &["policy"],
    &["pressure"],
    &["daemon"],
    &["cli"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments and its test module.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    let text = text
        .split("\n#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment after each `PREFIX::` in `code`, including the
/// top-level items of `PREFIX::{a, b::c, d::{e}}` groups.
fn used(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let needle = format!("{prefix}::");
    let mut rest = code;
    while let Some(i) = rest.find(&needle) {
        let before = rest[..i].chars().last();
        rest = &rest[i + needle.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            let mut at_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_start = true,
                    c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => {
                        item.push(c);
                    }
                    _ if !item.is_empty() => {
                        out.insert(std::mem::take(&mut item));
                        at_start = false;
                    }
                    _ => {}
                }
            }
            if !item.is_empty() {
                out.insert(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// The top-level module a file belongs to.
fn top_module(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn each_module_uses_only_the_layers_below_it() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let module = top_module(file);
        if ["lib", "main"].contains(&module.as_str()) {
            continue;
        }
        let own = layer_of(&module).unwrap_or_else(|| panic!("{module} is in no layer"));
        for dep in used(&code(file), "crate") {
            let Some(theirs) = layer_of(&dep) else {
                continue; // a re-exported item, not a module
            };
            if theirs > own {
                wrong.push(format!("{} uses crate::{dep}", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

/// A crate's files as modules: module path (`["govern", "plan"]`; the
/// crate root is `[]`) to file.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let rel = file.strip_prefix(src).unwrap();
            let mut path: Vec<String> = rel
                .components()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_string()
                })
                .collect();
            if matches!(
                path.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                path.pop();
            }
            (path, file)
        })
        .collect()
}

/// Every path after `crate::`, `super::` (any number) or `self::` in
/// `code`, as written from its first segment, each group item spelled out
/// (`crate::{a::b, c::{d, e}}` gives `crate::a::b`, `crate::c::d` and
/// `crate::c::e`).
fn paths(code: &str) -> Vec<Vec<String>> {
    fn ident(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }
    /// Parses one path (with groups) at the start of `s` after `prefix`.
    fn parse(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
        let mut path = prefix.to_vec();
        let mut i = 0;
        let b = s.as_bytes();
        loop {
            let name: String = s[i..].chars().take_while(|c| ident(*c)).collect();
            if !name.is_empty() {
                i += name.len();
                path.push(name);
                if s[i..].starts_with("::") {
                    i += 2;
                    continue;
                }
                out.push(path);
                return i;
            }
            if b.get(i) == Some(&b'{') {
                i += 1;
                loop {
                    while b
                        .get(i)
                        .is_some_and(|c| c.is_ascii_whitespace() || *c == b',')
                    {
                        i += 1;
                    }
                    if b.get(i).is_none_or(|c| *c == b'}') {
                        return i + 1;
                    }
                    let before = i;
                    i += parse(&s[i..], &path, out);
                    // `self` in a group, `as` renames: skip to the next item.
                    while b.get(i).is_some_and(|c| *c != b',' && *c != b'}') {
                        i += 1;
                    }
                    if i == before {
                        i += 1;
                    }
                }
            }
            if path.len() > prefix.len() {
                out.push(path);
            }
            return i;
        }
    }
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = ["crate::", "super::", "self::"]
        .iter()
        .filter_map(|n| rest.find(n))
        .min()
    {
        let before = rest[..i].chars().last();
        rest = &rest[i..];
        if before.is_some_and(|c| ident(c) || c == ':') {
            let skip = rest.find("::").unwrap() + 2;
            rest = &rest[skip..];
            continue;
        }
        let mut prefix = Vec::new();
        while let Some(word) = ["crate", "super", "self"]
            .into_iter()
            .find(|w| rest.starts_with(&format!("{w}::")))
        {
            prefix.push(word.to_string());
            rest = &rest[word.len() + 2..];
        }
        let used = parse(rest, &prefix, &mut out);
        rest = &rest[used.max(1).min(rest.len())..];
    }
    out
}

/// The module a path written in module `from` names: the longest prefix of
/// it that is a module (a file) of the crate, else the module it starts
/// from (an item of that module).
fn resolve(mods: &BTreeMap<Vec<String>, PathBuf>, from: &[String], path: &[String]) -> Vec<String> {
    let mut base: Vec<String> = Vec::new();
    let mut rest = path;
    while let Some((first, tail)) = rest.split_first() {
        match first.as_str() {
            "crate" => base.clear(),
            "self" if base.is_empty() => base = from.to_vec(),
            "super" => {
                if base.is_empty() {
                    base = from.to_vec();
                }
                base.pop();
            }
            _ => break,
        }
        rest = tail;
    }
    let mut best = base.clone();
    let mut probe = base;
    for segment in rest {
        probe.push(segment.clone());
        if mods.contains_key(&probe) {
            best.clone_from(&probe);
        } else {
            break;
        }
    }
    best
}

/// The crate's module graph from its `crate::`/`super::`/`self::` paths:
/// module to the modules it names (itself and the crate root left out —
/// the root declares the modules and uses each by a relative path).
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mods = modules(src);
    mods.iter()
        .map(|(module, file)| {
            let deps = paths(&code(file))
                .iter()
                .map(|p| resolve(&mods, module, p))
                .filter(|d| d != module && !d.is_empty())
                .collect();
            (module.clone(), deps)
        })
        .collect()
}

/// The import cycles of a graph: its strongly connected components of
/// more than one module (Tarjan), each sorted, as `a -> b -> c`.
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        found: Vec<String>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a Vec<String>) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let Some((w, _)) = self.graph.get_key_value(w) else {
                    continue;
                };
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.join("::"));
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component.join(" -> "));
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found
}

/// No two files of either crate reach each other through any chain of
/// `crate::`, `super::` or `self::` paths: every import cycle, of any
/// length, in `ffrtmp/src` and `xtask/src` fails here.
#[test]
fn no_import_cycle_in_ffrtmp_or_xtask() {
    let xtask = src().parent().unwrap().parent().unwrap().join("xtask/src");
    let mut found = Vec::new();
    for dir in [src(), xtask] {
        for cycle in cycles(&graph(&dir)) {
            found.push(format!("{}: {cycle}", dir.display()));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

/// The cycle check finds a cycle of three files, one through `super::`
/// and a group, and none in the same tree once the cycle is broken.
#[test]
fn the_cycle_check_finds_a_cycle_of_any_length() {
    let dir = std::env::temp_dir().join(format!("ffrtmp-layers-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("b")).unwrap();
    let write = |f: &str, text: &str| fs::write(dir.join(f), text).unwrap();
    write("lib.rs", "mod a;\nmod b;\n");
    write("a.rs", "use crate::b::{c::Thing, Other};\n");
    write("b/mod.rs", "pub mod c;\npub struct Other;\n");
    write(
        "b/c.rs",
        "pub struct Thing;\nfn f() { super::super::a::g(); }\n",
    );
    let found = cycles(&graph(&dir));
    assert_eq!(found, ["a -> b::c"], "{:?}", graph(&dir));
    write("b/c.rs", "pub struct Thing;\nfn f() { super::Other; }\n");
    write(
        "b/mod.rs",
        "pub mod c;\npub struct Other;\nfn g() { crate::a::h(); }\n",
    );
    assert_eq!(
        cycles(&graph(&dir)),
        ["a -> b -> b::c"],
        "a cycle through b's mod.rs"
    );
    write("b/mod.rs", "pub mod c;\npub struct Other;\n");
    assert!(cycles(&graph(&dir)).is_empty(), "{:?}", graph(&dir));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn paths_are_read_whole_from_groups_and_chains() {
    let code = "use crate::{errors::chain, events::{self, Event}};\nuse super::super::x::Y;\nlet a = self::b::c();";
    let got: Vec<String> = paths(code).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        got,
        [
            "crate::errors::chain",
            "crate::events::self",
            "crate::events::Event",
            "super::super::x::Y",
            "self::b::c"
        ]
    );
}

#[test]
fn the_scanner_finds_grouped_and_nested_uses() {
    let code = "use crate::{\n    errors::chain,\n    events::{self, Event},\n    limits::JobId,\n};\nlet x = crate::govern::privileged();";
    let found: Vec<String> = used(code, "crate").into_iter().collect();
    assert_eq!(found, ["errors", "events", "govern", "limits"]);
}
