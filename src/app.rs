//! Builds everything from a validated config and runs it until shutdown.
//!
//! Listeners are bound by the caller ([`bind`]) and handed in, so tests can use port 0 and learn
//! the addresses before traffic starts. This is where the I/O that validation avoided happens:
//! certificates, keys and CA files are read here, and a failure names the config key.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use rustls::crypto::CryptoProvider;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::admin::{self, Ready};
use crate::audit::{AuditSink, JsonlSink};
use crate::audit::{PolicyEvent, RevocationEvent};
use crate::authn::browser::{Browser, BrowserClient};
use crate::authn::{Authn, Provider};
use crate::authz::resources::Templates;
use crate::authz::{Authz, Reloaded, Settings, Target, Which};
use crate::config::{Access, Config, Sessions, StoreKind};
use crate::listener::{self, ReloadingTls, Shared};
use crate::metrics::Metrics;
use crate::outbound::HttpsClient;
use crate::proxy::Proxy;
use crate::proxy::UpstreamKeys;
use crate::proxy::forward::Upstream;
use crate::proxy::routes::{Route, RouteTable};
use crate::secret::Secret;
use crate::session::{
    Lifetimes, MemoryStore, RedisClient, RedisSecrets, RedisStore, Scope, Sealer, SessionStore, parse_key,
};
use crate::tokens::Minter;
use crate::tokens::broker::Broker;

/// Start-up failures, each naming where in the config the problem lies.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{key}: {source}")]
    Build {
        key: String,
        source: crate::pem::BuildError,
    },
    #[error("audit.path: cannot open {path}: {source}")]
    Audit { path: String, source: std::io::Error },
    #[error("{0}")]
    AuditPipeline(#[from] crate::audit::pipeline::StartError),
    #[error("server.tls: cannot watch the certificate files: {0}")]
    Watch(#[from] notify::Error),
    #[error("{key}: {message}")]
    Secret { key: String, message: String },
    #[error("{key}: {message}")]
    Read { key: String, message: String },
    #[error("policy.dir: the policy did not load: {0}")]
    Policy(crate::authz::LoadError),
    #[error("resource_templates: {0}")]
    Templates(String),
    #[error("tokens.key_dir: {0}")]
    Keys(#[from] crate::tokens::KeyError),
}

fn policy_event(
    which: Which,
    result: &'static str,
    version: Option<Arc<str>>,
    in_force: Option<Arc<str>>,
    problems: Vec<String>,
) -> crate::audit::Event {
    PolicyEvent {
        time: std::time::SystemTime::now(),
        kind: which.as_str(),
        result,
        version,
        in_force,
        problems,
    }
    .into()
}

/// A reload's outcome in the log, the metrics and the audit trail.
fn report_reload(reloaded: Reloaded, metrics: &Metrics, audit: &dyn AuditSink) {
    let which = reloaded.which;
    metrics.policy_reload(which.as_str(), reloaded.outcome.is_ok());
    let event = match reloaded.outcome {
        Ok(version) => {
            tracing::info!(policy = which.as_str(), %version, "policy in force");
            policy_event(which, "loaded", Some(version), reloaded.in_force, Vec::new())
        }
        Err(e) => {
            tracing::error!(policy = which.as_str(), error = %e, in_force = ?reloaded.in_force, "policy reload rejected; the previous version stays in force");
            let problems = e.0.iter().map(ToString::to_string).collect();
            policy_event(which, "rejected", None, reloaded.in_force, problems)
        }
    };
    audit.emit(event);
}

/// A secret from the environment or a file; never from the config text itself. `what` names
/// the keys in messages (`client_secret` → `client_secret_env` / `client_secret_file`).
fn read_secret(
    what: &str,
    env: Option<&String>,
    file: Option<&std::path::PathBuf>,
) -> Result<Option<Secret>, String> {
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim()))),
            _ => Err(format!(
                "{what}_env names {var:?}, which is unset or empty (fix: export it before starting)"
            )),
        };
    }
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim()))),
            Ok(_) => Err(format!("{what}_file {} is empty", path.display())),
            Err(e) => Err(format!(
                "{what}_file: cannot read {}: {e} (fix: point it at a readable file)",
                path.display()
            )),
        };
    }
    Ok(None)
}

