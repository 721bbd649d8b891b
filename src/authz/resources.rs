//! Resource templates: turn a request to a known API into a policy object and verb.
//!
//! `POST /api/v1/dags/etl_daily/dagRuns` on an Airflow route becomes object `dag:etl_daily`,
//! action `trigger`, so a policy reads `p, role:deployer, airflow, dag:etl_*, trigger` instead of
//! path patterns. Built-in templates (Airflow, Tekton, GitLab, Conductor, Luigi) are written in
//! `templates.toml` in the same form operators use in `[resource_templates.<name>]`.
//!
//! A template is an ordered list of rules; the first whose methods and path match wins. Path
//! segments are literal, `{name}` (one non-empty segment) or `{name*}` (the rest, at least one
//! segment). Parameters named `pipeline`, `run`, `task` and `task_run` also fill the audit event's
//! workflow attributes. A request no rule matches keeps the canonical path as object and the
//! HTTP method as action. Pure: the input is the canonical view's method and path.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

const BUILTIN: &str = include_str!("templates.toml");

/// One template, as written in TOML.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TemplateDef {
    /// What the template covers, for the people who read the TOML.
    #[serde(default)]
    pub description: String,
    /// A path value that means "all of them" (Airflow's `~`): it becomes `*` in the object.
    #[serde(default)]
    pub any: Option<String>,
    pub rules: Vec<RuleDef>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// HTTP methods this rule covers; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path with `{name}` and `{name*}` parameters.
    pub path: String,
    /// The object, with `{name}` filled from the path.
    pub object: String,
    /// The verb, with `{name}` filled from the path.
    pub action: String,
    /// Parameters that must take one of the listed values for this rule to match.
    #[serde(default)]
    pub only: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

#[derive(Debug, Clone)]
struct CompiledRule {
    methods: Vec<String>,
    segments: Vec<Segment>,
    object: String,
    action: String,
    only: BTreeMap<String, Vec<String>>,
}

/// A checked template, ready to match requests.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    any: Option<String>,
    rules: Vec<CompiledRule>,
}

/// Workflow attributes a template extracted, for the audit event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workflow {
    /// `cicd.pipeline.name`: a DAG, pipeline or workflow name.
    pub pipeline: Option<String>,
    /// `cicd.pipeline.run.id`
    pub run: Option<String>,
    /// `cicd.pipeline.task.name`
    pub task: Option<String>,
    /// `cicd.pipeline.task.run.id`
    pub task_run: Option<String>,
}

/// What the policy is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub object: String,
    pub action: String,
    pub workflow: Workflow,
}

impl Template {
    pub fn compile(name: &str, def: &TemplateDef) -> Result<Template, String> {
        let mut rules = Vec::with_capacity(def.rules.len());
        for (i, rule) in def.rules.iter().enumerate() {
            let at = |m: String| format!("rules[{i}]: {m}");
            let segments = parse_path(&rule.path).map_err(at)?;
            let names: Vec<&str> = segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(n) | Segment::Rest(n) => Some(n.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect();
            let only = rule.only.keys().map(String::as_str);
            for field in [&rule.object, &rule.action] {
                for used in placeholders(field).into_iter().chain(only.clone()) {
                    if !names.contains(&used) {
                        return Err(at(format!(
                            "`{{{used}}}` is not a parameter of path `{}`",
                            rule.path
                        )));
                    }
                }
            }
            if rule.object.is_empty() || rule.action.is_empty() {
                return Err(at("object and action must not be empty".into()));
            }
            rules.push(CompiledRule {
                methods: rule.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                segments,
                object: rule.object.clone(),
                action: rule.action.clone(),
                only: rule.only.clone(),
            });
        }
        Ok(Template {
            name: name.to_string(),
            any: def.any.clone(),
            rules,
        })
    }

    /// The object and action for a request; unmatched requests keep path and method.
    pub fn resolve(&self, method: &str, path: &str) -> Resource {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        for rule in &self.rules {
            if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m == method) {
                continue;
            }
            if let Some(params) = match_path(&rule.segments, &parts)
                && rule
                    .only
                    .iter()
                    .all(|(k, allowed)| params.iter().any(|(n, v)| n == k && allowed.contains(v)))
            {
                let value = |v: &str| match &self.any {
                    Some(any) if v == any => "*".to_string(),
                    _ => v.to_string(),
                };
                let params: Vec<(&str, String)> = params.into_iter().map(|(k, v)| (k, value(&v))).collect();
                let get = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
                return Resource {
                    object: fill(&rule.object, &params),
                    action: fill(&rule.action, &params),
                    workflow: Workflow {
                        pipeline: get("pipeline"),
                        run: get("run"),
                        task: get("task"),
                        task_run: get("task_run"),
                    },
                };
            }
        }
        path_resource(method, path)
    }
}

