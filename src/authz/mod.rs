//! Authorization: Casbin RBAC with domains over the caller's subjects, groups and roles.
//!
//! - `policy`: reads and checks `model.conf` and `*.csv` with file:line errors;
//! - `engine`: one policy version as per-(domain, action) Casbin enforcers, roles resolved per request;
//! - `resources`: templates that turn API requests into objects and verbs;
//! - `tables`: decision tables in `policies/tests/*.toml`;
//! - this module: the policy in force (and an optional shadow), its decision cache, reloads.
//!
//! No hyper here: the proxy hands in plain data and gets a [`Checked`] back.

pub mod cli;
pub mod engine;
pub mod pattern;
pub mod policy;
pub mod resources;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::identity::{Principal, PrincipalKind};
pub use engine::{Engine, Query, Verdict};
pub use policy::LoadError;
use resources::Templates;
pub use tables::Target;

/// Partitions up to this many rules are evaluated on the request's own thread (tens of
/// microseconds); larger ones move to the blocking pool so a slow evaluation never stalls the runtime.
const INLINE_RULES: usize = 64;

/// The subjects a principal is known by, each naming the provider that vouched for it, so no
/// name can pose as another kind or as another provider's: `user:<provider>/<sub>` and
/// `user:<provider>/<email>` (a verified email only), `svc:<provider>/<sub>` and
/// `svc:<provider>/<client id>`, `ci:<provider>/<subject>`, and `group:<provider>/<g>` for each
/// group. Roles are the policy's own and carry no provider.
pub fn subjects(principal: &Principal) -> Vec<String> {
    let p = principal.provider.as_str();
    let mut subjects = Vec::with_capacity(2 + principal.groups.len());
    match principal.kind {
        PrincipalKind::User => {
            subjects.push(format!("user:{p}/{}", principal.subject));
            if let Some(email) = &principal.email {
                subjects.push(format!("user:{p}/{email}"));
            }
        }
        PrincipalKind::Service => {
            subjects.push(format!("svc:{p}/{}", principal.subject));
            if let Some(client) = principal.client_id.as_ref().filter(|c| **c != principal.subject) {
                subjects.push(format!("svc:{p}/{client}"));
            }
        }
        PrincipalKind::CiJob => subjects.push(format!("ci:{p}/{}", principal.subject)),
    }
    subjects.extend(principal.groups.iter().map(|g| format!("group:{p}/{g}")));
    subjects
}

/// A loaded policy version and the decisions made with it. A reload replaces the whole
/// snapshot, so the cache can never serve a decision of another version.
pub struct Snapshot {
    pub engine: Arc<Engine>,
    cache: moka::sync::Cache<Query, Arc<Verdict>>,
}

impl Snapshot {
    fn new(engine: Engine, capacity: u64) -> Self {
        Snapshot {
            engine: Arc::new(engine),
            cache: moka::sync::Cache::new(capacity),
        }
    }

    /// The cached verdict, or a fresh one (cached when it evaluated), under the engine's
    /// [`Engine::decision_key`]. A question the policy needs whole is cloned only for a miss;
    /// a narrowed one is built on every call (a few small copies, against an evaluation saved).
    async fn decide(&self, query: &Query) -> (Result<Arc<Verdict>, engine::EvalError>, bool) {
        let key = self.engine.decision_key(query);
        if let Some(hit) = self.cache.get(key.as_ref()) {
            return (Ok(hit), true);
        }
        let engine = self.engine.clone();
        let verdict = if engine.partition_size(&key.domain, &key.action) <= INLINE_RULES {
            engine.evaluate(&key)
        } else {
            let owned = key.clone().into_owned();
            match tokio::task::spawn_blocking(move || engine.evaluate(&owned)).await {
                Ok(v) => v,
                Err(e) => Err(engine::EvalError(e.to_string())),
            }
        };
        let verdict = verdict.map(Arc::new);
        if let Ok(v) = &verdict {
            self.cache.insert(key.into_owned(), v.clone());
        }
        (verdict, false)
    }
}

