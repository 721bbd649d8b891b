//! The shared session store: Redis (or Valkey), standalone, behind Sentinel, or a Redis
//! Cluster, so that any replica serves any session and a restart signs nobody out.
//!
//! What Redis holds is of no use to whoever reads it: values are sealed (`seal.rs`) with the
//! session id or sign-in state as associated data, and keys are SHA-256 of that id or state, so
//! the keyspace names no cookie that could be replayed. Lifetimes are Redis expiries (the idle
//! one renewed on every read, `GETEX`), and the absolute lifetime is checked on every read
//! against the sign-in time inside the sealed value. A sign-in is taken with `GETDEL`, so two
//! callbacks with the same state cannot both find it, whichever replicas they reach.
//!
//! Connections are opened lazily and again after a failure (a call that meets a broken one is
//! made once more on a new one), so the proxy starts while Redis is down, follows a failover,
//! and recovers by itself when Redis returns; meanwhile every call fails within
//! `command_timeout` and browser routes answer 503 `session_store_unavailable`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, PushInfo,
    PushKind, RedisConnectionInfo,
};

use super::revocation::{Revocation, Revocations, now_ms};
use super::seal::Sealer;
use super::{Health, Lease, PendingLogin, Session, SessionId, SessionStore, StoreError, StoreFuture, codec};
use crate::config::{Redis, RedisUrl};
use crate::secret::Secret;

/// What `[sessions.redis]` names that is not in the config file: the password, the key
/// material, and the contents of the TLS files.
pub struct RedisSecrets {
    pub password: Option<Secret>,
    /// The Sentinels' own password, when they have one.
    pub sentinel_password: Option<Secret>,
    pub sealer: Sealer,
    /// PEM CA bundle; `None` for the system roots.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Idle, absolute and sign-in lifetimes, as `[sessions]` sets them.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub idle: Duration,
    pub absolute: Duration,
    pub login: Duration,
}

/// A store that could not be built from its configuration, with the key path at fault.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

/// How long a session read from Redis may be served from this replica's memory. Pub/sub drops
/// a copy at once when the session is signed out or written on any replica; this bound only
/// caps how long Redis's idle expiry goes unrenewed and how much memory the copies take.
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_ENTRIES: u64 = 100_000;
/// How often the subscription is checked (a PING on its connection): a subscription that does
/// not answer within the command timeout is dropped, the local copies with it.
const SUBSCRIPTION_CHECK: Duration = Duration::from_millis(500);

/// Commands on the session store's connections, for whatever else the replicas keep in the
/// same Redis (the signing keys each replica publishes): the same servers, credentials, TLS,
/// pool and timeout as the sessions, so there is one Redis configuration, not two.
#[derive(Clone)]
pub struct RedisClient {
    links: Arc<[Link]>,
    next: Arc<AtomicUsize>,
    prefix: String,
    timeout: Duration,
}

impl RedisClient {
    /// `[sessions.redis] key_prefix`: every key this proxy writes starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs `cmd` on the next connection of the pool, within the command timeout.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.links.len().max(1);
        let link = self
            .links
            .get(i)
            .ok_or_else(|| StoreError::Unavailable("no connection configured".into()))?;
        let query = async {
            match link.query(cmd).await {
                // A connection lost under the call (a failover, a restart, a slot moved with its
                // node) is opened again once, within the same timeout, so the request does not
                // fail for it.
                Err(e) if broken(&e) => link.query(cmd).await,
                other => other,
            }
        };
        match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("redis: {e}"))),
            Err(_) => {
                // A connection that does not answer in time is not trusted with the next call.
                link.drop_connection();
                Err(StoreError::Unavailable(format!(
                    "redis did not answer within {:?}",
                    self.timeout
                )))
            }
        }
    }
}

pub struct RedisStore {
    client: RedisClient,
    sealer: Sealer,
    prefix: String,
    lifetimes: Lifetimes,
    /// The last call's outcome (a [`Health`] as a number), for `/readyz`.
    health: AtomicU8,
    /// This replica's copy of the deny list, kept current by the subscription.
    revocations: Arc<Revocations>,
    /// Sessions read recently, by the SHA-256 of their id (their Redis key): used only while
    /// the subscription is up, so that no invalidation can be missed.
    cache: moka::sync::Cache<[u8; 32], Arc<Session>>,
    /// The subscription is up and the deny list was loaded after it was made.
    listening: AtomicBool,
    /// Counts invalidations: a session read from Redis is cached only when none arrived while
    /// it was being read (the copy could be older than the invalidation).
    invalidations: AtomicU64,
    /// Where the subscription connects.
    subscriber: Subscriber,
}

