//! Browser sessions: an opaque random id in the cookie, everything else on the server.
//!
//! `SessionStore` is the one interface; `MemoryStore` (moka) is the default, and `RedisStore`
//! is shared by every replica. Every store passes the same conformance suite (`conformance`
//! below). Tokens kept in a session are wrapped in `Secret`, which never prints; a shared store
//! keeps them sealed (`seal.rs`) in their stored form (`codec.rs`).

mod codec;
mod memory;
mod redis;
mod revocation;
mod seal;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use crate::config::parse_key;
use crate::identity::Principal;
use crate::secret::Secret;
pub use memory::MemoryStore;
pub use redis::{BuildError, Lifetimes, RedisClient, RedisSecrets, RedisStore};
pub use revocation::{Revocation, Revocations, Scope, acceptable_name};
pub use seal::Sealer;

/// A session id: 256 random bits. The cookie carries it base64url-encoded; logs and audit
/// events carry only [`SessionId::hash`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 32]);

impl SessionId {
    pub fn random() -> Result<Self, StoreError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| StoreError::Unavailable("no randomness".into()))?;
        Ok(SessionId(bytes))
    }

    /// Parses a cookie value; anything but 43 base64url characters of 32 bytes is not an id.
    pub fn parse(cookie: &str) -> Option<Self> {
        if cookie.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(cookie).ok()?;
        Some(SessionId(bytes.try_into().ok()?))
    }

    pub fn cookie_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// First 16 hex digits of SHA-256 of the id: enough to correlate, useless to hijack.
    pub fn hash(&self) -> String {
        crate::secret::short_digest(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.hash())
    }
}

/// What the server keeps for a signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who signed in, and with which provider (`principal.provider`).
    pub principal: Arc<Principal>,
    /// When the user signed in: the absolute lifetime counts from here.
    pub created: SystemTime,
    pub access_token: Option<Secret>,
    pub access_token_expires: Option<SystemTime>,
    pub refresh_token: Option<Secret>,
    /// Kept for RP-initiated logout (`id_token_hint`).
    pub id_token: Option<Secret>,
    /// The provider's session the sign-in belongs to (the ID token's `sid`), when it says:
    /// back-channel logout names it.
    pub sid: Option<String>,
}

impl Session {
    /// Whether the session is younger than `absolute` (the lifetime counted from sign-in): every
    /// store checks it on read.
    pub fn within(&self, absolute: std::time::Duration) -> bool {
        let age = SystemTime::now().duration_since(self.created).unwrap_or_default();
        age < absolute
    }
}

/// A sign-in in progress, kept under its `state` until the callback takes it (once).
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// The identity provider's configured name.
    pub provider: String,
    pub pkce_verifier: Secret,
    pub nonce: Secret,
    /// Where the browser goes afterwards: a same-origin path, already checked.
    pub return_to: String,
    /// The redirect URI sent to the provider; the code is only redeemed with the same one.
    pub redirect_url: String,
    /// SHA-256 (hex) of the login cookie set in the browser that started this sign-in: a
    /// callback from any other browser is refused (login CSRF, stolen `state`).
    pub binding: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot answer; callers fail closed (the request is not authenticated).
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

/// How a store is doing, as `/readyz` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// In this process: always there.
    InMemory,
    /// A shared store not called yet.
    NotYetUsed,
    /// A shared store whose last call was answered.
    Reachable,
    /// A shared store whose last call failed: browser routes answer 503 until one succeeds.
    Unreachable,
}

impl Health {
    /// The line `/readyz` shows.
    pub fn describe(self) -> &'static str {
        match self {
            Health::InMemory => "session store: in memory",
            Health::NotYetUsed => "session store: redis, not used yet",
            Health::Reachable => "session store: redis, reachable at its last use",
            Health::Unreachable => {
                "session store: redis, unreachable at its last use: browser routes answer 503 session_store_unavailable"
            }
        }
    }
}

/// One replica's right to refresh one session at its provider, until it is released or its
/// time runs out (which bounds a holder that crashed): while one replica holds it, no other
/// spends the session's refresh token, which the provider may rotate at each use.
#[derive(Debug)]
pub struct Lease {
    /// What the store holds for this lease (random): only its holder's release removes it.
    token: String,
}

