//! Reading a policy directory: `model.conf` and every `*.csv` beside it, checked line by line.
//!
//! casbin-rs skips lines it does not understand, reports no line numbers, and panics at request
//! time on a bad pattern. So Portcullis reads the files itself, reports every problem with its
//! file and line, and hands Casbin only rules that passed. Pure: no I/O beyond reading the files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::authz::pattern;

/// Subject namespaces. A subject always carries one, so a user can never be named like a role.
pub const NAMESPACES: [&str; 5] = ["user:", "group:", "role:", "svc:", "ci:"];

/// The effects casbin-rs implements; any other expression panics inside casbin-rs at request time.
const EFFECTS: [&str; 4] = [
    "some(where (p.eft == allow))",
    "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
    "!some(where (p.eft == deny))",
    "priority(p.eft) || deny",
];

/// Where a rule or a problem is: `policy.csv:12`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub const fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// One `p` line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub subject: String,
    pub domain: String,
    pub object: String,
    pub action: String,
    pub effect: Effect,
    pub origin: Origin,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p, {}, {}, {}, {}, {}",
            self.subject,
            self.domain,
            self.object,
            self.action,
            self.effect.as_str()
        )
    }
}

/// One `g` line: `member` holds `role` in `domain` (or in every domain with `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    pub member: String,
    pub role: String,
    pub domain: String,
    pub origin: Origin,
}

/// The model, as Casbin will run it.
#[derive(Debug, Clone)]
pub struct Model {
    /// The operator's model with two additions Casbin needs for Portcullis to name the rule that
    /// decided: a hidden `p.src` field and a final `portcullisRule(p.src)` term in the matcher.
    pub casbin_text: String,
    /// Whether `p` has an `eft` field (otherwise every rule allows).
    pub has_effect: bool,
    /// Whether the operator's matcher reads the caller's subjects only as `p.sub in r.sub`
    /// (exact membership), so a subject that no rule or `g` line names cannot change a decision.
    pub subjects_by_membership: bool,
    pub matcher_origin: Origin,
}

/// A policy directory that passed every check.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// A content hash over the model and the rule files, in file order: `sha256:` + 16 hex digits.
    pub version: Arc<str>,
    pub model: Model,
    /// Shared with the decisions that name them.
    pub rules: Vec<Arc<Rule>>,
    pub groupings: Vec<Grouping>,
}

/// A problem with a policy, with its place when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub origin: Option<Origin>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(origin) => write!(f, "{origin}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Every problem found, so an operator fixes them in one pass.
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError(pub Vec<Problem>);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl LoadError {
    pub fn one(origin: Option<Origin>, message: impl Into<String>) -> Self {
        LoadError(vec![Problem {
            origin,
            message: message.into(),
        }])
    }
}

/// Reads `dir/model.conf` and `dir/*.csv` (in name order).
pub fn load(dir: &Path) -> Result<PolicySet, LoadError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| LoadError::one(None, format!("cannot read {}: {e}", path.display())))
    };
    let model_text = read(&dir.join("model.conf"))?;
    let mut csv_paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            LoadError::one(
                None,
                format!("cannot read the policy directory {}: {e}", dir.display()),
            )
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv") && p.is_file())
        .collect();
    csv_paths.sort();
    if csv_paths.is_empty() {
        return Err(LoadError::one(
            None,
            format!("{} has no *.csv policy file: add policy.csv", dir.display()),
        ));
    }
    let mut files = Vec::with_capacity(csv_paths.len());
    for path in csv_paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((name, read(&path)?));
    }
    parse(&model_text, &files)
}