impl RedisStore {
    /// The store `config` describes. Nothing is connected yet: the first call connects.
    pub fn new(
        config: &Redis,
        secrets: RedisSecrets,
        lifetimes: Lifetimes,
    ) -> Result<RedisStore, BuildError> {
        let (target, subscriber) = Target::new(config, &secrets)?;
        let links: Vec<Link> = (0..config.pool_size.get())
            .map(|_| Link {
                target: target.clone(),
                live: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        let client = RedisClient {
            links: links.into(),
            next: Arc::new(AtomicUsize::new(0)),
            prefix: config.key_prefix.clone(),
            timeout: config.command_timeout.get(),
        };
        Ok(RedisStore {
            client,
            sealer: secrets.sealer,
            prefix: config.key_prefix.clone(),
            lifetimes,
            health: AtomicU8::new(NOT_YET_USED),
            revocations: Revocations::shared(),
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(CACHE_TTL)
                .build(),
            listening: AtomicBool::new(false),
            invalidations: AtomicU64::new(0),
            subscriber,
        })
    }

    /// Subscribes to the store's channel, for as long as the store is in use: revocations and
    /// invalidations from every replica reach this one, and the full deny list is loaded again
    /// at every (re)subscription, so nothing published while disconnected is missed. Until
    /// the first subscription holds, sessions are read from Redis every time.
    pub fn subscribe(self: &Arc<Self>) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(this) = store.upgrade() else { return };
                let subscriber = this.subscriber.clone();
                let channel = this.channel();
                drop(this);
                match subscription(&store, &subscriber, &channel).await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!(error = %e, "session store subscription lost; sessions are read from Redis until it is back")
                    }
                }
                let Some(this) = store.upgrade() else { return };
                this.stop_listening();
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
    }

    /// Whether the subscription is up (local copies in use), for tests and `/readyz`.
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn stop_listening(&self) {
        self.listening.store(false, Ordering::Release);
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    /// The channel every replica listens on, under the key prefix.
    fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// The hash that holds the deny list. It has no expiry, so Redis never evicts it under
    /// memory pressure (`volatile-ttl` evicts only keys that expire); expired entries are
    /// removed by the next revocation.
    fn revoked_key(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// Reads the whole deny list from Redis into this replica's copy.
    async fn load_revocations(&self) -> Result<(), StoreError> {
        let all = self
            .run::<Vec<(String, String)>>(redis::cmd("HGETALL").arg(self.revoked_key()))
            .await?;
        self.revocations
            .replace(all.iter().filter_map(|(f, v)| Revocation::parse(f, v)));
        Ok(())
    }

    /// Applies one message of the channel.
    fn on_message(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        match text.split_once('\n') {
            Some(("s", digest)) => {
                if let Some(digest) = crate::hex::decode(digest).and_then(|d| <[u8; 32]>::try_from(d).ok()) {
                    self.invalidations.fetch_add(1, Ordering::AcqRel);
                    self.cache.invalidate(&digest);
                }
            }
            Some(("r", rest)) => {
                if let Some((value, field)) = rest.split_once('\n')
                    && let Some(r) = Revocation::parse(field, value)
                {
                    self.revocations.apply(&r);
                }
            }
            _ => {}
        }
    }

    /// Tells every replica to drop its copy of a session.
    async fn invalidate(&self, digest: &[u8; 32]) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(digest);
        let message = format!("s\n{}", crate::hex::encode(digest));
        if let Err(e) = self
            .run::<i64>(redis::cmd("PUBLISH").arg(self.channel()).arg(message))
            .await
        {
            tracing::warn!(error = %e, "a session change could not be announced to the other replicas");
        }
    }

    /// The store's connections, for other state the replicas share in the same Redis.
    pub fn client(&self) -> RedisClient {
        self.client.clone()
    }

    /// Runs `cmd` on the next connection of the pool, within the command timeout.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let result = self.client.query(cmd).await;
        let health = if result.is_ok() { REACHABLE } else { UNREACHABLE };
        self.health.store(health, Ordering::Relaxed);
        result
    }

    /// The Redis key of a session: a hash of its id, never the id itself.
    fn session_key(&self, id: &SessionId) -> String {
        self.key("s", &id.0)
    }

    fn digest(id: &SessionId) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &id.0);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    /// The Redis key of a session's refresh lease: a hash of its id, like the session's.
    fn lease_key(&self, id: &SessionId) -> String {
        self.key("r", &id.0)
    }

    fn login_key(&self, state: &str) -> String {
        self.key("l", state.as_bytes())
    }

    fn key(&self, kind: &str, name: &[u8]) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name);
        format!("{}{kind}:{}", self.prefix, crate::hex::encode(digest.as_ref()))
    }

    /// How long a session written now may live: the idle lifetime, cut short by what is left
    /// of the absolute one.
    fn ttl(&self, created: SystemTime) -> Duration {
        let age = SystemTime::now().duration_since(created).unwrap_or_default();
        self.lifetimes
            .idle
            .min(self.lifetimes.absolute.saturating_sub(age))
    }
}

const NOT_YET_USED: u8 = 0;
const REACHABLE: u8 = 1;
const UNREACHABLE: u8 = 2;

/// The associated data a session is sealed with: it opens under this id only.
fn session_aad(id: &SessionId) -> Vec<u8> {
    [b"portcullis session ".as_slice(), &id.0].concat()
}

fn login_aad(state: &str) -> Vec<u8> {
    [b"portcullis sign-in ".as_slice(), state.as_bytes()].concat()
}

/// Removes a lease only when it still holds the caller's token: a lease that ran out and was
/// taken by another replica is not theirs to give back.
const RELEASE_LEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn sealing_failed<E>(_: E) -> StoreError {
    StoreError::Unavailable("the session could not be sealed".into())
}

impl SessionStore for RedisStore {
    fn get<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, Option<Arc<Session>>> {
        Box::pin(async move {
            let digest = Self::digest(id);
            let listening = self.listening();
            if listening
                && let Some(session) = self.cache.get(&digest)
                && session.within(self.lifetimes.absolute)
            {
                return Ok(Some(session));
            }
            let seen = self.invalidations.load(Ordering::Acquire);
            let mut cmd = redis::cmd("GETEX");
            cmd.arg(self.session_key(id))
                .arg("PX")
                .arg(millis(self.lifetimes.idle).max(1));
            let Some(sealed) = self.run::<Option<Vec<u8>>>(&cmd).await? else {
                return Ok(None);
            };
            let Some(session) = self
                .sealer
                .open(&session_aad(id), &sealed)
                .and_then(|plain| codec::decode_session(&plain))
            else {
                // Sealed with a key this replica does not have, or not for this id: no
                // session, as with a forged cookie.
                tracing::warn!(session = %id.hash(), "a stored session did not open: refused");
                return Ok(None);
            };
            if !session.within(self.lifetimes.absolute) {
                return Ok(None);
            }
            let session = Arc::new(session);
            // Kept only when nothing was invalidated meanwhile and the subscription held
            // throughout: a copy is never older than an invalidation this replica received.
            if listening && self.listening() && self.invalidations.load(Ordering::Acquire) == seen {
                self.cache.insert(digest, session.clone());
            }
            Ok(Some(session))
        })
    }

