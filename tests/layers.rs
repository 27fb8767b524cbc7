//! The library's modules depend on each other one way only: a module may
//! use modules of its own layer or of a lower one, never a higher one. The
//! layers are listed here, lowest first; every module of `src/` must be in
//! the list (a new module needs a decision), and every path in the code is
//! checked: `use crate::…`, `use super::…` (from the inline `mod` it is
//! written in, if any), groups in braces, and paths written inline.
//! Comments and string literals are not code.
//!
//! The binary's own modules (`main.rs`, `cli/`, `bench/`) use the library
//! only through its public API, so they are not checked here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Module paths and their layer, lowest first. A module takes the layer of
/// the longest entry that is a prefix of its path.
const LAYERS: &[(&str, u32)] = &[
    // What everything may use: errors and their status codes, ids, time,
    // deadlines, crash points, metrics definitions, the generated code.
    ("error", 0),
    ("ids", 0),
    ("clock", 0),
    ("deadline", 0),
    ("fault", 0),
    ("weak_map", 0),
    ("pagination", 0),
    ("metrics", 0),
    ("pb", 0),
    // One SQLite database, its writer and schema, files on disk.
    ("storage", 1),
    // Replication of tenant files to object storage: the storage's WAL
    // hooks, shipped; the registry attaches it to each file it opens.
    ("replica", 2),
    // The catalog database: tenants, keys, operations, admin events.
    ("catalog", 2),
    // Credentials and the admin audit trail, over the catalog.
    ("auth", 3),
    ("audit", 3),
    // Each resource's share of a tenant database's schema, and its store
    // (`*` is any one module: every resource's folder).
    ("resources::*::schema", 4),
    ("resources::*::store", 4),
    // Tenants: the registry of open ones, their lifecycle and operations.
    ("tenant", 5),
    // The gRPC services, the resources' own among them.
    ("api", 6),
    ("resources", 6),
    // The front end: connections, then the layers every call passes.
    ("transport", 7),
    ("layers", 8),
    // Settings, then the assembly of it all.
    ("config", 9),
    ("server", 10),
];

