//! Resource templates: turn a request to a known API into the policy objects and verbs it acts on.
//!
//! `POST /api/v2/dags/etl_daily/dagRuns` on an Airflow route becomes object `dag:etl_daily`,
//! action `trigger`, so a policy reads `p, role:deployer, airflow, dag:etl_*, trigger` instead of
//! path patterns. Built-in templates (Airflow, Tekton, GitLab, Conductor, Luigi) are written in
//! `templates.toml` in the same form operators use in `[resource_templates.<name>]`.
//!
//! A template is an ordered list of rules; the first whose methods and path match wins. Path
//! segments are literal, `{name}` (one non-empty segment) or `{name*}` (the rest, at least one
//! segment). Parameters named `pipeline`, `run`, `task` and `task_run` also fill the audit event's
//! workflow attributes. A request no rule matches keeps the canonical path as object and the
//! HTTP method as action.
//!
//! Objects and actions are expressions: literal text and `{…}` placeholders, each a list of
//! sources tried in order (`|`), the first with a value winning:
//!
//! ```text
//! {name}        a path parameter            {?name}   a query parameter (its first value)
//! {/a/b}        a JSON pointer into the body (the rule then reads the body)
//! {$1/dag_id}   within `each` and `filter`: a pointer from the item matched at the 1st `*`
//! {=true}       a literal default
//! ```
//!
//! A placeholder with no value becomes `*`, which only a grant on every object matches: a
//! request that does not say what it touches is asked about all of it. A rule's `each` lists
//! more objects that must all be allowed, one per JSON item of the body (`/actions/*/entities/*`)
//! or per value of a query parameter; its `filter` removes from a JSON list response the items
//! the caller may not see. `access = "public"` or `"authenticated"` opens an operation of a
//! protected route the way the API itself does (Airflow's version and health), and
//! `refuse = true` closes one for everyone.
//!
//! Pure: the input is the canonical view's method, path and query, and the body as JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

pub use crate::config::templates::{EachDef, FilterDef, RuleAccess, RuleDef, TemplateDef};

const BUILTIN: &str = include_str!("templates.toml");

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Param(String),
    Query(String),
    Body(Vec<String>),
    /// From the item matched at this wildcard (0-based), then a pointer below it.
    Item(usize, Vec<String>),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Vec<Source>),
}

/// An object or action expression.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expr(Vec<Part>);

/// A JSON pointer with `*` segments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(Vec<Option<String>>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

#[derive(Debug)]
enum Each {
    Body(Pattern, Decide),
    Query(String, Decide),
    Lookup(Pattern, Decide),
}

/// An object and an action to decide, with the map applied to the action.
#[derive(Debug)]
struct Decide {
    object: Expr,
    action: Expr,
    actions: BTreeMap<String, String>,
}

#[derive(Debug)]
struct CompiledRule {
    /// As written, for documentation.
    def: RuleDef,
    methods: Vec<String>,
    segments: Vec<Segment>,
    decide: Decide,
    only: BTreeMap<String, Vec<String>>,
    access: RuleAccess,
    refuse: bool,
    each: Vec<Each>,
    filter: Option<Arc<ResponseFilter>>,
    /// The path to look up, an expression.
    lookup: Option<Expr>,
    /// The rule's own object or action, or its lookup path, reads the body.
    reads_body: bool,
}

/// A checked template, ready to match requests.
#[derive(Debug)]
pub struct Template {
    pub name: String,
    any: Option<String>,
    rules: Vec<Arc<CompiledRule>>,
    /// `METHOD /path` operations deliberately left unmapped.
    pub unmapped: Vec<String>,
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
#[derive(Debug, Clone)]
pub struct Resource {
    pub object: String,
    pub action: String,
    pub workflow: Workflow,
    pub access: RuleAccess,
    /// Refused for everyone (a `refuse` rule).
    pub refused: bool,
    /// More (object, action) pairs that must all be allowed: from query parameters, and from
    /// the body once [`BodyPlan::apply`] has read it.
    pub also: Vec<(String, String)>,
    /// The rule needs the request body to name what it acts on.
    pub body: Option<BodyPlan>,
    /// The rule needs the upstream's answer to a lookup to name what it acts on.
    pub lookup: Option<LookupPlan>,
    /// Items of the response to decide and remove when refused.
    pub filter: Option<Arc<ResponseFilter>>,
    /// Whether a template rule matched (else the object is the path, the action the method).
    pub matched: bool,
}

/// What is still to be read from a request's body.
#[derive(Debug, Clone)]
pub struct BodyPlan {
    rule: Arc<CompiledRule>,
    params: Vec<(String, String)>,
    query: Option<String>,
    any: Option<String>,
}

/// What is still to be looked up on the upstream.
#[derive(Debug, Clone)]
pub struct LookupPlan {
    /// The path to GET; `None` when the request does not name a value it needs (nothing to look
    /// up, so nothing can be decided: refused).
    pub path: Option<String>,
    rule: Arc<CompiledRule>,
    any: Option<String>,
}

/// The rendering inputs of one request.
struct Inputs<'a> {
    params: &'a [(String, String)],
    query: Option<&'a str>,
    body: Option<&'a Value>,
    anchors: &'a [&'a Value],
    any: Option<&'a str>,
}