/// The object and action on a route without a template.
pub fn path_resource(method: &str, path: &str) -> Resource {
    Resource {
        object: path.to_string(),
        action: method.to_string(),
        workflow: Workflow::default(),
    }
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path `{path}` must start with `/`"));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len().saturating_sub(1);
    parts
        .iter()
        .enumerate()
        .map(
            |(i, part)| match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if name.ends_with('*') && i == last => {
                    Ok(Segment::Rest(name.trim_end_matches('*').to_string()))
                }
                Some(name) if name.ends_with('*') => Err(format!("`{{{name}}}` may only end the path")),
                Some(name)
                    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                {
                    Ok(Segment::Param(name.to_string()))
                }
                Some(name) => Err(format!(
                    "`{{{name}}}` is not a parameter name (letters, digits, `_`)"
                )),
                None if part.contains(['{', '}', '*']) => {
                    Err(format!("segment `{part}` mixes text and a parameter"))
                }
                None => Ok(Segment::Literal((*part).to_string())),
            },
        )
        .collect()
}

fn match_path<'a>(segments: &'a [Segment], parts: &[&str]) -> Option<Vec<(&'a str, String)>> {
    let mut params = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Literal(l) => (parts.get(i)? == l).then_some(())?,
            Segment::Param(name) => {
                let value = parts.get(i).filter(|v| !v.is_empty())?;
                params.push((name.as_str(), (*value).to_string()));
            }
            Segment::Rest(name) => {
                let rest = parts
                    .get(i..)
                    .filter(|r| !r.is_empty() && r.iter().all(|p| !p.is_empty()))?;
                params.push((name.as_str(), rest.join("/")));
                return Some(params);
            }
        }
    }
    (parts.len() == segments.len()).then_some(params)
}

fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest.get(start..).and_then(|r| r.find('}')) else {
            break;
        };
        if let Some(name) = rest.get(start + 1..start + len) {
            out.push(name);
        }
        rest = rest.get(start + len + 1..).unwrap_or_default();
    }
    out
}

fn fill(text: &str, params: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in params {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// The built-in templates plus the operator's, by name.
#[derive(Debug, Clone, Default)]
pub struct Templates(BTreeMap<String, Arc<Template>>);

impl Templates {
    /// Built-ins, then the operator's (`[resource_templates.<name>]`), which may replace a built-in.
    /// Errors name the template and rule.
    pub fn load(custom: &BTreeMap<String, TemplateDef>) -> Result<Templates, Vec<String>> {
        let mut errors = Vec::new();
        let mut all = BTreeMap::new();
        // Part of the binary and checked by a unit test; reported rather than panicking all the same.
        let builtin: BTreeMap<String, TemplateDef> = toml::from_str(BUILTIN).unwrap_or_else(|e| {
            errors.push(format!("(built-in templates): {e}"));
            BTreeMap::new()
        });
        for (name, def) in builtin.iter().chain(custom.iter()) {
            match Template::compile(name, def) {
                Ok(t) => {
                    all.insert(name.clone(), Arc::new(t));
                }
                Err(e) => errors.push(format!("{name}.{e}")),
            }
        }
        if errors.is_empty() {
            Ok(Templates(all))
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Template>> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Template>> {
        self.0.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(rules: &str) -> Template {
        let def: TemplateDef = toml::from_str(rules).unwrap();
        Template::compile("t", &def).unwrap()
    }

    #[test]
    fn the_built_in_templates_all_compile() {
        let defs: BTreeMap<String, TemplateDef> = toml::from_str(BUILTIN).unwrap();
        let names: Vec<&str> = defs.keys().map(String::as_str).collect();
        assert_eq!(names, ["airflow", "conductor", "gitlab", "luigi", "tekton"]);
        Templates::load(&BTreeMap::new()).unwrap();
    }

    #[test]
    fn parameters_fill_the_object_and_the_workflow() {
        let t = template(
            "any = \"~\"\n[[rules]]\nmethods = [\"POST\"]\npath = \"/api/v1/dags/{pipeline}/dagRuns\"\nobject = \"dag:{pipeline}\"\naction = \"trigger\"\n",
        );
        let r = t.resolve("POST", "/api/v1/dags/etl_daily/dagRuns");
        assert_eq!(
            (r.object.as_str(), r.action.as_str()),
            ("dag:etl_daily", "trigger")
        );
        assert_eq!(r.workflow.pipeline.as_deref(), Some("etl_daily"));
        assert_eq!(t.resolve("POST", "/api/v1/dags/~/dagRuns").object, "dag:*");
        // Another method, a longer path or an empty segment falls back to path and method.
        assert_eq!(t.resolve("GET", "/api/v1/dags/etl/dagRuns").action, "GET");
        assert_eq!(
            t.resolve("POST", "/api/v1/dags/etl/dagRuns/x").object,
            "/api/v1/dags/etl/dagRuns/x"
        );
        assert_eq!(t.resolve("POST", "/api/v1/dags//dagRuns").action, "POST");
    }

    #[test]
    fn a_rest_parameter_takes_the_remaining_segments() {
        let t =
            template("[[rules]]\npath = \"/files/{path*}\"\nobject = \"file:{path}\"\naction = \"read\"\n");
        assert_eq!(t.resolve("GET", "/files/a/b/c").object, "file:a/b/c");
        assert_eq!(t.resolve("GET", "/files").object, "/files");
    }

    #[test]
    fn a_template_naming_an_unknown_parameter_is_refused() {
        let def: TemplateDef =
            toml::from_str("[[rules]]\npath = \"/x/{id}\"\nobject = \"x:{name}\"\naction = \"read\"\n")
                .unwrap();
        let error = Template::compile("t", &def).unwrap_err();
        assert!(error.contains("rules[0]") && error.contains("{name}"), "{error}");
    }
}
