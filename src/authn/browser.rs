//! The browser path: sign-in through the authorization-code flow, sessions, refresh and
//! sign-out, under the reserved paths `/.portcullis/…`.
//!
//! - `GET /.portcullis/sign_in?rd=PATH[&provider=NAME]`: sends the browser to the provider (or,
//!   when the route for `rd` accepts several, shows a page to choose one);
//! - `GET /.portcullis/callback?code&state`: finishes the sign-in, creates the session (a new id
//!   every time), and returns to `rd`;
//! - `GET|POST /.portcullis/sign_out`: ends the session here and, when the provider advertises
//!   one, at its `end_session_endpoint`; then `/.portcullis/signed_out`.
//!
//! The session cookie holds only an opaque id (`__Host-`, Secure, HttpOnly, SameSite=Lax); a
//! second cookie binds a sign-in to the browser that started it. Neither reaches an upstream.
//! Untrusted input: every query parameter and cookie.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use openidconnect::url::form_urlencoded;

use super::oidc::{self, IdTokenError, RefreshError, RelyingParty};
use super::{Outcome, Provider};
use crate::body::{ProxyBody, full};
use crate::canonical::Canonical;
use crate::config::{BrowserClient as ClientConfig, Sessions};
use crate::decision::Reason;
use crate::error::{ProxyError, html_escape};
use crate::metrics::Metrics;
use crate::outbound::HttpsClient;
use crate::secret::Secret;
use crate::session::{PendingLogin, Session, SessionId, SessionStore, StoreError};

/// The reserved path prefix; no upstream ever sees a request under it.
pub const RESERVED: &str = "/.portcullis/";
pub const SESSION_COOKIE: &str = "__Host-portcullis_session";
/// How long an id a session moved away from still works (requests already on their way).
const MOVE_GRACE: Duration = Duration::from_secs(10);
pub const LOGIN_COOKIE: &str = "__Host-portcullis_login";

/// This proxy's client registration at one provider, and the provider's discovered metadata.
pub struct BrowserClient {
    pub provider: Arc<Provider>,
    client_id: String,
    client_secret: Option<Secret>,
    scopes: Vec<String>,
    pub display_name: String,
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
}

/// Sessions and the sign-in endpoints.
pub struct Browser {
    store: Arc<dyn SessionStore>,
    metrics: Arc<Metrics>,
    audit: Arc<dyn crate::audit::AuditSink>,
    clients: Vec<Arc<BrowserClient>>,
    settings: Sessions,
    /// One refresh at a time per session: a rotated refresh token must not be spent twice.
    refreshing: moka::sync::Cache<SessionId, Arc<tokio::sync::Mutex<()>>>,
}

/// `scheme://authority` as the browser sees this proxy.
struct Origin(String);

impl Origin {
    fn of(canonical: &Canonical, headers: &HeaderMap, trusted: bool) -> Origin {
        // Behind a trusted TLS terminator the browser speaks https even though we do not.
        let forwarded_https = trusted
            && headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        let scheme = if forwarded_https {
            "https"
        } else {
            canonical.scheme
        };
        Origin(format!("{scheme}://{}", canonical.authority()))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }
}