impl Template {
    pub fn compile(name: &str, def: &TemplateDef) -> Result<Template, String> {
        let mut rules = Vec::with_capacity(def.rules.len());
        for (i, rule) in def.rules.iter().enumerate() {
            let at = |m: String| format!("rules[{i}]: {m}");
            rules.push(Arc::new(compile_rule(rule).map_err(at)?));
        }
        for (i, op) in def.unmapped.iter().enumerate() {
            let ok = op.split_once(' ').is_some_and(|(m, p)| {
                !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'*') && p.starts_with('/')
            });
            if !ok {
                return Err(format!(
                    "unmapped[{i}]: write `METHOD /path` (`*` for every method, a path ending in `/**` for everything below it), e.g. \"GET /health\""
                ));
            }
        }
        Ok(Template {
            name: name.to_string(),
            any: def.any.clone(),
            rules,
            unmapped: def.unmapped.clone(),
        })
    }

    /// The object and action for a request; unmatched requests keep path and method. `query`
    /// is the raw query string.
    pub fn resolve(&self, method: &str, path: &str, query: Option<&str>) -> Resource {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        if let Some((rule, params)) = self.first_match(method, &parts) {
            let any = self.any.as_deref();
            let params: Vec<(String, String)> = params
                .into_iter()
                .map(|(k, v)| (k.to_string(), mapped(any, v)))
                .collect();
            let inputs = Inputs {
                params: &params,
                query,
                body: None,
                anchors: &[],
                any,
            };
            let (object, action) = rule.decide.render(&inputs);
            let mut also = Vec::new();
            for each in &rule.each {
                if let Each::Query(name, decide) = each {
                    for value in query_values(query, name) {
                        let value = Value::String(value);
                        let anchors = [&value];
                        also.push(decide.render(&Inputs {
                            anchors: &anchors,
                            ..inputs
                        }));
                    }
                }
            }
            let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let needs_body = rule.reads_body || rule.each.iter().any(|e| matches!(e, Each::Body(..)));
            let lookup = rule.lookup.as_ref().map(|path| LookupPlan {
                path: path.render_path(&inputs),
                rule: rule.clone(),
                any: self.any.clone(),
            });
            return Resource {
                object,
                action,
                workflow: Workflow {
                    pipeline: get("pipeline"),
                    run: get("run"),
                    task: get("task"),
                    task_run: get("task_run"),
                },
                access: rule.access,
                refused: rule.refuse,
                also,
                body: needs_body.then(|| BodyPlan {
                    rule: rule.clone(),
                    params: params.clone(),
                    query: query.map(str::to_string),
                    any: self.any.clone(),
                }),
                filter: rule.filter.clone(),
                lookup,
                matched: true,
            };
        }
        path_resource(method, path)
    }

    pub fn any(&self) -> Option<&str> {
        self.any.as_deref()
    }

    /// The rule a request matches, as written (for documentation and `policy explain`).
    pub fn matching_rule(&self, method: &str, path: &str) -> Option<&RuleDef> {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        self.first_match(method, &parts).map(|(rule, _)| &rule.def)
    }

    /// The first rule (in file order) whose method, path and `only` values all match, with the
    /// path's parameters.
    fn first_match(&self, method: &str, parts: &[&str]) -> Option<(&Arc<CompiledRule>, PathParams<'_>)> {
        self.rules.iter().find_map(|rule| {
            if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m == method) {
                return None;
            }
            let params = match_path(&rule.segments, parts)?;
            rule.only
                .iter()
                .all(|(k, allowed)| params.iter().any(|(n, v)| n == k && allowed.contains(v)))
                .then_some((rule, params))
        })
    }

    /// The rules' `METHOD /path` forms, for documentation and coverage.
    pub fn operations(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|r| {
                let methods = if r.methods.is_empty() {
                    "*".to_string()
                } else {
                    r.methods.join(",")
                };
                let path: Vec<String> = r
                    .segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(l) => l.clone(),
                        Segment::Param(p) => format!("{{{p}}}"),
                        Segment::Rest(p) => format!("{{{p}*}}"),
                    })
                    .collect();
                format!("{methods} /{}", path.join("/"))
            })
            .collect()
    }
}