/// The listening sockets, bound before anything else starts.
pub struct Bound {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Bound {
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Reads, parses and checks a configuration file as `serve` would: every key, and the resource
/// templates it defines and names, all problems at once. Relative paths in it are taken from its
/// directory.
pub fn load_config(path: &std::path::Path) -> Result<Config, Vec<crate::config::Problem>> {
    crate::config::load_with(path, crate::authz::resources::template_problems)
}

/// What `check-config` reports about a file: everything [`load_config`] refuses, the warnings,
/// and, unless `offline` (checked on another machine than the one that will serve it), every
/// secret it names that is not where it says.
pub fn check_config(path: &std::path::Path, offline: bool) -> crate::config::Report {
    crate::config::check(path, |config| {
        let mut problems = crate::authz::resources::template_problems(config);
        if !offline {
            problems.extend(crate::config::check_secrets(config));
        }
        problems
    })
}

pub async fn bind(config: &Config) -> Result<Bound, StartError> {
    async fn one(key: &'static str, addr: &str) -> Result<Option<TcpListener>, StartError> {
        if addr.is_empty() {
            return Ok(None);
        }
        TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| StartError::Bind {
                key,
                addr: addr.to_string(),
                source,
            })
    }
    Ok(Bound {
        http: one("server.http", &config.server.http).await?,
        https: one("server.https", config.server.https.as_deref().unwrap_or("")).await?,
        admin: one("admin.listen", &config.admin.listen).await?,
    })
}

/// What serving needs, built from a validated config without opening a socket: the steps below
/// read files, keys and secrets, and fail with the config key that named them.
#[derive(Clone)]
pub struct Built {
    pub crypto: Arc<CryptoProvider>,
    pub store: Arc<dyn SessionStore>,
    /// The Redis of the session store, when it is one: the replicas share their keys there too.
    pub shared: Option<RedisClient>,
    pub templates: Templates,
    pub https_port: Option<u16>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<dyn AuditSink>,
    pub authn: Arc<Authn>,
    pub authz: Option<Arc<Authz>>,
    pub minter: Option<Arc<Minter>>,
    pub proxy: Arc<Proxy>,
}

/// The one crypto provider (aws-lc-rs), passed explicitly to every TLS user.
fn crypto_provider() -> Arc<CryptoProvider> {
    // Crates that build their own TLS config look for a process default; ours is the only one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds every part in dependency order. `https_port` is the bound HTTPS port, for redirects.
pub async fn build(config: &Config, https_port: Option<u16>) -> Result<Built, StartError> {
    let crypto = crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let audit = build_audit(config, &metrics, &crypto)?;
    let (store, shared) = build_session_store(&config.sessions)?;
    record_revocations(&*store, &audit);
    store.clone().listen();
    let authn = Arc::new(build_authn(config, &crypto, &metrics, &audit, &store, None)?);
    let templates =
        Templates::load(&config.resource_templates).map_err(|e| StartError::Templates(e.join("; ")))?;
    let authz = build_authz(config, &templates, &metrics, &*audit).await?;
    let minter = build_tokens(config, &audit)?;
    let (routes, upstream_keys) = build_routes(config, &authn, &templates, &crypto, &audit, &metrics)?;
    let proxy = Proxy::new(
        routes,
        authn.clone(),
        authz.clone(),
        config,
        audit.clone(),
        metrics.clone(),
        minter.clone(),
    )
    .with_https_port(https_port)
    .with_upstream_keys(upstream_keys);
    Ok(Built {
        crypto,
        store,
        shared,
        templates,
        https_port,
        metrics,
        audit,
        authn,
        authz,
        minter,
        proxy: Arc::new(proxy),
    })
}

/// The audit sink: the OTLP pipeline when an exporter is configured, else the JSON-lines file.
pub fn build_audit(
    config: &Config,
    metrics: &Metrics,
    crypto: &Arc<CryptoProvider>,
) -> Result<Arc<dyn AuditSink>, StartError> {
    // `service.instance.id`: each process numbers and chains its own records.
    let instance = uuid::Uuid::new_v4().to_string();
    if config.audit.otlp.is_some() {
        return Ok(crate::audit::pipeline::start(
            &config.audit,
            &instance,
            metrics.audit_stats(),
            crypto.clone(),
        )?);
    }
    let sink = JsonlSink::open(&config.audit.path, &instance).map_err(|source| StartError::Audit {
        path: config.audit.path.clone(),
        source,
    })?;
    Ok(sink)
}

/// Each deny entry that comes into force here goes into this replica's audit trail, whichever
/// replica or `portcullis revoke` made it: the record that it is enforced here, and from when.
fn record_revocations(store: &dyn SessionStore, audit: &Arc<dyn AuditSink>) {
    let audit = audit.clone();
    store.revocations().observe(move |r| {
        let named = |scope| (r.scope == scope).then(|| r.name.clone());
        let sid_hash = named(Scope::ProviderSession).map(|sid| crate::secret::short_digest(sid.as_bytes()));
        audit.emit(
            RevocationEvent {
                time: SystemTime::now(),
                scope: r.scope.as_str(),
                provider: Some(r.provider.clone()).filter(|p| !p.is_empty()),
                subject: named(Scope::Subject).or_else(|| named(Scope::SessionsOf)),
                sid_hash,
                before: UNIX_EPOCH + Duration::from_millis(r.before),
                expires: UNIX_EPOCH + Duration::from_millis(r.expires),
            }
            .into(),
        );
    });
}

/// Where browser sessions and sign-ins in progress are kept: this process's memory, or the
/// Redis `[sessions.redis]` names, with its password, keys and TLS files read here.
pub fn build_store(config: &Config) -> Result<Arc<dyn SessionStore>, StartError> {
    build_session_store(&config.sessions).map(|(store, _)| store)
}

/// The identity providers (with their HMAC keys and browser clients) over the session store.
/// Signing keys are not fetched here: [`run`] starts their refreshers. `unchanged` names the
/// providers a reload keeps as they are (their keys in hand), with the chain they come from.
pub fn build_authn(
    config: &Config,
    crypto: &Arc<CryptoProvider>,
    metrics: &Arc<Metrics>,
    audit: &Arc<dyn AuditSink>,
    store: &Arc<dyn SessionStore>,
    unchanged: Option<(&Authn, &[String])>,
) -> Result<Authn, StartError> {
    let mut providers = Vec::with_capacity(config.identity_providers.len());
    let mut browser_clients = Vec::new();
    for (i, idp_config) in config.identity_providers.iter().enumerate() {
        let key = format!("identity_providers[{i}]");
        let client =
            HttpsClient::new(idp_config.ca.as_deref(), crypto).map_err(|source| StartError::Build {
                key: key.clone(),
                source,
            })?;
        let hmac = read_secret(
            "hmac_secret",
            idp_config.hmac_secret_env.as_ref(),
            idp_config.hmac_secret_file.as_ref(),
        )
        .map_err(secret_error(&key))?;
        // Only here is the secret's value known: validation sees the keys that name it.
        if hmac.as_ref().is_some_and(|s| s.expose().len() < 32) {
            return Err(StartError::Secret {
                key,
                message: "the HMAC secret is shorter than 32 bytes (fix: use at least 32 random bytes)"
                    .into(),
            });
        }
        let kept = unchanged
            .filter(|(_, names)| names.contains(&idp_config.name))
            .and_then(|(authn, _)| authn.provider(&idp_config.name).cloned());
        let idp = kept.unwrap_or_else(|| {
            let idp = Provider::new(idp_config.resolved(), client.clone(), hmac);
            idp.keys.observe(metrics.clone(), &idp_config.name);
            Arc::new(idp)
        });
        if let Some(browser) = &idp_config.browser {
            let secret = read_secret(
                "client_secret",
                browser.client_secret_env.as_ref(),
                browser.client_secret_file.as_ref(),
            )
            .map_err(secret_error(&format!("{key}.browser")))?;
            browser_clients.push(Arc::new(BrowserClient::new(idp.clone(), browser, secret, client)));
        }
        providers.push(idp);
    }
    let browser = Browser::new(
        store.clone(),
        browser_clients,
        config.sessions.clone(),
        metrics.clone(),
        audit.clone(),
    );
    Ok(Authn::new(providers, browser))
}

/// The session store, and its Redis connections when it is shared.
fn build_session_store(s: &Sessions) -> Result<(Arc<dyn SessionStore>, Option<RedisClient>), StartError> {
    let redis = match (s.store, &s.redis) {
        (StoreKind::Redis, Some(redis)) => redis,
        _ => {
            let memory = MemoryStore::with_login_timeout(
                s.max_sessions.get(),
                s.idle_timeout.get(),
                s.lifetime.get(),
                s.login_timeout.get(),
            );
            return Ok((Arc::new(memory), None));
        }
    };
    let at = "sessions.redis";
    let secret = |what: &str, env: &Option<String>, file: &Option<std::path::PathBuf>| {
        read_secret(what, env.as_ref(), file.as_ref()).map_err(secret_error(at))
    };
    // The key path names where the key came from, the variable or the file.
    let key = |what: &str, from_env: bool, text: Option<Secret>| -> Result<Option<[u8; 32]>, StartError> {
        let source = if from_env { "env" } else { "file" };
        text.map(|t| {
            parse_key(t.expose()).map_err(|problem| StartError::Secret {
                key: format!("{at}.{what}_{source}"),
                message: format!("the key {problem}"),
            })
        })
        .transpose()
    };
    let current = secret(
        "encryption_key",
        &redis.encryption_key_env,
        &redis.encryption_key_file,
    )?;
    let Some(current) = key("encryption_key", redis.encryption_key_env.is_some(), current)? else {
        return Err(StartError::Secret {
            key: format!("{at}.encryption_key_env"),
            message: "is missing (fix: set encryption_key_env or encryption_key_file)".into(),
        });
    };
    let previous = secret(
        "previous_encryption_key",
        &redis.previous_encryption_key_env,
        &redis.previous_encryption_key_file,
    )?;
    let previous = key(
        "previous_encryption_key",
        redis.previous_encryption_key_env.is_some(),
        previous,
    )?;
    let sealer = Sealer::new(&current, previous.as_ref()).map_err(|e| StartError::Secret {
        key: format!("{at}.encryption_key_env"),
        message: e.to_string(),
    })?;
    let read = |key: &str, path: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, StartError> {
        path.as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|e| StartError::Read {
                    key: format!("{at}.{key}"),
                    message: format!(
                        "cannot read {}: {e} (fix: point it at a readable PEM file)",
                        p.display()
                    ),
                })
            })
            .transpose()
    };
    let client = match (
        read("client_cert", &redis.client_cert)?,
        read("client_key", &redis.client_key)?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => None,
    };
    let secrets = RedisSecrets {
        password: secret("password", &redis.password_env, &redis.password_file)?,
        sentinel_password: secret(
            "sentinel_password",
            &redis.sentinel_password_env,
            &redis.sentinel_password_file,
        )?,
        sealer,
        ca: read("ca", &redis.ca)?,
        client,
    };
    let lifetimes = Lifetimes {
        idle: s.idle_timeout.get(),
        absolute: s.lifetime.get(),
        login: s.login_timeout.get(),
    };
    let store = RedisStore::new(redis, secrets, lifetimes).map_err(|e| StartError::Read {
        key: e.key,
        message: e.message,
    })?;
    let client = store.client();
    Ok((Arc::new(store), Some(client)))
}