impl Lease {
    /// A lease with a fresh random token.
    fn random() -> Result<Lease, StoreError> {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| StoreError::Unavailable("no randomness".into()))?;
        Ok(Lease {
            token: crate::hex::encode(&bytes),
        })
    }
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where sessions live. Lifetimes are the store's to enforce: `get` never returns a session
/// past its idle or absolute lifetime.
pub trait SessionStore: Send + Sync + 'static {
    fn get<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, Option<Arc<Session>>>;
    fn put<'a>(&'a self, id: SessionId, session: Session) -> StoreFuture<'a, ()>;
    fn remove<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()>;
    /// Keeps a sign-in in progress under `state` until the store's login timeout.
    fn put_login<'a>(&'a self, state: &'a str, login: PendingLogin) -> StoreFuture<'a, ()>;
    /// Takes a sign-in in progress out of the store: a second take of the same state finds nothing.
    fn take_login<'a>(&'a self, state: &'a str) -> StoreFuture<'a, Option<PendingLogin>>;
    /// Takes the lease for refreshing session `id` for at most `ttl`, or `None` while someone
    /// else holds it: with a shared store, one refresher per session across every replica.
    /// Once it is taken, `get` returns the session as the last holder wrote it (no older copy
    /// kept by this replica).
    fn try_lease_refresh<'a>(&'a self, id: &'a SessionId, ttl: Duration) -> StoreFuture<'a, Option<Lease>>;
    /// Gives the lease back; a lease that ran out (and may have been taken by someone else
    /// since) is left alone.
    fn release_refresh<'a>(&'a self, id: &'a SessionId, lease: Lease) -> StoreFuture<'a, ()>;
    /// How the store is doing, for `/readyz`.
    fn health(&self) -> Health {
        Health::InMemory
    }
    /// This replica's copy of the deny list, checked on every request without a round trip.
    fn revocations(&self) -> Arc<Revocations>;
    /// Records a revocation: in the shared store and every replica's copy (Redis), or in this
    /// process's copy only (memory).
    fn revoke<'a>(&'a self, revocation: Revocation) -> StoreFuture<'a, ()>;
    /// True the first time `name` is offered within `ttl`, false after (a logout token's
    /// `jti`): shared by every replica with a shared store.
    fn first_use<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, bool>;
    /// Whether what this store holds (sessions, revocations) is shared by every replica.
    fn shared(&self) -> bool {
        false
    }
    /// For `/readyz`: whether this replica hears the other replicas' revocations and
    /// invalidations (a shared store), and how many deny entries it holds; `None` for a store
    /// in this process only.
    fn subscription(&self) -> Option<String> {
        None
    }
    /// Starts hearing the other replicas (revocations, invalidations), for as long as the
    /// store is in use. A store in this process only has no one to hear.
    fn listen(self: Arc<Self>) {}
}

/// The Redis ACL docs/sessions.md gives the proxy's user (after `on >PASSWORD`): the session
/// store's commands and channel, and the shared key set's. Tests run under exactly this.
#[cfg(test)]
pub(crate) const DOCUMENTED_ACL: &str = "~portcullis:* &portcullis:* +get +set +del +getex +getdel +eval +mget +hgetall +hset +hdel +sadd +smembers +srem +zadd +zrangebyscore +zremrangebyscore +publish +subscribe +ping";

