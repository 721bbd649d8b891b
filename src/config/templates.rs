//! Resource templates as the configuration writes them (`[resource_templates.<name>]` and the
//! built-in `src/authz/templates.toml`): plain data that serde reads. `authz::resources`
//! compiles them and matches requests.

use std::collections::BTreeMap;

use serde::Deserialize;

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
    /// Operations of the API the template deliberately leaves to the default object (the
    /// canonical path and the method), as `METHOD /path/{param}` (`*` for any method, `/**` at
    /// the end for every path below); the coverage tests hold every operation of the API's
    /// published description to be a rule or on this list.
    #[serde(default)]
    pub unmapped: Vec<String>,
}

/// Who may call an operation without the policy: a rule may open one of a protected route.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuleAccess {
    /// The route's `access` decides (the policy, on protected routes).
    #[default]
    Route,
    /// Anyone, without credentials (what the API itself leaves unauthenticated).
    Public,
    /// Any caller the route's providers vouch for, without the policy (static pages).
    Authenticated,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// HTTP methods this rule covers; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path with `{name}` and `{name*}` parameters.
    pub path: String,
    /// The object, an expression.
    pub object: String,
    /// The verb, an expression.
    pub action: String,
    /// Parameters that must take one of the listed values for this rule to match.
    #[serde(default)]
    pub only: BTreeMap<String, Vec<String>>,
    /// Renames the action: `{ update = "set_state" }`; a value it does not list becomes `*`.
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
    #[serde(default)]
    pub access: RuleAccess,
    /// Refused whatever the policy says (an API's own login that would bypass the proxy).
    #[serde(default)]
    pub refuse: bool,
    /// More objects, all of which must be allowed too.
    #[serde(default)]
    pub each: Vec<EachDef>,
    /// Items of a JSON list response the caller may not see are removed.
    #[serde(default)]
    pub filter: Option<FilterDef>,
    /// A path on the same upstream to read (GET, as the caller) when the request does not name
    /// what it acts on: a backfill's DAG, the DAG that produces an asset. Its `each` items with
    /// `lookup` pointers are decided from the answer.
    #[serde(default)]
    pub lookup: Option<String>,
}

impl RuleDef {
    /// What the rule does beyond its object and action, in a few words each: who it opens the
    /// operation to, what else it asks about, what it filters.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        match self.access {
            RuleAccess::Public => notes.push("open to anyone".to_string()),
            RuleAccess::Authenticated => notes.push("open to anyone signed in".to_string()),
            RuleAccess::Route => {}
        }
        if self.refuse {
            notes.push("refused to everyone".into());
        }
        if !self.actions.is_empty() {
            let map: Vec<String> = self.actions.iter().map(|(k, v)| format!("{k} → {v}")).collect();
            notes.push(format!("action by `{}`: {}", self.action, map.join(", ")));
        }
        for each in &self.each {
            let from = match (&each.body, &each.query, &each.lookup) {
                (Some(pointer), _, _) => format!("each body item `{pointer}`"),
                (_, Some(name), _) => format!("each `{name}` query value"),
                (_, _, Some(pointer)) => format!(
                    "each `{pointer}` of GET `{}`",
                    self.lookup.as_deref().unwrap_or_default()
                ),
                _ => continue,
            };
            let mut note = format!("{from}: {} {}", each.action, each.object);
            if !each.actions.is_empty() {
                let map: Vec<String> = each.actions.iter().map(|(k, v)| format!("{k} → {v}")).collect();
                note.push_str(&format!(" ({})", map.join(", ")));
            }
            notes.push(note);
        }
        if let Some(filter) = &self.filter {
            notes.push(format!(
                "response items `{}` filtered by {} {}",
                filter.items, filter.action, filter.object
            ));
        }
        notes
    }
}

/// One object (and action) per item the body names, or per value of a query parameter.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EachDef {
    /// A JSON pointer into the body with `*` for every element of an array:
    /// `/actions/*/entities/*`.
    #[serde(default)]
    pub body: Option<String>,
    /// A query parameter: each of its values (`dag_ids`).
    #[serde(default)]
    pub query: Option<String>,
    /// A JSON pointer (with `*`) into the answer to the rule's `lookup`.
    #[serde(default)]
    pub lookup: Option<String>,
    pub object: String,
    pub action: String,
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
}

/// Which items of a JSON list response are decided, and how.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FilterDef {
    /// A pointer ending in `*`: the list whose items are decided (`/dags/*`).
    pub items: String,
    pub object: String,
    pub action: String,
    /// A count to lower by the items removed (`/total_entries`).
    #[serde(default)]
    pub total: Option<String>,
}