/// Checks a model and rule files given as text: `files` are (file name, content).
pub fn parse(model_text: &str, files: &[(String, String)]) -> Result<PolicySet, LoadError> {
    let mut problems = Vec::new();
    let model = parse_model(model_text, &mut problems);
    let mut rules = Vec::new();
    let mut groupings = Vec::new();
    for (name, text) in files {
        let file: Arc<str> = Arc::from(name.as_str());
        for (i, line) in text.lines().enumerate() {
            let origin = Origin {
                file: file.clone(),
                line: u32::try_from(i + 1).unwrap_or(u32::MAX),
            };
            match parse_line(line, &origin, model.as_ref().is_some_and(|m| m.has_effect)) {
                Ok(Some(Line::Rule(rule))) => rules.push(Arc::new(rule)),
                Ok(Some(Line::Grouping(g))) => groupings.push(g),
                Ok(None) => {}
                Err(message) => problems.push(Problem {
                    origin: Some(origin),
                    message,
                }),
            }
        }
    }
    if rules.is_empty() && problems.is_empty() {
        problems.push(Problem {
            origin: None,
            message: "the policy has no `p` rule, so it would deny everything: add one".into(),
        });
    }
    match model {
        Some(model) if problems.is_empty() => Ok(PolicySet {
            version: version(model_text, files),
            model,
            rules,
            groupings,
        }),
        _ => Err(LoadError(problems)),
    }
}

fn version(model_text: &str, files: &[(String, String)]) -> Arc<str> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(model_text.as_bytes());
    for (name, text) in files {
        ctx.update(b"\0");
        ctx.update(name.as_bytes());
        ctx.update(b"\0");
        ctx.update(text.as_bytes());
    }
    let digest = ctx.finish();
    let short = digest.as_ref().get(..8).unwrap_or_default();
    Arc::from(format!("sha256:{}", crate::hex::encode(short)))
}

enum Line {
    Rule(Rule),
    Grouping(Grouping),
}

fn parse_line(line: &str, origin: &Origin, has_effect: bool) -> Result<Option<Line>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.contains('"') {
        return Err("quoted fields are not supported: write the values without quotes".into());
    }
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    match fields.as_slice() {
        ["p", subject, domain, object, action, rest @ ..] => {
            let effect = match rest {
                [] => Effect::Allow,
                ["allow"] if has_effect => Effect::Allow,
                ["deny"] if has_effect => Effect::Deny,
                [_] if !has_effect => {
                    return Err(
                        "this rule has an effect but the model's policy_definition has no `eft` field".into(),
                    );
                }
                [other] => return Err(format!("the effect is `{other}`: write `allow` or `deny`")),
                _ => {
                    return Err(format!(
                        "a `p` line has 4 or 5 fields (sub, dom, obj, act[, eft]); this one has {}",
                        fields.len() - 1
                    ));
                }
            };
            subject_ok(subject)?;
            name_ok("domain", domain)?;
            name_ok("action", action)?;
            if object.is_empty() {
                return Err("the object is empty".into());
            }
            pattern::compile(object)?;
            Ok(Some(Line::Rule(Rule {
                subject: (*subject).to_string(),
                domain: (*domain).to_string(),
                object: (*object).to_string(),
                action: (*action).to_string(),
                effect,
                origin: origin.clone(),
            })))
        }
        ["p", ..] => Err(format!(
            "a `p` line has 4 or 5 fields (sub, dom, obj, act[, eft]); this one has {}",
            fields.len() - 1
        )),
        ["g", member, role, domain] => {
            subject_ok(member)?;
            if !role.starts_with("role:") {
                return Err(format!(
                    "`{role}` is not a role: the second field of a `g` line starts with `role:`"
                ));
            }
            subject_ok(role)?;
            if member.starts_with("role:") && member == role {
                return Err(format!("`{role}` inherits itself"));
            }
            name_ok("domain", domain)?;
            Ok(Some(Line::Grouping(Grouping {
                member: (*member).to_string(),
                role: (*role).to_string(),
                domain: (*domain).to_string(),
                origin: origin.clone(),
            })))
        }
        ["g", ..] => Err(format!(
            "a `g` line has 3 fields (member, role, domain; `*` for every domain); this one has {}",
            fields.len() - 1
        )),
        [other, ..] => Err(format!(
            "unknown line type `{other}`: policy lines start with `p` or `g`"
        )),
        [] => Ok(None),
    }
}