/// The policy in force, when some route is protected; its loading is audited like a reload.
pub async fn build_authz(
    config: &Config,
    templates: &Templates,
    metrics: &Metrics,
    audit: &dyn AuditSink,
) -> Result<Option<Arc<Authz>>, StartError> {
    if !config.needs_policy() {
        return Ok(None);
    }
    let p = &config.policy;
    let settings = Settings {
        dir: p.dir.clone(),
        shadow_dir: p.shadow_dir.clone(),
        run_tests: p.run_tests,
        cache_capacity: p.cache_capacity.get(),
        show_missing_permission: p.show_missing_permission,
    };
    let authz = Authz::load(settings, templates.clone())
        .await
        .map_err(StartError::Policy)?;
    let version = authz.version();
    let loaded = Reloaded {
        which: Which::Enforced,
        outcome: Ok(version.clone()),
        in_force: Some(version),
    };
    report_reload(loaded, metrics, audit);
    Ok(Some(Arc::new(authz)))
}

/// The proxy as an issuer, when some route sends identity assertions.
pub fn build_tokens(config: &Config, audit: &Arc<dyn AuditSink>) -> Result<Option<Arc<Minter>>, StartError> {
    let asserting = config.routes.iter().any(|r| r.assertion.is_some());
    let (Some(issuer), Some(dir), true) = (&config.tokens.issuer, &config.tokens.key_dir, asserting) else {
        return Ok(None);
    };
    Ok(Some(Arc::new(Minter::open(
        &config.tokens,
        issuer,
        dir,
        audit.clone(),
    )?)))
}