    fn put<'a>(&'a self, id: SessionId, session: Session) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = self.session_key(&id);
            let ttl = millis(self.ttl(session.created));
            if ttl == 0 {
                // Past its absolute lifetime already: nothing to keep, and any older value goes.
                return self.run::<()>(redis::cmd("DEL").arg(key)).await;
            }
            let plain = codec::encode_session(&session).map_err(sealing_failed)?;
            let sealed = self
                .sealer
                .seal(&session_aad(&id), &plain)
                .map_err(sealing_failed)?;
            self.run::<()>(redis::cmd("SET").arg(key).arg(sealed).arg("PX").arg(ttl))
                .await?;
            // Other replicas may hold the previous tokens (a refresh rotated them).
            self.invalidate(&Self::digest(&id)).await;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.run::<()>(redis::cmd("DEL").arg(self.session_key(id)))
                .await?;
            self.invalidate(&Self::digest(id)).await;
            Ok(())
        })
    }

    fn try_lease_refresh<'a>(&'a self, id: &'a SessionId, ttl: Duration) -> StoreFuture<'a, Option<Lease>> {
        Box::pin(async move {
            let lease = Lease::random()?;
            let taken = self
                .run::<Option<String>>(
                    redis::cmd("SET")
                        .arg(self.lease_key(id))
                        .arg(&lease.token)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(ttl).max(1)),
                )
                .await?;
            if taken.is_none() {
                return Ok(None);
            }
            // The last holder wrote the session and announced it before giving the lease back,
            // but the announcement may not have reached this replica yet: its copy goes, and
            // the next read is from Redis (a read already under way is not kept either).
            self.invalidations.fetch_add(1, Ordering::AcqRel);
            self.cache.invalidate(&Self::digest(id));
            Ok(Some(lease))
        })
    }

    fn release_refresh<'a>(&'a self, id: &'a SessionId, lease: Lease) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.run::<i64>(
                redis::cmd("EVAL")
                    .arg(RELEASE_LEASE)
                    .arg(1)
                    .arg(self.lease_key(id))
                    .arg(&lease.token),
            )
            .await?;
            Ok(())
        })
    }

    fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    fn listen(self: Arc<Self>) {
        self.subscribe();
    }

    fn subscription(&self) -> Option<String> {
        let entries = self.revocations.len();
        Some(if self.listening() {
            format!("revocations: subscribed, {entries} deny entries in force")
        } else {
            format!(
                "revocations: not subscribed (retrying), {entries} deny entries held from before; sessions read from Redis every time"
            )
        })
    }

    fn revoke<'a>(&'a self, revocation: Revocation) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = self.revoked_key();
            let all = self
                .run::<Vec<(String, String)>>(redis::cmd("HGETALL").arg(&key))
                .await?;
            let now = now_ms();
            let mut merged = revocation;
            let mut expired = Vec::new();
            for (field, value) in &all {
                match Revocation::parse(field, value) {
                    Some(r) if r.expires <= now => expired.push(field.clone()),
                    None => expired.push(field.clone()),
                    Some(r) if *field == merged.field() => {
                        merged.before = merged.before.max(r.before);
                        merged.expires = merged.expires.max(r.expires);
                    }
                    Some(_) => {}
                }
            }
            if !expired.is_empty() {
                self.run::<i64>(redis::cmd("HDEL").arg(&key).arg(&expired))
                    .await?;
            }
            self.run::<i64>(
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(merged.field())
                    .arg(merged.value()),
            )
            .await?;
            self.revocations.apply(&merged);
            let message = format!("r\n{}\n{}", merged.value(), merged.field());
            self.run::<i64>(redis::cmd("PUBLISH").arg(self.channel()).arg(message))
                .await?;
            Ok(())
        })
    }

    fn first_use<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let set = self
                .run::<Option<String>>(
                    redis::cmd("SET")
                        .arg(self.key("j", name.as_bytes()))
                        .arg("1")
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(ttl).max(1)),
                )
                .await?;
            Ok(set.is_some())
        })
    }

    fn put_login<'a>(&'a self, state: &'a str, login: PendingLogin) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let plain = codec::encode_login(&login).map_err(sealing_failed)?;
            let sealed = self
                .sealer
                .seal(&login_aad(state), &plain)
                .map_err(sealing_failed)?;
            let ttl = millis(self.lifetimes.login).max(1);
            self.run::<()>(
                redis::cmd("SET")
                    .arg(self.login_key(state))
                    .arg(sealed)
                    .arg("PX")
                    .arg(ttl),
            )
            .await
        })
    }

    fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            REACHABLE => Health::Reachable,
            UNREACHABLE => Health::Unreachable,
            _ => Health::NotYetUsed,
        }
    }

    fn take_login<'a>(&'a self, state: &'a str) -> StoreFuture<'a, Option<PendingLogin>> {
        Box::pin(async move {
            let taken = self
                .run::<Option<Vec<u8>>>(redis::cmd("GETDEL").arg(self.login_key(state)))
                .await?;
            Ok(taken.and_then(|sealed| {
                let plain = self.sealer.open(&login_aad(state), &sealed)?;
                codec::decode_login(&plain)
            }))
        })
    }
}

/// How to reach the store: one server, a cluster (each node found from the first ones), or
/// the master that Sentinels name (asked again at each new connection, so after a failover).
#[derive(Clone)]
enum Target {
    Single {
        client: Client,
        config: AsyncConnectionConfig,
    },
    Cluster(redis::cluster::ClusterClient),
    Sentinel {
        client: Arc<tokio::sync::Mutex<SentinelClient>>,
        config: AsyncConnectionConfig,
    },
}

