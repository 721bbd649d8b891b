//! One loaded policy version, evaluated by Casbin.
//!
//! casbin-rs evaluates every rule of an enforcer on every call (about 0.5–0.7 µs a rule here), so
//! a 5,000-line policy in one enforcer costs milliseconds per decision. The rules are therefore
//! split into partitions by domain and action, each its own Casbin enforcer; a request runs only
//! the partition for its domain and action, where every rule is a candidate. Rules with `*` as
//! domain or action are copied into every partition they can match, keeping file order.
//!
//! Roles are resolved here, not in Casbin: the caller's subjects (`user:…`, `group:…` from the
//! token's claims, …) are expanded with every role they hold in the request's domain through the
//! `g` lines, and the matcher asks `p.sub in r.sub`. Group membership from the IdP so takes effect
//! per request without ever changing the shared enforcer.
//!
//! To name the rule that decided, each rule carries its index in a hidden field, and the matcher
//! ends with `portcullisRule(p.src)`, which Casbin calls only for rules whose other terms held:
//! it records the index in a thread-local list that is read back after the call.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use casbin::function_map::OperatorFunction;
use casbin::rhai::Dynamic;
use casbin::{CoreApi, DefaultModel, MemoryAdapter, MgmtApi};

use crate::authz::pattern;
use crate::authz::policy::{Effect, LoadError, PolicySet, Rule};

/// Roles nest at most this deep; deeper chains are cut (and cycles are harmless).
const MAX_ROLE_DEPTH: usize = 16;

thread_local! {
    static MATCHED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

fn portcullis_rule(src: Dynamic) -> Dynamic {
    if let Ok(s) = src.into_immutable_string()
        && let Ok(i) = s.parse::<u32>()
    {
        MATCHED.with(|m| m.borrow_mut().push(i));
    }
    true.into()
}

/// What is asked: who (their own subjects, namespaced), in which domain, on what, doing what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Query {
    /// The caller's subjects before roles: `user:<provider>/<sub>`, `group:<provider>/<g>`, `svc:…`, `ci:…`.
    pub subjects: Vec<String>,
    pub domain: Arc<str>,
    pub object: String,
    pub action: String,
}

impl Query {
    pub fn new(subjects: &[&str], domain: &str, object: &str, action: &str) -> Query {
        Query {
            subjects: subjects.iter().map(|s| (*s).to_string()).collect(),
            domain: domain.into(),
            object: object.into(),
            action: action.into(),
        }
    }
}

/// Casbin's answer, with the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The rule that decided: the first matching allow for an allow, the first matching deny for a
    /// denial by a deny rule; none when no rule matched.
    pub rule: Option<Arc<Rule>>,
    /// The roles the caller held in the domain (for `policy explain`).
    pub roles: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("policy evaluation failed: {0}")]
pub struct EvalError(pub String);

struct Partition {
    enforcer: casbin::Enforcer,
    /// How many rules Casbin holds here.
    len: usize,
}

/// A loaded, checked, partitioned policy version.
pub struct Engine {
    pub set: PolicySet,
    /// (member) → [(role, domain)]
    roles: HashMap<String, Vec<(String, String)>>,
    /// domain → action → partition; `*` keys hold the rules for names no rule spells out.
    partitions: HashMap<String, HashMap<String, Partition>>,
    /// Every rule's subject (`g` line members are the keys of `roles`); `None` when the matcher
    /// reads the caller's subjects other than as `p.sub in r.sub`, so any subject may matter.
    rule_subjects: Option<HashSet<String>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("version", &self.set.version)
            .field("rules", &self.set.rules.len())
            .field(
                "partitions",
                &self.partitions.values().map(HashMap::len).sum::<usize>(),
            )
            .finish()
    }
}