/// The route table (upstream clients, accepted providers, policy targets, brokers) and the
/// upstream public keys each route's JWKS document serves beside the proxy's.
pub fn build_routes(
    config: &Config,
    authn: &Authn,
    templates: &Templates,
    crypto: &Arc<CryptoProvider>,
    audit: &Arc<dyn AuditSink>,
    metrics: &Arc<Metrics>,
) -> Result<(RouteTable, UpstreamKeys), StartError> {
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut upstream_keys = UpstreamKeys::new();
    for (i, route) in config.routes.iter().enumerate() {
        let upstream = Upstream::build(&route.upstream, crypto).map_err(|source| StartError::Build {
            key: format!("routes[{i}].upstream"),
            source,
        })?;
        let accepted = route
            .identity_providers
            .iter()
            .filter_map(|name| authn.provider(name).cloned())
            .collect();
        let target = (route.access == Access::Protected)
            .then(|| Target::new(route.domain(), route.resources.as_deref(), templates));
        let credentials = match &route.upstream_credentials {
            Some(c) => Some(
                build_broker(
                    &format!("routes[{i}].upstream_credentials"),
                    c,
                    route,
                    crypto,
                    audit,
                )?
                .observed(metrics.clone())
                .into(),
            ),
            None => None,
        };
        if let Some(path) = route.assertion.as_ref().and_then(|a| a.upstream_jwks.as_deref()) {
            let keys = crate::config::read_public_jwks(path).map_err(|message| StartError::Read {
                key: format!("routes[{i}].assertion.upstream_jwks"),
                message,
            })?;
            upstream_keys.insert(route.name.clone(), Arc::from(keys));
        }
        let built = Route::new(route.clone(), upstream, accepted, target).with_credentials(credentials);
        metrics.route_known(&built.label, built.credentials.is_some(), built.policy.is_some());
        routes.push(Arc::new(built));
    }
    Ok((RouteTable::new(routes), upstream_keys))
}