impl Target {
    /// The target, and where the subscription connects: the same server, the Sentinels'
    /// master, or the first reachable node of a cluster (a PUBLISH reaches every node of a
    /// cluster).
    fn new(config: &Redis, secrets: &RedisSecrets) -> Result<(Target, Subscriber), BuildError> {
        let build = |key: &str, e: redis::RedisError| BuildError {
            key: format!("sessions.redis.{key}"),
            message: format!("{e}"),
        };
        let mut urls = Vec::new();
        for (key, text) in config.urls() {
            let url = RedisUrl::parse(text).map_err(|(message, hint)| BuildError {
                key,
                message: format!("{message} (fix: {hint})"),
            })?;
            urls.push(url);
        }
        let username = config
            .username
            .clone()
            .or_else(|| urls.iter().find_map(|u| u.username.clone()));
        let settings = |db: i64| {
            let mut s = RedisConnectionInfo::default().set_db(db);
            if let Some(user) = &username {
                s = s.set_username(user);
            }
            if let Some(password) = &secrets.password {
                s = s.set_password(password.expose());
            }
            s
        };
        let certificates = || redis::TlsCertificates {
            client_tls: secrets.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: secrets.ca.clone(),
        };
        let connect = config.connect_timeout.get();
        let respond = config.command_timeout.get();

        if config.cluster_nodes().is_some() {
            let tls = urls.first().is_some_and(|u| u.tls);
            let nodes = urls
                .iter()
                .map(|u| addr(u, &u.host).into_connection_info())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| build("nodes", e))?;
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(connect)
                .response_timeout(respond);
            if let Some(user) = &username {
                builder = builder.username(user);
            }
            if let Some(password) = &secrets.password {
                builder = builder.password(password.expose());
            }
            if tls {
                builder = builder.tls(redis::TlsMode::Secure).certs(certificates());
            }
            if urls.is_empty() {
                return Err(BuildError {
                    key: "sessions.redis.nodes".into(),
                    message: "is empty".into(),
                });
            }
            // A cluster's messages reach every node: any node the subscription can reach will
            // do, so each is tried in turn.
            let mut nodes = Vec::with_capacity(urls.len());
            for url in &urls {
                let info = addr(url, &url.host)
                    .into_connection_info()
                    .map_err(|e| build("nodes", e))?
                    .set_redis_settings(settings(0).set_protocol(ProtocolVersion::RESP3));
                let client = if tls {
                    Client::build_with_tls(info, certificates())
                } else {
                    Client::open(info)
                };
                nodes.push(client.map_err(|e| build("nodes", e))?);
            }
            let subscriber = Subscriber::Nodes {
                nodes,
                next: Arc::new(AtomicUsize::new(0)),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(respond)),
            };
            return builder
                .build()
                .map(|c| (Target::Cluster(c), subscriber))
                .map_err(|e| build("nodes", e));
        }

        if let Some(master) = &config.sentinel_master {
            let tls = urls.first().is_some_and(|u| u.tls);
            let sentinels = urls.iter().map(|u| addr(u, &u.host));
            let mut builder = SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)
                .map_err(|e| build("sentinels", e))?
                .set_client_to_redis_db(0);
            if let Some(user) = &username {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(password) = &secrets.password {
                builder = builder.set_client_to_redis_password(password.expose());
            }
            if let Some(password) = &secrets.sentinel_password {
                builder = builder.set_client_to_sentinel_password(password.expose());
            }
            if tls {
                builder = builder
                    .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_redis_certificates(certificates())
                    .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_sentinel_certificates(certificates());
            }
            let client = builder.build().map_err(|e| build("sentinels", e))?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect))
                .set_response_timeout(Some(respond));
            let client = Arc::new(tokio::sync::Mutex::new(client));
            let subscriber = Subscriber::Sentinel {
                client: client.clone(),
                config: config.clone(),
            };
            return Ok((Target::Sentinel { client, config }, subscriber));
        }

        let Some(url) = urls.first() else {
            return Err(BuildError {
                key: "sessions.redis.url".into(),
                message: "is missing".into(),
            });
        };
        // The certificate is checked against `server_name` when set; the connection still goes
        // to the URL's host, through a resolver that knows the name stands for it.
        let name = config.server_name.as_deref().unwrap_or(&url.host);
        let info = addr(url, name)
            .into_connection_info()
            .map_err(|e| build("url", e))?
            .set_redis_settings(settings(url.db));
        let resp3 = info
            .clone()
            .set_redis_settings(settings(url.db).set_protocol(ProtocolVersion::RESP3));
        let open = |info| {
            if url.tls {
                Client::build_with_tls(info, certificates())
            } else {
                Client::open(info)
            }
            .map_err(|e| build("url", e))
        };
        let client = open(info)?;
        let subscriber_client = open(resp3)?;
        let mut async_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(respond));
        if config.server_name.is_some() {
            async_config = async_config.set_dns_resolver(Resolver {
                host: url.host.clone(),
            });
        }
        let subscriber = Subscriber::Nodes {
            nodes: vec![subscriber_client],
            next: Arc::new(AtomicUsize::new(0)),
            config: async_config.clone(),
        };
        Ok((
            Target::Single {
                client,
                config: async_config,
            },
            subscriber,
        ))
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        match self {
            Target::Single { client, config } => client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map(Conn::Single),
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            Target::Sentinel { client, config } => client
                .lock()
                .await
                .get_async_connection_with_config(config)
                .await
                .map(Conn::Single),
        }
    }
}

/// Where the subscription connects, over RESP3 (pub/sub messages arrive as pushes on an
/// ordinary connection, which also answers the PINGs that check it).
#[derive(Clone)]
enum Subscriber {
    /// One server, or a cluster's nodes: the one that answered last is tried first.
    Nodes {
        nodes: Vec<Client>,
        next: Arc<AtomicUsize>,
        config: AsyncConnectionConfig,
    },
    Sentinel {
        client: Arc<tokio::sync::Mutex<SentinelClient>>,
        config: AsyncConnectionConfig,
    },
}

impl Subscriber {
    async fn connect(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<PushInfo>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        match self {
            Subscriber::Nodes { nodes, next, config } => {
                let config = config.clone().set_push_sender(pushes);
                let start = next.load(Ordering::Relaxed);
                let mut last = None;
                for i in (0..nodes.len()).map(|k| (start + k) % nodes.len()) {
                    let Some(node) = nodes.get(i) else { continue };
                    match node.get_multiplexed_async_connection_with_config(&config).await {
                        Ok(conn) => {
                            next.store(i, Ordering::Relaxed);
                            return Ok(conn);
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Client, "no Redis node configured"))
                }))
            }
            Subscriber::Sentinel { client, config } => {
                let master = client.lock().await.async_get_client().await?;
                let info = master.get_connection_info().clone();
                let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
                Client::open(info.set_redis_settings(settings))?
                    .get_multiplexed_async_connection_with_config(&config.clone().set_push_sender(pushes))
                    .await
            }
        }
    }
}