impl BodyPlan {
    /// Finishes `resource` with the body: the rule's own object and action read again with
    /// it, and one more pair per item its `each` selectors match. `body` is `Null` for an
    /// empty body.
    pub fn apply(&self, resource: &mut Resource, body: &Value) {
        let inputs = Inputs {
            params: &self.params,
            query: self.query.as_deref(),
            body: Some(body),
            anchors: &[],
            any: self.any.as_deref(),
        };
        if self.rule.reads_body {
            let (object, action) = self.rule.decide.render(&inputs);
            resource.object = object;
            resource.action = action;
        }
        if let (Some(plan), Some(path)) = (resource.lookup.as_mut(), &self.rule.lookup) {
            plan.path = path.render_path(&inputs);
        }
        for each in &self.rule.each {
            if let Each::Body(pattern, decide) = each {
                for anchors in pattern.matches(body) {
                    resource.also.push(decide.render(&Inputs {
                        anchors: &anchors,
                        ..inputs
                    }));
                }
            }
        }
    }
}

impl LookupPlan {
    /// Finishes `resource` with the upstream's answer: one more pair per item the rule's
    /// `lookup` selectors match. A selector with `*` may match nothing (an asset no DAG is
    /// scheduled on); one without must find its value, or the answer does not say what the
    /// request acts on: `false`, refused.
    pub fn apply(&self, resource: &mut Resource, answer: &Value) -> bool {
        let mut resolved = true;
        for each in &self.rule.each {
            if let Each::Lookup(pattern, decide) = each {
                let matches = pattern.matches(answer);
                resolved &= pattern.wildcards() > 0 || !matches.is_empty();
                for anchors in matches {
                    resource.also.push(decide.render(&Inputs {
                        params: &[],
                        query: None,
                        body: None,
                        anchors: &anchors,
                        any: self.any.as_deref(),
                    }));
                }
            }
        }
        resolved
    }
}

/// The items of a JSON list response that are decided one by one.
#[derive(Debug)]
pub struct ResponseFilter {
    items: Pattern,
    decide: Decide,
    total: Option<Vec<String>>,
}

impl ResponseFilter {
    /// The (object, action) of each item of `doc`, in order.
    pub fn questions(&self, doc: &Value, any: Option<&str>) -> Vec<(String, String)> {
        self.items
            .matches(doc)
            .iter()
            .map(|anchors| {
                self.decide.render(&Inputs {
                    params: &[],
                    query: None,
                    body: Some(doc),
                    anchors,
                    any,
                })
            })
            .collect()
    }

    /// Keeps the items whose `keep` is true (in the order of [`questions`](Self::questions)),
    /// and lowers the total by the number removed. Returns how many were removed.
    pub fn retain(&self, doc: &mut Value, keep: &[bool]) -> usize {
        let prefix = self
            .items
            .0
            .get(..self.items.0.len().saturating_sub(1))
            .unwrap_or_default();
        let Some(Value::Array(list)) = pointer_mut(doc, prefix) else {
            return 0;
        };
        let before = list.len();
        let mut flags = keep.iter();
        list.retain(|_| flags.next().copied().unwrap_or(false));
        let removed = before - list.len();
        if let Some(total) = &self.total
            && let Some(Value::Number(n)) =
                pointer_mut(doc, &total.iter().map(|s| Some(s.clone())).collect::<Vec<_>>())
            && let Some(count) = n.as_u64()
        {
            *n = serde_json::Number::from(count.saturating_sub(removed as u64));
        }
        removed
    }
}

fn pointer_mut<'a>(doc: &'a mut Value, segments: &[Option<String>]) -> Option<&'a mut Value> {
    let mut at = doc;
    for segment in segments {
        let key = segment.as_deref()?;
        at = match at {
            Value::Object(map) => map.get_mut(key)?,
            Value::Array(list) => list.get_mut(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

impl Decide {
    fn render(&self, inputs: &Inputs<'_>) -> (String, String) {
        let object = self.object.render(inputs);
        let action = self.action.render(inputs);
        let action = if self.actions.is_empty() {
            action
        } else {
            self.actions.get(&action).cloned().unwrap_or_else(|| "*".into())
        };
        (object, action)
    }
}

impl Expr {
    fn render(&self, inputs: &Inputs<'_>) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Value(sources) => {
                    let value = sources.iter().find_map(|s| source_value(s, inputs));
                    out.push_str(&value.unwrap_or_else(|| "*".into()));
                }
            }
        }
        out
    }

    /// A path on the upstream: every value present (not `*`), each percent-encoded as one path
    /// segment, so a value cannot change which resource is read (`../variables`).
    fn render_path(&self, inputs: &Inputs<'_>) -> Option<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Value(sources) => {
                    let value = sources
                        .iter()
                        .find_map(|s| source_value(s, inputs))
                        .filter(|v| v != "*")?;
                    out.extend(percent_encoding::utf8_percent_encode(&value, PATH_SEGMENT));
                }
            }
        }
        Some(out)
    }

    fn reads_body(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Part::Value(s) if s.iter().any(|s| matches!(s, Source::Body(_)))))
    }

    fn max_item(&self) -> Option<usize> {
        self.0
            .iter()
            .filter_map(|p| match p {
                Part::Value(s) => s
                    .iter()
                    .filter_map(|s| match s {
                        Source::Item(i, _) => Some(*i),
                        _ => None,
                    })
                    .max(),
                Part::Text(_) => None,
            })
            .max()
    }
}