/// A route's token broker: its client secret and its own HTTPS client to the token endpoint.
fn build_broker(
    key: &str,
    c: &crate::config::UpstreamCredentials,
    route: &crate::config::Route,
    crypto: &Arc<CryptoProvider>,
    audit: &Arc<dyn AuditSink>,
) -> Result<Broker, StartError> {
    let secret = read_secret(
        "client_secret",
        c.client_secret_env.as_ref(),
        c.client_secret_file.as_ref(),
    )
    .map_err(secret_error(key))?
    .ok_or_else(|| StartError::Secret {
        key: key.to_string(),
        message: "needs client_secret_env or client_secret_file".into(),
    })?;
    let http = HttpsClient::new(c.ca.as_deref(), crypto).map_err(|source| StartError::Build {
        key: key.to_string(),
        source,
    })?;
    Ok(Broker::new(
        c.clone(),
        secret,
        http,
        Arc::new(route.name.clone()),
        audit.clone(),
    ))
}

fn secret_error(key: &str) -> impl FnOnce(String) -> StartError {
    let key = key.to_string();
    move |message| StartError::Secret { key, message }
}

/// The background work a built proxy needs while it serves: signing-key refreshers for the
/// identity providers, the policy watcher, and the signing key ring's rotation. Everything it
/// starts stops with the runtime; the returned watchers must live as long as serving does.
fn start_background(config: &Config, built: &Built) -> Result<Vec<notify::RecommendedWatcher>, StartError> {
    // Keys are fetched before /readyz turns green, then refreshed in the background.
    for idp in built.authn.providers() {
        if idp.needs_jwks() {
            idp.keys.spawn_refresher();
        }
    }
    if let (Some(minter), Some(dir)) = (&built.minter, &config.tokens.key_dir) {
        let (keys, dir) = (minter.clone(), dir.clone());
        // Rotation on schedule, pruning, and keys `portcullis keys rotate` (or `revoke`) wrote
        // meanwhile: every second, so that a revocation is announced to the other replicas and
        // gone from every JWKS within 2 s; at once when another replica announced one of this
        // ring's keys revoked.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = keys.withdraw_requested() => {}
                }
                let (keys, dir) = (keys.clone(), dir.clone());
                let _ = tokio::task::spawn_blocking(move || keys.maintain(&dir)).await;
            }
        });
    }
    match &built.authz {
        Some(authz) if config.policy.watch => {
            let (metrics, audit) = (built.metrics.clone(), built.audit.clone());
            Ok(authz.watch(move |reloaded| report_reload(reloaded, &metrics, &*audit))?)
        }
        _ => Ok(Vec::new()),
    }
}