/// One subscription, from connecting to its loss: subscribes, loads the whole deny list, then
/// applies every message and checks the connection every [`SUBSCRIPTION_CHECK`]. Returns when
/// the connection fails (an error) or the store is no longer in use (`Ok`).
async fn subscription(
    store: &Weak<RedisStore>,
    subscriber: &Subscriber,
    channel: &str,
) -> Result<(), String> {
    let Some(timeout) = store.upgrade().map(|s| s.client.timeout) else {
        return Ok(());
    };
    let within = |what: &'static str| move |_| format!("{what}: no answer within {timeout:?}");
    let (pushes, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut conn = tokio::time::timeout(timeout, subscriber.connect(pushes))
        .await
        .map_err(within("connect"))?
        .map_err(|e| format!("connect: {e}"))?;
    tokio::time::timeout(timeout, conn.subscribe(channel))
        .await
        .map_err(within("subscribe"))?
        .map_err(|e| format!("subscribe: {e}"))?;
    {
        let Some(this) = store.upgrade() else {
            return Ok(());
        };
        this.load_revocations().await.map_err(|e| e.to_string())?;
        // Whatever was cached before this subscription may have missed an invalidation.
        this.stop_listening();
        this.listening.store(true, Ordering::Release);
        tracing::info!(
            revocations = this.revocations.len(),
            "subscribed to the session store's revocations and invalidations"
        );
    }
    let mut check = tokio::time::interval(SUBSCRIPTION_CHECK);
    loop {
        tokio::select! {
            push = received.recv() => {
                let Some(push) = push else {
                    return Err("the subscription closed".into());
                };
                match push.kind {
                    PushKind::Disconnection => return Err("the subscription's connection closed".into()),
                    PushKind::Message => {
                        let Some(this) = store.upgrade() else { return Ok(()) };
                        if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                            this.on_message(payload);
                        }
                    }
                    _ => {}
                }
            }
            _ = check.tick() => {
                if store.strong_count() == 0 {
                    return Ok(());
                }
                let ping = redis::cmd("PING");
                match tokio::time::timeout(timeout, ping.query_async::<redis::Value>(&mut conn)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("ping: {e}")),
                    Err(_) => return Err(format!("ping: no answer within {timeout:?}")),
                }
            }
        }
    }
}

/// 64 hex digits as 32 bytes.
fn addr(url: &RedisUrl, host: &str) -> ConnectionAddr {
    if url.tls {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port: url.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), url.port)
    }
}

/// Resolves `server_name` to the URL's host, whatever name it is asked for: the only name a
/// single-server client asks for is the one it connects to.
struct Resolver {
    host: String,
}

impl redis::io::AsyncDNSResolver for Resolver {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        _name: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let found = tokio::net::lookup_host((self.host.as_str(), port)).await?;
            let found: Box<dyn Iterator<Item = SocketAddr> + Send> =
                Box::new(found.collect::<Vec<_>>().into_iter());
            Ok(found)
        })
    }
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// One connection of the pool, opened when first needed and again after it failed.
struct Link {
    target: Target,
    live: ArcSwapOption<Conn>,
    /// One connection attempt at a time; the others wait for its outcome instead of piling on.
    connecting: tokio::sync::Mutex<()>,
}