/// Namespaces whose subjects name the identity provider that vouched for them.
pub const PROVIDER_NAMESPACES: [&str; 4] = ["user:", "group:", "svc:", "ci:"];

pub use crate::config::is_provider_name;

/// The provider a subject names (`okta` in `user:okta/alice`), if it is of a provider namespace
/// and names one.
pub fn provider_of(subject: &str) -> Option<&str> {
    let ns = PROVIDER_NAMESPACES.iter().find(|ns| subject.starts_with(**ns))?;
    let (provider, name) = subject.get(ns.len()..)?.split_once('/')?;
    (is_provider_name(provider) && !name.is_empty()).then_some(provider)
}

/// The identity providers the policy's subjects name that are not in `providers` (the
/// configured names), one sentence each with the lines that name them: those lines load, and
/// match no caller (a misspelt provider, or one this deployment does not use). Warnings, not
/// errors: one policy may serve deployments with different providers.
pub fn unknown_providers(set: &PolicySet, providers: &[&str]) -> Vec<String> {
    let mut unknown: BTreeMap<&str, Vec<&Origin>> = BTreeMap::new();
    let subjects = set
        .rules
        .iter()
        .map(|r| (&r.origin, r.subject.as_str()))
        .chain(set.groupings.iter().map(|g| (&g.origin, g.member.as_str())));
    for (origin, subject) in subjects {
        if let Some(provider) = provider_of(subject).filter(|p| !providers.contains(p)) {
            unknown.entry(provider).or_default().push(origin);
        }
    }
    unknown
        .into_iter()
        .map(|(provider, origins)| {
            let hint = match crate::config::closest(provider, providers.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None if providers.is_empty() => "no [[identity_providers]] is configured".into(),
                None => format!("the configured ones: {}", providers.join(", ")),
            };
            let shown: Vec<String> = origins.iter().take(5).map(ToString::to_string).collect();
            let more = match origins.len() {
                n if n > 5 => format!(" and {} more", n - 5),
                _ => String::new(),
            };
            format!(
                "{}{more}: the identity provider `{provider}` is not configured, so {} no caller ({hint})",
                shown.join(", "),
                if origins.len() == 1 {
                    "this line matches"
                } else {
                    "these lines match"
                },
            )
        })
        .collect()
}

/// Whether a subject can stand in a policy line: namespaced, exact, and (but for roles) naming
/// the provider that vouches for it, since a name means something only with its provider.
pub fn subject_ok(subject: &str) -> Result<(), String> {
    let Some(ns) = NAMESPACES.iter().find(|ns| subject.starts_with(**ns)) else {
        return Err(format!(
            "`{subject}` has no namespace: subjects start with one of {}",
            NAMESPACES.join(" ")
        ));
    };
    if subject.len() == ns.len() {
        return Err(format!("`{subject}` names no one after the namespace"));
    }
    if subject.contains('*') {
        return Err(format!("`{subject}`: subjects are exact names, not patterns"));
    }
    if *ns != "role:" && provider_of(subject).is_none() {
        let rest = subject.get(ns.len()..).unwrap_or_default();
        return Err(format!(
            "`{subject}` does not name the identity provider that vouches for it: write \
             `{ns}<provider>/{rest}`, where <provider> is an [[identity_providers]] name \
             (e.g. `{ns}okta/{rest}`); the same name from two providers is two callers"
        ));
    }
    Ok(())
}

fn name_ok(what: &str, value: &str) -> Result<(), String> {
    if value == "*"
        || (!value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)))
    {
        Ok(())
    } else {
        Err(format!(
            "the {what} `{value}` is not a name: use letters, digits, `_`, `-`, `.`, or `*` for any"
        ))
    }
}