/// `keys revoke` for a key this replica's directory does not hold: when another replica
/// publishes it in the shared key set (the Redis store), it is announced revoked there, so the
/// replica that holds it withdraws it and no replica serves it, within the shared set's poll.
/// `Ok(false)`: no replica publishes it (or there is no shared key set).
pub async fn announce_key_revoked(config: &Config, kid: &str) -> Result<bool, String> {
    let (_, Some(client)) = build_session_store(&config.sessions).map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    let publication = crate::tokens::shared::Publication::new(client, config.tokens.shared_keys_expiry);
    let unreachable = |e: crate::session::StoreError| format!("sessions.redis: {e}");
    let (published, _) = publication.read().await.map_err(unreachable)?;
    if !published.iter().any(|k| k["kid"] == kid) {
        return Ok(false);
    }
    let until = SystemTime::now() + crate::tokens::Schedule::of(&config.tokens).remembered();
    publication.announce(kid, until).await.map_err(unreachable)?;
    Ok(true)
}

/// A task that stops when this is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// With the Redis session store, this replica's public keys are published there and the
/// others' read back (`tokens::shared`), for as long as it serves: once it stops, its keys stay
/// published until they expire, so that what it signed last still verifies.
fn share_keys(config: &Config, built: &Built) -> Option<AbortOnDrop> {
    let (Some(minter), Some(client)) = (&built.minter, &built.shared) else {
        return None;
    };
    let publication =
        crate::tokens::shared::Publication::new(client.clone(), config.tokens.shared_keys_expiry);
    tracing::info!(
        replica = publication.replica(),
        "publishing this replica's signing keys in the session store"
    );
    Some(AbortOnDrop(
        tokio::spawn(publication.run(minter.clone())).abort_handle(),
    ))
}

/// The HTTPS listener's certificate, reloaded when its files change.
fn build_tls(
    config: &Config,
    bound: &Bound,
    metrics: &Arc<Metrics>,
) -> Result<Option<(Arc<ReloadingTls>, notify::RecommendedWatcher)>, StartError> {
    let (Some(tls), true) = (&config.server.tls, bound.https.is_some()) else {
        return Ok(None);
    };
    let tls = ReloadingTls::load(tls, crypto_provider()).map_err(|source| StartError::Build {
        key: "server.tls".into(),
        source,
    })?;
    let watcher = tls.watch(metrics.clone())?;
    Ok(Some((tls, watcher)))
}

/// Runs the proxy until `shutdown` resolves, then stops accepting, lets in-flight requests
/// finish within `server.shutdown_grace`, and flushes the audit sink.
pub async fn run(config: Config, bound: Bound, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    run_with(config, None, bound, shutdown).await
}

/// [`run`] for a configuration read from `path`: when the file changes, or on SIGHUP, its
/// routes and identity providers are read again and replace the running ones (see [`reload`]).
pub async fn run_file(
    path: &Path,
    config: Config,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    run_with(config, Some(path.to_path_buf()), bound, shutdown).await
}

async fn run_with(
    config: Config,
    path: Option<PathBuf>,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let built = build(&config, bound.https_addr().map(|a| a.port())).await?;
    let _watchers = start_background(&config, &built)?;
    let _sharing = share_keys(&config, &built);
    // The certificate's watcher must live while serving: dropped, it reloads nothing.
    let (tls, _tls_watcher) = build_tls(&config, &bound, &built.metrics)?.unzip();
    let live = Arc::new(ArcSwap::from(built.proxy.clone()));
    let _reloading = match path {
        Some(path) => Some(spawn_reloader(path, config.clone(), built.clone(), live.clone())?),
        None => None,
    };
    serve(&config, bound, built, live, tls, shutdown).await;
    Ok(())
}

/// Sections a reload does not apply: they are read once, at start, and a change to them is
/// logged as needing a restart while the routes and identity providers are applied.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let sections = [
        ("runtime", old.runtime == new.runtime),
        ("log", old.log == new.log),
        ("server", old.server == new.server),
        ("admin", old.admin == new.admin),
        ("audit", old.audit == new.audit),
        ("sessions", old.sessions == new.sessions),
        ("policy", old.policy == new.policy),
        (
            "resource_templates",
            old.resource_templates == new.resource_templates,
        ),
        ("tokens", old.tokens == new.tokens),
    ];
    sections
        .into_iter()
        .filter_map(|(name, same)| (!same).then_some(name))
        .collect()
}

