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

#[test]
fn no_two_files_of_a_folder_use_each_other() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    // folder -> file module -> sibling modules it uses through `super::`
    let mut uses: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        if name == "mod" || name == "lib" || name == "main" {
            continue;
        }
        let folder = file.parent().unwrap().to_path_buf();
        let deps = used(&code(file), "super");
        uses.entry(folder).or_default().insert(name, deps);
    }
    let mut cycles = Vec::new();
    for (folder, modules) in &uses {
        for (a, deps) in modules {
            for b in deps {
                if a < b && modules.get(b).is_some_and(|d| d.contains(a)) {
                    cycles.push(format!("{}: {a} <-> {b}", folder.display()));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files that use each other:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_scanner_finds_grouped_and_nested_uses() {
    let code = "use crate::{\n    errors::chain,\n    events::{self, Event},\n    limits::JobId,\n};\nlet x = crate::govern::privileged();";
    let found: Vec<String> = used(code, "crate").into_iter().collect();
    assert_eq!(found, ["errors", "events", "govern", "limits"]);
}