impl Engine {
    /// Builds one Casbin enforcer per partition. Problems Casbin finds (a matcher that does not
    /// compile, an unknown function) are reported against the matcher's line.
    pub async fn build(set: PolicySet) -> Result<Engine, LoadError> {
        let rules = &set.rules;
        let mut roles: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for g in &set.groupings {
            roles
                .entry(g.member.clone())
                .or_default()
                .push((g.role.clone(), g.domain.clone()));
        }

        let domains: HashSet<&str> = rules
            .iter()
            .map(|r| r.domain.as_str())
            .filter(|d| *d != "*")
            .collect();
        let actions: HashSet<&str> = rules
            .iter()
            .map(|r| r.action.as_str())
            .filter(|a| *a != "*")
            .collect();
        let mut keys: Vec<(String, String)> = vec![("*".into(), "*".into())];
        for d in &domains {
            keys.push(((*d).into(), "*".into()));
        }
        for a in &actions {
            keys.push(("*".into(), (*a).into()));
        }
        for r in rules {
            match (r.domain.as_str(), r.action.as_str()) {
                (_, "*") => {}
                ("*", action) => keys.extend(domains.iter().map(|d| ((*d).to_string(), action.to_string()))),
                (domain, action) => keys.push((domain.to_string(), action.to_string())),
            }
        }
        keys.sort();
        keys.dedup();

        // Casbin is given the model text once; every partition gets a copy.
        let casbin_error = |e: casbin::Error| {
            LoadError::one(
                Some(set.model.matcher_origin.clone()),
                format!("Casbin refused the model: {e}"),
            )
        };
        let model = DefaultModel::from_str(&set.model.casbin_text)
            .await
            .map_err(casbin_error)?;
        let mut partitions: HashMap<String, HashMap<String, Partition>> = HashMap::new();
        for (domain, action) in keys {
            // A partition holds every rule that can match a request for its key: for a concrete
            // key, its own rules and the wildcards; for a `*` key, only rules as wide as the key.
            let fits = |field: &str, key: &str| field == "*" || (key != "*" && field == key);
            let lines: Vec<Vec<String>> = rules
                .iter()
                .enumerate()
                .filter(|(_, r)| fits(&r.domain, &domain) && fits(&r.action, &action))
                .map(|(i, r)| casbin_line(r, i, set.model.has_effect))
                .collect();
            let partition = partition(model.clone(), lines).await.map_err(casbin_error)?;
            partitions.entry(domain).or_default().insert(action, partition);
        }
        let rule_subjects = set
            .model
            .subjects_by_membership
            .then(|| set.rules.iter().map(|r| r.subject.clone()).collect());
        let engine = Engine {
            set,
            roles,
            partitions,
            rule_subjects,
        };
        engine.probe()?;
        Ok(engine)
    }

    pub fn version(&self) -> &Arc<str> {
        &self.set.version
    }

    /// Runs the matcher in full once per partition, against its first rule's own shape, so a
    /// matcher that names an unknown function fails the load instead of every request.
    fn probe(&self) -> Result<(), LoadError> {
        let mut seen = HashSet::new();
        for rule in &self.set.rules {
            if !seen.insert((rule.domain.as_str(), rule.action.as_str())) {
                continue;
            }
            let object = if pattern::is_pattern(&rule.object) {
                String::new()
            } else {
                rule.object.clone()
            };
            let query = Query {
                subjects: vec![rule.subject.clone()],
                domain: Arc::from(rule.domain.as_str()),
                object,
                action: rule.action.clone(),
            };
            self.evaluate(&query)
                .map_err(|e| LoadError::one(Some(self.set.model.matcher_origin.clone()), e.0))?;
        }
        Ok(())
    }

    /// The number of Casbin rules a query for this domain and action runs through.
    pub fn partition_size(&self, domain: &str, action: &str) -> usize {
        self.partition(domain, action).map_or(0, |p| p.len)
    }

    fn partition(&self, domain: &str, action: &str) -> Option<&Partition> {
        let get = |d: &str, a: &str| self.partitions.get(d).and_then(|by_action| by_action.get(a));
        get(domain, action)
            .or_else(|| get(domain, "*"))
            .or_else(|| get("*", action))
            .or_else(|| get("*", "*"))
    }

    /// Every role the subjects hold in `domain`, directly or through other roles.
    pub fn roles_in(&self, subjects: &[String], domain: &str) -> Vec<String> {
        let mut seen: HashSet<&str> = subjects.iter().map(String::as_str).collect();
        let mut roles = Vec::new();
        let mut queue: VecDeque<(&str, usize)> = subjects.iter().map(|s| (s.as_str(), 0)).collect();
        while let Some((member, depth)) = queue.pop_front() {
            if depth >= MAX_ROLE_DEPTH {
                continue;
            }
            for (role, dom) in self.roles.get(member).into_iter().flatten() {
                if (dom == "*" || dom == domain) && seen.insert(role.as_str()) {
                    roles.push(role.clone());
                    queue.push_back((role.as_str(), depth + 1));
                }
            }
        }
        roles
    }

