//! Coverage is checked, not hoped: every operation of each API's published description either
//! maps to an object and action, or is on its template's `unmapped` list. Airflow's are read
//! from the OpenAPI documents inside the installed package (`.ci/install-peers` installs the
//! pinned Airflow), so an upgrade that adds an endpoint fails here until the template covers it;
//! the others from their vendors' descriptions stored in `tests/fixtures/apis/`.
#![cfg(test)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use portcullis::authz::resources::{RuleAccess, Template, Templates};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `METHOD /path/{param}` operations of a TSV fixture (header line skipped).
fn fixture(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{ROOT}/tests/fixtures/apis/{name}")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            (cols.next().unwrap().to_string(), cols.next().unwrap().to_string())
        })
        .collect()
}

/// Airflow 3's operations, read from the OpenAPI documents the installed package ships (REST
/// API, the UI's private API, the simple auth manager's), by the package's own Python.
fn installed_airflow_operations() -> Vec<(String, String)> {
    let venv = PathBuf::from(ROOT).join("tests/peers/airflow/.venv");
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the Airflow test peer is not installed ({}): run .ci/install-peers",
        python.display()
    );
    let script = r#"
import glob, json, os, sys, yaml
import airflow
base = os.path.dirname(airflow.__file__)
docs = [os.path.join(base, 'api_fastapi/core_api/openapi/v2-rest-api-generated.yaml'),
        os.path.join(base, 'api_fastapi/core_api/openapi/_private_ui.yaml')]
docs += glob.glob(os.path.join(base, 'api_fastapi/auth/managers/simple/openapi/*.yaml'))
ops = []
for doc in docs:
    spec = yaml.safe_load(open(doc))
    for path, item in spec['paths'].items():
        for method in item:
            if method in ('get', 'post', 'put', 'patch', 'delete', 'head'):
                ops.append([method.upper(), path])
print(airflow.__version__)
print(json.dumps(ops))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let version = lines.next().unwrap();
    assert!(version.starts_with("3."), "Airflow {version}");
    let ops: Vec<(String, String)> = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert!(ops.len() > 150, "only {} operations found", ops.len());
    ops
}

