//! The modules of `src/` depend on each other one way (src/lib.rs says how): this reads
//! every `crate::…` path outside unit tests and fails on a cycle between top-level
//! modules, or on the domain or the store reaching up into what serves HTTP.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// What `module` must never use: the domain stands on nothing, and the store on the
/// domain and what it records.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("domain", &["app", "auth", "config", "error", "http", "keys", "metrics", "middleware", "state", "store"]),
    ("store", &["app", "auth", "error", "http", "middleware", "state"]),
];

#[test]
fn modules_depend_on_each_other_one_way() {
    let graph = dependencies();
    assert!(graph.contains_key("http") && graph["http"].contains("store"), "the reader found no paths: {graph:?}");
    for (module, forbidden) in FORBIDDEN {
        let used: Vec<_> =
            graph.get(*module).into_iter().flatten().filter(|d| forbidden.contains(&d.as_str())).collect();
        assert!(used.is_empty(), "{module} uses {used:?}");
    }
    for start in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, start, &mut vec![start.clone()]) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_reader_sees_grouped_and_nested_paths() {
    let text = "use crate::{\n    auth::AdminAuth,\n    http::{paging, views::{self, Cohort}},\n    state::AppState,\n};\nuse crate::store::Database;\nfn f() { crate::metrics::record(); }";
    assert_eq!(crate_paths(text), ["auth", "http", "state", "store", "metrics"].map(String::from).to_vec());
    assert!(crate_paths("#[cfg(test)]\nmod tests { use crate::app; }").is_empty());
    assert_eq!(crate_paths("#[cfg(test)]\nfn helper() {}\nuse crate::app;"), ["app"]);
}

/// A path of modules from `stack`'s last that comes back to one on it.
fn cycle_from(graph: &Graph, module: &str, stack: &mut Vec<String>) -> Option<Vec<String>> {
    for next in graph.get(module).into_iter().flatten() {
        if let Some(at) = stack.iter().position(|m| m == next) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(next.clone());
            return Some(cycle);
        }
        stack.push(next.clone());
        if let Some(cycle) = cycle_from(graph, next, stack) {
            return Some(cycle);
        }
        stack.pop();
    }
    None
}

/// Each top-level module of `src/` with the other top-level modules its code names.
fn dependencies() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = fs::read_dir(&src)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().trim_end_matches(".rs").to_owned())
        .filter(|name| !["lib", "main"].contains(&name.as_str()))
        .collect();
    let mut graph = Graph::new();
    for module in &modules {
        let mut files = Vec::new();
        collect_files(&src.join(module), &mut files);
        collect_files(&src.join(format!("{module}.rs")), &mut files);
        let used = graph.entry(module.clone()).or_default();
        for file in files {
            for name in crate_paths(&fs::read_to_string(file).unwrap()) {
                if &name != module && modules.contains(&name) {
                    used.insert(name);
                }
            }
        }
    }
    graph
}

fn collect_files(path: &Path, files: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            collect_files(&entry.unwrap().path(), files);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        files.push(path.to_owned());
    }
}

/// The first segment of every `crate::` path in `text` before its unit tests, grouped
/// imports (`crate::{a::x, b::{y, z}}`) included.
fn crate_paths(text: &str) -> Vec<String> {
    // Only the unit-test module is cut: a test-only item elsewhere must not hide the
    // paths after it.
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    let mut names = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's items, split at its own commas; each names its module first.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 0 => {
                        names.push(leading_name(&item));
                        item.clear();
                        if c == '}' {
                            break;
                        }
                        continue;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
                item.push(c);
            }
        } else {
            names.push(leading_name(rest));
        }
    }
    names.retain(|name| !name.is_empty());
    names
}

fn leading_name(path: &str) -> String {
    path.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}