/// What a path segment leaves as it is: RFC 3986's unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn source_value(source: &Source, inputs: &Inputs<'_>) -> Option<String> {
    let any = inputs.any;
    match source {
        Source::Param(name) => inputs
            .params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone()),
        Source::Query(name) => query_values(inputs.query, name).next().map(|v| mapped(any, v)),
        Source::Body(pointer) => text(follow(inputs.body?, pointer)?).map(|v| mapped(any, v)),
        Source::Item(i, pointer) => text(follow(inputs.anchors.get(*i)?, pointer)?).map(|v| mapped(any, v)),
        Source::Literal(l) => Some(l.clone()),
    }
}

/// A JSON value as the text of an object or action: strings (non-empty), integers, booleans.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn follow<'a>(value: &'a Value, pointer: &[String]) -> Option<&'a Value> {
    pointer.iter().try_fold(value, |at, key| child(at, key))
}

fn mapped(any: Option<&str>, value: String) -> String {
    match any {
        Some(any) if value == any => "*".into(),
        _ => value,
    }
}

fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = String> + 'a {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| format!("`{text}` is not a JSON pointer (it starts with `/`)"))?;
        Ok(Pattern(
            rest.split('/')
                .map(|s| if s == "*" { None } else { Some(unescape(s)) })
                .collect(),
        ))
    }

    fn wildcards(&self) -> usize {
        self.0.iter().filter(|s| s.is_none()).count()
    }

    /// How many values a match anchors: one per `*`, and the value the pointer ends at when it
    /// ends in a name (`/dag_id`: `$1` is the DAG's id).
    fn items(&self) -> usize {
        self.wildcards() + usize::from(matches!(self.0.last(), Some(Some(_))))
    }

    /// For each match, the value at every `*`, in order, then the value the pointer ends at if
    /// it ends in a name.
    fn matches<'a>(&self, doc: &'a Value) -> Vec<Vec<&'a Value>> {
        let mut out = Vec::new();
        walk(doc, &self.0, &mut Vec::new(), &mut out);
        out
    }
}

fn walk<'a>(
    at: &'a Value,
    rest: &[Option<String>],
    anchors: &mut Vec<&'a Value>,
    out: &mut Vec<Vec<&'a Value>>,
) {
    let Some((first, rest)) = rest.split_first() else {
        out.push(anchors.clone());
        return;
    };
    match first {
        Some(key) => {
            let Some(next) = child(at, key) else {
                return;
            };
            if rest.is_empty() {
                // The pointer ends in a name: its value is the match's last anchor.
                anchors.push(next);
                out.push(anchors.clone());
                anchors.pop();
            } else {
                walk(next, rest, anchors, out);
            }
        }
        None => {
            if let Value::Array(list) = at {
                for item in list {
                    anchors.push(item);
                    walk(item, rest, anchors, out);
                    anchors.pop();
                }
            }
        }
    }
}

/// A member of an object, or an element of an array by its index.
fn child<'a>(at: &'a Value, key: &str) -> Option<&'a Value> {
    match at {
        Value::Object(map) => map.get(key),
        Value::Array(list) => list.get(key.parse::<usize>().ok()?),
        _ => None,
    }
}

/// RFC 6901: `~1` is `/`, `~0` is `~`.
fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