/// A concrete request path for a path template: each `{param}` a sample value the checks can
/// recognise (`sample_dag` for a DAG id), `{rest*}` two segments.
fn sample(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        let name = rest[start + 1..end].trim_end_matches('*');
        out.push_str(match name {
            "dag_id" => "sample_dag",
            "dag_run_id" | "run_id" => "sample_run",
            "task_id" => "sample_task",
            "map_index" | "try_number" | "task_try_number" | "version_number" => "3",
            _ if rest[start + 1..end].ends_with('*') => "a/b",
            _ => "sample",
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The `unmapped` entry that lists `METHOD path`, if one does: exactly, with `*` for the
/// method, or as a `/**` prefix.
fn listing<'t>(template: &'t Template, method: &str, path: &str) -> Option<&'t String> {
    template.unmapped.iter().find(|entry| {
        let Some((m, p)) = entry.split_once(' ') else {
            return false;
        };
        let method_ok = m == "*" || m == method;
        let path_ok = match p.strip_suffix("/**") {
            Some(prefix) => path.starts_with(&format!("{prefix}/")) || path == prefix,
            None => p == path,
        };
        method_ok && path_ok
    })
}

/// Checks every operation against `template`; returns the problems, one line each. With
/// `reads_are_safe`, a GET must not ask for a change (REST APIs; Luigi's and Conductor's RPC-style
/// APIs change state with GET too).
fn problems(template: &Template, ops: &[(String, String)], reads_are_safe: bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut seen_unmapped = BTreeMap::new();
    for (method, path) in ops {
        let op = format!("{method} {path}");
        let listed = listing(template, method, path);
        if let Some(entry) = listed {
            seen_unmapped.insert(entry.clone(), ());
        }
        let listed = listed.is_some();
        let r = template.resolve(method, &sample(path), None);
        let unmapped = !r.matched || r.object.starts_with("unmapped:");
        match (unmapped, listed) {
            (true, false) => found.push(format!(
                "{op}: no rule names what it acts on ({} {}): map it, or list it in `unmapped`",
                r.action, r.object
            )),
            (false, true) => found.push(format!(
                "{op}: listed in `unmapped` but a rule maps it to {} {}",
                r.action, r.object
            )),
            _ => {}
        }
        if unmapped {
            continue;
        }
        // A DAG in the path is the object (or, for a list, what the response is filtered by).
        if path.contains("{dag_id}") && r.object != "dag:sample_dag" && r.access == RuleAccess::Route {
            found.push(format!(
                "{op}: names DAG sample_dag in its path but asks about {}",
                r.object
            ));
        }
        // A read never grants a change.
        if reads_are_safe
            && !r.refused
            && (method == "GET" || method == "HEAD")
            && !matches!(r.action.as_str(), "read" | "list" | "get" | "GET")
        {
            found.push(format!("{op}: a read asks for `{}`", r.action));
        }
    }
    for listed in &template.unmapped {
        if !seen_unmapped.contains_key(listed) {
            found.push(format!(
                "`unmapped` lists {listed}, which the API description does not have"
            ));
        }
    }
    found
}

fn check(name: &str, ops: &[(String, String)], reads_are_safe: bool) {
    let templates = Templates::load(&BTreeMap::new()).unwrap();
    let template = templates.get(name).unwrap();
    let found = problems(template, ops, reads_are_safe);
    assert!(
        found.is_empty(),
        "{name}: {} of {} operations:\n{}",
        found.len(),
        ops.len(),
        found.join("\n")
    );
}

#[test]
fn every_operation_of_the_installed_airflow_is_mapped_or_listed_as_unmapped() {
    let mut ops = installed_airflow_operations();
    // Airflow 2's REST API (/api/v1), from its published v1.yaml.
    ops.extend(
        fixture("airflow-operations.tsv")
            .into_iter()
            .filter(|(_, p)| p.starts_with("/api/v1/")),
    );
    check("airflow", &ops, true);
}

#[test]
fn every_tekton_operation_of_the_kubernetes_api_is_mapped_or_listed_as_unmapped() {
    check("tekton", &fixture("tekton-operations.tsv"), true);
}

#[test]
fn every_gitlab_ci_operation_is_mapped_or_listed_as_unmapped() {
    check("gitlab", &fixture("gitlab-operations.tsv"), true);
}

#[test]
fn every_conductor_operation_is_mapped_or_listed_as_unmapped() {
    check("conductor", &fixture("conductor-operations.tsv"), false);
}

#[test]
fn every_luigi_scheduler_operation_is_mapped_or_listed_as_unmapped() {
    check("luigi", &fixture("luigi-operations.tsv"), false);
}

/// One template's API as the operations document lists it.
struct Api {
    template: &'static str,
    source: &'static str,
    operations: Vec<(String, String)>,
}

/// The operations document: every operation of every template's API, with the object and
/// action it is asked as (path parameters shown by name). Generated from the templates; the test
/// below keeps `docs/templates.md` equal to it.
fn operations_document(apis: &[Api]) -> String {
    let templates = Templates::load(&BTreeMap::new()).unwrap();
    let mut out = String::from(
        "# Every operation, as the built-in templates ask about it\n\n\
         Generated from `src/authz/templates.toml` and each API's published description by\n\
         `tests/template_coverage.rs` (`UPDATE_DOCS=1 cargo test --test template_coverage`\n\
         writes it again; the test fails while this file and the templates disagree). A name in\n\
         braces is the request's own value; `*` in an object means every one (Airflow's `~`, or\n\
         a request that does not name it). \"Unmapped\" operations keep the canonical path as\n\
         object and the method as action: only a grant on every object (`**`) reaches them.\n\
         docs/policy.md explains templates, objects and actions.\n",
    );
    for Api {
        template: name,
        source,
        operations,
    } in apis
    {
        let template = templates.get(name).unwrap();
        out.push_str(&format!("\n## `{name}`\n\n{source}\n\n| method | path | object | action | notes |\n|---|---|---|---|---|\n"));
        let mut ops = operations.clone();
        ops.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        ops.dedup();
        for (method, path) in ops {
            let r = template.resolve(&method, &path, None);
            let (object, action, notes) = if !r.matched || r.object.starts_with("unmapped:") {
                (String::new(), String::new(), "unmapped".to_string())
            } else {
                let notes = template
                    .matching_rule(&method, &path)
                    .map(|rule| rule.notes().join("; "))
                    .unwrap_or_default();
                (format!("`{}`", r.object), format!("`{}`", r.action), notes)
            };
            out.push_str(&format!(
                "| {method} | `{path}` | {object} | {action} | {} |\n",
                notes.replace('|', "\\|")
            ));
        }
    }
    out
}

#[test]
fn docs_templates_md_lists_every_operation_as_the_templates_ask_about_it() {
    let mut airflow = installed_airflow_operations();
    airflow.extend(
        fixture("airflow-operations.tsv")
            .into_iter()
            .filter(|(_, p)| p.starts_with("/api/v1/")),
    );
    let apis = [
        Api {
            template: "airflow",
            source: "Apache Airflow 3.3 (REST API `/api/v2`, the UI's `/ui`, sign-in `/auth`) and Airflow 2's `/api/v1`.",
            operations: airflow,
        },
        Api {
            template: "tekton",
            source: "Tekton's resources through the Kubernetes API (`tekton.dev` v1 and v1beta1).",
            operations: fixture("tekton-operations.tsv"),
        },
        Api {
            template: "gitlab",
            source: "GitLab's REST API v4, CI/CD and projects.",
            operations: fixture("gitlab-operations.tsv"),
        },
        Api {
            template: "conductor",
            source: "Conductor's REST API (conductor-oss, and the Orkes SDK's operations).",
            operations: fixture("conductor-operations.tsv"),
        },
        Api {
            template: "luigi",
            source: "Luigi's central scheduler (`luigid`).",
            operations: fixture("luigi-operations.tsv"),
        },
    ];
    let want = operations_document(&apis);
    let path = format!("{ROOT}/docs/templates.md");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/templates.md is not what the templates say: run `UPDATE_DOCS=1 cargo test --test template_coverage` and review the change"
    );
}
