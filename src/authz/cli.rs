//! `portcullis policy test | explain | diff`: the policy as code, from a terminal or CI.
//!
//! Each command returns its report as text and an exit code, so the binary only prints, and the
//! integration tests run the real binary against `policies/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use crate::authz::engine::{Engine, Query, Verdict};
use crate::authz::pattern;
use crate::authz::resources::{RuleAccess, Templates};
use crate::authz::tables::{self, Target, host_and_path};
use crate::authz::{load_engine, policy};
use crate::config::{Access, Config};

/// What a command prints and how it exits.
pub struct Report {
    pub text: String,
    pub code: u8,
}

/// A command that could not run: the text says why, on lines of its own.
fn failed(mut text: String) -> Report {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Report { text, code: 2 }
}

fn problems(what: &str, e: &policy::LoadError) -> String {
    let mut out = format!("{what} did not load:\n");
    for p in &e.0 {
        let _ = writeln!(out, "  {p}");
    }
    out
}

fn templates(config: Option<&Config>) -> Result<Templates, String> {
    let empty = BTreeMap::new();
    Templates::load(config.map_or(&empty, |c| &c.resource_templates)).map_err(|e| e.join("\n"))
}

/// The templates (built-in plus the configuration's) and the policy in `dir`, or the report of
/// why they did not load.
async fn load(dir: &Path, config: Option<&Config>) -> Result<(Templates, Engine), Report> {
    let templates = templates(config).map_err(failed)?;
    let engine = load_engine(dir, &templates, false)
        .await
        .map_err(|e| failed(problems(&dir.display().to_string(), &e)))?;
    Ok((templates, engine))
}

/// `policy test`: runs `dir/tests/*.toml` against `dir`.
pub async fn test(dir: &Path, config: Option<&Config>) -> Report {
    let (templates, engine) = match load(dir, config).await {
        Ok(loaded) => loaded,
        Err(report) => return report,
    };
    let tables = match tables::load(dir) {
        Ok(t) => t,
        Err(e) => return failed(problems("the decision tables", &e)),
    };
    let report = tables.run(&engine, &templates);
    let mut text = String::new();
    for f in &report.failures {
        let _ = writeln!(text, "FAIL {f}");
    }
    let _ = writeln!(
        text,
        "{} passed, {} failed ({} rules, version {})",
        report.passed,
        report.failures.len(),
        engine.rules().len(),
        engine.version()
    );
    if tables.case_count() == 0 {
        let _ = writeln!(
            text,
            "warning: {} has no decision tables in tests/*.toml",
            dir.display()
        );
    }
    if let Some(config) = config {
        let providers: Vec<&str> = config
            .identity_providers
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        for line in policy::unknown_providers(&engine.set, &providers) {
            let _ = writeln!(text, "warning: {line}");
        }
    }
    Report {
        text,
        code: u8::from(!report.failures.is_empty()),
    }
}

/// Who and what `policy explain` asks about.
pub struct Ask {
    pub subject: String,
    pub groups: Vec<String>,
    pub method: String,
    pub url: String,
    /// Overrides the domain the URL's host maps to.
    pub domain: Option<String>,
    /// Overrides the resource template the URL's host maps to.
    pub resources: Option<String>,
    /// The request's JSON body, for operations whose template reads it.
    pub body: Option<String>,
    /// The upstream's answer to the template's lookup, for operations that need one.
    pub lookup: Option<String>,
}

/// The configured route serving a host and path, as the proxy would choose it.
pub type RouteOf<'a> = &'a dyn Fn(&str, &str) -> Option<crate::config::Route>;

/// Finds where a URL goes: the configuration's routes when given, else the tables' `[hosts]`.
fn target(
    ask: &Ask,
    dir: &Path,
    route_of: Option<RouteOf<'_>>,
    templates: &Templates,
) -> Result<(Target, String, Option<String>), String> {
    let (host, path, query) = host_and_path(&ask.method, &ask.url)?;
    let mut found = match route_of {
        Some(route_of) => match route_of(&host, &path) {
            Some(r) if r.access == Access::Protected => {
                Some(Target::new(r.domain(), r.resources.as_deref(), templates))
            }
            Some(r) => {
                return Err(format!(
                    "route `{}` serves this URL and is not protected: the policy is not asked there",
                    r.name
                ));
            }
            None => None,
        },
        None => tables::load(dir)
            .map_err(|e| problems("the decision tables", &e))?
            .targets(templates)
            .remove(&host),
    };
    if let Some(domain) = &ask.domain {
        let t = found.get_or_insert_with(|| Target::new(domain, None, templates));
        t.domain = Arc::from(domain.as_str());
    }
    if let Some(name) = &ask.resources {
        let template = templates
            .get(name)
            .ok_or_else(|| format!("no resource template is named `{name}`"))?;
        if let Some(t) = found.as_mut() {
            t.template = Some(template.clone());
        }
    }
    let target = found.ok_or_else(|| {
        format!("no protected route serves `{host}`: pass --config, add it to a tests/*.toml [hosts], or give --domain")
    })?;
    Ok((target, path, query))
}