/// What a reserved endpoint produced: the response, the decision and, when known, who.
pub struct Served {
    pub response: Response<ProxyBody>,
    pub reason: Reason,
    pub principal: Option<Arc<crate::identity::Principal>>,
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
        let _only_us = lock.lock().await;
        // Another request may have refreshed (and rotated the refresh token) while we waited.
        let session = match self.store.get(id).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(Reason::SessionExpired),
            Err(_) => return Err(Reason::SessionStoreUnavailable),
        };
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
        let refreshed = match client.metadata(client.provider.config.jwks_refresh).await {
            Ok(d) => {
                let rp = client.rp(&d.metadata, "");
                oidc::refresh(
                    &rp,
                    &client.provider.config,
                    &client.http,
                    refresh_token,
                    &session.principal.subject,
                )
                .await
            }
            Err(_) => Err(RefreshError::Unreachable),
        };
        let result = match &refreshed {
            Ok(_) => "ok",
            Err(RefreshError::Refused) => "refused",
            Err(RefreshError::Unreachable) => "unreachable",
        };
        self.metrics.session_refresh(result);
        // New groups mean new rights: like a sign-in, the session moves to a new id.
        let rotated = matches!(&refreshed, Ok(r) if r.principal.as_ref().is_some_and(|p| p.groups != session.principal.groups));
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
        match refreshed {
            Ok(r) => {
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
            // The provider can be asked again later while the token it issued still holds.
            Err(RefreshError::Unreachable) if !expired => Ok((session, None)),
            Err(_) => {
                tracing::info!(session = %id.hash(), "refresh failed: the session ends");
                let _ = self.store.remove(id).await;
                Err(Reason::SessionExpired)
            }
        }
    }

    /// A browser that needs to sign in for a route: straight to the provider when the route
    /// accepts one that people sign in with, to the choosing page when it accepts several.
    pub async fn sign_in_redirect(
        &self,
        canonical: &Canonical,
        headers: &HeaderMap,
        trusted: bool,
        options: &[Arc<BrowserClient>],
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let origin = Origin::of(canonical, headers, trusted);
        let return_to = canonical.wire_path_and_query();
        match options {
            [only] => self.start(only, &origin, headers, return_to).await,
            _ => {
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("rd", &return_to)
                    .finish();
                Ok(redirect(&format!("{RESERVED}sign_in?{query}"), &[]))
            }
        }
    }

    async fn start(
        &self,
        client: &BrowserClient,
        origin: &Origin,
        headers: &HeaderMap,
        return_to: String,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let discovered = client
            .metadata(client.provider.config.jwks_refresh)
            .await
            .map_err(ProxyError::deny)?;
        let redirect_url = origin.url(&format!("{RESERVED}callback"));
        let login = oidc::start_login(&client.rp(&discovered.metadata, &redirect_url), &client.scopes)
            .map_err(|e| {
                tracing::warn!(provider = %client.name(), error = %e, "cannot start a sign-in");
                ProxyError::deny(Reason::IdpUnavailable)
            })?;
        // Several tabs signing in at once share one binding, so neither callback is refused.
        let binding = match cookie(headers, LOGIN_COOKIE).filter(|b| b.len() == 43) {
            Some(existing) => existing.to_string(),
            None => SessionId::random().map_err(store_error)?.cookie_value(),
        };
        let pending = PendingLogin {
            provider: client.name().to_string(),
            pkce_verifier: login.pkce_verifier,
            nonce: login.nonce,
            return_to,
            redirect_url,
            binding: sha256_hex(&binding),
        };
        self.store
            .put_login(&login.state, pending)
            .await
            .map_err(store_error)?;
        let max_age = self.settings.login_timeout.as_secs();
        Ok(redirect(
            &login.authorize_url,
            &[set_cookie(LOGIN_COOKIE, &binding, max_age)],
        ))
    }

    /// Serves `/.portcullis/…`. `options` are the sign-in choices for a return path.
    pub async fn endpoint(
        &self,
        canonical: &Canonical,
        headers: &HeaderMap,
        trusted: bool,
        options: impl Fn(&str) -> Vec<Arc<BrowserClient>>,
    ) -> Result<Served, ProxyError> {
        let origin = Origin::of(canonical, headers, trusted);
        let query = canonical.query.as_deref().unwrap_or("");
        let param = |name: &str| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let action = canonical.path.strip_prefix(RESERVED).unwrap_or("");
        let method = &canonical.method;
        let read_only = *method == Method::GET || *method == Method::HEAD;
        match action {
            "sign_in" if read_only => {
                let return_to = param("rd")
                    .and_then(|rd| super::redirect::safe_return_to(&rd))
                    .unwrap_or_else(|| "/".into());
                let path = return_to.split('?').next().unwrap_or("/");
                let options = options(path);
                let chosen = match param("provider") {
                    Some(name) => options.iter().find(|c| c.name() == name),
                    None if options.len() == 1 => options.first(),
                    None => None,
                };
                let response = match chosen {
                    Some(client) => self.start(client, &origin, headers, return_to).await?,
                    None if options.is_empty() => return Err(ProxyError::deny(Reason::RouteNotFound)),
                    None => html(chooser_page(&options, &return_to)),
                };
                Ok(Served {
                    response,
                    reason: Reason::SignInStarted,
                    principal: None,
                })
            }
            // GET only: a HEAD (a link prefetcher) must not use up the sign-in's state.
            "callback" if *method == Method::GET => {
                let state = param("state").unwrap_or_default();
                self.callback(&origin, headers, &state, param("code"), param("error"))
                    .await
            }
            "sign_out" if read_only || *method == Method::POST => self.sign_out(&origin, headers).await,
            "signed_out" if read_only => Ok(Served {
                response: html(page(
                    "Signed out",
                    "<p>You have signed out.</p><p><a href=\"/\">Sign in again</a></p>",
                )),
                reason: Reason::SignedOut,
                principal: None,
            }),
            _ => Err(ProxyError::deny(Reason::RouteNotFound)),
        }
    }

    async fn callback(
        &self,
        origin: &Origin,
        headers: &HeaderMap,
        state: &str,
        code: Option<String>,
        error: Option<String>,
    ) -> Result<Served, ProxyError> {
        // Taken, not read: a replayed callback finds nothing.
        let pending = match self.store.take_login(state).await {
            Ok(Some(p)) if !state.is_empty() => p,
            Ok(_) => return Err(ProxyError::deny(Reason::StateMismatch)),
            Err(e) => return Err(store_error(e)),
        };
        let bound = cookie(headers, LOGIN_COOKIE).is_some_and(|b| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                sha256_hex(b).as_bytes(),
                pending.binding.as_bytes(),
            )
            .is_ok()
        });
        let expected_callback = origin.url(&format!("{RESERVED}callback"));
        if !bound || pending.redirect_url != expected_callback {
            return Err(ProxyError::deny(Reason::StateMismatch));
        }
        if let Some(error) = error {
            tracing::info!(provider = %pending.provider, error = %bounded(&error), "the provider refused the sign-in");
            return Err(ProxyError::deny(Reason::LoginFailed));
        }
        let code = code.ok_or_else(|| ProxyError::deny(Reason::LoginFailed))?;
        let client = self
            .client(&pending.provider)
            .ok_or_else(|| ProxyError::deny(Reason::LoginFailed))?;
        let config = &client.provider.config;
        let discovered = client
            .metadata(config.jwks_refresh)
            .await
            .map_err(ProxyError::deny)?;
        let rp = client.rp(&discovered.metadata, &pending.redirect_url);
        let response = oidc::redeem_code(&rp, &client.http, &code, &pending.pkce_verifier)
            .await
            .map_err(ProxyError::deny)?;
        let finished = match oidc::verify_login(&rp, config, &response, &pending.nonce) {
            Ok(finished) => finished,
            // The provider may have rotated its keys since discovery: look once more.
            Err(IdTokenError::Keys) => {
                let fresh = client
                    .metadata(config.jwks_min_refetch)
                    .await
                    .map_err(ProxyError::deny)?;
                let rp = client.rp(&fresh.metadata, &pending.redirect_url);
                oidc::verify_login(&rp, config, &response, &pending.nonce).map_err(|e| match e {
                    IdTokenError::Keys => ProxyError::deny(Reason::BadSignature),
                    IdTokenError::Refused(reason) => ProxyError::deny(reason),
                })?
            }
            Err(IdTokenError::Refused(reason)) => return Err(ProxyError::deny(reason)),
        };

        // A new id at every sign-in: an id planted before sign-in is worth nothing after it.
        if let Some(old) = cookie(headers, SESSION_COOKIE).and_then(SessionId::parse) {
            let _ = self.store.remove(&old).await;
        }
        let id = SessionId::random().map_err(store_error)?;
        let mut principal = finished.principal;
        principal.session_id_hash = Some(id.hash());
        let principal = Arc::new(principal);
        let session = Session {
            principal: principal.clone(),
            created: SystemTime::now(),
            access_token: Some(finished.access_token),
            access_token_expires: finished.access_token_expires,
            refresh_token: finished.refresh_token,
            id_token: Some(finished.id_token),
        };
        self.store.put(id.clone(), session).await.map_err(store_error)?;
        tracing::info!(provider = %pending.provider, session = %id.hash(), "signed in");
        let cookies = [
            set_cookie(
                SESSION_COOKIE,
                &id.cookie_value(),
                self.settings.lifetime.as_secs(),
            ),
            set_cookie(LOGIN_COOKIE, "", 0),
        ];
        Ok(Served {
            response: redirect(&pending.return_to, &cookies),
            reason: Reason::SignedIn,
            principal: Some(principal),
        })
    }

    async fn sign_out(&self, origin: &Origin, headers: &HeaderMap) -> Result<Served, ProxyError> {
        let id = cookie(headers, SESSION_COOKIE).and_then(SessionId::parse);
        let session = match &id {
            Some(id) => self.store.get(id).await.ok().flatten(),
            None => None,
        };
        if let Some(id) = &id {
            self.store.remove(id).await.map_err(store_error)?;
        }
        let signed_out = origin.url(&format!("{RESERVED}signed_out"));
        // RP-initiated logout, when the provider offers it, so the next sign-in asks again.
        let mut location = None;
        if let Some(session) = &session
            && let Some(client) = self.client(&session.principal.provider)
            && let Ok(d) = client.metadata(client.provider.config.jwks_refresh).await
        {
            location = oidc::end_session_url(
                &d.metadata,
                &client.client_id,
                session.id_token.as_ref(),
                &signed_out,
            );
        }
        let location = location.unwrap_or_else(|| format!("{RESERVED}signed_out"));
        Ok(Served {
            response: redirect(&location, &[set_cookie(SESSION_COOKIE, "", 0)]),
            reason: Reason::SignedOut,
            principal: session.map(|s| s.principal.clone()),
        })
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

/// The cookies as the upstream gets them: the proxy's own removed (an upstream never sees a
/// session id), and several `Cookie` fields (the crumbs HTTP/2 clients send, or repeated
/// headers) joined into the one header an HTTP/1 upstream reads (RFC 9113 §8.2.3: "; " between
/// them). A value that is not text is dropped.
pub fn outbound_cookies(headers: &mut HeaderMap) {
    let own = |pair: &str| {
        let name = pair.trim().split('=').next().unwrap_or("");
        name == SESSION_COOKIE || name == LOGIN_COOKIE
    };
    // Most requests carry one Cookie header and none of ours: look before copying anything.
    let mut values = headers.get_all(header::COOKIE).iter();
    match (values.next(), values.next()) {
        (None, _) => return,
        (Some(only), None) if only.to_str().is_ok_and(|v| !v.split(';').any(own)) => return,
        _ => {}
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|text| text.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !own(pair))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    crate::hex::encode(digest.as_ref())
}

fn store_error(e: StoreError) -> ProxyError {
    tracing::error!(error = %e, "session store unavailable");
    ProxyError::deny(Reason::SessionStoreUnavailable)
}

fn store_down(e: &StoreError) -> Outcome {
    tracing::error!(error = %e, "session store unavailable");
    Outcome::Rejected(Reason::SessionStoreUnavailable.into())
}

fn bounded(text: &str) -> String {
    crate::audit::bounded(text, 64)
}

fn no_store(mut response: Response<ProxyBody>, cookies: &[String]) -> Response<ProxyBody> {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    response
}

fn redirect(location: &str, cookies: &[String]) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    no_store(response, cookies)
}