fn compile_rule(rule: &RuleDef) -> Result<CompiledRule, String> {
    let segments = parse_path(&rule.path)?;
    let names: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(n) | Segment::Rest(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
        .collect();
    for used in rule.only.keys() {
        if !names.contains(&used.as_str()) {
            return Err(format!("`{{{used}}}` is not a parameter of path `{}`", rule.path));
        }
    }
    if rule.object.is_empty() || rule.action.is_empty() {
        return Err("object and action must not be empty".into());
    }
    let decide = compile_decide(&rule.object, &rule.action, &rule.actions, &names, 0, &rule.path)?;
    let lookup = match &rule.lookup {
        Some(path) if path.starts_with('/') => Some(parse_expr(path, &names, 0, &rule.path)?),
        Some(path) => return Err(format!("lookup `{path}` must be a path (`/api/…`)")),
        None => None,
    };
    let reads_body = decide.object.reads_body()
        || decide.action.reads_body()
        || lookup.as_ref().is_some_and(Expr::reads_body);
    let mut each = Vec::new();
    for (j, def) in rule.each.iter().enumerate() {
        let at = |m: String| format!("each[{j}]: {m}");
        match (&def.body, &def.query, &def.lookup) {
            (None, None, Some(pointer)) => {
                if lookup.is_none() {
                    return Err(at("a `lookup` item needs the rule's `lookup` path".into()));
                }
                let pattern = Pattern::parse(pointer).map_err(at)?;
                // Only the looked-up document is in scope: `$1`, `$2`, … below its items.
                let decide = compile_decide(
                    &def.object,
                    &def.action,
                    &def.actions,
                    &[],
                    pattern.items(),
                    &rule.path,
                )
                .map_err(at)?;
                if decide.object.reads_body() || decide.action.reads_body() {
                    return Err(at(
                        "a `lookup` item reads the answer through `$1`, not the request body".into(),
                    ));
                }
                each.push(Each::Lookup(pattern, decide));
            }
            (Some(pointer), None, None) => {
                let pattern = Pattern::parse(pointer).map_err(at)?;
                let decide = compile_decide(
                    &def.object,
                    &def.action,
                    &def.actions,
                    &names,
                    pattern.items(),
                    &rule.path,
                )
                .map_err(at)?;
                each.push(Each::Body(pattern, decide));
            }
            (None, Some(name), None) => {
                let decide = compile_decide(&def.object, &def.action, &def.actions, &names, 1, &rule.path)
                    .map_err(at)?;
                each.push(Each::Query(name.clone(), decide));
            }
            _ => {
                return Err(at(
                    "name exactly one of `body` (a JSON pointer), `query` (a parameter) and `lookup` (a JSON pointer into the lookup's answer)".into(),
                ));
            }
        }
    }
    let filter = match &rule.filter {
        Some(def) => {
            let at = |m: String| format!("filter: {m}");
            let items = Pattern::parse(&def.items).map_err(at)?;
            if items.0.last() != Some(&None) || items.wildcards() != 1 {
                return Err(at(format!(
                    "`{}` must end in its one `*` (the list to filter)",
                    def.items
                )));
            }
            let decide =
                compile_decide(&def.object, &def.action, &BTreeMap::new(), &[], 1, &rule.path).map_err(at)?;
            let total = match &def.total {
                Some(t) => Some(
                    Pattern::parse(t)
                        .map_err(at)?
                        .0
                        .into_iter()
                        .map(|s| s.unwrap_or_default())
                        .collect(),
                ),
                None => None,
            };
            Some(Arc::new(ResponseFilter { items, decide, total }))
        }
        None => None,
    };
    if rule.refuse && (rule.access != RuleAccess::Route || !rule.each.is_empty()) {
        return Err("a `refuse` rule takes no `access` and no `each`".into());
    }
    if lookup.is_some() && !each.iter().any(|e| matches!(e, Each::Lookup(..))) {
        return Err("a `lookup` path needs an `each` item with a `lookup` pointer to decide".into());
    }
    Ok(CompiledRule {
        def: rule.clone(),
        methods: rule.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
        segments,
        decide,
        only: rule.only.clone(),
        access: rule.access,
        refuse: rule.refuse,
        each,
        filter,
        lookup,
        reads_body,
    })
}

fn compile_decide(
    object: &str,
    action: &str,
    actions: &BTreeMap<String, String>,
    params: &[&str],
    items: usize,
    path: &str,
) -> Result<Decide, String> {
    let object = parse_expr(object, params, items, path)?;
    let action = parse_expr(action, params, items, path)?;
    for expr in [&object, &action] {
        if let Some(i) = expr.max_item()
            && i >= items
        {
            return Err(format!("`${}` names no `*` of the item pointer", i + 1));
        }
    }
    Ok(Decide {
        object,
        action,
        actions: actions.clone(),
    })
}

fn parse_expr(text: &str, params: &[&str], items: usize, path: &str) -> Result<Expr, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        if start > 0 {
            parts.push(Part::Text(rest.get(..start).unwrap_or_default().to_string()));
        }
        let after = rest.get(start + 1..).unwrap_or_default();
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{{` without `}}` in `{text}`"))?;
        let inner = after.get(..end).unwrap_or_default();
        let mut sources = Vec::new();
        for alt in inner.split('|') {
            sources.push(parse_source(alt, params, items, path)?);
        }
        parts.push(Part::Value(sources));
        rest = after.get(end + 1..).unwrap_or_default();
    }
    if rest.contains('}') {
        return Err(format!("`}}` without `{{` in `{text}`"));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(Expr(parts))
}

fn parse_source(alt: &str, params: &[&str], items: usize, path: &str) -> Result<Source, String> {
    let pointer = |p: &str| -> Vec<String> {
        p.strip_prefix('/')
            .map(|p| p.split('/').map(unescape).collect())
            .unwrap_or_default()
    };
    if let Some(lit) = alt.strip_prefix('=') {
        return Ok(Source::Literal(lit.to_string()));
    }
    if let Some(name) = alt.strip_prefix('?') {
        return if name.is_empty() {
            Err("`{?}` names no query parameter".into())
        } else {
            Ok(Source::Query(name.to_string()))
        };
    }
    if alt.starts_with('/') {
        return Ok(Source::Body(pointer(alt)));
    }
    if let Some(item) = alt.strip_prefix('$') {
        let (n, below) = item.split_at(item.find('/').unwrap_or(item.len()));
        let n: usize = n
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("`${n}` is not an item number ($1, $2, …)"))?;
        if items == 0 {
            return Err(format!("`${n}` is only meaningful in `each` and `filter`"));
        }
        return Ok(Source::Item(n - 1, pointer(below)));
    }
    if params.contains(&alt) {
        Ok(Source::Param(alt.to_string()))
    } else {
        Err(format!("`{{{alt}}}` is not a parameter of path `{path}`"))
    }
}

/// What is wrong with a configuration's templates: a rule that does not compile (naming its key
/// path), a route naming a template there is none of.
pub fn template_problems(config: &crate::config::Config) -> Vec<crate::config::Problem> {
    use crate::config::Problem;
    let templates = match Templates::load(&config.resource_templates) {
        Ok(t) => t,
        Err(errors) => {
            return errors
                .into_iter()
                .map(|e| {
                    Problem::new(
                        format!("resource_templates.{e}"),
                        "this template rule is not valid",
                        "see docs/policy.md#resource-templates",
                    )
                })
                .collect();
        }
    };
    let mut problems = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(name) = &route.resources
            && templates.get(name).is_none()
        {
            let known: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
            problems.push(Problem::new(
                format!("routes[{i}].resources"),
                format!("no resource template is named {name:?}"),
                format!(
                    "use one of {}, or define it under [resource_templates.{name}]",
                    known.join(", ")
                ),
            ));
        }
    }
    problems
}

/// The object and action on a route without a template.
pub fn path_resource(method: &str, path: &str) -> Resource {
    Resource {
        object: path.to_string(),
        action: method.to_string(),
        workflow: Workflow::default(),
        access: RuleAccess::Route,
        refused: false,
        also: Vec::new(),
        body: None,
        filter: None,
        lookup: None,
        matched: false,
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

/// A path's parameters by name, as the request wrote them.
type PathParams<'a> = Vec<(&'a str, String)>;

fn match_path<'a>(segments: &'a [Segment], parts: &[&str]) -> Option<PathParams<'a>> {
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
        let r = t.resolve("POST", "/api/v1/dags/etl_daily/dagRuns", None);
        assert_eq!(
            (r.object.as_str(), r.action.as_str()),
            ("dag:etl_daily", "trigger")
        );
        assert_eq!(r.workflow.pipeline.as_deref(), Some("etl_daily"));
        assert_eq!(t.resolve("POST", "/api/v1/dags/~/dagRuns", None).object, "dag:*");
        // Another method, a longer path or an empty segment falls back to path and method.
        assert_eq!(t.resolve("GET", "/api/v1/dags/etl/dagRuns", None).action, "GET");
        assert_eq!(
            t.resolve("POST", "/api/v1/dags/etl/dagRuns/x", None).object,
            "/api/v1/dags/etl/dagRuns/x"
        );
        assert_eq!(t.resolve("POST", "/api/v1/dags//dagRuns", None).action, "POST");
    }

    #[test]
    fn a_rest_parameter_takes_the_remaining_segments() {
        let t =
            template("[[rules]]\npath = \"/files/{path*}\"\nobject = \"file:{path}\"\naction = \"read\"\n");
        assert_eq!(t.resolve("GET", "/files/a/b/c", None).object, "file:a/b/c");
        assert_eq!(t.resolve("GET", "/files", None).object, "/files");
    }

    #[test]
    fn a_template_naming_an_unknown_parameter_is_refused() {
        for (rules, want) in [
            (
                "[[rules]]\npath = \"/x/{id}\"\nobject = \"x:{name}\"\naction = \"read\"\n",
                "{name}",
            ),
            (
                "[[rules]]\npath = \"/x\"\nobject = \"x:{$1}\"\naction = \"read\"\n",
                "each",
            ),
            (
                "[[rules]]\npath = \"/x\"\nobject = \"x\"\naction = \"read\"\n[[rules.each]]\nbody = \"/a/*\"\nobject = \"{$2/id}\"\naction = \"read\"\n",
                "$2",
            ),
            (
                "[[rules]]\npath = \"/x\"\nobject = \"x\"\naction = \"read\"\n[rules.filter]\nitems = \"/a/*/b\"\nobject = \"{$1}\"\naction = \"read\"\n",
                "end in",
            ),
            (
                "[[rules]]\npath = \"/x\"\nobject = \"x\"\naction = \"read\"\nlookup = \"/y\"\n",
                "needs an `each`",
            ),
            (
                "[[rules]]\npath = \"/x\"\nobject = \"x\"\naction = \"read\"\n[[rules.each]]\nlookup = \"/id\"\nobject = \"{$1}\"\naction = \"read\"\n",
                "the rule's `lookup` path",
            ),
            (
                "[[rules]]\npath = \"/x\"\nobject = \"x\"\naction = \"read\"\nlookup = \"/y\"\n[[rules.each]]\nlookup = \"/id\"\nobject = \"{/dag_id}\"\naction = \"read\"\n",
                "not the request body",
            ),
        ] {
            let def: TemplateDef = toml::from_str(rules).unwrap();
            let error = Template::compile("t", &def).unwrap_err();
            assert!(error.contains("rules[0]") && error.contains(want), "{error}");
        }
    }

    const BULK: &str = r#"
any = "~"
[[rules]]
methods = ["PATCH"]
path = "/dags/{pipeline}/runs/{run}/tis"
object = "dag:{pipeline}"
action = "set_state"
[[rules.each]]
body = "/actions/*/entities/*"
object = "dag:{$2/dag_id|pipeline}"
action = "{$1/action}"
actions = { update = "set_state", delete = "delete" }

[[rules]]
methods = ["POST"]
path = "/dags/{pipeline}/clear"
object = "dag:{pipeline}"
action = "{/dry_run|=true}"
actions = { "true" = "read", "false" = "clear" }

[[rules]]
methods = ["PUT"]
path = "/backfills/{id}/pause"
object = "backfill:{id}"
action = "pause"
lookup = "/backfills/{id}"
each = [{ lookup = "/dag_id", object = "dag:{$1}", action = "backfill" }]

[[rules]]
methods = ["POST"]
path = "/events"
object = "asset:{/asset_id}"
action = "create_event"
lookup = "/assets/{/asset_id}"
each = [{ lookup = "/scheduled_dags/*", object = "dag:{$1/dag_id}", action = "trigger" }]

[[rules]]
methods = ["GET"]
path = "/ui/dags"
object = "dag:{?dag_id|=*}"
action = "read"
[[rules.each]]
query = "dag_ids"
object = "dag:{$1}"
action = "read"
[rules.filter]
items = "/dags/*"
object = "dag:{$1/dag_id}"
action = "read"
total = "/total_entries"
"#;

    #[test]
    fn every_object_a_bulk_body_names_is_asked_about_with_its_own_action() {
        let t = template(BULK);
        let mut r = t.resolve("PATCH", "/dags/etl_dev/runs/A/tis", None);
        assert_eq!(
            (r.object.as_str(), r.action.as_str()),
            ("dag:etl_dev", "set_state")
        );
        let plan = r.body.clone().unwrap();
        let body: Value = serde_json::from_str(
            r#"{"actions": [
                {"action": "update", "entities": [{"task_id": "load"}, {"dag_id": "etl_prod", "dag_run_id": "B", "task_id": "load"}]},
                {"action": "delete", "entities": ["load", {"dag_id": "~", "task_id": "x"}]},
                {"action": "create", "entities": [{"task_id": "y"}]}
            ]}"#,
        )
        .unwrap();
        plan.apply(&mut r, &body);
        let also: Vec<(&str, &str)> = r.also.iter().map(|(o, a)| (o.as_str(), a.as_str())).collect();
        assert_eq!(
            also,
            [
                ("dag:etl_dev", "set_state"),
                ("dag:etl_prod", "set_state"),
                ("dag:etl_dev", "delete"),
                ("dag:*", "delete"),
                // An action the map does not name needs a grant of every action.
                ("dag:etl_dev", "*"),
            ]
        );
        // A wildcard path with entities that name no DAG: every DAG.
        let mut r = t.resolve("PATCH", "/dags/~/runs/~/tis", None);
        r.body.clone().unwrap().apply(
            &mut r,
            &serde_json::json!({"actions": [{"action": "update", "entities": [{"task_id": "t"}]}]}),
        );
        assert_eq!(r.also, [("dag:*".to_string(), "set_state".to_string())]);
    }

    #[test]
    fn an_action_read_from_the_body_defaults_as_the_api_does() {
        let t = template(BULK);
        let action = |body: Value| {
            let mut r = t.resolve("POST", "/dags/etl/clear", None);
            r.body.clone().unwrap().apply(&mut r, &body);
            r.action
        };
        assert_eq!(action(serde_json::json!({"dry_run": false})), "clear");
        assert_eq!(action(serde_json::json!({"dry_run": true})), "read");
        assert_eq!(
            action(serde_json::json!({})),
            "read",
            "Airflow's default is a dry run"
        );
        assert_eq!(action(Value::Null), "read");
        assert_eq!(action(serde_json::json!({"dry_run": "no"})), "*");
    }

    #[test]
    fn query_values_and_response_items_are_decided_one_by_one() {
        let t = template(BULK);
        let r = t.resolve("GET", "/ui/dags", Some("dag_ids=a&limit=5&dag_ids=b%20c"));
        assert_eq!(r.object, "dag:*");
        let also: Vec<&str> = r.also.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(also, ["dag:a", "dag:b c"]);
        assert_eq!(t.resolve("GET", "/ui/dags", Some("dag_id=x")).object, "dag:x");
        let filter = r.filter.unwrap();
        let mut doc = serde_json::json!({"dags": [{"dag_id": "a"}, {"dag_id": "b"}, {"dag_id": "c"}], "total_entries": 7});
        let questions: Vec<String> = filter.questions(&doc, None).into_iter().map(|(o, _)| o).collect();
        assert_eq!(questions, ["dag:a", "dag:b", "dag:c"]);
        assert_eq!(filter.retain(&mut doc, &[true, false, true]), 1);
        assert_eq!(
            doc,
            serde_json::json!({"dags": [{"dag_id": "a"}, {"dag_id": "c"}], "total_entries": 6})
        );
    }

    #[test]
    fn a_lookup_reads_the_upstream_at_a_path_no_value_can_redirect() {
        let t = template(BULK);
        let r = t.resolve("PUT", "/backfills/7/pause", None);
        assert_eq!(r.lookup.as_ref().unwrap().path.as_deref(), Some("/backfills/7"));
        // Path parameters arrive decoded: a value is one segment again on the way out.
        let r = t.resolve("PUT", "/backfills/a b?c#/pause", None);
        assert_eq!(r.lookup.unwrap().path.as_deref(), Some("/backfills/a%20b%3Fc%23"));
        let lookup_path = |body: Value| {
            let mut r = t.resolve("POST", "/events", None);
            r.body.clone().unwrap().apply(&mut r, &body);
            r.lookup.unwrap().path
        };
        assert_eq!(
            lookup_path(serde_json::json!({"asset_id": 3})).as_deref(),
            Some("/assets/3")
        );
        assert_eq!(
            lookup_path(serde_json::json!({"asset_id": "../variables/secret"})).as_deref(),
            Some("/assets/..%2Fvariables%2Fsecret")
        );
        // Nothing named, or every one (`~`): nothing to look up.
        assert_eq!(lookup_path(serde_json::json!({})), None);
        assert_eq!(lookup_path(serde_json::json!({"asset_id": "~"})), None);
    }

    #[test]
    fn a_lookup_answer_must_name_what_the_request_acts_on() {
        let t = template(BULK);
        let answered = |method: &str, path: &str, answer: Value| {
            let mut r = t.resolve(method, path, None);
            let resolved = r.lookup.clone().unwrap().apply(&mut r, &answer);
            (resolved, r.also)
        };
        let pair = |o: &str, a: &str| (o.to_string(), a.to_string());
        assert_eq!(
            answered("PUT", "/backfills/7/pause", serde_json::json!({"dag_id": "etl"})),
            (true, vec![pair("dag:etl", "backfill")])
        );
        // A backfill's answer without its DAG does not say.
        assert!(!answered("PUT", "/backfills/7/pause", serde_json::json!({"id": 7})).0);
        // An empty one asks about every DAG.
        assert_eq!(
            answered("PUT", "/backfills/7/pause", serde_json::json!({"dag_id": ""})),
            (true, vec![pair("dag:*", "backfill")])
        );
        // A list may be empty: an asset no DAG is scheduled on starts nothing.
        assert_eq!(
            answered("POST", "/events", serde_json::json!({"scheduled_dags": []})),
            (true, vec![])
        );
        assert_eq!(
            answered(
                "POST",
                "/events",
                serde_json::json!({"scheduled_dags": [{"dag_id": "a"}, {"dag_id": "~"}]})
            ),
            (true, vec![pair("dag:a", "trigger"), pair("dag:*", "trigger")])
        );
    }
}