impl Link {
    async fn connection(&self) -> redis::RedisResult<Arc<Conn>> {
        if let Some(conn) = self.live.load_full() {
            return Ok(conn);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(conn) = self.live.load_full() {
            return Ok(conn);
        }
        let conn = Arc::new(self.target.connect().await?);
        self.live.store(Some(conn.clone()));
        tracing::info!("connected to the session store");
        Ok(conn)
    }

    fn drop_connection(&self) {
        self.live.store(None);
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        let conn = self.connection().await?;
        let result = match &*conn {
            Conn::Single(c) => run(&mut c.clone(), cmd).await,
            Conn::Cluster(c) => run(&mut c.clone(), cmd).await,
        };
        if let Err(e) = &result
            && broken(e)
        {
            // Only the connection that failed goes; another caller may have replaced it already.
            let _ = self.live.compare_and_swap(&Some(conn), None);
        }
        result
    }
}

async fn run<T: redis::FromRedisValue>(conn: &mut impl ConnectionLike, cmd: &Cmd) -> redis::RedisResult<T> {
    cmd.query_async(conn).await
}

/// An error after which the connection is not used again: the next call opens a new one.
fn broken(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

#[cfg(test)]
#[path = "../../tests/support/redis.rs"]
mod server;

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::server::{Pki, RedisCluster, RedisSentinel, RedisServer};
    use super::*;
    use crate::config::Positive;
    use crate::session::{Scope, conformance};

    const KEY: [u8; 32] = [7; 32];
    const MINUTE: Duration = Duration::from_secs(60);
    const IDLE: Duration = Duration::from_millis(300);
    const ABSOLUTE: Duration = Duration::from_millis(900);

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            idle: IDLE,
            absolute: ABSOLUTE,
            login: Duration::from_secs(60),
        }
    }

    fn config(url: &str) -> Redis {
        Redis {
            url: Some(url.into()),
            pool_size: NonZeroUsize::new(2).unwrap(),
            command_timeout: Positive::new(Duration::from_secs(2)).unwrap(),
            ..Redis::default()
        }
    }

    fn secrets(password: Option<&str>, key: [u8; 32], previous: Option<[u8; 32]>) -> RedisSecrets {
        RedisSecrets {
            password: password.map(Secret::new),
            sentinel_password: None,
            sealer: Sealer::new(&key, previous.as_ref()).unwrap(),
            ca: None,
            client: None,
        }
    }

    fn store(config: &Redis, secrets: RedisSecrets) -> RedisStore {
        RedisStore::new(config, secrets, lifetimes()).unwrap()
    }

    /// A store for `config` passes the conformance suite, and another store's subscription
    /// hears its revocation; the first store is handed back for more.
    async fn conforms_and_hears_revocations(config: &Redis) -> RedisStore {
        let s = store(config, secrets(None, KEY, None));
        conformance::run(&s, IDLE, ABSOLUTE).await;
        hears_revocation(config, &s, "carol").await;
        s
    }

    /// A store for `config` subscribes, and hears `writer` revoke the subject `name`.
    async fn hears_revocation(config: &Redis, writer: &RedisStore, name: &str) {
        let listener = Arc::new(store(config, secrets(None, KEY, None)));
        listener.subscribe();
        wait_until("the subscription holds", || listener.listening()).await;
        writer
            .revoke(Revocation::now(Scope::Subject, "idp", name, MINUTE))
            .await
            .unwrap();
        wait_until("the revocation is heard", || {
            listener
                .revocations
                .refuses_token("idp", name, None, Duration::ZERO)
        })
        .await;
    }

    #[tokio::test]
    async fn a_standalone_redis_with_a_password_passes_the_session_store_conformance_suite() {
        let server = RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
        let s = store(&config(&server.url()), secrets(Some("s3cret-pw"), KEY, None));
        conformance::run(&s, IDLE, ABSOLUTE).await;

        let wrong = store(&config(&server.url()), secrets(Some("wrong"), KEY, None));
        let id = SessionId::random().unwrap();
        assert!(
            matches!(wrong.get(&id).await, Err(StoreError::Unavailable(_))),
            "a refused password is an unavailable store, never an empty one"
        );
    }

    #[tokio::test]
    async fn a_three_master_redis_cluster_passes_the_conformance_suite_and_its_subscription_hears_revocations()
     {
        let cluster = RedisCluster::start(3);
        let config = Redis {
            url: None,
            nodes: cluster.urls().into_iter().take(1).collect(),
            ..config("")
        };
        // The subscription (on one node: a PUBLISH reaches every node) hears another
        // store's revocation.
        let s = conforms_and_hears_revocations(&config).await;

        // Sessions are spread over the masters, by the hash of their id.
        for _ in 0..30 {
            let session = conformance::session(SystemTime::now());
            s.put(SessionId::random().unwrap(), session).await.unwrap();
        }
        let holding = cluster
            .nodes
            .iter()
            .filter(|n| n.cli(&["DBSIZE"]).trim() != "0")
            .count();
        assert_eq!(holding, 3, "every master holds some sessions");

        // A node listed first that is down (decommissioned, failed): the subscription is made
        // on the next one, and hears revocations as before.
        let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("redis://{}", down.local_addr().unwrap());
        drop(down);
        let mut nodes = vec![dead];
        nodes.extend(cluster.urls());
        hears_revocation(
            &Redis {
                nodes,
                ..config.clone()
            },
            &s,
            "dave",
        )
        .await;
    }

    #[tokio::test]
    async fn through_mutual_tls_with_an_acl_user_the_store_passes_the_conformance_suite() {
        let pki = Pki::new();
        let server = RedisServer::start_tls(&pki, true);
        // The least the proxy needs, as docs/sessions.md recommends (and says word for word).
        assert!(include_str!("../../docs/sessions.md").contains(crate::session::DOCUMENTED_ACL));
        let mut setuser = vec!["ACL", "SETUSER", "portcullis", "on", ">acl-pw"];
        setuser.extend(crate::session::DOCUMENTED_ACL.split(' '));
        assert_eq!(server.cli(&setuser).trim(), "OK");
        // The certificate names redis.test; the URL is the loopback address it is served on.
        let config = Redis {
            username: Some("portcullis".into()),
            server_name: Some("redis.test".into()),
            ..config(&server.url())
        };
        let read = |p: &std::path::Path| std::fs::read(p).unwrap();
        let tls_secrets = || RedisSecrets {
            ca: Some(read(&pki.ca)),
            client: Some((read(&pki.client_cert), read(&pki.client_key))),
            ..secrets(Some("acl-pw"), KEY, None)
        };
        let s = Arc::new(store(&config, tls_secrets()));
        conformance::run(&*s, IDLE, ABSOLUTE).await;
        // The subscription works with the same user, through the same TLS.
        s.subscribe();
        wait_until("the subscription holds", || s.listening()).await;

        // Without server_name the certificate does not match 127.0.0.1: nothing is sent.
        let unnamed = store(
            &Redis {
                server_name: None,
                ..config.clone()
            },
            tls_secrets(),
        );
        assert!(unnamed.get(&SessionId::random().unwrap()).await.is_err());
        // Without a client certificate the server does not let us in.
        let anonymous = store(
            &config,
            RedisSecrets {
                client: None,
                ..tls_secrets()
            },
        );
        assert!(anonymous.get(&SessionId::random().unwrap()).await.is_err());
        // The ACL user may use its own prefix only.
        let elsewhere = store(
            &Redis {
                key_prefix: "other:".into(),
                ..config.clone()
            },
            tls_secrets(),
        );
        assert!(
            elsewhere
                .put(
                    SessionId::random().unwrap(),
                    conformance::session(SystemTime::now())
                )
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn through_redis_sentinel_the_store_passes_the_conformance_suite_hears_revocations_and_follows_a_failover()
     {
        let sentinel = RedisSentinel::start();
        let config = Redis {
            url: None,
            sentinels: vec![sentinel.url()],
            sentinel_master: Some("mymaster".into()),
            ..config("")
        };
        // The subscription goes to the master the Sentinels name.
        conforms_and_hears_revocations(&config).await;

        let long = Lifetimes {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(600),
            ..lifetimes()
        };
        let s = RedisStore::new(&config, secrets(None, KEY, None), long).unwrap();
        let id = SessionId::random().unwrap();
        s.put(id.clone(), conformance::session(SystemTime::now()))
            .await
            .unwrap();
        // Kept on the replica before the master steps down.
        let replica_has_it = || sentinel.replica.cli(&["DBSIZE"]).trim() != "0";
        let started = std::time::Instant::now();
        while !replica_has_it() {
            assert!(started.elapsed() < Duration::from_secs(10), "never replicated");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        sentinel.fail_over();
        // The old master is a replica now: the store's connections to it find out at their
        // next write and ask the Sentinel again, within the same call.
        for link in 0..config.pool_size.get() {
            let got = s.get(&id).await;
            assert!(
                matches!(got, Ok(Some(_))),
                "call {link} after the failover: {got:?}"
            );
        }
        let after = SessionId::random().unwrap();
        s.put(after.clone(), conformance::session(SystemTime::now()))
            .await
            .unwrap();
        assert!(s.get(&after).await.unwrap().is_some());
        assert_ne!(sentinel.master_port(), sentinel.master.port);
    }

    #[tokio::test]
    async fn redis_holds_neither_ids_nor_tokens_and_a_value_copied_to_another_id_does_not_open() {
        let server = RedisServer::start();
        let s = store(&config(&server.url()), secrets(None, KEY, None));
        let (a, b) = (SessionId::random().unwrap(), SessionId::random().unwrap());
        s.put(a.clone(), conformance::session(SystemTime::now()))
            .await
            .unwrap();
        s.put(b.clone(), conformance::session(SystemTime::now()))
            .await
            .unwrap();
        s.put_login("state-xyz", conformance::login()).await.unwrap();

        let dump = server.dump();
        assert_eq!(dump.len(), 3, "{dump:?}");
        let text = format!("{dump:?}");
        for clear in [
            "at-secret".to_string(),
            "rt-secret".into(),
            "verifier".into(),
            "alice".into(),
            "deployers".into(),
            "state-xyz".into(),
            a.cookie_value(),
            crate::hex::encode(&a.0),
        ] {
            assert!(!text.contains(&clear), "{clear} is readable in Redis: {text}");
        }
        assert!(dump.iter().all(|(k, _)| k.starts_with("portcullis:")));

        // Someone with write access copies a's value over b's key: b does not become a.
        server.cli(&["COPY", &s.session_key(&a), &s.session_key(&b), "REPLACE"]);
        assert!(s.get(&b).await.unwrap().is_none(), "a moved value opened");
        assert!(s.get(&a).await.unwrap().is_some());
        // A session's value put where a sign-in is kept is no sign-in either.
        server.cli(&["COPY", &s.session_key(&a), &s.login_key("state-xyz"), "REPLACE"]);
        assert!(s.take_login("state-xyz").await.unwrap().is_none());
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
        let started = std::time::Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{what}: not within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        started.elapsed()
    }

    fn long() -> Lifetimes {
        Lifetimes {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(600),
            login: Duration::from_secs(60),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_or_a_sign_out_on_one_replica_reaches_the_others_within_a_second_with_their_cache_warm()
     {
        let server = RedisServer::start();
        let replica = || {
            let s =
                Arc::new(RedisStore::new(&config(&server.url()), secrets(None, KEY, None), long()).unwrap());
            s.subscribe();
            s
        };
        let (a, b) = (replica(), replica());
        wait_until("both subscribed", || a.listening() && b.listening()).await;

        // A session written on A and read on B until B holds a copy. A's own announcement of
        // the write may reach B after B's first read, and drop the copy (a copy is kept only
        // when no announcement came meanwhile): read until B holds one.
        let copied_to_b = || async {
            let id = SessionId::random().unwrap();
            a.put(id.clone(), conformance::session(SystemTime::now()))
                .await
                .unwrap();
            let started = std::time::Instant::now();
            while !b.cache.contains_key(&RedisStore::digest(&id)) {
                assert!(started.elapsed() < Duration::from_secs(2), "B never kept a copy");
                assert!(b.get(&id).await.unwrap().is_some());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            id
        };

        // A session read on B is served from B's memory: Redis no longer has it, B still does.
        let id = copied_to_b().await;
        server.cli(&["DEL", &b.session_key(&id)]);
        assert!(b.get(&id).await.unwrap().is_some(), "B's copy is used");

        // Signed out on A: B drops its copy.
        let again = copied_to_b().await;
        a.remove(&again).await.unwrap();
        let took = wait_until("B drops the signed-out session", || {
            b.cache.get(&RedisStore::digest(&again)).is_none()
        })
        .await;
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(b.get(&again).await.unwrap().is_none());

        // A subject revoked through A is refused by B.
        let earlier = conformance::session(SystemTime::now() - Duration::from_millis(10));
        let hour = Duration::from_secs(3600);
        a.revoke(Revocation::now(Scope::Subject, "idp", "alice", hour))
            .await
            .unwrap();
        let took = wait_until("B refuses the revoked subject", || {
            b.revocations.refuses_session(&earlier)
        })
        .await;
        assert!(took < Duration::from_secs(1), "{took:?}");

        // A replica that starts later loads what was revoked before it.
        let c = replica();
        wait_until("C subscribed", || c.listening()).await;
        assert!(
            c.revocations
                .refuses_token("idp", "alice", Some(1), Duration::ZERO)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_its_subscription_is_down_a_replica_uses_no_copy_and_reloads_the_deny_list_when_it_is_back()
    {
        let mut server = RedisServer::start();
        let s = Arc::new(RedisStore::new(&config(&server.url()), secrets(None, KEY, None), long()).unwrap());
        s.subscribe();
        wait_until("subscribed", || s.listening()).await;
        let id = SessionId::random().unwrap();
        s.put(
            id.clone(),
            conformance::session(SystemTime::now() - Duration::from_millis(10)),
        )
        .await
        .unwrap();
        assert!(s.get(&id).await.unwrap().is_some());

        server.kill();
        wait_until("the subscription is seen down", || !s.listening()).await;
        assert!(s.get(&id).await.is_err(), "no copy is served while Redis is away");

        server.restart();
        // Written while this replica was not listening: found by the reload.
        let other = RedisStore::new(&config(&server.url()), secrets(None, KEY, None), long()).unwrap();
        other
            .revoke(Revocation::now(Scope::AllSessions, "", "", MINUTE))
            .await
            .unwrap();
        wait_until("subscribed again", || s.listening()).await;
        let session = s.get(&id).await.unwrap().expect("kept by the append-only file");
        assert!(s.revocations.refuses_session(&session));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_cannot_both_hold_a_session_s_refresh_lease_which_runs_out_and_only_its_holder_gives_back()
     {
        let server = RedisServer::start();
        let replica = || RedisStore::new(&config(&server.url()), secrets(None, KEY, None), long()).unwrap();
        let (a, b) = (replica(), replica());
        let id = SessionId::random().unwrap();
        let ttl = Duration::from_millis(400);

        // Taken on A: B cannot take it, at once or at the same moment as another try.
        let lease = a
            .try_lease_refresh(&id, ttl)
            .await
            .unwrap()
            .expect("a free lease");
        let (on_a, on_b) = tokio::join!(a.try_lease_refresh(&id, ttl), b.try_lease_refresh(&id, ttl));
        assert!(
            on_a.unwrap().is_none() && on_b.unwrap().is_none(),
            "a held lease was taken"
        );
        // Another session's lease is another lease.
        let other = SessionId::random().unwrap();
        let other_lease = b
            .try_lease_refresh(&other, ttl)
            .await
            .unwrap()
            .expect("another session's");
        b.release_refresh(&other, other_lease).await.unwrap();

        // Of many replicas trying at once, exactly one gets a free lease.
        a.release_refresh(&id, lease).await.unwrap();
        let many: Vec<RedisStore> = (0..6).map(|_| replica()).collect();
        let tries = futures_util::future::join_all(many.iter().map(|r| r.try_lease_refresh(&id, ttl))).await;
        let won: Vec<_> = tries.into_iter().filter_map(|t| t.unwrap()).collect();
        assert_eq!(won.len(), 1, "{won:?}");

        // It runs out after its time (a holder that crashed), and is then B's.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let on_b = b.try_lease_refresh(&id, Duration::from_secs(60)).await.unwrap();
        let on_b = on_b.expect("a lease past its time is free");
        // A late release by the one that lost it (its lease ran out) leaves B's alone.
        for stale in won {
            a.release_refresh(&id, stale).await.unwrap();
        }
        assert!(
            a.try_lease_refresh(&id, ttl).await.unwrap().is_none(),
            "a non-holder released it"
        );
        assert_eq!(server.cli(&["EXISTS", &a.lease_key(&id)]).trim(), "1");
        b.release_refresh(&id, on_b).await.unwrap();
        assert_eq!(server.cli(&["EXISTS", &a.lease_key(&id)]).trim(), "0");
        // The key is a hash of the id, like the session's.
        assert!(!a.lease_key(&id).contains(&crate::hex::encode(&id.0)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_that_takes_the_refresh_lease_reads_the_session_from_redis_not_its_copy() {
        let server = RedisServer::start();
        let b = Arc::new(RedisStore::new(&config(&server.url()), secrets(None, KEY, None), long()).unwrap());
        b.subscribe();
        wait_until("subscribed", || b.listening()).await;
        let id = SessionId::random().unwrap();
        b.put(id.clone(), conformance::session(SystemTime::now()))
            .await
            .unwrap();
        let digest = RedisStore::digest(&id);
        let started = std::time::Instant::now();
        while !b.cache.contains_key(&digest) {
            assert!(started.elapsed() < Duration::from_secs(2), "B never kept a copy");
            assert!(b.get(&id).await.unwrap().is_some());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another replica's write whose announcement has not arrived: here, one made behind
        // B's back. B's copy is what it serves until it takes the lease.
        let mut newer = conformance::session(SystemTime::now());
        newer.access_token = Some(Secret::new("at-newer"));
        let writer = RedisStore::new(&config(&server.url()), secrets(None, KEY, None), long()).unwrap();
        let plain = codec::encode_session(&newer).unwrap();
        let sealed = writer.sealer.seal(&session_aad(&id), &plain).unwrap();
        let _: () = writer
            .run(redis::cmd("SET").arg(writer.session_key(&id)).arg(sealed))
            .await
            .unwrap();
        let copy = b.get(&id).await.unwrap().unwrap();
        assert_eq!(copy.access_token.as_ref().unwrap().expose(), "at-secret");

        let lease = b
            .try_lease_refresh(&id, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        let read = b.get(&id).await.unwrap().unwrap();
        assert_eq!(read.access_token.as_ref().unwrap().expose(), "at-newer");
        b.release_refresh(&id, lease).await.unwrap();
    }

    #[tokio::test]
    async fn after_a_key_rotation_sessions_sealed_with_the_previous_key_still_open() {
        let server = RedisServer::start();
        let url = server.url();
        let before = store(&config(&url), secrets(None, KEY, None));
        let id = SessionId::random().unwrap();
        before
            .put(id.clone(), conformance::session(SystemTime::now()))
            .await
            .unwrap();

        let new_key = [9; 32];
        let rotated = store(&config(&url), secrets(None, new_key, Some(KEY)));
        let session = rotated.get(&id).await.unwrap().expect("still signed in");
        // Written again (a refresh), it is sealed with the new key only.
        rotated.put(id.clone(), (*session).clone()).await.unwrap();
        let only_new = store(&config(&url), secrets(None, new_key, None));
        assert!(only_new.get(&id).await.unwrap().is_some());
        assert!(
            before.get(&id).await.unwrap().is_none(),
            "the old key opened a new value"
        );
    }

    #[tokio::test]
    async fn with_redis_down_every_call_fails_within_the_timeout_and_works_again_when_it_returns() {
        let mut server = RedisServer::start();
        let s = store(&config(&server.url()), secrets(None, KEY, None));
        let id = SessionId::random().unwrap();
        s.put(id.clone(), conformance::session(SystemTime::now()))
            .await
            .unwrap();

        server.kill();
        for _ in 0..4 {
            let started = std::time::Instant::now();
            assert!(matches!(s.get(&id).await, Err(StoreError::Unavailable(_))));
            assert!(started.elapsed() < Duration::from_secs(3));
        }
        server.restart();
        // The append-only file kept the session; the pool reconnects by itself.
        let got = s.get(&id).await.unwrap();
        assert!(got.is_some(), "the session did not survive the restart");
    }
}