/// Where policies come from and how they are checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub shadow_dir: Option<PathBuf>,
    /// Run `tests/*.toml` before a version goes into force.
    pub run_tests: bool,
    pub cache_capacity: u64,
    /// Name the missing permission in 403 bodies.
    pub show_missing_permission: bool,
}

/// The result of checking one request.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Allowed or denied by the policy in force; an error fails closed.
    pub verdict: Result<Arc<Verdict>, String>,
    pub version: Arc<str>,
    /// The shadow policy's decision, when one is loaded and it evaluated.
    pub shadow: Option<bool>,
    pub cached: bool,
    pub duration: Duration,
}

impl Checked {
    /// The shadow policy decided otherwise than the policy in force.
    pub fn disagrees(&self) -> bool {
        self.shadow
            .is_some_and(|s| self.verdict.as_ref().map(|v| v.allowed).ok() != Some(s))
    }
}

/// What a reload did, for logs, metrics and the audit event.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub which: Which,
    pub outcome: Result<Arc<str>, LoadError>,
    /// The version still in force after a rejected reload.
    pub in_force: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Enforced,
    Shadow,
}

impl Which {
    pub const fn as_str(self) -> &'static str {
        match self {
            Which::Enforced => "enforced",
            Which::Shadow => "shadow",
        }
    }
}

/// The policy in force, the optional shadow policy, and the templates routes use.
pub struct Authz {
    enforced: ArcSwap<Snapshot>,
    shadow: ArcSwapOption<Snapshot>,
    pub settings: Settings,
    pub templates: Templates,
}

/// Reads, checks, builds and tests one policy directory.
pub async fn load_engine(dir: &Path, templates: &Templates, run_tests: bool) -> Result<Engine, LoadError> {
    let set = policy::load(dir)?;
    let engine = Engine::build(set).await?;
    if run_tests {
        let tables = tables::load(dir)?;
        let report = tables.run(&engine, templates);
        if !report.failures.is_empty() {
            return Err(LoadError(
                report
                    .failures
                    .iter()
                    .map(|f| policy::Problem {
                        origin: None,
                        message: format!("decision table failed: {f}"),
                    })
                    .collect(),
            ));
        }
    }
    Ok(engine)
}

impl Authz {
    /// Loads the enforced policy (an error stops start-up) and the shadow policy (an error is
    /// logged: the shadow never affects enforcement).
    pub async fn load(settings: Settings, templates: Templates) -> Result<Authz, LoadError> {
        let engine = load_engine(&settings.dir, &templates, settings.run_tests).await?;
        tracing::info!(dir = %settings.dir.display(), version = %engine.version(), rules = engine.rules().len(), "policy loaded");
        let authz = Authz {
            enforced: ArcSwap::from_pointee(Snapshot::new(engine, settings.cache_capacity)),
            shadow: ArcSwapOption::empty(),
            settings,
            templates,
        };
        if authz.settings.shadow_dir.is_some() {
            let shadow = authz.reload(Which::Shadow).await;
            if let Err(e) = &shadow.outcome {
                tracing::error!(error = %e, "the shadow policy did not load; requests are not shadowed until it does");
            }
        }
        Ok(authz)
    }

    pub fn version(&self) -> Arc<str> {
        self.enforced.load().engine.version().clone()
    }

    /// Decides one request with the policy in force and, beside it, the shadow policy.
    pub async fn check(&self, query: &Query) -> Checked {
        let started = Instant::now();
        let snapshot = self.enforced.load_full();
        let (verdict, cached) = snapshot.decide(query).await;
        let shadow = match self.shadow.load_full() {
            Some(shadow) => shadow.decide(query).await.0.ok().map(|v| v.allowed),
            None => None,
        };
        Checked {
            verdict: verdict.map_err(|e| e.to_string()),
            version: snapshot.engine.version().clone(),
            shadow,
            cached,
            duration: started.elapsed(),
        }
    }