/// Why a reload was refused; the configuration in force stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<crate::config::Problem>),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("{0} (fix: restart Portcullis to add it)")]
    NeedsStart(&'static str),
}

/// Builds the proxy for the configuration now in `path` and makes it the one in force: the
/// routes and identity providers come from the file; everything else (listeners, audit, policy,
/// sessions, keys) stays as started. Providers whose settings did not change are kept with the
/// keys they hold; a new provider's keys are fetched in the background, its routes answering
/// 503 `idp_unavailable` until they arrive. A file that does not load, or does not validate,
/// changes nothing. Returns the sections that changed but need a restart.
pub async fn reload(
    path: &Path,
    running: &Config,
    built: &Built,
    live: &ArcSwap<Proxy>,
) -> Result<(Config, Vec<&'static str>), ReloadError> {
    let new = load_config(path).map_err(ReloadError::Invalid)?;
    let restart = needs_restart(running, &new);
    let mut applied = running.clone();
    applied.routes = new.routes;
    applied.identity_providers = new.identity_providers;
    // The parts kept from the start must fit the routes: a policy and an issuer exist only if
    // some route needed them then.
    let problems = crate::config::validate(&applied);
    if !problems.is_empty() {
        return Err(ReloadError::Invalid(problems));
    }
    if applied.needs_policy() && built.authz.is_none() {
        return Err(ReloadError::NeedsStart(
            "routes: a protected route needs the policy, which is loaded at start only when some route is protected",
        ));
    }
    if applied.routes.iter().any(|r| r.assertion.is_some()) && built.minter.is_none() {
        return Err(ReloadError::NeedsStart(
            "routes: an assertion route needs the token issuer, which starts only when some route sends assertions",
        ));
    }
    let current = live.load_full();
    let unchanged: Vec<String> = applied
        .identity_providers
        .iter()
        .filter(|idp| running.identity_providers.iter().any(|old| old == *idp))
        .map(|idp| idp.name.clone())
        .collect();
    let authn = build_authn(
        &applied,
        &built.crypto,
        &built.metrics,
        &built.audit,
        &built.store,
        Some((current.authn(), &unchanged)),
    )?;
    let (routes, upstream_keys) = build_routes(
        &applied,
        &authn,
        &built.templates,
        &built.crypto,
        &built.audit,
        &built.metrics,
    )?;
    for idp in authn.providers() {
        if idp.needs_jwks() && !unchanged.contains(&idp.config.name) {
            idp.keys.spawn_refresher();
        }
    }
    let proxy = Proxy::new(
        routes,
        Arc::new(authn),
        built.authz.clone(),
        &applied,
        built.audit.clone(),
        built.metrics.clone(),
        built.minter.clone(),
    )
    .with_https_port(built.https_port)
    .with_upstream_keys(upstream_keys);
    live.store(Arc::new(proxy));
    Ok((applied, restart))
}

/// Reloads on SIGHUP and when the file changes; the watcher lives as long as the returned value.
fn spawn_reloader(
    path: PathBuf,
    config: Config,
    built: Built,
    live: Arc<ArcSwap<Proxy>>,
) -> Result<notify::RecommendedWatcher, StartError> {
    let (watcher, mut changes) = crate::watch::watch_file(&path, std::time::Duration::from_millis(250))?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(|e| {
        StartError::Read {
            key: "(SIGHUP)".into(),
            message: format!("cannot listen for SIGHUP: {e}"),
        }
    })?;
    tokio::spawn(async move {
        let mut running = config;
        loop {
            let why = tokio::select! {
                changed = changes.next() => if changed { "file changed" } else { return },
                signal = hangup.recv() => if signal.is_some() { "SIGHUP" } else { return },
            };
            match reload(&path, &running, &built, &live).await {
                Ok((applied, restart)) => {
                    running = applied;
                    tracing::info!(
                        trigger = why,
                        routes = running.routes.len(),
                        "configuration reloaded: routes and identity providers in force"
                    );
                    if !restart.is_empty() {
                        tracing::warn!(sections = ?restart, "these sections changed but are read only at start; restart to apply them");
                    }
                    for warning in crate::config::warnings(&running) {
                        tracing::warn!(key = %warning.path, fix = %warning.hint, "{}", warning.message);
                    }
                }
                Err(e) => {
                    tracing::error!(trigger = why, error = %e, "configuration reload refused; the configuration in force stays");
                }
            }
        }
    });
    Ok(watcher)
}

