//! Decision tables: `policies/tests/*.toml`, policy as code.
//!
//! Each file maps hosts to a policy domain (and resource template) and lists cases: a principal,
//! its groups, a method and URL, the expected decision and, optionally, the rule expected to
//! decide (`policy.csv:12` or the rule's text). The same runner serves `cargo test`,
//! `portcullis policy test`, and every load and reload (a policy whose tables fail never goes
//! into force).
//!
//! ```toml
//! [hosts]
//! "airflow.example.com" = { domain = "airflow", resources = "airflow" }
//!
//! [[case]]
//! name = "deployers trigger the etl DAGs"
//! principal = "user:okta/alice"
//! groups = ["data-eng"]
//! method = "POST"
//! url = "https://airflow.example.com/api/v1/dags/etl_daily/dagRuns"
//! expect = "allow"
//! rule = "policy.csv:21"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::authz::engine::{Engine, Query};
use crate::authz::policy::{LoadError, Origin, Problem};
use crate::authz::resources::{Resource, Template, Templates, path_resource};
use crate::proxy::canonical::Canonical;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDef {
    pub domain: String,
    #[serde(default)]
    pub resources: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// A subject with its provider: `user:<provider>/<sub or email>`, `svc:<provider>/<client>`,
    /// `ci:<provider>/<job subject>`.
    pub principal: String,
    /// The group claims as the principal's provider sends them (without `group:<provider>/`).
    #[serde(default)]
    pub groups: Vec<String>,
    pub method: String,
    pub url: String,
    pub expect: Expect,
    /// `file.csv:line`, or the rule's text (`p, role:deployer, airflow, dag:etl_*, trigger`).
    #[serde(default)]
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    #[serde(default)]
    pub hosts: BTreeMap<String, HostDef>,
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

/// Tables read from a directory, with their file names.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub files: Vec<(String, TableFile)>,
}

/// Where a request goes in policy terms: the domain and the template of its route.
#[derive(Debug, Clone)]
pub struct Target {
    pub domain: String,
    pub template: Option<Arc<Template>>,
}

impl Target {
    /// The target of a policy domain whose requests `resources` (a template name) describes; an
    /// unknown template name means none (configuration validation refuses those).
    pub fn new(domain: &str, resources: Option<&str>, templates: &Templates) -> Target {
        Target {
            domain: domain.to_string(),
            template: resources.and_then(|n| templates.get(n)).cloned(),
        }
    }

    pub fn resource(&self, method: &str, path: &str) -> Resource {
        match &self.template {
            Some(t) => t.resolve(method, path),
            None => path_resource(method, path),
        }
    }
}

/// Reads `dir/tests/*.toml`; a missing `tests` directory is no tables.
pub fn load(dir: &Path) -> Result<Tables, LoadError> {
    let tests = dir.join("tests");
    let Ok(entries) = std::fs::read_dir(&tests) else {
        return Ok(Tables::default());
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let name = format!(
            "tests/{}",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        );
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                toml::from_str::<TableFile>(&text).map_err(|e| e.to_string().replace('\n', " "))
            });
        match parsed {
            Ok(file) => files.push((name, file)),
            Err(message) => problems.push(Problem {
                origin: Some(Origin {
                    file: Arc::from(name.as_str()),
                    line: 0,
                }),
                message,
            }),
        }
    }
    if problems.is_empty() {
        Ok(Tables { files })
    } else {
        Err(LoadError(problems))
    }
}

/// The subjects of a principal named in a table (`user:okta/alice`): its own, then its groups,
/// which come from the same provider (`group:okta/<g>`). Refused unless the principal names its
/// provider.
pub fn subjects(principal: &str, groups: &[String]) -> Result<Vec<String>, String> {
    crate::authz::policy::subject_ok(principal)?;
    let provider = crate::authz::policy::provider_of(principal).ok_or_else(|| {
        format!("`{principal}` is a role: name a caller (user:, svc:, ci:) with its provider")
    })?;
    let mut subjects = vec![principal.to_string()];
    subjects.extend(groups.iter().map(|g| format!("group:{provider}/{g}")));
    Ok(subjects)
}