/// What the check found: each use of a higher layer, as
/// `file: module -> used module`.
fn back_edges(src: &Path) -> Vec<String> {
    let (modules, reexports) = crate_root(src);
    let mut found = Vec::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let Some(module) = module_of(relative) else {
            continue;
        };
        let from = layer_of(&module)
            .unwrap_or_else(|| panic!("{}: module {module:?} has no layer", relative.display()));
        let code = without_comments_and_strings(&std::fs::read_to_string(&file).unwrap());
        for mut used in paths_used(&code, &module) {
            // An item the crate root re-exports is its module's.
            if let Some(owner) = reexports.iter().find(|(item, _)| used[0] == *item) {
                used = vec![owner.1.clone(), used[0].clone()];
            }
            // Not a module of the crate: an item of the file's own module,
            // reached with `super::` from a module inside the file.
            if !modules.contains(&used[0]) {
                continue;
            }
            let Some(to) = layer_of(&used) else {
                panic!("{}: uses {used:?}, which has no layer", relative.display());
            };
            if to > from {
                found.push(format!(
                    "{}: {} -> {}",
                    relative.display(),
                    module.join("::"),
                    used.join("::")
                ));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The crate root's modules, and the items it re-exports with the module
/// each comes from (`pub use config::Config;`).
fn crate_root(src: &Path) -> (BTreeSet<String>, Vec<(String, String)>) {
    let mut modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .filter(|name| !matches!(name.as_str(), "lib" | "main"))
        .collect();
    modules.insert("pb".into());
    let root = without_comments_and_strings(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let tokens = tokenize(&root);
    let mut reexports = Vec::new();
    for window in tokens.windows(6) {
        if let [public, uses, owner, separator, item, end] = window
            && public == "pub"
            && uses == "use"
            && separator == "::"
            && end == ";"
        {
            reexports.push((item.clone(), owner.clone()));
        }
    }
    (modules, reexports)
}

fn rust_files(src: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The library module a file holds; `None` for the crate root and for the
/// binary's files.
fn module_of(relative: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && matches!(stem, "lib" | "main") {
        return None;
    }
    if parts
        .first()
        .is_some_and(|top| top == "cli" || top == "bench")
    {
        return None;
    }
    if parts.is_empty() && matches!(stem, "cli" | "bench") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

fn layer_of(module: &[String]) -> Option<u32> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| {
            let prefix: Vec<&str> = prefix.split("::").collect();
            prefix.len() <= module.len()
                && prefix
                    .iter()
                    .zip(module)
                    .all(|(want, have)| *want == "*" || want == have)
        })
        .max_by_key(|(prefix, _)| prefix.split("::").count())
        .map(|(_, layer)| *layer)
}

/// The code with comments and the contents of string and character
/// literals blanked out, so that only code is read.
fn without_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
                continue;
            }
            'r' if (next == Some('"') || next == Some('#'))
                && !chars
                    .get(i.wrapping_sub(1))
                    .is_some_and(|p| p.is_alphanumeric() || *p == '_') =>
            {
                // A raw string: r"…", r#"…"#.
                let mut j = i + 1;
                let mut hashes = 0;
                while chars.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if chars.get(j) != Some(&'"') {
                    out.push(c);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= chars.len() {
                        break;
                    }
                    if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
                continue;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                out.push_str("\"\"");
                i += 1;
                continue;
            }
            '\'' => {
                // A character literal ('x', '\n', '\u{…}'), or a lifetime.
                let literal_end = if next == Some('\\') {
                    (i + 2..chars.len()).find(|&j| chars[j] == '\'')
                } else if chars.get(i + 2) == Some(&'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                if let Some(end) = literal_end {
                    out.push_str("' '");
                    i = end + 1;
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Every module of the crate `code` names, as a path from the crate root
/// (the first three segments, enough to find a layer), resolved from `module`.
fn paths_used(code: &str, module: &[String]) -> BTreeSet<Vec<String>> {
    let tokens = tokenize(code);
    let mut used = BTreeSet::new();
    // The module the code at `i` is in: the file's, and the inline
    // `mod name { … }` blocks around it, each with the brace depth it opened.
    let mut here = module.to_vec();
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "mod" if tokens.get(i + 2).is_some_and(|t| t == "{") => {
                here.push(tokens[i + 1].clone());
                inline.push(depth);
                depth += 1;
                i += 3;
                continue;
            }
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last() == Some(&depth) {
                    inline.pop();
                    here.pop();
                }
            }
            _ => {}
        }
        let start = match tokens[i].as_str() {
            "crate" => Some(Vec::new()),
            "super" => Some(here.clone()),
            _ => None,
        };
        let preceded_by_path = i > 0 && tokens[i - 1] == "::";
        match start {
            Some(mut base) if !preceded_by_path && tokens.get(i + 1).is_some_and(|t| t == "::") => {
                let mut j = i;
                if tokens[i] == "super" {
                    // Each `super` climbs one module.
                    while tokens.get(j).is_some_and(|t| t == "super")
                        && tokens.get(j + 1).is_some_and(|t| t == "::")
                    {
                        base.pop();
                        j += 2;
                    }
                } else {
                    j += 2;
                }
                collect(&tokens, j, base, &mut used);
                i = j;
            }
            _ => i += 1,
        }
    }
    used
}

/// Reads the path that starts at `tokens[at]` below `base`, including each
/// branch of a `{…}` group.
fn collect(tokens: &[String], at: usize, base: Vec<String>, used: &mut BTreeSet<Vec<String>>) {
    let mut path = base;
    let mut j = at;
    loop {
        match tokens.get(j).map(String::as_str) {
            Some("{") => {
                let mut depth = 0;
                let mut branch_start = j + 1;
                let mut k = j;
                while k < tokens.len() {
                    match tokens[k].as_str() {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                collect(tokens, branch_start, path.clone(), used);
                                break;
                            }
                        }
                        "," if depth == 1 => {
                            collect(tokens, branch_start, path.clone(), used);
                            branch_start = k + 1;
                        }
                        _ => {}
                    }
                    k += 1;
                }
                return;
            }
            Some(name) if is_identifier(name) => {
                if name == "self" {
                    break;
                }
                path.push(name.to_owned());
                if tokens.get(j + 1).is_some_and(|t| t == "::") {
                    j += 2;
                } else {
                    break;
                }
            }
            _ => break,
        }
    }
    if !path.is_empty() {
        path.truncate(3);
        used.insert(path);
    }
}

fn is_identifier(token: &str) -> bool {
    token
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

fn tokenize(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".into());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_uses_a_higher_layer() {
    let edges = back_edges(&source_dir());
    assert!(
        edges.is_empty(),
        "modules that use a higher layer (see the list in tests/layers.rs):\n{}",
        edges.join("\n")
    );
}

/// A copy of `src/` with `planted` appended to the file at `file`.
fn planted(file: &str, planted: &str) -> tempfile::TempDir {
    let copy = tempfile::TempDir::new().unwrap();
    let src = source_dir();
    for path in rust_files(&src) {
        let relative = path.strip_prefix(&src).unwrap();
        let dest = copy.path().join(relative);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if relative == Path::new(file) {
            text.push_str(planted);
        }
        std::fs::write(dest, text).unwrap();
    }
    copy
}

#[test]
fn a_planted_back_edge_is_found_however_it_is_written() {
    let cases = [
        (
            "storage/disk.rs",
            "use crate::server::Application;\n",
            "storage::disk -> server::Application",
        ),
        (
            "storage/sqlite.rs",
            "fn planted() { let _ = crate::api::audited::AuditedItemApi::new; }\n",
            "storage::sqlite -> api::audited::AuditedItemApi",
        ),
        (
            "storage/schema.rs",
            "use super::super::layers::limits::Limits;\n",
            "storage::schema -> layers::limits::Limits",
        ),
        (
            "resources/items/schema.rs",
            "use super::service::ItemApi;\n",
            "resources::items::schema -> resources::items::service",
        ),
        (
            "catalog/store.rs",
            "use crate::{error::Error, tenant::{Registry, Lifecycle}};\n",
            "catalog::store -> tenant::Registry",
        ),
    ];
    for (file, code, expected) in cases {
        let copy = planted(file, code);
        let edges = back_edges(copy.path());
        assert!(
            edges.iter().any(|edge| edge.ends_with(expected)),
            "{file} with {code:?}: {edges:?}"
        );
    }
    // `super` inside an inline module climbs from that module.
    let copy = planted(
        "resources/items/schema.rs",
        "mod inner { use super::super::service::ItemApi; }\n",
    );
    assert_eq!(
        back_edges(copy.path()),
        ["resources/items/schema.rs: resources::items::schema -> resources::items::service"]
    );
    let copy = planted(
        "resources/items/schema.rs",
        "mod inner { mod deeper { use super::super::SCHEMA; } }\n",
    );
    assert_eq!(back_edges(copy.path()), Vec::<String>::new());
    // Neither comments nor strings are code.
    let copy = planted(
        "storage/disk.rs",
        "// use crate::server::Application;\nconst TEXT: &str = \"crate::server::X\";\n",
    );
    assert_eq!(back_edges(copy.path()), Vec::<String>::new());
}

#[test]
fn comments_strings_and_character_literals_are_blanked() {
    let code = "let a = '\"'; let b = \"crate::x\"; // crate::y\n/* crate::z */ crate::w::v";
    let cleaned = without_comments_and_strings(code);
    assert!(!cleaned.contains("crate::x"), "{cleaned}");
    assert!(!cleaned.contains("crate::y"), "{cleaned}");
    assert!(!cleaned.contains("crate::z"), "{cleaned}");
    assert!(cleaned.contains("crate::w::v"), "{cleaned}");
}

/// The files of `src/` (the binary's too) whose code says `unsafe`.
fn files_with_unsafe(src: &Path) -> Vec<String> {
    rust_files(src)
        .into_iter()
        .filter(|file| {
            let code = without_comments_and_strings(&std::fs::read_to_string(file).unwrap());
            tokenize(&code).iter().any(|token| token == "unsafe")
        })
        .map(|file| file.strip_prefix(src).unwrap().display().to_string())
        .collect()
}

#[test]
fn unsafe_code_lives_only_in_the_module_for_sqlite_s_c_interface() {
    assert_eq!(files_with_unsafe(&source_dir()), ["storage/ffi.rs"]);
    let copy = planted("tenant/registry.rs", "fn planted() { unsafe {} }\n");
    assert_eq!(
        files_with_unsafe(copy.path()),
        ["storage/ffi.rs", "tenant/registry.rs"]
    );
}