/// Accepts on the bound listeners until `shutdown`, then drains.
async fn serve(
    config: &Config,
    bound: Bound,
    built: Built,
    live: Arc<ArcSwap<Proxy>>,
    tls: Option<Arc<ReloadingTls>>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let max = config.server.limits.max_connections.get();
    let shared = Shared {
        proxy: live.clone(),
        metrics: built.metrics.clone(),
        limits: config.server.limits.clone(),
        connections: Arc::new(Semaphore::new(max)),
        shutdown: stopped.clone(),
    };
    let ready = Arc::new(Ready::new(live).with_keys(built.minter.clone()));
    let mut tasks = Vec::new();
    if let Some(l) = bound.http {
        tasks.push(tokio::spawn(listener::serve(l, None, shared.clone())));
    }
    if let (Some(l), Some(tls)) = (bound.https, tls) {
        tasks.push(tokio::spawn(listener::serve(l, Some(tls), shared.clone())));
    }
    if let Some(l) = bound.admin {
        tokio::spawn(admin::serve(
            l,
            built.metrics.clone(),
            ready.clone(),
            built.minter.clone(),
            stopped.clone(),
        ));
    }
    ready.set(true);
    tracing::info!(routes = config.routes.len(), "portcullis is ready");

    shutdown.await;
    tracing::info!(grace = ?config.server.shutdown_grace, "shutting down: refusing new connections, draining in-flight requests");
    ready.set(false);
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(config.server.shutdown_grace, shared.connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period ended with requests still in flight");
    }
    built.audit.flush();
}

/// What `portcullis revoke` ends.
#[derive(Debug, Clone)]
pub enum Revoke {
    /// A person's browser sessions: their subject at a provider.
    SessionsOf(String),
    /// A subject everywhere: its browser sessions and its bearer tokens (a service, a CI job).
    Subject(String),
    /// Every browser session.
    AllSessions,
}

/// Writes a revocation to the shared session store, which announces it to every replica.
/// `provider` names the provider that vouched for the name (needed when the config has more
/// than one); `token_lifetime` is the longest its bearer tokens may live. With the memory store
/// there is nothing shared to write to: refused, with the fix.
pub async fn revoke(
    config: &Config,
    what: Revoke,
    provider: Option<&str>,
    token_lifetime: std::time::Duration,
) -> Result<crate::session::Revocation, String> {
    use crate::session::{Revocation, Scope, acceptable_name};
    if config.sessions.store != StoreKind::Redis {
        return Err("sessions.store: revocation reaches every replica through the shared session store, and this \
             configuration keeps sessions in each process's memory (fix: set [sessions] store = \"redis\" with \
             [sessions.redis], as every replica does; a single replica on the memory store can be restarted to end \
             every session)"
            .into());
    }
    let (scope, name) = match &what {
        Revoke::SessionsOf(name) => (Scope::SessionsOf, name.as_str()),
        Revoke::Subject(name) => (Scope::Subject, name.as_str()),
        Revoke::AllSessions => (Scope::AllSessions, ""),
    };
    let provider_config = if scope == Scope::AllSessions {
        None
    } else {
        if !acceptable_name(name) {
            return Err("the name is empty, too long or holds control characters".into());
        }
        let names: Vec<&str> = config
            .identity_providers
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let chosen = match provider {
            Some(p) => config.identity_providers.iter().find(|c| c.name == p),
            None if config.identity_providers.len() == 1 => config.identity_providers.first(),
            None => {
                return Err(format!(
                    "--provider: a name means something only with the provider that vouched for it; name one of: {}",
                    names.join(", ")
                ));
            }
        };
        Some(chosen.ok_or_else(|| {
            format!(
                "--provider: no identity provider is named {:?} (the configured ones: {})",
                provider.unwrap_or_default(),
                names.join(", ")
            )
        })?)
    };
    let leeway = provider_config.map(|p| p.resolved().leeway).unwrap_or_default();
    let ttl = Revocation::ttl(scope, config.sessions.lifetime.get(), token_lifetime, leeway);
    let provider_name = provider_config.map(|p| p.name.as_str()).unwrap_or_default();
    let revocation = Revocation::now(scope, provider_name, name, ttl);
    let store = build_store(config).map_err(|e| e.to_string())?;
    store
        .revoke(revocation.clone())
        .await
        .map_err(|e| format!("sessions.redis: {e}"))?;
    Ok(revocation)
}
