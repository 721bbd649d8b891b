//! The browser path: sign-in through the authorization-code flow, sessions, refresh and
//! sign-out, under the reserved paths `/.portcullis/…`.
//!
//! - `GET /.portcullis/sign_in?rd=PATH[&provider=NAME]`: sends the browser to the provider (or,
//!   when the route for `rd` accepts several, shows a page to choose one);
//! - `GET /.portcullis/callback?code&state`: finishes the sign-in, creates the session (a new id
//!   every time), and returns to `rd`;
//! - `GET|POST /.portcullis/sign_out`: ends the session here and, when the provider advertises
//!   one, at its `end_session_endpoint`; then `/.portcullis/signed_out`;
//! - `POST /.portcullis/backchannel-logout` (form `logout_token`): a provider with
//!   `backchannel_logout` ends the sessions of one of its sessions (`sid`) or of a subject, on
//!   every replica (OpenID Connect Back-Channel Logout 1.0).
//!
//! The session cookie holds only an opaque id (`__Host-`, Secure, HttpOnly, SameSite=Lax); a
//! second cookie binds a sign-in to the browser that started it. Neither reaches an upstream: the
//! proxy's forwarding removes both by the names below.
//! Untrusted input: every query parameter and cookie, and the logout token.
//!
//! This file is the session authenticator and its refresh; `endpoints.rs` serves the reserved
//! paths and `pages.rs` builds what they send back.

mod endpoints;
mod pages;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, Method, header};

use super::oidc::{self, RefreshError, RelyingParty};
use super::provider::Refusal;
use super::{Outcome, Provider};
use crate::config::{BrowserClient as ClientConfig, Sessions};
use crate::decision::Reason;
use crate::metrics::Metrics;
use crate::outbound::HttpsClient;
use crate::secret::Secret;
use crate::session::{Lease, Revocations, Session, SessionId, SessionStore, StoreError};

pub use endpoints::Served;

/// The reserved path prefix; no upstream ever sees a request under it.
pub const RESERVED: &str = "/.portcullis/";
pub const SESSION_COOKIE: &str = "__Host-portcullis_session";
/// How long an id a session moved away from still works (requests already on their way).
const MOVE_GRACE: Duration = Duration::from_secs(10);
pub const LOGIN_COOKIE: &str = "__Host-portcullis_login";
/// How long a refresh at the provider may take before it is given up as unreachable: the token
/// request's own deadlines (5 s for the answer, 5 s more for its body).
const REFRESH_DEADLINE: Duration = Duration::from_secs(10);
/// How long a replica's lease on refreshing one session lasts: the refresh's deadline, then the
/// store's write of what it brought, with a margin. It bounds how long a replica that crashed
/// mid-refresh keeps the others waiting, and how long another replica waits for a refresh.
const REFRESH_LEASE: Duration = Duration::from_secs(15);
/// The first and the longest pause between two looks at a session another replica refreshes.
const LEASE_POLL: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(250));

/// This proxy's client registration at one provider, and the provider's discovered metadata.
pub struct BrowserClient {
    pub provider: Arc<Provider>,
    client_id: String,
    client_secret: Option<Secret>,
    scopes: Vec<String>,
    pub display_name: String,
    /// Logout tokens from this provider are accepted at `/.portcullis/backchannel-logout`.
    backchannel_logout: bool,
    http: HttpsClient,
    metadata: ArcSwapOption<Discovered>,
    discovering: tokio::sync::Mutex<()>,
}

struct Discovered {
    metadata: oidc::Metadata,
    fetched: Instant,
}

impl BrowserClient {
    pub fn new(
        provider: Arc<Provider>,
        config: &ClientConfig,
        secret: Option<Secret>,
        http: HttpsClient,
    ) -> Self {
        let scopes = config.scopes.clone().unwrap_or_else(|| {
            ["openid", "email", "profile", "offline_access"]
                .map(String::from)
                .to_vec()
        });
        BrowserClient {
            display_name: config
                .display_name
                .clone()
                .unwrap_or_else(|| provider.config.name.clone()),
            provider,
            backchannel_logout: config.backchannel_logout,
            client_id: config.client_id.clone(),
            client_secret: secret,
            scopes,
            http,
            metadata: ArcSwapOption::empty(),
            discovering: tokio::sync::Mutex::new(()),
        }
    }

