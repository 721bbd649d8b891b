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
use crate::authz::resources::{Resource, RuleAccess, Template, Templates, path_resource};
use crate::canonical::Canonical;

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
    /// The request's JSON body, for operations whose template reads it (Airflow's bulk calls).
    #[serde(default)]
    pub body: Option<String>,
    /// The upstream's answer (JSON text) to the template's lookup, for operations whose rule
    /// looks up what they act on (an Airflow backfill's DAG, the DAGs an asset starts).
    #[serde(default)]
    pub lookup: Option<String>,
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
    /// Shared by every query of the route: asked per request, never copied.
    pub domain: Arc<str>,
    pub template: Option<Arc<Template>>,
}

impl Target {
    /// The target of a policy domain whose requests `resources` (a template name) describes; an
    /// unknown template name means none (configuration validation refuses those).
    pub fn new(domain: &str, resources: Option<&str>, templates: &Templates) -> Target {
        Target {
            domain: Arc::from(domain),
            template: resources.and_then(|n| templates.get(n)).cloned(),
        }
    }

    /// What a request asks; `query` is the raw query string. A body, when the matched rule
    /// reads one, is applied by the caller ([`Resource::body`]).
    /// The value that means "every one" in this template's paths (Airflow's `~`).
    pub fn any(&self) -> Option<&str> {
        self.template.as_ref().and_then(|t| t.any())
    }

    pub fn resource(&self, method: &str, path: &str, query: Option<&str>) -> Resource {
        match &self.template {
            Some(t) => t.resolve(method, path, query),
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
    // `--groups ""` names no group.
    subjects.extend(
        groups
            .iter()
            .filter(|g| !g.trim().is_empty())
            .map(|g| format!("group:{provider}/{g}")),
    );
    Ok(subjects)
}

/// Reads the objects a request's body names (`body`: its JSON text), when its rule asks.
pub fn apply_body(resource: &mut Resource, body: Option<&str>) -> Result<(), String> {
    if let Some(plan) = resource.body.take() {
        let json: serde_json::Value = match body {
            Some(text) => serde_json::from_str(text).map_err(|e| format!("the body is not JSON: {e}"))?,
            None => serde_json::Value::Null,
        };
        plan.apply(resource, &json);
    }
    Ok(())
}

/// Reads the objects the upstream's answer to the rule's lookup names (`answer`: its JSON
/// text), when its rule has one. Offline there is no upstream: the answer must be given.
pub fn apply_lookup(resource: &mut Resource, answer: Option<&str>) -> Result<(), String> {
    let Some(plan) = resource.lookup.take() else {
        return Ok(());
    };
    let path = plan
        .path
        .as_deref()
        .unwrap_or("(a path the request does not complete)");
    let text = answer.ok_or_else(|| {
        format!("the proxy asks the upstream GET {path} what this request acts on: give that answer (JSON)")
    })?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the lookup answer is not JSON: {e}"))?;
    if plan.path.is_none() || !plan.apply(resource, &json) {
        return Err(format!(
            "the proxy would refuse this request (object_unresolved): GET {path} does not say what it acts on"
        ));
    }
    Ok(())
}

/// Decides every (object, action) a request asks, the rule's own first, in order, until one is
/// refused: the last entry decides (a `refuse` rule's is always refused).
pub fn decide_all(
    engine: &Engine,
    subjects: &[String],
    domain: &str,
    resource: &Resource,
) -> Result<Vec<(Query, crate::authz::engine::Verdict)>, String> {
    let mut asked = vec![(resource.object.clone(), resource.action.clone())];
    asked.extend(resource.also.iter().cloned());
    let mut decided = Vec::new();
    for (object, action) in asked {
        let query = Query {
            subjects: subjects.to_vec(),
            domain: Arc::from(domain),
            object,
            action,
        };
        let mut verdict = engine.evaluate(&query).map_err(|e| e.to_string())?;
        if resource.refused {
            verdict.allowed = false;
            verdict.rule = None;
        }
        let refused = !verdict.allowed;
        decided.push((query, verdict));
        if refused {
            break;
        }
    }
    Ok(decided)
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
pub fn host_and_path(method: &str, url: &str) -> Result<(String, String, Option<String>), String> {
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
    Ok((view.host, view.path, view.query))
}

fn run_case(case: &Case, table: &TableFile, engine: &Engine, templates: &Templates) -> Result<(), String> {
    let (host, path, query) = host_and_path(&case.method, &case.url)?;
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
    let mut resource = target.resource(&method, &path, query.as_deref());
    apply_body(&mut resource, case.body.as_deref())?;
    apply_lookup(&mut resource, case.lookup.as_deref())?;
    let subjects = subjects(&case.principal, &case.groups)?;
    if resource.access != RuleAccess::Route {
        // The template opens this operation: the policy is not asked.
        return match case.expect {
            Expect::Allow if case.rule.is_none() => Ok(()),
            _ => Err(format!(
                "the template opens {} {} to every caller ({:?}): the policy is not asked",
                method, path, resource.access
            )),
        };
    }
    let decided = decide_all(engine, &subjects, &target.domain, &resource)?;
    let Some((query, verdict)) = decided.into_iter().last() else {
        return Err("nothing was asked".into());
    };
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
