//! The layout rules of `hub/src` (ARCHITECTURE.md, "hub/"), read from the source: no import
//! cycle between modules nor between rooms, `api` imported only by `serve`, `state` importing
//! none of the rooms that use it, and no file over 600 lines. Function length is clippy's
//! (`too_many_lines`, denied in lib.rs and main.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 600;

/// Every module file of the library (`main.rs` and `cli/` are the binary: they see the library
/// as `hub::`), by module path (`""` for lib.rs, `"repo::layout"`), with its non-test text.
struct Source {
    modules: BTreeMap<String, String>,
    lines: BTreeMap<PathBuf, usize>,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_path(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap();
    match file.as_str() {
        "lib.rs" | "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    parts.join("::")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without comments, string contents, and anything from the first `#[cfg(test)]` on
/// (test modules sit at the end of their file).
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap();
        let mut in_string = false;
        let mut escaped = false;
        for c in code.chars() {
            match (in_string, c) {
                (true, _) if escaped => escaped = false,
                (true, '\\') => escaped = true,
                (_, '"') => in_string = !in_string,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

fn read_source() -> Source {
    let src = src_dir();
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut modules = BTreeMap::new();
    let mut lines = BTreeMap::new();
    let mut test_only = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        lines.insert(rel.to_owned(), text.lines().count());
        if rel == Path::new("main.rs") || rel.starts_with("cli") {
            continue;
        }
        let module = module_path(rel);
        // `#[cfg(test)] mod x;` declares a test-only file.
        let mut previous = "";
        for line in text.lines() {
            let line = line.trim();
            if previous == "#[cfg(test)]" {
                if let Some(name) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) {
                    test_only.insert(join(&module, name));
                }
            }
            previous = line;
        }
        modules.insert(module, code_of(&text));
    }
    modules.retain(|m, _| !test_only.contains(m));
    Source { modules, lines }
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else {
        format!("{base}::{name}")
    }
}

fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map_or(String::new(), |(p, _)| p.to_owned())
}

/// The modules `code` (of module `at`) names through `crate::`, `super::` or `self::` paths: each
/// path goes to the longest module prefix it names.
fn references(code: &str, at: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for start in ["crate::", "super::", "self::"] {
        for (i, _) in code.match_indices(start) {
            if i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':') {
                continue;
            }
            let mut segments: Vec<&str> = Vec::new();
            let mut rest = &code[i + start.len()..];
            assert!(
                !rest.starts_with('{'),
                "{at}: a grouped `{start}{{..}}` import: extend this test's reader"
            );
            loop {
                let end = rest.bytes().position(|c| !ident(c)).unwrap_or(rest.len());
                segments.push(&rest[..end]);
                match rest[end..].strip_prefix("::") {
                    Some(next) if next.starts_with(|c: char| c.is_alphanumeric() || c == '_') => {
                        rest = next
                    }
                    _ => break,
                }
            }
            // `super` is relative to the module, whatever file holds it.
            let mut base = match start {
                "crate::" => String::new(),
                "super::" => parent(at),
                _ => at.to_owned(),
            };
            let mut target = base.clone();
            for segment in segments {
                base = join(&base, segment);
                if modules.contains(&base) {
                    target = base.clone();
                } else {
                    break;
                }
            }
            if target != at {
                out.insert(target);
            }
        }
    }
    out
}

fn graph(source: &Source) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeSet<String> = source.modules.keys().cloned().collect();
    source
        .modules
        .iter()
        .map(|(m, code)| (m.clone(), references(code, m, &names)))
        .collect()
}

/// A cycle in `edges`, if there is one, as the path around it.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|n| n == node).unwrap();
                let mut found = stack[from..].to_vec();
                found.push(node.to_owned());
                return Some(found);
            }
            _ => {}
        }
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, state, stack) {
                return Some(found);
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut state, &mut Vec::new()))
}

/// The room of a module: its top-level folder, or the root file it is.
fn room(module: &str) -> &str {
    module.split("::").next().unwrap()
}

fn room_graph(modules: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut rooms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in modules {
        if from.is_empty() {
            continue; // lib.rs declares and re-exports
        }
        let entry = rooms.entry(room(from).to_owned()).or_default();
        for to in targets {
            if !to.is_empty() && room(to) != room(from) {
                entry.insert(room(to).to_owned());
            }
        }
    }
    rooms
}

#[test]
fn no_import_cycle_between_modules() {
    let modules = graph(&read_source());
    assert!(modules.len() > 40, "{:?}", modules.keys());
    assert!(modules["backup::create"].contains("repo::layout"));
    assert!(modules["catalog::backups"].contains("catalog::conn"));
    if let Some(found) = cycle(&modules) {
        panic!("import cycle between modules: {}", found.join(" -> "));
    }
}

#[test]
fn no_import_cycle_between_rooms_and_api_only_under_serve() {
    let rooms = room_graph(&graph(&read_source()));
    if let Some(found) = cycle(&rooms) {
        panic!("import cycle between rooms: {}", found.join(" -> "));
    }
    let importers: Vec<&String> = rooms
        .iter()
        .filter(|(from, to)| to.contains("api") && from.as_str() != "serve")
        .map(|(from, _)| from)
        .collect();
    assert!(importers.is_empty(), "api imported by {importers:?}");
    // `state` holds what every room shares and imports none of the rooms that use it.
    for domain in [
        "backup",
        "repo",
        "inventory",
        "restore",
        "api",
        "startup",
        "serve",
    ] {
        assert!(!rooms["state"].contains(domain), "state imports {domain}");
    }
}

#[test]
fn no_file_over_the_limit() {
    let long: Vec<_> = read_source()
        .lines
        .into_iter()
        .filter(|(_, n)| *n > MAX_FILE_LINES)
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines: {long:?}"
    );
}

/// The reader sees what it must: a cycle made up in text is found.
#[test]
fn the_reader_finds_a_made_up_cycle() {
    let names: BTreeSet<String> = ["a", "a::x", "b"].map(String::from).into();
    let a = references("use crate::b::Thing; super::x::f();", "a::x", &names);
    assert_eq!(a, ["b"].map(String::from).into());
    let in_string = references(&code_of("let s = \"crate::b\"; // crate::b"), "a", &names);
    assert!(in_string.is_empty(), "{in_string:?}");
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), ["b".to_owned()].into()),
        ("b".to_owned(), ["a::x".to_owned()].into()),
        ("a::x".to_owned(), ["a".to_owned()].into()),
    ]
    .into();
    assert_eq!(cycle(&edges).unwrap(), ["a", "b", "a::x", "a"]);
    assert!(room_graph(&edges)["b"].contains("a"));
}