    fn name(&self) -> &str {
        &self.provider.config.name
    }

    /// The discovery document (with the keys that sign ID tokens), fetched again once it is
    /// older than `max_age`. Sign-ins are rare next to requests, so this stays simple.
    async fn metadata(&self, max_age: Duration) -> Result<Arc<Discovered>, Reason> {
        if let Some(d) = self.metadata.load_full()
            && d.fetched.elapsed() < max_age
        {
            return Ok(d);
        }
        let _one_at_a_time = self.discovering.lock().await;
        if let Some(d) = self.metadata.load_full()
            && d.fetched.elapsed() < max_age
        {
            return Ok(d);
        }
        match oidc::discover(&self.provider.config.issuer, &self.http).await {
            Ok(metadata) => {
                let d = Arc::new(Discovered {
                    metadata,
                    fetched: Instant::now(),
                });
                self.metadata.store(Some(d.clone()));
                Ok(d)
            }
            Err(e) => {
                tracing::warn!(provider = %self.name(), error = %e, "OpenID discovery failed");
                Err(Reason::IdpUnavailable)
            }
        }
    }

    fn rp<'a>(&'a self, metadata: &'a oidc::Metadata, redirect_url: &'a str) -> RelyingParty<'a> {
        RelyingParty {
            metadata,
            client_id: &self.client_id,
            client_secret: self.client_secret.as_ref(),
            redirect_url,
        }
    }

    /// New tokens for `subject`'s session; a provider whose metadata cannot be had is
    /// unreachable, not refusing.
    async fn refresh(&self, refresh_token: &Secret, subject: &str) -> Result<oidc::Refreshed, RefreshError> {
        match self.metadata(self.provider.config.jwks_refresh).await {
            Ok(d) => {
                let rp = self.rp(&d.metadata, "");
                oidc::refresh(&rp, &self.provider.config, &self.http, refresh_token, subject).await
            }
            Err(_) => Err(RefreshError::Unreachable),
        }
    }
}

/// Sessions and the sign-in endpoints.
#[derive(Clone)]
pub struct Browser {
    store: Arc<dyn SessionStore>,
    revocations: Arc<Revocations>,
    metrics: Arc<Metrics>,
    audit: Arc<dyn crate::audit::AuditSink>,
    clients: Vec<Arc<BrowserClient>>,
    settings: Sessions,
    /// One refresh at a time per session in this process (a rotated refresh token must not be
    /// spent twice); the store's refresh lease makes it one across replicas.
    refreshing: moka::sync::Cache<SessionId, Arc<tokio::sync::Mutex<()>>>,
}

impl Browser {
    pub fn new(
        store: Arc<dyn SessionStore>,
        clients: Vec<Arc<BrowserClient>>,
        settings: Sessions,
        metrics: Arc<Metrics>,
        audit: Arc<dyn crate::audit::AuditSink>,
    ) -> Self {
        Browser {
            revocations: store.revocations(),
            store,
            metrics,
            audit,
            clients,
            settings,
            refreshing: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }

    fn client(&self, provider: &str) -> Option<&Arc<BrowserClient>> {
        self.clients.iter().find(|c| c.name() == provider)
    }

    /// How the session store is doing, for `/readyz`.
    pub fn store_health(&self) -> crate::session::Health {
        self.store.health()
    }

    /// The subscription's state, for `/readyz` (shared stores only).
    pub fn store_subscription(&self) -> Option<String> {
        self.store.subscription()
    }

    /// The deny list this replica checks sessions and bearer tokens against.
    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    /// The session store (revocations, back-channel logout).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The providers of `accepted` that people can sign in with.
    pub fn sign_in_options(&self, accepted: &[Arc<Provider>]) -> Vec<Arc<BrowserClient>> {
        accepted
            .iter()
            .filter_map(|p| self.client(&p.config.name).cloned())
            .collect()
    }

    /// The session authenticator: a session cookie naming a live session of an accepted provider.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        accepted: &[Arc<Provider>],
        during: crate::audit::During<'_>,
    ) -> Outcome {
        let Some(value) = cookie(headers, SESSION_COOKIE) else {
            return Outcome::NotMine;
        };
        let Some(id) = SessionId::parse(value) else {
            return Outcome::Rejected(Reason::SessionExpired.into());
        };
        let session = match self.store.get(&id).await {
            Ok(Some(session)) => session,
            Ok(None) => return Outcome::Rejected(Reason::SessionExpired.into()),
            Err(e) => return store_down(&e),
        };
        if self.revocations.unknown() {
            return Outcome::Rejected(Reason::SessionStoreUnavailable.into());
        }
        if self.revocations.refuses_session(&session) {
            // Left in the store: every replica refuses it as revoked until it expires.
            tracing::info!(session = %id.hash(), provider = %session.principal.provider, "a revoked session was refused");
            return Outcome::Rejected(Refusal::revoked(session.principal.clone()));
        }
        // A session with another provider does not count here; the browser may sign in again.
        if !accepted
            .iter()
            .any(|p| p.config.name == session.principal.provider)
        {
            return Outcome::NotMine;
        }
        match self.refresh_if_due(&id, session, during).await {
            Ok((session, None)) => Outcome::Session { session, moved: None },
            Ok((session, Some(moved))) => {
                let age = SystemTime::now()
                    .duration_since(session.created)
                    .unwrap_or_default();
                let left = self.settings.lifetime.saturating_sub(age).as_secs();
                let cookie = set_cookie(SESSION_COOKIE, &moved.cookie_value(), left);
                Outcome::Session {
                    session,
                    moved: Some(cookie),
                }
            }
            Err(reason) => Outcome::Rejected(reason.into()),
        }
    }

