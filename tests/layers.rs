//! The house rule (ARCHITECTURE.md, "Layers"): every module uses only modules of its own layer
//! or of layers below it, and no modules depend on each other in a circle.
//!
//! This reads the crate's own source: every `crate::…` path (and `super::…` path that leaves a
//! module) outside `#[cfg(test)]` code is an edge from the file's unit to the unit it names. A
//! unit is one module of `face`, `daemon` or `base` (`base::pg`), or one whole single-module
//! layer (`config`, `items`, …). The test fails on an edge that goes up a layer, on a cycle
//! between units, and on production code that reaches test-only code.
//!
//! `cargo test --test layers -- --nocapture` prints the graph (`scripts/module-graph` does it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom. A unit may use its own layer and any layer after it in this list.
const LAYERS: &[(&str, &[&str])] = &[
    ("face", &["face"]),
    ("daemon", &["daemon"]),
    ("run", &["runner"]),
    ("config", &["config"]),
    ("deliver", &["notify"]),
    ("store", &["store"]),
    ("report", &["report"]),
    ("items", &["items"]),
    ("base", &["base"]),
];

/// Top-level modules split into one unit per child module (their folder is a layer).
const FOLDER_LAYERS: &[&str] = &["face", "daemon", "base"];

/// Names at the crate root that are not modules: `#[macro_export]` macros (defined in
/// `base::failpoints`) and the build constants in lib.rs.
fn root_alias(name: &str) -> Option<&'static str> {
    match name {
        "failpoint" | "failpoint_async" => Some("base::failpoints"),
        "GIT_COMMIT" | "VERSION" => Some("lib"),
        _ => None,
    }
}

fn layer_of(unit: &str) -> Option<usize> {
    if unit == "lib" {
        return Some(LAYERS.len()); // constants only; below everything
    }
    let top = unit.split("::").next().unwrap();
    LAYERS.iter().position(|(_, mods)| mods.contains(&top))
}

/// `src/base/pg.rs` → `["base", "pg"]`; `src/items/mod.rs` → `["items"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn unit_of(path: &[String]) -> String {
    match path.first() {
        None => "lib".to_string(),
        Some(top) if FOLDER_LAYERS.contains(&top.as_str()) => match path.get(1) {
            Some(child) => format!("{top}::{child}"),
            None => top.clone(),
        },
        Some(top) => top.clone(),
    }
}

