//! The module graph of realtide-server: no import circles between files, and imports run one
//! way between the folders (a module imports only from layers below its own, or from files of
//! its own folder). The layers, from the bottom:
//!
//! 0. `logs`, `metrics`, `limits`: the foundation.
//! 1. `outbox` (a connection's queue, change cursors and client receipts), `shutdown`.
//! 2. `ws` (transport) and `channels` (topics, presence, publish): side by side, neither imports
//!    the other.
//! 3. `db`: pools, schema, catalog, authorization, replay.
//! 4. `config`: typed settings (it builds TLS settings with `ws` and `db` to fail fast).
//! 5. `changes`, `token`.
//! 6. `cluster` (several nodes as one over NATS).
//! 7. `app` (one project's state) and `error` (wire errors).
//! 8. `session` and `tenants` (the projects of one process, started and stopped on demand).
//! 9. `http`.
//! 10. `dev` (runs the whole server).
//!
//! `lib.rs` wires everything together and `main.rs` is the binary: both are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn layer(top: &str) -> Option<u8> {
    Some(match top {
        "logs" | "metrics" | "limits" => 0,
        "outbox" | "shutdown" => 1,
        "ws" | "channels" => 2,
        "db" => 3,
        "config" => 4,
        "changes" | "token" => 5,
        "cluster" => 6,
        "app" | "error" => 7,
        "session" | "tenants" => 8,
        "http" => 9,
        "dev" => 10,
        _ => return None,
    })
}

/// `src/a/b.rs` -> `a::b`; `src/a/mod.rs` -> `a`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts.join("::"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Code without `//` comments (doc links name modules without importing them).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b::...` path in `text`, with `crate::a::{b, c::d}` expanded.
fn crate_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = rest.get(at + "crate::".len()..).unwrap_or_default();
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let path = path.trim_end_matches(':').to_owned();
        let after = rest.get(path.len()..).unwrap_or_default();
        if let Some(group) = after.strip_prefix("::{") {
            let inner: String = group.chars().take_while(|c| *c != '}').collect();
            for item in inner.split(',') {
                let item = item.trim();
                let item = item.split(" as ").next().unwrap_or_default().trim();
                if item == "self" || item.is_empty() {
                    paths.push(path.clone());
                } else {
                    paths.push(format!("{path}::{item}"));
                }
            }
        } else {
            paths.push(path);
        }
    }
    paths
}

#[test]
fn imports_run_one_way_without_circles() -> std::io::Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    let mut modules: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in &files {
        if let Some(module) = module_of(&src, file)
            && module != "lib"
            && module != "main"
        {
            modules.insert(module, file.clone());
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong_way = Vec::new();
    for (module, file) in &modules {
        let text = code(&std::fs::read_to_string(file)?);
        let top = module.split("::").next().unwrap_or_default().to_owned();
        let Some(own) = layer(&top) else {
            wrong_way.push(format!("{module}: not in any layer (add it to this test)"));
            continue;
        };
        for path in crate_paths(&text) {
            // The longest prefix that is a module of this crate.
            let segments: Vec<&str> = path.split("::").collect();
            let target = (1..=segments.len())
                .rev()
                .map(|n| segments.get(..n).unwrap_or_default().join("::"))
                .find(|candidate| modules.contains_key(candidate));
            let Some(target) = target else { continue };
            if &target == module {
                continue;
            }
            let target_top = target.split("::").next().unwrap_or_default();
            if target_top != top {
                match layer(target_top) {
                    Some(theirs) if theirs < own => {}
                    _ => wrong_way.push(format!("{module} imports {target}")),
                }
            }
            edges.entry(module.clone()).or_default().insert(target);
        }
    }
    assert!(
        wrong_way.is_empty(),
        "imports against the layers:\n{}",
        wrong_way.join("\n")
    );
    // Circles: a depth-first search that reports the first back edge's loop.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut circles = Vec::new();
    fn visit<'a>(
        module: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        circles: &mut Vec<String>,
    ) {
        state.insert(module, 1);
        stack.push(module);
        for next in edges.get(module).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|m| *m == next).unwrap_or_default();
                    let mut circle: Vec<&str> = stack.get(from..).unwrap_or_default().to_vec();
                    circle.push(next);
                    circles.push(circle.join(" -> "));
                }
                Some(_) => {}
                None => visit(next, edges, state, stack, circles),
            }
        }
        stack.pop();
        state.insert(module, 2);
    }
    for module in modules.keys() {
        if !state.contains_key(module.as_str()) {
            visit(module, &edges, &mut state, &mut Vec::new(), &mut circles);
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
    Ok(())
}