    fn refresh_due(&self, session: &Session) -> bool {
        session.refresh_token.is_some()
            && session
                .access_token_expires
                .is_some_and(|at| at <= SystemTime::now() + self.settings.refresh_before)
    }

    /// The session as this request may use it, refreshed at its provider first when its access
    /// token is about to expire; with the new id when the refresh moved it.
    async fn refresh_if_due(
        &self,
        id: &SessionId,
        session: Arc<Session>,
        during: crate::audit::During<'_>,
    ) -> Result<(Arc<Session>, Option<SessionId>), Reason> {
        if !self.refresh_due(&session) {
            return Ok((session, None));
        }
        let lock = self
            .refreshing
            .get_with(id.clone(), || Arc::new(tokio::sync::Mutex::new(())));
        let only_us = lock.lock_owned().await;
        // Another request may have refreshed (and rotated the refresh token) while we waited.
        let session = self.current(id).await?;
        if !self.refresh_due(&session) {
            return Ok((session, None));
        }
        // One refresher across replicas too: this replica takes the store's lease, or uses what
        // the replica holding it writes.
        let lease = match self.lease(id, &session).await? {
            Leased::Ours(lease) => lease,
            Leased::RefreshedElsewhere(session) => return Ok((session, None)),
        };
        // The refresh runs to its end on a task of its own, holding the lock and the lease: the
        // provider may already have rotated the refresh token when the browser leaves, and a
        // refresh dropped with its request would lose the new token (the session would end at
        // its next refresh).
        let this = self.clone();
        let (id, request_id, trace) = (id.clone(), during.request_id.to_string(), *during.trace);
        let refresh = tokio::spawn(async move {
            let during = crate::audit::During {
                request_id: &request_id,
                trace: &trace,
            };
            let result = this.refresh_leased(&id, during).await;
            lease.release().await;
            drop(only_us);
            result
        });
        refresh.await.unwrap_or(Err(Reason::SessionStoreUnavailable))
    }

    /// The session as the store has it now.
    async fn current(&self, id: &SessionId) -> Result<Arc<Session>, Reason> {
        match self.store.get(id).await {
            Ok(Some(session)) => Ok(session),
            Ok(None) => Err(Reason::SessionExpired),
            Err(_) => Err(Reason::SessionStoreUnavailable),
        }
    }