    /// Loads a directory again; on success swaps it in with an empty cache, on failure keeps
    /// the version in force.
    pub async fn reload(&self, which: Which) -> Reloaded {
        let dir = match which {
            Which::Enforced => Some(&self.settings.dir),
            Which::Shadow => self.settings.shadow_dir.as_ref(),
        };
        let Some(dir) = dir else {
            return Reloaded {
                which,
                outcome: Err(LoadError::one(None, "no shadow policy is configured")),
                in_force: None,
            };
        };
        let capacity = self.settings.cache_capacity;
        match load_engine(dir, &self.templates, self.settings.run_tests).await {
            Ok(engine) => {
                let version = engine.version().clone();
                let snapshot = Arc::new(Snapshot::new(engine, capacity));
                match which {
                    Which::Enforced => self.enforced.store(snapshot),
                    Which::Shadow => self.shadow.store(Some(snapshot)),
                }
                Reloaded {
                    which,
                    outcome: Ok(version.clone()),
                    in_force: Some(version),
                }
            }
            Err(e) => Reloaded {
                which,
                outcome: Err(e),
                in_force: match which {
                    Which::Enforced => Some(self.version()),
                    Which::Shadow => self.shadow.load().as_ref().map(|s| s.engine.version().clone()),
                },
            },
        }
    }
}

impl Authz {
    /// Watches the policy directories (recursively, so `tests/` counts) and reloads the one that
    /// changed; `on_reload` hears every outcome. The watchers live as long as the returned value.
    pub fn watch(
        self: &Arc<Self>,
        on_reload: impl Fn(Reloaded) + Send + Sync + 'static,
    ) -> notify::Result<Vec<notify::RecommendedWatcher>> {
        let on_reload = Arc::new(on_reload);
        let mut watchers = Vec::new();
        let dirs = [
            (Which::Enforced, Some(&self.settings.dir)),
            (Which::Shadow, self.settings.shadow_dir.as_ref()),
        ];
        for (which, dir) in dirs {
            let Some(dir) = dir else { continue };
            let paths = [(dir.as_path(), notify::RecursiveMode::Recursive)];
            let (watcher, mut changes) = crate::watch::watch(paths, Duration::from_millis(250))?;
            watchers.push(watcher);
            let this = self.clone();
            let on_reload = on_reload.clone();
            tokio::spawn(async move {
                while changes.next().await {
                    on_reload(this.reload(which).await);
                }
            });
        }
        Ok(watchers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_decision_is_cached_for_every_caller_the_policy_cannot_tell_apart_and_no_one_else() {
        let csv = "p, role:ci, tekton, pipelinerun:ci/*, create\n\
                   p, ci:gitlab/job-7, tekton, pipelinerun:ci/*, create, deny\n\
                   g, group:gitlab/infra, role:ci, tekton\n";
        let model = include_str!("../../policies/model.conf");
        let set = policy::parse(model, &[("policy.csv".into(), csv.into())]).unwrap();
        let snapshot = Snapshot::new(Engine::build(set).await.unwrap(), 100);
        let job = |sub: &str| {
            Query::new(
                &[sub, "group:gitlab/infra"],
                "tekton",
                "pipelinerun:ci/build",
                "create",
            )
        };

        let (first, cached) = snapshot.decide(&job("ci:gitlab/job-1")).await;
        assert!(first.unwrap().allowed && !cached);
        let (second, cached) = snapshot.decide(&job("ci:gitlab/job-2")).await;
        assert!(
            second.unwrap().allowed && cached,
            "a job no line names shares the group's answer"
        );
        let (named, cached) = snapshot.decide(&job("ci:gitlab/job-7")).await;
        assert!(
            !named.unwrap().allowed && !cached,
            "the job a deny rule names is asked on its own"
        );
        let (again, cached) = snapshot.decide(&job("ci:gitlab/job-3")).await;
        assert!(again.unwrap().allowed && cached);
    }
}