/// The behaviour every store must show; run by each store's tests.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub fn session(created: SystemTime) -> Session {
        Session {
            principal: Arc::new(Principal::example()),
            created,
            access_token: Some(Secret::new("at-secret")),
            access_token_expires: None,
            refresh_token: Some(Secret::new("rt-secret")),
            id_token: None,
            sid: None,
        }
    }

    pub fn login() -> PendingLogin {
        PendingLogin {
            provider: "idp".into(),
            pkce_verifier: Secret::new("verifier"),
            nonce: Secret::new("nonce"),
            return_to: "/".into(),
            redirect_url: "https://app.example/.portcullis/callback".into(),
            binding: "b".into(),
        }
    }

    /// `store` must have been built with an idle lifetime of `idle` and an absolute one of `absolute`.
    pub async fn run(store: &dyn SessionStore, idle: Duration, absolute: Duration) {
        // A stored session comes back; an unknown id does not.
        let id = SessionId::random().unwrap();
        store.put(id.clone(), session(SystemTime::now())).await.unwrap();
        let got = store.get(&id).await.unwrap().expect("the session is there");
        assert_eq!(got.principal.subject, "alice");
        assert!(store.get(&SessionId::random().unwrap()).await.unwrap().is_none());

        // Removed means gone (logout).
        store.remove(&id).await.unwrap();
        assert!(store.get(&id).await.unwrap().is_none());

        // Idle: untouched longer than `idle`, it is gone.
        let idle_id = SessionId::random().unwrap();
        store
            .put(idle_id.clone(), session(SystemTime::now()))
            .await
            .unwrap();
        tokio::time::sleep(idle + Duration::from_millis(150)).await;
        assert!(
            store.get(&idle_id).await.unwrap().is_none(),
            "an idle session outlived its idle lifetime"
        );

        // Absolute: even when used all the time, it ends `absolute` after sign-in.
        let busy = SessionId::random().unwrap();
        store.put(busy.clone(), session(SystemTime::now())).await.unwrap();
        let started = std::time::Instant::now();
        while started.elapsed() < absolute + Duration::from_millis(150) {
            tokio::time::sleep(idle / 3).await;
            let _ = store.get(&busy).await.unwrap();
        }
        assert!(
            store.get(&busy).await.unwrap().is_none(),
            "a busy session outlived its absolute lifetime"
        );

        // A session created long ago is refused at once.
        let old = SessionId::random().unwrap();
        store
            .put(old.clone(), session(SystemTime::now() - absolute * 2))
            .await
            .unwrap();
        assert!(store.get(&old).await.unwrap().is_none());

        // A sign-in in progress is taken once.
        store.put_login("state-1", login()).await.unwrap();
        assert!(store.take_login("state-2").await.unwrap().is_none());
        let taken = store
            .take_login("state-1")
            .await
            .unwrap()
            .expect("the login is there");
        assert_eq!(taken.provider, "idp");
        assert!(
            store.take_login("state-1").await.unwrap().is_none(),
            "a state was used twice"
        );

        // Revocations: a subject's older sessions and tokens are refused by this replica at
        // once, only with the provider that vouched for the name.
        let earlier = session(SystemTime::now() - Duration::from_millis(50));
        let revocations = store.revocations();
        assert!(!revocations.refuses_session(&earlier));
        let hour = Duration::from_secs(3600);
        store
            .revoke(Revocation::now(Scope::Subject, "idp", "alice", hour))
            .await
            .unwrap();
        assert!(revocations.refuses_session(&earlier));
        assert!(revocations.refuses_token("idp", "alice", Some(1), Duration::ZERO));
        assert!(!revocations.refuses_token("elsewhere", "alice", Some(1), Duration::ZERO));
        let later = session(SystemTime::now() + Duration::from_millis(50));
        assert!(!revocations.refuses_session(&later));
        store
            .revoke(Revocation::now(Scope::AllSessions, "", "", hour))
            .await
            .unwrap();
        assert!(revocations.refuses_session(&session(SystemTime::now() - Duration::from_millis(50))));

        // A name offered twice (a logout token's jti) is new only the first time.
        let jti = format!("jti-{}", SessionId::random().unwrap().hash());
        assert!(store.first_use(&jti, hour).await.unwrap());
        assert!(
            !store.first_use(&jti, hour).await.unwrap(),
            "a jti was accepted twice"
        );
        assert!(store.first_use(&format!("{jti}-other"), hour).await.unwrap());

        // The refresh lease: taken, given back, and taken again.
        for what in ["a free lease is taken", "a released lease is taken again"] {
            let lease = store
                .try_lease_refresh(&id, Duration::from_secs(5))
                .await
                .unwrap();
            store.release_refresh(&id, lease.expect(what)).await.unwrap();
        }
    }

    #[test]
    fn session_ids_round_trip_through_the_cookie_and_reject_anything_else() {
        let id = SessionId::random().unwrap();
        assert_eq!(SessionId::parse(&id.cookie_value()), Some(id.clone()));
        assert_ne!(SessionId::random().unwrap(), id);
        for bad in [
            "",
            "abc",
            &"A".repeat(44),
            &format!("{}=", &id.cookie_value()[..42]),
            "../../etc/passwd",
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(id.hash().len(), 16);
        assert!(!format!("{id:?}").contains(&id.cookie_value()));
    }

    #[test]
    fn secrets_never_print() {
        let s = session(SystemTime::now());
        let text = format!("{s:?}");
        assert!(
            !text.contains("at-secret") && !text.contains("rt-secret"),
            "{text}"
        );
    }
}