    /// Takes the lease on refreshing `id`; while another replica holds it, looks at the session
    /// again and again (with a growing pause) until that replica has written it refreshed,
    /// trying the lease at each look. A holder that crashed lets its lease run out within
    /// [`REFRESH_LEASE`], so the lease is tried for that long: after it, the next holder took
    /// over in time, or the request fails closed without ending the session. `session` is
    /// the session as it was read before.
    async fn lease(&self, id: &SessionId, session: &Session) -> Result<Leased, Reason> {
        let started = Instant::now();
        let mut pause = LEASE_POLL.0;
        loop {
            match self.store.try_lease_refresh(id, REFRESH_LEASE).await {
                Ok(Some(lease)) => {
                    return Ok(Leased::Ours(HeldLease {
                        store: self.store.clone(),
                        id: id.clone(),
                        lease: Some(lease),
                    }));
                }
                Ok(None) => {}
                Err(e) => return Err(store_error(&e)),
            }
            if started.elapsed() >= REFRESH_LEASE {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LEASE_POLL.1);
            let now = self.current(id).await?;
            if !self.refresh_due(&now) {
                return Ok(Leased::RefreshedElsewhere(now));
            }
        }
        // Other replicas kept the lease the whole time and never wrote the session refreshed.
        // Its refresh token is not spent here (that could end the session at the provider):
        // while its access token holds, the session serves as it is, as when the provider is
        // unreachable; after that, the request is refused, and the session kept for the next.
        let expired = session
            .access_token_expires
            .is_some_and(|at| at <= SystemTime::now());
        tracing::warn!(session = %id.hash(), waited = ?started.elapsed(), expired, "another replica held the refresh lease throughout");
        if expired {
            Err(Reason::IdpUnavailable)
        } else {
            self.current(id).await.map(Leased::RefreshedElsewhere)
        }
    }

    /// Refreshes the session at its provider, holding the lease: reads it again first (the
    /// last holder may have refreshed it just before this replica took the lease).
    async fn refresh_leased(
        &self,
        id: &SessionId,
        during: crate::audit::During<'_>,
    ) -> Result<(Arc<Session>, Option<SessionId>), Reason> {
        let session = self.current(id).await?;
        if !self.refresh_due(&session) {
            return Ok((session, None));
        }
        let (Some(client), Some(refresh_token)) =
            (self.client(&session.principal.provider), &session.refresh_token)
        else {
            return Ok((session, None));
        };
        let expired = session
            .access_token_expires
            .is_some_and(|at| at <= SystemTime::now());
        // Within the lease: a refresh that outlived it could race the next holder.
        let refreshed = tokio::time::timeout(
            REFRESH_DEADLINE,
            client.refresh(refresh_token, &session.principal.subject),
        )
        .await
        .unwrap_or(Err(RefreshError::Unreachable));
        let rotated = self.record_refresh(&refreshed, &session, during);
        match refreshed {
            Ok(r) => self.keep_refreshed(id, &session, r, rotated).await,
            // The provider can be asked again later while the token it issued still holds.
            Err(RefreshError::Unreachable) if !expired => Ok((session, None)),
            Err(_) => {
                tracing::info!(session = %id.hash(), "refresh failed: the session ends");
                let _ = self.store.remove(id).await;
                Err(Reason::SessionExpired)
            }
        }
    }

    /// Counts and audits a refresh; true when it moves the session to a new id.
    fn record_refresh(
        &self,
        refreshed: &Result<oidc::Refreshed, RefreshError>,
        session: &Session,
        during: crate::audit::During<'_>,
    ) -> bool {
        let result = match refreshed {
            Ok(_) => "ok",
            Err(RefreshError::Refused) => "refused",
            Err(RefreshError::Unreachable) => "unreachable",
        };
        self.metrics.session_refresh(result);
        // New groups mean new rights: like a sign-in, the session moves to a new id.
        let rotated = matches!(refreshed, Ok(r) if r.principal.as_ref().is_some_and(|p| p.groups != session.principal.groups));
        self.audit.emit(
            crate::audit::SessionEvent {
                time: SystemTime::now(),
                request_id: during.request_id.to_string(),
                parent: *during.trace,
                rotated,
                result,
                kind: session.principal.kind.as_str(),
                principal: session.principal.clone(),
            }
            .into(),
        );
        rotated
    }

