//! Fails when a domain core names the composition root (`crate::app`) or the HTTP layer
//! (`crate::http`). Cores (every `src/` file but the entry points, `routes.rs` files and `src/http/`)
//! take what they need as arguments, so they can be tested without a router and changed without
//! touching the web layer. ARCHITECTURE.md ("Layers") states the rule; this is what holds it.

use std::path::{Path, PathBuf};

/// Files that wire things together or face the outside, and may name `app` and `http`.
const ENTRY_POINTS: &[&str] = &[
    "src/app.rs",
    "src/main.rs",
    "src/lib.rs",
    "src/cli.rs",
    "src/control.rs",
    "src/demo.rs",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_core(relative: &str) -> bool {
    !(ENTRY_POINTS.contains(&relative)
        || relative.starts_with("src/http/")
        || relative.ends_with("/routes.rs"))
}

/// The lines of `text` (numbered from 1) that name `crate::app` or `crate::http`, comments aside.
fn layer_breaks(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_group = false;
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let names_layer = |s: &str| {
            ["crate::app", "crate::http"].iter().any(|p| {
                s.match_indices(p).any(|(at, _)| {
                    !s[at + p.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
                })
            })
        };
        // `use crate::{app::AppState, ...}` names them without the `crate::` prefix.
        if code.starts_with("use crate::{") {
            in_group = true;
        }
        let grouped = in_group
            && code
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .any(|word| {
                    let word = word
                        .trim_start_matches("use")
                        .trim_start_matches("crate::{");
                    word == "app"
                        || word == "http"
                        || word.starts_with("app::")
                        || word.starts_with("http::")
                });
        if names_layer(code) || grouped {
            found.push((n + 1, line.trim().to_string()));
        }
        if in_group && code.contains("};") {
            in_group = false;
        }
    }
    found
}

#[test]
fn domain_cores_never_name_app_or_http() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut cores = 0;
    let mut breaks = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        if !is_core(&relative) {
            continue;
        }
        cores += 1;
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (line, code) in layer_breaks(&text) {
            breaks.push(format!("{relative}:{line}: {code}"));
        }
    }
    assert!(
        cores > 20,
        "found only {cores} core files; is the walk right?"
    );
    assert!(
        breaks.is_empty(),
        "domain cores must take what they need as arguments, not reach for the app or HTTP layer \
         (move the code into the domain's routes.rs, or pass the value in):\n  {}",
        breaks.join("\n  ")
    );
}

#[test]
fn the_layer_check_sees_every_way_of_naming_a_layer() {
    assert_eq!(layer_breaks("use crate::app::AppState;").len(), 1);
    assert_eq!(
        layer_breaks("fn f(e: crate::http::problem::ApiError) {}").len(),
        1
    );
    assert_eq!(
        layer_breaks("use crate::{\n    app::AppState,\n    store::Store,\n};").len(),
        1
    );
    assert_eq!(layer_breaks("use crate::{http, store};").len(), 1);
    // Comments, look-alike names and other modules are fine.
    assert!(layer_breaks("//! see `crate::http::caller`").is_empty());
    assert!(layer_breaks("use crate::apply::Rules;\nuse crate::https_names;").is_empty());
    assert!(layer_breaks("use crate::{store::Store, sync::Runtime};").is_empty());
    assert!(is_core("src/incidents/mod.rs") && is_core("src/sync/session.rs"));
    assert!(!is_core("src/incidents/routes.rs") && !is_core("src/http/csv.rs"));
    assert!(!is_core("src/app.rs"));
}