    /// The question as far as this policy can tell callers apart, which is what decisions are
    /// cached under. When subjects count only as `p.sub in r.sub`, one that no rule and no `g`
    /// line names can neither match a rule nor bring a role, so it is left out: callers that
    /// differ only in such subjects (every CI job its own `sub`, the same groups) get the same
    /// answer and share one entry. Leaving out what cannot change the answer never widens access.
    pub fn decision_key<'q>(&self, query: &'q Query) -> Cow<'q, Query> {
        let Some(rule_subjects) = &self.rule_subjects else {
            return Cow::Borrowed(query);
        };
        let named = |s: &String| rule_subjects.contains(s) || self.roles.contains_key(s);
        if query.subjects.iter().all(named) {
            return Cow::Borrowed(query);
        }
        Cow::Owned(Query {
            subjects: query.subjects.iter().filter(|s| named(s)).cloned().collect(),
            domain: query.domain.clone(),
            object: query.object.clone(),
            action: query.action.clone(),
        })
    }

    /// Synchronous and CPU-bound: callers on the async runtime run large partitions elsewhere.
    pub fn evaluate(&self, query: &Query) -> Result<Verdict, EvalError> {
        let roles = self.roles_in(&query.subjects, &query.domain);
        let Some(partition) = self.partition(&query.domain, &query.action) else {
            return Ok(Verdict {
                allowed: false,
                rule: None,
                roles,
            });
        };
        let mut subjects = query.subjects.clone();
        subjects.extend(roles.iter().cloned());
        MATCHED.with(|m| m.borrow_mut().clear());
        let allowed = partition
            .enforcer
            .enforce((subjects, &query.domain, &query.object, &query.action))
            .map_err(|e| EvalError(e.to_string()))?;
        let matched: Vec<u32> = MATCHED.with(|m| std::mem::take(&mut *m.borrow_mut()));
        let wanted = if allowed { Effect::Allow } else { Effect::Deny };
        let rule = matched
            .iter()
            .filter_map(|i| self.set.rules.get(usize::try_from(*i).ok()?))
            .find(|r| r.effect == wanted)
            .cloned();
        Ok(Verdict { allowed, rule, roles })
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.set.rules
    }
}

fn casbin_line(rule: &Rule, index: usize, has_effect: bool) -> Vec<String> {
    let mut line = vec![
        rule.subject.clone(),
        rule.domain.clone(),
        rule.object.clone(),
        rule.action.clone(),
    ];
    if has_effect {
        line.push(rule.effect.as_str().to_string());
    }
    line.push(index.to_string());
    line
}