    /// Stores the refreshed tokens under the session's id, or under a new one when `rotated`.
    async fn keep_refreshed(
        &self,
        id: &SessionId,
        session: &Session,
        r: oidc::Refreshed,
        rotated: bool,
    ) -> Result<(Arc<Session>, Option<SessionId>), Reason> {
        let moved = if rotated {
            Some(SessionId::random().map_err(|_| Reason::SessionStoreUnavailable)?)
        } else {
            None
        };
        let kept = moved.as_ref().unwrap_or(id);
        let principal = match r.principal {
            Some(mut p) => {
                p.session_id_hash = Some(kept.hash());
                Arc::new(p)
            }
            None => session.principal.clone(),
        };
        let updated = Session {
            principal,
            created: session.created,
            access_token: Some(r.access_token),
            access_token_expires: r.access_token_expires,
            refresh_token: Some(r.refresh_token),
            id_token: r.id_token.or_else(|| session.id_token.clone()),
            sid: session.sid.clone(),
        };
        self.store
            .put(kept.clone(), updated.clone())
            .await
            .map_err(|_| Reason::SessionStoreUnavailable)?;
        if let Some(new) = &moved {
            // Requests already on their way with the old cookie still find the session
            // for a moment; then the old id is gone.
            let _ = self.store.put(id.clone(), updated.clone()).await;
            let (store, old) = (self.store.clone(), id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(MOVE_GRACE).await;
                let _ = store.remove(&old).await;
            });
            tracing::info!(session = %id.hash(), to = %new.hash(), "groups changed at refresh: the session moved to a new id");
        }
        tracing::debug!(session = %kept.hash(), "session refreshed");
        Ok((Arc::new(updated), moved))
    }
}

/// What waiting for the refresh lease came to.
enum Leased {
    /// This replica holds it and refreshes.
    Ours(HeldLease),
    /// Another replica refreshed the session (or, after the wait, this is the session as it
    /// is): it serves as the store now has it.
    RefreshedElsewhere(Arc<Session>),
}

/// The lease on refreshing one session, given back after the refreshed session is written (the
/// refresh runs on a task of its own, so an abandoned request does not drop it); should that
/// task fail midway, the lease is given back when dropped.
struct HeldLease {
    store: Arc<dyn SessionStore>,
    id: SessionId,
    lease: Option<Lease>,
}

impl HeldLease {
    async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            release(&*self.store, &self.id, lease).await;
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, id) = (self.store.clone(), self.id.clone());
            runtime.spawn(async move { release(&*store, &id, lease).await });
        }
    }
}

/// A lease that cannot be given back runs out by itself within [`REFRESH_LEASE`].
async fn release(store: &dyn SessionStore, id: &SessionId, lease: Lease) {
    if let Err(e) = store.release_refresh(id, lease).await {
        tracing::warn!(session = %id.hash(), error = %e, "the refresh lease could not be given back; it runs out by itself");
    }
}

/// A request a browser makes to show a page (a navigation), as opposed to an API call: only
/// navigations are sent to sign in; everything else gets 401.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    (*method == Method::GET || *method == Method::HEAD)
        && !headers.contains_key(header::AUTHORIZATION)
        && !headers.contains_key("x-requested-with")
        && header("sec-fetch-mode").is_none_or(|m| m == "navigate")
        && header(header::ACCEPT.as_str()).is_some_and(|a| a.contains("text/html"))
}

/// The value of cookie `name` in any `Cookie` header (the first one, if repeated).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

fn store_down(e: &StoreError) -> Outcome {
    Outcome::Rejected(store_error(e).into())
}

fn store_error(e: &StoreError) -> Reason {
    tracing::error!(error = %e, "session store unavailable");
    Reason::SessionStoreUnavailable
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_page_navigations_are_sent_to_sign_in() {
        let html = "text/html,application/xhtml+xml";
        assert!(is_navigation(&Method::GET, &headers(&[("accept", html)])));
        assert!(is_navigation(
            &Method::GET,
            &headers(&[("accept", html), ("sec-fetch-mode", "navigate")])
        ));
        for api in [
            headers(&[("accept", "application/json")]),
            headers(&[]),
            headers(&[("accept", html), ("authorization", "Bearer x")]),
            headers(&[("accept", html), ("x-requested-with", "XMLHttpRequest")]),
            headers(&[("accept", html), ("sec-fetch-mode", "cors")]),
        ] {
            assert!(!is_navigation(&Method::GET, &api), "{api:?}");
        }
        assert!(!is_navigation(&Method::POST, &headers(&[("accept", html)])));
    }
}
