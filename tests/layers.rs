//! The tidy check: the broker's modules import one way, lower layers never reaching up.
//!
//! Reads every file under `src/` and fails on a path from a module to one in its own or a higher
//! layer, written with `crate::` or with `super::` climbing to the crate root (a module may
//! always use itself). Peers in one layer do not import each other:
//! the Kafka and native listeners share only what sits below them. `cargo test --test layers --
//! --nocapture` prints the module graph as this check sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module may import only modules of lower layers.
const LAYERS: &[&[&str]] = &[
    // Vocabulary and instruments with no dependencies of their own.
    &["error", "metrics", "testing", "types"],
    // Both record formats, their checksums and conversion.
    &["record"],
    &["config"],
    // The local log: segments, indexes, recovery, retention.
    &["log"],
    // A replica's decisions without I/O: divergence and truncation from the epoch caches, the
    // high watermark and the in-sync set.
    &["replication"],
    // The partition layer: the high watermark, acks waiters, what readers may see.
    &["partition"],
    // Consumer groups, reaching the offsets log through `group::OffsetsLogs`.
    &["group"],
    // The cluster: metadata, the controller's decisions, its Raft voters and their log; the
    // shards host it, the protocols serve it.
    &["cluster"],
    // Shards: routing, the partition registry, the controller role, the group coordinators.
    &["shard"],
    // Accepting connections, idle bounds, memory budgets, the coalescing writer.
    &["transport"],
    // The protocol front ends.
    &["kafka", "native"],
    // The Rust client library (speaks the native protocol).
    &["client"],
    // Starting and stopping a broker.
    &["broker"],
    &["cli"],
];

/// Protocols whose `server` module (the connection loop) only `broker` may import.
const CONNECTION_LOOPS: &[&str] = &["kafka", "native"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source file names through `crate::`, or through as many `super::`
/// as it takes to climb from where they are written to the crate root (`depth` is how deep the
/// file's module is: 1 for `src/log/mod.rs`, 3 for `src/log/partition/writer.rs`; each inline
/// `mod name { ... }` around a path adds one), with the line of each.
fn imports(source: &str, depth: usize) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut line_of = Vec::with_capacity(source.len());
    let mut code = String::with_capacity(source.len());
    for (number, line) in source.lines().enumerate() {
        // Comments may name modules freely (doc links, explanations).
        let line = line.find("//").map_or(line, |at| &line[..at]);
        code.push_str(line);
        code.push('\n');
        line_of.extend(std::iter::repeat_n(number + 1, line.len() + 1));
    }
    let inline = inline_module_depths(&code);
    let mut rest = 0;
    while let Some(at) = code[rest..].find("crate::") {
        let start = rest + at + "crate::".len();
        rest = start;
        if code[..start - "crate::".len()].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `spate_crate::`, not this crate
        }
        names_at(&code, start, line_of[start], &mut found);
    }
    let mut rest = 0;
    while let Some(at) = code[rest..].find("super::") {
        let first = rest + at;
        let mut start = first;
        let mut climbs = 0;
        while code[start..].starts_with("super::") {
            start += "super::".len();
            climbs += 1;
        }
        rest = start;
        let inside_a_path = code[..first].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        if !inside_a_path && climbs == depth + inline[first] {
            names_at(&code, start, line_of[start], &mut found);
        }
    }
    found.sort_by_key(|(_, line)| *line);
    found
}