async fn partition(model: DefaultModel, lines: Vec<Vec<String>>) -> casbin::Result<Partition> {
    let mut enforcer = casbin::Enforcer::new(model, MemoryAdapter::default()).await?;
    enforcer.enable_auto_save(false);
    enforcer.add_function("resourceMatch", OperatorFunction::Arg2(pattern::resource_match));
    enforcer.add_function("portcullisRule", OperatorFunction::Arg1(portcullis_rule));
    let len = lines.len();
    if !lines.is_empty() {
        enforcer.add_policies(lines).await?;
    }
    Ok(Partition { enforcer, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::policy::parse;

    const MODEL: &str = include_str!("../../policies/model.conf");

    async fn engine(csv: &str) -> Engine {
        let set = parse(MODEL, &[("policy.csv".into(), csv.into())]).unwrap();
        Engine::build(set).await.unwrap()
    }

    const POLICY: &str = "\
p, role:viewer, airflow, dag:*, read
p, role:deployer, airflow, dag:etl_*, trigger
p, role:admin, *, **, *
p, role:deployer, airflow, dag:etl_secret, trigger, deny
g, role:operator, role:viewer, airflow
g, role:deployer, role:operator, airflow
g, group:okta/data-eng, role:deployer, airflow
g, user:okta/root, role:admin, *
";

    #[tokio::test]
    async fn a_group_from_the_token_grants_its_roles_and_their_parents() {
        let e = engine(POLICY).await;
        let ask = |subjects: &[&str], object: &str, action: &str| {
            e.evaluate(&Query::new(subjects, "airflow", object, action))
                .unwrap()
        };
        let alice = ["user:okta/alice", "group:okta/data-eng"];
        let v = ask(&alice, "dag:etl_daily", "trigger");
        assert!(v.allowed);
        assert_eq!(v.rule.unwrap().origin.line, 2);
        assert_eq!(v.roles, ["role:deployer", "role:operator", "role:viewer"]);
        let v = ask(&alice, "dag:reporting", "read");
        assert_eq!(v.rule.unwrap().origin.line, 1);
        let v = ask(&["user:okta/alice"], "dag:etl_daily", "trigger");
        assert!(!v.allowed && v.rule.is_none());
    }

    #[tokio::test]
    async fn a_deny_rule_overrides_and_is_named() {
        let e = engine(POLICY).await;
        let v = e
            .evaluate(&Query::new(
                &["group:okta/data-eng"],
                "airflow",
                "dag:etl_secret",
                "trigger",
            ))
            .unwrap();
        assert!(!v.allowed);
        assert_eq!(v.rule.unwrap().origin.line, 4);
    }

    #[tokio::test]
    async fn roles_do_not_leak_across_domains_and_names_do_not_clash() {
        let e = engine(POLICY).await;
        for (subject, domain, object, action) in [
            // A group's role in one domain grants nothing in another.
            ("group:okta/data-eng", "tekton", "dag:etl_daily", "trigger"),
            // A user or group literally named like a role holds nothing.
            ("user:okta/role:deployer", "airflow", "dag:etl_a", "trigger"),
            ("group:okta/role:admin", "gitlab", "project:1", "read"),
        ] {
            let allowed = e
                .evaluate(&Query::new(&[subject], domain, object, action))
                .unwrap()
                .allowed;
            assert!(!allowed, "{subject} may {action} {object} in {domain}");
        }
    }

    #[tokio::test]
    async fn wildcard_rules_reach_every_domain_and_action() {
        let e = engine(POLICY).await;
        for (domain, action) in [
            ("airflow", "delete"),
            ("tekton", "create"),
            ("unknown", "anything"),
        ] {
            let v = e
                .evaluate(&Query::new(&["user:okta/root"], domain, "x/y", action))
                .unwrap();
            assert!(v.allowed, "{domain} {action}");
            assert_eq!(v.rule.unwrap().origin.line, 3);
        }
        assert!(e.partition_size("airflow", "read") < e.rules().len());
    }

    #[tokio::test]
    async fn callers_who_differ_only_in_subjects_no_line_names_are_one_question() {
        let e = engine(&format!(
            "{POLICY}p, user:okta/mallory, airflow, dag:etl_daily, trigger, deny\n"
        ))
        .await;
        let ask = |subjects: &[&str]| Query::new(subjects, "airflow", "dag:etl_daily", "trigger");
        let (alice, bob) = (
            ask(&["user:okta/alice", "group:okta/data-eng"]),
            ask(&["user:okta/bob", "group:okta/data-eng"]),
        );
        assert_eq!(e.decision_key(&alice), e.decision_key(&bob));
        assert_eq!(e.decision_key(&alice).subjects, ["group:okta/data-eng"]);
        for q in [&alice, &bob] {
            let (whole, keyed) = (e.evaluate(q).unwrap(), e.evaluate(&e.decision_key(q)).unwrap());
            assert!(whole.allowed && keyed.allowed);
            assert_eq!((whole.rule, whole.roles), (keyed.rule, keyed.roles));
        }
        // A subject some line names is part of the question: a rule (the deny) or a role line.
        let mallory = ask(&["user:okta/mallory", "group:okta/data-eng"]);
        assert!(matches!(e.decision_key(&mallory), Cow::Borrowed(_)));
        assert!(!e.evaluate(&e.decision_key(&mallory)).unwrap().allowed);
        assert_ne!(e.decision_key(&mallory), e.decision_key(&alice));
        assert_eq!(
            e.decision_key(&ask(&["user:okta/root", "user:okta/x"])).subjects,
            ["user:okta/root"]
        );
    }

    #[tokio::test]
    async fn a_matcher_that_reads_subjects_another_way_keys_on_every_subject() {
        let model = MODEL.replace(
            "m = p.sub in r.sub &&",
            "m = p.sub in r.sub && r.sub.len() < 50 &&",
        );
        let set = parse(&model, &[("policy.csv".into(), POLICY.into())]).unwrap();
        assert!(!set.model.subjects_by_membership);
        let e = Engine::build(set).await.unwrap();
        let alice = Query::new(
            &["user:okta/alice", "group:okta/data-eng"],
            "airflow",
            "dag:etl_daily",
            "trigger",
        );
        assert!(e.evaluate(&alice).unwrap().allowed);
        assert_eq!(e.decision_key(&alice).subjects, alice.subjects);
        assert!(
            parse(MODEL, &[("policy.csv".into(), POLICY.into())])
                .unwrap()
                .model
                .subjects_by_membership
        );
    }

    #[tokio::test]
    async fn a_role_cycle_ends() {
        let e = engine(
            "p, role:a, d, o, read\ng, role:a, role:b, d\ng, role:b, role:a, d\ng, user:okta/x, role:a, d\n",
        )
        .await;
        assert!(
            e.evaluate(&Query::new(&["user:okta/x"], "d", "o", "read"))
                .unwrap()
                .allowed
        );
    }
}
