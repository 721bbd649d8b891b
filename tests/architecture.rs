//! The modules depend in one direction. docs/architecture.md's "Dependency direction" table puts
//! every module of `src/` in a row, and a module may use only modules in rows above its own: these
//! tests read that table and every `crate::…` path in the source, so the document and the code
//! cannot drift apart.
#![cfg(test)]

use std::collections::BTreeMap;
use std::path::Path;

/// The binary's files (and the library's root): they sit above everything and reach the library
/// as `portcullis::…`. The binary's demo services live in `demo.rs` and under `demo/`.
fn is_binary(relative: &str) -> bool {
    ["lib.rs", "main.rs", "demo.rs"].contains(&relative) || relative.starts_with("demo/")
}

/// Module name → its row (0 is the top of the table, the floor's first row).
fn table(doc: &str) -> Result<BTreeMap<String, usize>, String> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Dependency direction"))
        .ok_or("docs/architecture.md has no \"## Dependency direction\" section")?;
    let mut rows = BTreeMap::new();
    let table_lines = section.lines().filter(|l| l.starts_with('|')).skip(2);
    for (row, line) in table_lines.enumerate() {
        let modules = line
            .split('|')
            .nth(3)
            .ok_or_else(|| format!("row {row} has no modules column: {line}"))?;
        for name in modules.split('`').skip(1).step_by(2) {
            if rows.insert(name.to_string(), row).is_some() {
                return Err(format!("`{name}` is in the table twice"));
            }
        }
    }
    if rows.is_empty() {
        return Err("the dependency table lists no modules".into());
    }
    Ok(rows)
}

/// The top-level modules a file names through `crate::`, including `crate::{a, b::c}` groups.
fn uses(source: &str) -> Vec<String> {
    let mut used = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the group's top level names modules: `crate::{a::{X, Y}, b}` uses a and b.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[i..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        used.push(identifier(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            used.push(identifier(rest));
        }
    }
    used
}

fn identifier(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every use of a module in the same row or below, as "file: uses `x` (row n) from row m".
fn violations(rows: &BTreeMap<String, usize>, files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, source) in files {
        let module = path.split('/').next().unwrap_or(path).trim_end_matches(".rs");
        let Some(&own) = rows.get(module) else {
            found.push(format!(
                "{path}: module `{module}` is not in docs/architecture.md's dependency table"
            ));
            continue;
        };
        for used in uses(source) {
            if used == module || used.is_empty() {
                continue;
            }
            match rows.get(&used) {
                Some(&row) if row < own => {}
                Some(&row) => found.push(format!(
                    "{path}: `{module}` (row {}) uses `{used}` (row {}); a module may use only rows above its own",
                    own + 1,
                    row + 1
                )),
                None => found.push(format!("{path}: uses `crate::{used}`, which the dependency table does not list")),
            }
        }
    }
    found
}

fn sources(dir: &Path, base: &Path, out: &mut Vec<(String, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(base)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            if !is_binary(&relative) {
                let text = std::fs::read_to_string(&path).expect("source file");
                out.push((relative, text));
            }
        }
    }
}

#[test]
fn every_module_uses_only_modules_listed_above_it_in_the_architecture_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md");
    let rows = table(&doc).unwrap_or_else(|e| panic!("{e}"));
    let mut files = Vec::new();
    sources(&root.join("src"), &root.join("src"), &mut files);
    assert!(
        files.len() > 40,
        "the scan found only {} source files",
        files.len()
    );
    let found = violations(&rows, &files);
    assert!(
        found.is_empty(),
        "imports against the dependency direction:\n{}",
        found.join("\n")
    );

    // The table names no module that does not exist (a renamed module must be renamed there too).
    for name in rows.keys() {
        let exists =
            root.join("src").join(format!("{name}.rs")).exists() || root.join("src").join(name).is_dir();
        assert!(
            exists,
            "docs/architecture.md lists `{name}`, which is not a module of src/"
        );
    }
}

#[test]
fn the_check_reports_a_module_that_uses_one_below_it_or_beside_it_or_unlisted() {
    let doc = "# A\n\n## Dependency direction\n\n| Row | Layer | Modules | Holds |\n|-|-|-|-|\n\
               | 1 | floor | `config`, `hex` | words |\n| 2 | feature | `authn` | sign-in |\n\
               | 3 | stack | `proxy` | the path |\n\n## Next\n\n| x | y | `admin` | z |\n";
    let rows = table(doc).expect("table");
    assert_eq!(rows.len(), 4, "the table after the section is not read: {rows:?}");
    let files = [
        (
            "proxy/stack.rs",
            "use crate::authn::Authn;\nuse crate::{config::{A, B}, hex};",
        ),
        (
            "authn/mod.rs",
            "use crate::{hex, proxy::ctx};\nfn f() { crate::config::x() }",
        ),
        ("config/mod.rs", "use crate::hex::encode;"),
        ("hex.rs", "use super::x; crate::admin::serve();"),
        ("tokens.rs", "use crate::hex;"),
    ]
    .map(|(p, s)| (p.to_string(), s.to_string()));
    let found = violations(&rows, &files);
    assert_eq!(
        found,
        [
            "authn/mod.rs: `authn` (row 2) uses `proxy` (row 3); a module may use only rows above its own",
            "config/mod.rs: `config` (row 1) uses `hex` (row 1); a module may use only rows above its own",
            "hex.rs: uses `crate::admin`, which the dependency table does not list",
            "tokens.rs: module `tokens` is not in docs/architecture.md's dependency table",
        ]
    );
}