/// Pushes the first segment of the path at `start`, or of each item of a `{a::b, c}` group.
fn names_at(code: &str, start: usize, line: usize, found: &mut Vec<(String, usize)>) {
    let ident = |from: usize| -> String {
        code[from..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    };
    if !code[start..].starts_with('{') {
        found.push((ident(start), line));
        return;
    }
    // The first segment of each item, at brace depth one.
    let mut depth = 0;
    let mut item_start = true;
    for (offset, c) in code[start..].char_indices() {
        match c {
            '{' => {
                depth += 1;
                item_start = depth == 1;
                continue;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                item_start = true;
                continue;
            }
            _ => {}
        }
        if item_start && depth == 1 && (c.is_alphabetic() || c == '_') {
            found.push((ident(start + offset), line));
            item_start = false;
        } else if !c.is_whitespace() {
            item_start = false;
        }
    }
}

/// For each byte of `code`, how many inline `mod name { ... }` blocks enclose it.
fn inline_module_depths(code: &str) -> Vec<usize> {
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut depths = vec![0; bytes.len()];
    let (mut braces, mut modules, mut opens_module) = (0usize, Vec::new(), None);
    for i in 0..bytes.len() {
        let word_start = i == 0 || !is_ident(bytes[i - 1]);
        if word_start && bytes[i..].starts_with(b"mod ") {
            // `mod name {`: the brace after the name opens a module; `mod name;` does not.
            let mut j = i + "mod ".len();
            while j < bytes.len() && (is_ident(bytes[j]) || bytes[j].is_ascii_whitespace()) {
                j += 1;
            }
            opens_module = (j < bytes.len() && bytes[j] == b'{').then_some(j);
        }
        match bytes[i] {
            b'{' => {
                braces += 1;
                if opens_module == Some(i) {
                    modules.push(braces);
                }
            }
            b'}' => {
                if modules.last() == Some(&braces) {
                    modules.pop();
                }
                braces = braces.saturating_sub(1);
            }
            _ => {}
        }
        depths[i] = modules.len();
    }
    depths
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut unplaced = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path").as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(from) = layer_of(&module) else {
            unplaced.insert(module);
            continue;
        };
        let source = std::fs::read_to_string(file).expect("a readable source file");
        // `src/log/mod.rs` is `log` (1 deep), `src/log/index.rs` is `log::index` (2).
        let parts = relative.components().count();
        let depth = if relative.ends_with("mod.rs") { parts - 1 } else { parts };
        for (target, line) in imports(&source, depth) {
            // A connection loop is started by `broker` and reached by nothing else: frames,
            // responses and connections live beside their protocol, not in the server loop.
            // Reached by `crate::` or by `super::` climbing to the root: the text after either.
            let server_loop = format!("{target}::server");
            let own_loop = relative == Path::new(&target).join("server.rs");
            if CONNECTION_LOOPS.contains(&target.as_str()) && module != "broker" && !own_loop {
                let text = source.lines().nth(line - 1).unwrap_or_default();
                if text.contains(&server_loop) {
                    violations.push(format!(
                        "{}:{line}: {module} reaches into {server_loop}, the connection loop",
                        relative.display()
                    ));
                }
            }
            if target == module {
                continue;
            }
            let Some(to) = layer_of(&target) else {
                // A crate-root item such as `crate::now_ms`: the root sits below every module.
                continue;
            };
            graph.entry(module.clone()).or_default().insert(target.clone());
            if to >= from {
                let why = if to == from { "a peer in its layer" } else { "a higher layer" };
                violations.push(format!(
                    "{}:{line}: {module} imports {target}, {why}",
                    relative.display()
                ));
            }
        }
    }
    for (module, targets) in &graph {
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        println!("{module} -> {}", targets.join(" "));
    }
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS in tests/layers.rs (place each in its layer): {unplaced:?}"
    );
    assert!(violations.is_empty(), "imports against the layers:\n{}", violations.join("\n"));
}

#[test]
fn the_import_scanner_sees_every_form() {
    let source = "use crate::log::{A, B};\nuse crate::{record::X, shard::{Y, Z}, config};\n\
                  // crate::cli in a comment\nlet x = crate::now_ms();\nuse other_crate::kafka;";
    let names: Vec<String> = imports(source, 1).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["log", "record", "shard", "config", "now_ms"]);
}

/// `super::` paths that climb to the crate root count as `crate::` paths; shorter ones stay in
/// the file's own module, and an inline module adds a step to the climb.
#[test]
fn the_import_scanner_follows_super_to_the_crate_root() {
    let source = "use super::sibling;\nuse super::super::shard::X;\n\
                  mod tests {\n    use super::*;\n    use super::super::log;\n\
                  use super::super::super::{kafka, native::Y};\n}\nuse super::super::group;";
    let names: Vec<String> = imports(source, 2).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["shard", "kafka", "native", "group"]);
}
