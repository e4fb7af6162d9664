//! The agent's modules import each other without a cycle, and the connection to the
//! master does not reach into the task side.
//!
//! The graph is read from the sources: every `crate::…` and `super::…` path outside
//! comments and in-file test modules, and every path through a child module the file
//! declares (`mod x;` … `x::…`), is an edge to the longest module that path names.
//! `lib.rs` (which declares every module) and `src/bin` are not part of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// `tasks/launch.rs` → `tasks::launch`, `tasks/mod.rs` → `tasks`.
fn module_name(relative: &Path) -> String {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_end_matches(".rs").to_string();
    }
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its trailing test module.
fn code_of(source: &str) -> String {
    let source = match source.find("#[cfg(test)]") {
        Some(i) => &source[..i],
        None => source,
    };
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else if rest.starts_with('"') {
            // Skip string literals (a URL's `//` is not a comment).
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            rest = rest.get(i + 1..).unwrap_or("");
            out.push_str("\"\"");
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The full paths (segments) named by the path expression at the start of `text`,
/// expanding `{a::b, c}` groups; `prefix` is what precedes it.
fn expand(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
    let mut segments = prefix.to_vec();
    let mut rest = text.trim_start();
    loop {
        let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if len == 0 {
            if let Some(group) = rest.strip_prefix('{') {
                for item in split_group(group) {
                    expand(&segments, item, out);
                }
                return;
            }
            break;
        }
        segments.push(rest[..len].to_string());
        rest = &rest[len..];
        match rest.strip_prefix("::") {
            Some(after) => rest = after.trim_start(),
            None => break,
        }
    }
    out.push(segments);
}

/// The comma-separated items of a `{…}` group (nested groups kept whole).
fn split_group(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

/// The modules `module` (whose code is `code`) imports, among `known`.
fn dependencies(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let own: Vec<String> = module.split("::").map(str::to_string).collect();
    let parent: Vec<String> = own[..own.len().saturating_sub(1)].to_vec();
    // Child modules declared here (`mod x;`), reachable as `x::…`.
    let children: Vec<String> = code
        .split(';')
        .filter_map(|s| {
            let s = s.trim();
            let s = s.strip_prefix("pub ").unwrap_or(s).trim_start();
            let name = s.strip_prefix("mod ")?.trim();
            name.chars().all(is_ident).then(|| name.to_string())
        })
        .collect();
    let mut paths = Vec::new();
    for (i, _) in code.match_indices("::") {
        // The identifier just before this `::`, at the start of a path.
        let before = &code[..i];
        let start = before.rfind(|c: char| !is_ident(c)).map_or(0, |j| {
            j + before[j..].chars().next().map_or(1, char::len_utf8)
        });
        let first = &before[start..];
        if before[..start].ends_with("::") || first.is_empty() {
            continue;
        }
        let mut rest = &code[i + 2..];
        let base: Vec<String> = match first {
            "crate" => Vec::new(),
            "super" => {
                let mut base = parent.clone();
                while let Some(after) = rest.trim_start().strip_prefix("super::") {
                    base.pop();
                    rest = after;
                }
                base
            }
            name if children.iter().any(|c| c == name) => {
                let mut b = own.clone();
                b.push(name.to_string());
                expand(&b, rest, &mut paths);
                continue;
            }
            _ => continue,
        };
        expand(&base, rest, &mut paths);
    }
    let mut out = BTreeSet::new();
    for segments in paths {
        let target = (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| known.contains(m));
        if let Some(target) = target
            && target != module
        {
            out.insert(target);
        }
    }
    out
}

/// The import graph of the modules whose (module name, source) are given.
fn import_graph(sources: &[(String, String)]) -> Graph {
    let known: BTreeSet<String> = sources.iter().map(|(m, _)| m.clone()).collect();
    sources
        .iter()
        .map(|(m, s)| (m.clone(), dependencies(m, &code_of(s), &known)))
        .collect()
}

/// A cycle of the graph (first module repeated at the end), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let from = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Visiting);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// Every module of `agent/src` but `lib.rs` and `bin/`, with its source.
fn agent_sources() -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            if path.is_dir() {
                if relative != Path::new("bin") {
                    walk(root, &path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") && relative != Path::new("lib.rs")
            {
                let source = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((module_name(&relative), source));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out
}

fn show(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            format!("{m} -> {}\n", deps.join(", "))
        })
        .collect()
}

#[test]
fn agent_modules_import_each_other_without_a_cycle() {
    let graph = import_graph(&agent_sources());
    eprintln!("{}", show(&graph));
    // The reader sees the imports (or this test would pass on anything).
    for (module, dependency) in [
        ("agent", "tasks::launch"),
        ("tasks::launch", "state"),
        ("tasks::launch", "tasks"),
        ("status_updates", "status_updates::queue"),
        ("store", "paths"),
    ] {
        assert!(
            graph.get(module).is_some_and(|d| d.contains(dependency)),
            "{module} should import {dependency}:\n{}",
            show(&graph)
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the agent's modules import each other in a cycle: {}\n{}",
            cycle.join(" -> "),
            show(&graph)
        );
    }
}

/// The connection hands the master's commands over a channel: it knows neither the
/// task side nor the agent that dispatches them.
#[test]
fn the_connection_does_not_reach_into_the_task_side() {
    let graph = import_graph(&agent_sources());
    let deps = graph.get("connection").cloned().unwrap_or_default();
    assert!(
        deps.iter()
            .all(|d| d != "agent" && d != "recovery" && !d.starts_with("tasks")),
        "connection imports {deps:?}"
    );
}

#[test]
fn the_reader_finds_a_cycle_through_groups_children_and_super() {
    let src = |m: &str, s: &str| (m.to_string(), s.to_string());
    // a -> b::c (in a group) -> a (through super), c also declared as b's child.
    let sources = vec![
        src(
            "a",
            "// use crate::nothing;\nuse crate::{b::{c::Thing, other}, x};\nfn f() { let u = \"https://x\"; }",
        ),
        src("b", "pub mod c;\nuse c::Thing;"),
        src("b::c", "use super::super::a; fn g() { crate::a::f(); }"),
        src("x", "#[cfg(test)]\nmod tests { use crate::a; }"),
    ];
    let graph = import_graph(&sources);
    assert_eq!(
        graph["a"],
        BTreeSet::from(["b".to_string(), "b::c".to_string(), "x".to_string()])
    );
    assert_eq!(graph["b"], BTreeSet::from(["b::c".to_string()]));
    assert!(graph["b::c"].contains("a"), "{graph:?}");
    assert!(graph["x"].is_empty(), "test modules are not imports");
    let cycle = find_cycle(&graph).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"a".to_string()) && cycle.contains(&"b::c".to_string()));

    let acyclic = vec![src("a", "use crate::b;"), src("b", "")];
    assert_eq!(find_cycle(&import_graph(&acyclic)), None);
}