/// Reads the five sections; checks the parts Portcullis relies on.
fn parse_model(text: &str, problems: &mut Vec<Problem>) -> Option<Model> {
    let file: Arc<str> = Arc::from("model.conf");
    let at = |line: usize| Origin {
        file: file.clone(),
        line: u32::try_from(line).unwrap_or(u32::MAX),
    };
    // A problem at a line of model.conf.
    let problem = |line: usize, message: String| Problem {
        origin: Some(at(line)),
        message,
    };
    let mut section = String::new();
    let mut entries: Vec<(String, String, String, usize)> = Vec::new();
    let before = problems.len();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !section.is_empty() => {
                entries.push((
                    section.clone(),
                    key.trim().to_string(),
                    value.trim().to_string(),
                    i + 1,
                ));
            }
            _ => problems.push(problem(i + 1, "expected `key = value` inside a [section]".into())),
        }
    }
    let find = |sec: &str, key: &str| entries.iter().find(|e| e.0 == sec && e.1 == key);
    let tokens = |v: &str| v.split(',').map(|t| t.trim().to_string()).collect::<Vec<_>>();

    match find("request_definition", "r") {
        Some((_, _, v, line)) if tokens(v) != ["sub", "dom", "obj", "act"] => problems.push(problem(
            *line,
            "Portcullis fills the request as `r = sub, dom, obj, act`: write exactly that".into(),
        )),
        Some(_) => {}
        None => problems.push(problem(
            1,
            "no [request_definition] `r = sub, dom, obj, act`".into(),
        )),
    }
    let mut has_effect = false;
    let mut p_line = None;
    match find("policy_definition", "p") {
        Some((_, _, v, line)) => {
            let t = tokens(v);
            has_effect = t.len() == 5;
            if t != ["sub", "dom", "obj", "act"] && t != ["sub", "dom", "obj", "act", "eft"] {
                problems.push(problem(
                    *line,
                    "write `p = sub, dom, obj, act, eft` (or without `eft`)".into(),
                ));
            }
            p_line = Some(v.clone());
        }
        None => problems.push(problem(
            1,
            "no [policy_definition] `p = sub, dom, obj, act, eft`".into(),
        )),
    }
    if let Some((_, _, v, line)) = find("role_definition", "g")
        && tokens(v) != ["_", "_", "_"]
    {
        problems.push(problem(
            *line,
            "roles are per domain: write `g = _, _, _` (member, role, domain)".into(),
        ));
    }
    match find("policy_effect", "e") {
        Some((_, _, v, line)) if !EFFECTS.contains(&v.as_str()) => problems.push(problem(
            *line,
            format!("casbin-rs supports only these effects: {}", EFFECTS.join(" | ")),
        )),
        Some((_, _, v, line)) if !has_effect && v.contains("deny") => problems.push(problem(
            *line,
            "this effect reads `p.eft`, so add `eft` to the policy_definition".into(),
        )),
        Some(_) => {}
        None => problems.push(problem(1, "no [policy_effect] `e = ...`".into())),
    }
    let matcher = find("matchers", "m");
    if matcher.is_none() {
        problems.push(problem(1, "no [matchers] `m = ...`".into()));
    }
    if let Some((_, _, v, line)) = matcher
        && (v.contains("portcullisRule") || v.contains("p.src"))
    {
        problems.push(problem(
            *line,
            "`portcullisRule` and `p.src` are reserved for Portcullis".into(),
        ));
    }
    if problems.len() > before {
        return None;
    }
    let (Some(p), Some((_, _, m, m_line))) = (p_line, matcher) else {
        return None;
    };
    let mut casbin_text = String::new();
    for (sec, key, value, _) in &entries {
        let value = match (sec.as_str(), key.as_str()) {
            ("policy_definition", "p") => format!("{p}, src"),
            ("matchers", "m") => format!("({m}) && portcullisRule(p.src)"),
            _ => value.clone(),
        };
        casbin_text.push_str(&format!("[{sec}]\n{key} = {value}\n"));
    }
    // Conservative: any other spelling of the subject (Casbin's escaped `r_sub` included) turns
    // the shortcut off rather than being understood.
    let rest = m.replace("p.sub in r.sub", "");
    let subjects_by_membership = rest.len() < m.len() && !rest.contains("r.sub") && !rest.contains("r_sub");
    Some(Model {
        casbin_text,
        has_effect,
        subjects_by_membership,
        matcher_origin: at(*m_line),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "[request_definition]\nr = sub, dom, obj, act\n\n[policy_definition]\np = sub, dom, obj, act, eft\n\n[role_definition]\ng = _, _, _\n\n[policy_effect]\ne = some(where (p.eft == allow)) && !some(where (p.eft == deny))\n\n[matchers]\nm = r.dom == p.dom && r.act == p.act && p.sub in r.sub && resourceMatch(r.obj, p.obj)\n";

    fn parse_csv(csv: &str) -> Result<PolicySet, LoadError> {
        parse(MODEL, &[("policy.csv".into(), csv.into())])
    }

    #[test]
    fn every_bad_line_is_reported_with_its_file_and_line() {
        let error = parse_csv(
            "# roles\np, role:viewer, airflow, dag:*, read\np, viewer, airflow, dag:*, read\np, role:x, airflow, regex:dag:(etl, read\nq, a, b\np, role:x, airflow\ng, group:okta/ops, deployer, airflow\ng, group:sre, role:x, airflow\n",
        )
        .unwrap_err();
        let lines: Vec<String> = error
            .0
            .iter()
            .map(|p| p.origin.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(
            lines,
            [
                "policy.csv:3",
                "policy.csv:4",
                "policy.csv:5",
                "policy.csv:6",
                "policy.csv:7",
                "policy.csv:8"
            ]
        );
        let unnamed = &error.0[5].message;
        assert!(
            unnamed.contains("`group:<provider>/sre`") && unnamed.contains("[[identity_providers]]"),
            "{unnamed}"
        );
        assert!(
            error.0[1].message.starts_with("invalid regex"),
            "{}",
            error.0[1].message
        );
    }

    #[test]
    fn a_good_policy_keeps_each_rule_s_origin_and_a_stable_version() {
        let csv = "p, role:viewer, airflow, dag:*, read\n\ng, group:okta/ops, role:viewer, airflow\np, user:okta/bob, airflow, dag:x, delete, deny\n";
        let a = parse_csv(csv).unwrap();
        assert_eq!(a.rules.len(), 2);
        assert_eq!(a.rules[1].origin.to_string(), "policy.csv:4");
        assert_eq!(a.rules[1].effect, Effect::Deny);
        assert_eq!(a.groupings[0].origin.line, 3);
        assert_eq!(a.version, parse_csv(csv).unwrap().version);
        assert_ne!(
            a.version,
            parse_csv(&csv.replace("read", "trigger")).unwrap().version
        );
        assert!(a.model.casbin_text.contains("p = sub, dom, obj, act, eft, src"));
        assert!(a.model.casbin_text.contains("&& portcullisRule(p.src)"));
    }

    #[test]
    fn every_subject_but_a_role_names_its_provider() {
        for good in [
            "user:okta/alice@corp.com",
            "group:gitlab/namespace:72",
            "svc:k8s/ci/bot/uid-1",
            "ci:github/repository:1:refs/heads/main",
            "role:admin",
        ] {
            assert!(subject_ok(good).is_ok(), "{good}");
        }
        for bad in [
            "user:alice",
            "group:sre",
            "svc:/bot",
            "ci:gitlab/",
            "group:ok ta/sre",
            "user:okta:x/alice",
        ] {
            assert!(subject_ok(bad).is_err(), "{bad}");
        }
        assert_eq!(provider_of("group:okta/sre"), Some("okta"));
        assert_eq!(provider_of("role:admin"), None);
    }

    #[test]
    fn a_model_casbin_would_mishandle_is_refused_with_its_line() {
        let bad = MODEL
            .replace("r = sub, dom, obj, act", "r = sub, obj, act")
            .replace(
                "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
                "max(p.eft)",
            );
        let error = parse(&bad, &[("policy.csv".into(), "p, role:a, d, o, read\n".into())]).unwrap_err();
        let lines: Vec<u32> = error.0.iter().map(|p| p.origin.as_ref().unwrap().line).collect();
        assert_eq!(lines, [2, 11]);
    }
}