/// One failed case, said so an operator can fix the policy or the table.
#[derive(Debug, Clone)]
pub struct Failure {
    pub file: String,
    pub case: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: \"{}\": {}", self.file, self.case, self.message)
    }
}

/// The outcome of running the tables.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failures: Vec<Failure>,
}

impl Tables {
    /// The host map of every file, for `policy explain` without a configuration.
    pub fn targets(&self, templates: &Templates) -> BTreeMap<String, Target> {
        let mut out = BTreeMap::new();
        for (_, file) in &self.files {
            for (host, def) in &file.hosts {
                out.insert(
                    host.to_ascii_lowercase(),
                    Target::new(&def.domain, def.resources.as_deref(), templates),
                );
            }
        }
        out
    }

    pub fn case_count(&self) -> usize {
        self.files.iter().map(|(_, f)| f.cases.len()).sum()
    }

    /// Runs every case against `engine`.
    pub fn run(&self, engine: &Engine, templates: &Templates) -> Report {
        let mut report = Report::default();
        for (file, table) in &self.files {
            for case in &table.cases {
                match run_case(case, table, engine, templates) {
                    Ok(()) => report.passed += 1,
                    Err(message) => report.failures.push(Failure {
                        file: file.clone(),
                        case: case.name.clone(),
                        message,
                    }),
                }
            }
        }
        report
    }
}

/// The host and path a request for `url` is routed and decided on: the proxy's own canonical
/// view (one decoding, dot segments resolved, slashes merged), so a table or `policy explain`
/// never judges a path other than the one the proxy would. A URL the proxy would refuse (400)
/// is an error that says so.
pub fn host_and_path(method: &str, url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if uri.host().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let tls = uri.scheme_str() == Some("https");
    let view = Canonical::build(
        &method,
        &uri,
        http::Version::HTTP_11,
        &http::HeaderMap::new(),
        tls,
    )
    .map_err(|e| {
        format!(
            "the proxy would refuse this request with {} {} ({e}); it is never decided",
            e.status().as_u16(),
            e.code()
        )
    })?;
    Ok((view.host, view.path))
}

fn run_case(case: &Case, table: &TableFile, engine: &Engine, templates: &Templates) -> Result<(), String> {
    let (host, path) = host_and_path(&case.method, &case.url)?;
    let def = table
        .hosts
        .get(&host)
        .ok_or_else(|| format!("host `{host}` is not in this file's [hosts]"))?;
    if let Some(name) = &def.resources
        && templates.get(name).is_none()
    {
        return Err(format!("no resource template named `{name}`"));
    }
    let target = Target::new(&def.domain, def.resources.as_deref(), templates);
    let method = case.method.to_ascii_uppercase();
    let resource = target.resource(&method, &path);
    let query = Query {
        subjects: subjects(&case.principal, &case.groups)?,
        domain: target.domain,
        object: resource.object,
        action: resource.action,
    };
    let verdict = engine.evaluate(&query).map_err(|e| e.to_string())?;
    let got = if verdict.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let decided = verdict.rule.as_ref().map_or_else(
        || "no rule matched".to_string(),
        |r| format!("{} ({r})", r.origin),
    );
    if got != case.expect {
        return Err(format!(
            "expected {:?}, got {:?} for {} {} {} in {}: {decided}",
            case.expect,
            got,
            query.subjects.join("+"),
            query.action,
            query.object,
            query.domain
        )
        .to_lowercase());
    }
    if let Some(expected) = &case.rule {
        let matches = verdict.rule.as_ref().is_some_and(|r| {
            r.origin.to_string() == *expected || r.to_string() == *expected || {
                // The rule text without an explicit `allow`.
                r.to_string().strip_suffix(", allow") == Some(expected.as_str())
            }
        });
        if !matches {
            return Err(format!("expected the rule `{expected}` to decide; {decided} did"));
        }
    }
    Ok(())
}