/// `policy explain`: the decision for one request and the rule behind it, or why none matched.
/// `route_of` maps the URL through the configuration's routes (given with `config`).
pub async fn explain(
    ask: &Ask,
    dir: &Path,
    config: Option<&Config>,
    route_of: Option<RouteOf<'_>>,
) -> Report {
    let (templates, engine) = match load(dir, config).await {
        Ok(loaded) => loaded,
        Err(report) => return report,
    };
    let subjects = match tables::subjects(&ask.subject, &ask.groups) {
        Ok(s) => s,
        Err(e) => return failed(format!("--as: {e}")),
    };
    let (target, path, url_query) = match target(ask, dir, route_of, &templates) {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let method = ask.method.to_ascii_uppercase();
    let mut resource = target.resource(&method, &path, url_query.as_deref());
    if let Err(e) = tables::apply_body(&mut resource, ask.body.as_deref()) {
        return failed(format!("--body: {e}"));
    }
    if let Err(e) = tables::apply_lookup(&mut resource, ask.lookup.as_deref()) {
        return failed(format!("--lookup: {e}"));
    }
    let template = target.template.as_ref().map_or("none", |t| t.name.as_str());
    let opened_to = match resource.access {
        RuleAccess::Route => None,
        RuleAccess::Public => Some("anyone, without credentials (public)"),
        RuleAccess::Authenticated => Some("anyone the route's identity providers vouch for (authenticated)"),
    };
    if let Some(whom) = opened_to {
        // As the proxy does: an operation the template opens is not the policy's to decide.
        let text = format!(
            "decision: allow\n\
             rule:     none: the {template} template opens {method} {path} to {whom}; the policy is not asked\n\
             request:  domain {}, object {}, action {} (template {template})\n",
            target.domain, resource.object, resource.action
        );
        return Report { text, code: 0 };
    }
    let decided = match tables::decide_all(&engine, &subjects, &target.domain, &resource) {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    let Some((query, verdict)) = decided.last().cloned() else {
        return failed("nothing was asked".into());
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "decision: {}",
        if verdict.allowed { "allow" } else { "deny" }
    );
    match &verdict.rule {
        Some(rule) => {
            let _ = writeln!(text, "rule:     {}  {rule}", rule.origin);
        }
        None => {
            let _ = writeln!(
                text,
                "rule:     none: no rule grants `{}` on `{}` in `{}` to these subjects and roles",
                query.action, query.object, query.domain
            );
        }
    }
    let _ = writeln!(
        text,
        "request:  domain {}, object {}, action {} (template {template})",
        query.domain, query.object, query.action
    );
    if decided.len() > 1 || !resource.also.is_empty() {
        let _ = writeln!(text, "objects:  every object the request names must be allowed:");
        for (q, v) in &decided {
            let _ = writeln!(
                text,
                "  {} {} {}",
                if v.allowed { "allow" } else { "deny " },
                q.action,
                q.object
            );
        }
    }
    if resource.refused {
        let _ = writeln!(text, "refused:  the template closes this operation to everyone");
    }
    let _ = writeln!(text, "subjects: {}", query.subjects.join(" "));
    let roles = if verdict.roles.is_empty() {
        "none".to_string()
    } else {
        verdict.roles.join(" ")
    };
    let _ = writeln!(text, "roles:    {roles}");
    if !verdict.allowed && verdict.rule.is_none() {
        let near = near_misses(&engine, &query);
        if !near.is_empty() {
            let _ = writeln!(
                text,
                "rules that would allow it, for a subject or role the caller does not hold:"
            );
            for line in near {
                let _ = writeln!(text, "  {line}");
            }
        }
    }
    let _ = writeln!(text, "version:  {}", engine.version());
    Report {
        text,
        code: u8::from(!verdict.allowed),
    }
}

/// Allow rules that match everything but the subject: what to grant, or which role to ask for.
fn near_misses(engine: &Engine, query: &Query) -> Vec<String> {
    engine
        .rules()
        .iter()
        .filter(|r| r.effect == policy::Effect::Allow)
        .filter(|r| r.domain == "*" || *r.domain == *query.domain)
        .filter(|r| r.action == "*" || r.action == query.action)
        .filter(|r| pattern::matches(&query.object, &r.object))
        .take(5)
        .map(|r| format!("{}  {r}", r.origin))
        .collect()
}

/// `policy diff`: the decisions that change between two policy directories.
pub async fn diff(old_dir: &Path, new_dir: &Path, config: Option<&Config>) -> Report {
    let (templates, old) = match load(old_dir, config).await {
        Ok(loaded) => loaded,
        Err(report) => return report,
    };
    let new = match load(new_dir, config).await {
        Ok((_, engine)) => engine,
        Err(report) => return report,
    };
    let mut queries = request_space(&old);
    queries.extend(request_space(&new));
    for dir in [old_dir, new_dir] {
        queries.extend(table_queries(dir, &templates));
    }
    let mut text = String::new();
    let mut changed = 0usize;
    for q in &queries {
        let (Ok(a), Ok(b)) = (old.evaluate(q), new.evaluate(q)) else {
            continue;
        };
        if a.allowed != b.allowed {
            changed += 1;
            let _ = writeln!(
                text,
                "{} -> {}  {}  in {}: {} {}  (was {}, now {})",
                word(&a),
                word(&b),
                q.subjects.join("+"),
                q.domain,
                q.action,
                q.object,
                origin(&a),
                origin(&b)
            );
        }
    }
    let _ = writeln!(
        text,
        "{changed} of {} decisions change ({} -> {})",
        queries.len(),
        old.version(),
        new.version()
    );
    Report {
        text,
        code: u8::from(changed > 0),
    }
}

fn word(v: &Verdict) -> &'static str {
    if v.allowed { "allow" } else { "deny" }
}

fn origin(v: &Verdict) -> String {
    v.rule
        .as_ref()
        .map_or_else(|| "no rule".into(), |r| r.origin.to_string())
}

/// Every subject a policy names (one at a time), against every domain, action and object it
/// names; patterns are sampled by filling each wildcard.
fn request_space(engine: &Engine) -> BTreeSet<Query> {
    let mut subjects = BTreeSet::new();
    for r in engine.rules() {
        subjects.insert(r.subject.clone());
    }
    for g in &engine.set.groupings {
        subjects.insert(g.member.clone());
    }
    subjects.retain(|s| !s.starts_with("role:"));
    let mut per_domain: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let domains: BTreeSet<String> = engine
        .rules()
        .iter()
        .map(|r| r.domain.clone())
        .chain(engine.set.groupings.iter().map(|g| g.domain.clone()))
        .filter(|d| d != "*")
        .collect();
    for r in engine.rules() {
        let sample = sample(&r.object);
        let targets: Vec<&String> = if r.domain == "*" {
            domains.iter().collect()
        } else {
            domains.iter().filter(|d| **d == r.domain).collect()
        };
        for d in targets {
            let entry = per_domain.entry(d.clone()).or_default();
            if let Some(s) = &sample {
                entry.0.insert(s.clone());
            }
            if r.action != "*" {
                entry.1.insert(r.action.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    for (domain, (objects, actions)) in &per_domain {
        for s in &subjects {
            for o in objects {
                for a in actions {
                    out.insert(Query {
                        subjects: vec![s.clone()],
                        domain: Arc::from(domain.as_str()),
                        object: o.clone(),
                        action: a.clone(),
                    });
                }
            }
        }
    }
    out
}

/// A concrete object a pattern matches (`dag:etl_*` → `dag:etl_x`); none for a regex.
fn sample(object: &str) -> Option<String> {
    if object.starts_with("regex:") {
        return None;
    }
    Some(object.replace("**", "x/x").replace('*', "x"))
}

fn table_queries(dir: &Path, templates: &Templates) -> Vec<Query> {
    let Ok(tables) = tables::load(dir) else {
        return Vec::new();
    };
    let targets = tables.targets(templates);
    let mut out = Vec::new();
    for (_, file) in &tables.files {
        for case in &file.cases {
            let Ok((host, path, query)) = host_and_path(&case.method, &case.url) else {
                continue;
            };
            let Some(target) = targets.get(&host) else {
                continue;
            };
            let mut resource = target.resource(&case.method.to_ascii_uppercase(), &path, query.as_deref());
            if tables::apply_body(&mut resource, case.body.as_deref()).is_err()
                || tables::apply_lookup(&mut resource, case.lookup.as_deref()).is_err()
            {
                continue;
            }
            let Ok(subjects) = tables::subjects(&case.principal, &case.groups) else {
                continue;
            };
            // Every object the request names: a change that only moves a bulk entry's DAG
            // shows too.
            let asked = std::iter::once((resource.object, resource.action)).chain(resource.also);
            for (object, action) in asked {
                out.push(Query {
                    subjects: subjects.clone(),
                    domain: target.domain.clone(),
                    object,
                    action,
                });
            }
        }
    }
    out
}