/// A page of the proxy's own (the provider chooser, the signed-out page).
fn html(body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    no_store(response, &[])
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{title}</h1>{body}</body></html>\n"
    )
}

fn chooser_page(options: &[Arc<BrowserClient>], return_to: &str) -> String {
    let mut items = String::new();
    for client in options {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("provider", client.name())
            .append_pair("rd", return_to)
            .finish();
        items.push_str(&format!(
            "<li><a href=\"{RESERVED}sign_in?{}\">{}</a></li>",
            html_escape(&query),
            html_escape(&client.display_name)
        ));
    }
    page(
        "Sign in",
        &format!("<p>Choose how to sign in:</p><ul>{items}</ul>"),
    )
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn own_cookies_are_stripped_and_the_others_kept_in_one_header() {
        let mut h = headers(&[
            ("cookie", "a=1; __Host-portcullis_session=secret; b=2"),
            ("cookie", "__Host-portcullis_login=x"),
        ]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("secret"));
        outbound_cookies(&mut h);
        let left: Vec<_> = h.get_all("cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["a=1; b=2"]);

        let mut untouched = headers(&[("cookie", "a=1")]);
        outbound_cookies(&mut untouched);
        assert_eq!(untouched.get("cookie").unwrap(), "a=1");

        let mut only_ours = headers(&[("cookie", "__Host-portcullis_session=secret")]);
        outbound_cookies(&mut only_ours);
        assert!(only_ours.get("cookie").is_none());
    }

    #[test]
    fn cookie_crumbs_become_one_header_in_their_order() {
        let mut h = headers(&[("cookie", "a=1"), ("cookie", "b=2; c=3"), ("cookie", "d=4")]);
        outbound_cookies(&mut h);
        let left: Vec<_> = h.get_all("cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["a=1; b=2; c=3; d=4"]);
    }
}