/// The file's text without `#[cfg(test)]` items (brace-matched) and without comments.
fn production_text(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("#[cfg(test)]") {
            // Skip the next item: up to the end of its first balanced `{ … }` or a `;`.
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                for c in l.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every `crate::a::b` and `super::…::x` path in `text`, resolved to a module path (as far as
/// it names modules; the tail may be an item, which `unit_of` ignores beyond two segments).
fn referenced_paths(text: &str, here: &[String], is_mod_rs: bool) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let boundary = i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':');
        let (kind, skip) = if boundary && rest.starts_with(b"crate::") {
            ("crate", 7)
        } else if boundary && rest.starts_with(b"super::") {
            ("super", 0)
        } else {
            i += 1;
            continue;
        };
        let mut j = i + skip;
        let mut segs: Vec<String> = Vec::new();
        loop {
            let s = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            if s == j {
                break;
            }
            segs.push(text[s..j].to_string());
            if bytes[j..].starts_with(b"::") {
                j += 2;
            } else {
                break;
            }
        }
        i = j.max(i + 1);
        let resolved = if kind == "crate" {
            if let Some(first) = segs.first() {
                if let Some(alias) = root_alias(first) {
                    alias.split("::").map(String::from).collect()
                } else {
                    segs
                }
            } else {
                continue;
            }
        } else {
            // `super` is the parent of the module this file defines (for mod.rs and for
            // plain files alike, since the file is the module).
            let mut base: Vec<String> = here.to_vec();
            let _ = is_mod_rs;
            let mut rest = segs.as_slice();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            base
        };
        found.push(resolved);
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

struct Graph {
    /// unit → (unit it uses → a file that uses it, for the message)
    edges: BTreeMap<String, BTreeMap<String, String>>,
    /// production code that names a `tests` module
    test_reach: Vec<String>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut test_reach = Vec::new();
    for file in &files {
        if file.ends_with("main.rs") {
            continue; // the binary: calls face::cli::main, outside the library
        }
        let here = module_path(&src, file);
        let from = unit_of(&here);
        let text = production_text(&std::fs::read_to_string(file).unwrap());
        let is_mod_rs = file.ends_with("mod.rs");
        let rel = file.strip_prefix(&src).unwrap().display().to_string();
        edges.entry(from.clone()).or_default();
        for path in referenced_paths(&text, &here, is_mod_rs) {
            if path.iter().any(|s| s == "tests") {
                test_reach.push(format!("src/{rel} uses {}", path.join("::")));
            }
            let to = unit_of(&path);
            if to != from && layer_of(&to).is_some() {
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| format!("src/{rel}"));
            }
        }
    }
    Graph { edges, test_reach }
}

/// Strongly connected components with more than one unit (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct St<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(st: &mut St<'a>, v: &'a str) {
        st.index.insert(v, st.next);
        st.low.insert(v, st.next);
        st.next += 1;
        st.stack.push(v);
        st.on.insert(v);
        if let Some(ws) = st.edges.get(v) {
            for w in ws.keys() {
                let w = w.as_str();
                if !st.index.contains_key(w) {
                    visit(st, w);
                    let l = st.low[w].min(st.low[v]);
                    st.low.insert(v, l);
                } else if st.on.contains(w) {
                    let l = st.index[w].min(st.low[v]);
                    st.low.insert(v, l);
                }
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = st.stack.pop().unwrap();
                st.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = St {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !st.index.contains_key(v.as_str()) {
            visit(&mut st, v);
        }
    }
    st.out
}

#[test]
fn graph_prints_and_every_unit_has_a_layer() {
    let g = graph();
    let mut unknown = Vec::new();
    let mut units: Vec<(&String, &BTreeMap<String, String>)> = g.edges.iter().collect();
    units.sort_by_key(|(u, _)| (layer_of(u).unwrap_or(usize::MAX), u.to_string()));
    for (from, tos) in units {
        let lf = layer_of(from);
        if lf.is_none() {
            unknown.push(from.clone());
        }
        let name = match lf {
            Some(l) if l == LAYERS.len() => "root",
            Some(l) => LAYERS[l].0,
            None => "-",
        };
        let list: Vec<&str> = tos.keys().map(String::as_str).collect();
        println!("[{name:7}] {from} -> {}", list.join(", "));
    }
    assert!(
        unknown.is_empty(),
        "modules in no layer (add them to LAYERS in tests/layers.rs and ARCHITECTURE.md): {unknown:?}"
    );
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let g = graph();
    let mut upward = Vec::new();
    for (from, tos) in &g.edges {
        let Some(lf) = layer_of(from) else { continue };
        for (to, file) in tos {
            let lt = layer_of(to).unwrap();
            if lt < lf {
                upward.push(format!(
                    "{file}: {from} ({}) uses {to} ({})",
                    LAYERS[lf.min(LAYERS.len() - 1)].0,
                    LAYERS[lt].0
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "{} upward dependencies (ARCHITECTURE.md, Layers):\n{}",
        upward.len(),
        upward.join("\n")
    );
}

#[test]
fn no_module_cycles() {
    let g = graph();
    let found = cycles(&g.edges);
    assert!(found.is_empty(), "module cycles: {found:?}");
}

#[test]
fn production_code_does_not_reach_test_code() {
    let g = graph();
    assert!(
        g.test_reach.is_empty(),
        "test-only code used outside #[cfg(test)]:\n{}",
        g.test_reach.join("\n")
    );
}

/// The checker itself: an upward edge and a cycle in a made-up crate are found.
#[test]
fn checker_finds_upward_edges_and_cycles() {
    let here: Vec<String> = vec!["items".into(), "log_scan".into()];
    let text = production_text(
        "use crate::store::Store;\n#[cfg(test)]\nmod tests {\n use crate::face::cli;\n}\nfn f() { super::Outcome::x(); crate::failpoint!(\"a\"); }\n",
    );
    let paths = referenced_paths(&text, &here, false);
    let units: Vec<String> = paths.iter().map(|p| unit_of(p)).collect();
    assert_eq!(units, vec!["store", "items", "base::failpoints"]);
    assert!(layer_of("store").unwrap() < layer_of("items").unwrap());

    let mut e: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    e.entry("a".into())
        .or_default()
        .insert("b".into(), "f".into());
    e.entry("b".into())
        .or_default()
        .insert("c".into(), "f".into());
    e.entry("c".into())
        .or_default()
        .insert("a".into(), "f".into());
    e.entry("d".into())
        .or_default()
        .insert("a".into(), "f".into());
    assert_eq!(cycles(&e), vec![vec!["a", "b", "c"]]);
}
