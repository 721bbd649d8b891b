//! Brokered upstream credentials: the route's upstream gets a short-lived token the proxy
//! obtained for it, never a long-lived secret and never the caller's own credentials.
//!
//! - `client_credentials` (RFC 6749 4.4, with an RFC 8707 `resource` when configured): one token
//!   per route.
//! - `token_exchange` (RFC 8693): the caller's token (the bearer token it presented, or its
//!   browser session's access token) exchanged for one scoped to the upstream, one per caller
//!   token, keyed by the token's SHA-256 so no caller is ever handed another's.
//!
//! Either way a token is cached until shortly before it expires (`refresh_before`, at least a
//! tenth of its lifetime) and fetched by one request at a time per slot (single flight), so the
//! upstream only ever sees valid tokens. Each fetch is an audit act; the token never is.
//!
//! Untrusted input: the token endpoint's response (size-bounded by the HTTP client; any field
//! missing or mistyped is a refusal to forward, never a panic).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use openidconnect::url::form_urlencoded;
use tokio::sync::Mutex;

use crate::audit::{AuditSink, TokenEvent};
use crate::config::{ClientAuth, CredentialKind, SubjectTokenType, UpstreamCredentials};
use crate::identity::Principal;
use crate::metrics::Metrics;
use crate::outbound::HttpsClient;
use crate::secret::Secret;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Exchanged tokens kept at once (one per caller token); the least used go first.
const EXCHANGED_ENTRIES: u64 = 10_000;
/// A slot nobody asked for in this long is dropped; its next caller exchanges again.
const EXCHANGED_IDLE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("token endpoint: {0}")]
    Endpoint(String),
    #[error("the token endpoint refused: {0}")]
    Refused(String),
    #[error("token exchange needs the caller's token, and this caller has none to exchange")]
    NoSubjectToken,
    #[error("token exchange: the caller's issuer {0} is not one of subject_issuers")]
    ForeignIssuer(String),
}

/// The caller a credential is brokered for.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub principal: Option<&'a Principal>,
    /// The caller's own token: what token exchange sends as `subject_token`.
    pub token: Option<&'a str>,
}

struct Cached {
    token: Arc<Secret>,
    /// When to fetch a new one: before expiry by `refresh_before`, or a tenth of the lifetime.
    refresh_at: Instant,
    expires_at: Instant,
}

type Slot = Arc<Mutex<Option<Cached>>>;

/// One route's brokered credential.
pub struct Broker {
    config: UpstreamCredentials,
    secret: Secret,
    http: HttpsClient,
    route: Arc<String>,
    token_url: Mutex<Option<String>>,
    /// client_credentials: the route's one token.
    current: Slot,
    /// token_exchange: one slot per caller token (by SHA-256).
    exchanged: moka::sync::Cache<[u8; 32], Slot>,
    /// token_exchange: issuers whose callers' tokens may go to the endpoint.
    subject_issuers: Vec<String>,
    audit: Arc<dyn AuditSink>,
    /// Where fetches from the token endpoint are counted, under the route's name.
    observer: Option<(Arc<Metrics>, Arc<str>)>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("kind", &self.config.kind)
            .field("client_id", &self.config.client_id)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl Broker {
    pub fn new(
        config: UpstreamCredentials,
        secret: Secret,
        http: HttpsClient,
        route: Arc<String>,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        let token_url = config.token_url.clone();
        let subject_issuers = config.subject_issuers().into_iter().map(str::to_string).collect();
        Broker {
            config,
            secret,
            http,
            route,
            token_url: Mutex::new(token_url),
            current: Slot::default(),
            exchanged: moka::sync::Cache::builder()
                .max_capacity(EXCHANGED_ENTRIES)
                .time_to_idle(EXCHANGED_IDLE)
                .build(),
            subject_issuers,
            audit,
            observer: None,
        }
    }

    /// Counts this broker's fetches from the token endpoint in `metrics`.
    pub fn observed(mut self, metrics: Arc<Metrics>) -> Self {
        let route = Arc::from(self.route.as_str());
        self.observer = Some((metrics, route));
        self
    }

    /// A valid token for this caller: the cached one, or a new one (one fetch per slot at a
    /// time; the others wait for it).
    pub async fn token(&self, caller: Caller<'_>) -> Result<Arc<Secret>, BrokerError> {
        match self.config.kind {
            CredentialKind::ClientCredentials => {
                self.cached(&self.current, || {
                    self.fetch(&[("grant_type", "client_credentials")], None)
                })
                .await
            }
            CredentialKind::TokenExchange => {
                let subject = caller.token.ok_or(BrokerError::NoSubjectToken)?;
                let principal = caller.principal.ok_or(BrokerError::NoSubjectToken)?;
                let issuer = principal.issuer.trim_end_matches('/');
                if !self.subject_issuers.iter().any(|i| i == issuer) {
                    return Err(BrokerError::ForeignIssuer(principal.issuer.clone()));
                }
                let slot = self
                    .exchanged
                    .get_with(crate::secret::fingerprint(subject), Slot::default);
                let form = [
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", subject),
                    ("subject_token_type", self.config.subject_token_type.urn()),
                    ("requested_token_type", SubjectTokenType::AccessToken.urn()),
                ];
                self.cached(&slot, || self.fetch(&form, Some(principal))).await
            }
        }
    }

    async fn cached<F, Fut>(&self, slot: &Mutex<Option<Cached>>, fetch: F) -> Result<Arc<Secret>, BrokerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Cached, BrokerError>>,
    {
        let mut current = slot.lock().await;
        let now = Instant::now();
        if let Some(c) = current.as_ref()
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        match fetch().await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *current = Some(fresh);
                Ok(token)
            }
            // The provider is down: a token that has not expired yet still serves.
            Err(e) => match current.as_ref() {
                Some(c) if now + Duration::from_secs(1) < c.expires_at => {
                    tracing::warn!(route = %self.route, error = %e, "brokered token refresh failed; the current one still holds");
                    Ok(c.token.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn endpoint(&self) -> Result<String, BrokerError> {
        let mut url = self.token_url.lock().await;
        if let Some(u) = url.as_ref() {
            return Ok(u.clone());
        }
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let document = self
            .http
            .get_json(&discovery)
            .await
            .map_err(|e| BrokerError::Endpoint(e.to_string()))?;
        let found = document
            .get("token_endpoint")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| BrokerError::Endpoint(format!("{discovery} names no token_endpoint")))?
            .to_string();
        *url = Some(found.clone());
        Ok(found)
    }

    /// The token request's form, and the Basic authorization when the client authenticates so.
    fn form(&self, grant: &[(&str, &str)]) -> (String, Option<String>) {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(grant);
        if !self.config.scopes.is_empty() {
            form.append_pair("scope", &self.config.scopes.join(" "));
        }
        if let Some(resource) = &self.config.resource {
            form.append_pair("resource", resource);
        }
        if let Some(audience) = &self.config.audience {
            form.append_pair("audience", audience);
        }
        let basic = match self.config.auth_method {
            ClientAuth::ClientSecretPost => {
                form.append_pair("client_id", &self.config.client_id);
                form.append_pair("client_secret", self.secret.expose());
                None
            }
            ClientAuth::ClientSecretBasic => {
                use base64::Engine as _;
                let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!(
                    "{}:{}",
                    encode(&self.config.client_id),
                    encode(self.secret.expose())
                );
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
        };
        (form.finish(), basic)
    }

    async fn fetch(
        &self,
        grant: &[(&str, &str)],
        principal: Option<&Principal>,
    ) -> Result<Cached, BrokerError> {
        let fetched = self.fetch_token(grant, principal).await;
        if let Some((metrics, route)) = &self.observer {
            metrics.broker_fetch(route, fetched.is_ok());
        }
        fetched
    }

    async fn fetch_token(
        &self,
        grant: &[(&str, &str)],
        principal: Option<&Principal>,
    ) -> Result<Cached, BrokerError> {
        let url = self.endpoint().await?;
        let (body, basic) = self.form(grant);
        let mut request =
            http::Request::post(&url).header("content-type", "application/x-www-form-urlencoded");
        if let Some(basic) = basic {
            request = request.header("authorization", basic);
        }
        let request = request
            .body(body.into_bytes())
            .map_err(|e| BrokerError::Endpoint(e.to_string()))?;
        let started = Instant::now();
        let response = self
            .http
            .send(request)
            .await
            .map_err(|e| BrokerError::Endpoint(e.to_string()))?;
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or_default();
        if !response.status().is_success() {
            // The error code only: an error_description could echo what we sent.
            let code = body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no error code");
            return Err(BrokerError::Refused(format!("{} {code}", response.status())));
        }
        let token = body
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| BrokerError::Refused("no access_token in the response".into()))?;
        // Only a bearer token can be sent as one (a DPoP-bound or N_A token cannot).
        let token_type = body.get("token_type").and_then(serde_json::Value::as_str);
        if !token_type.is_some_and(|t| t.eq_ignore_ascii_case("bearer")) {
            return Err(BrokerError::Refused(format!(
                "token_type {}, not Bearer",
                token_type.unwrap_or("missing")
            )));
        }
        let lifetime = Duration::from_secs(
            body.get("expires_in")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(60),
        );
        let early = self.config.refresh_before.max(lifetime / 10).min(lifetime / 2);
        let expires_at = started + lifetime;
        self.audit.emit(
            TokenEvent {
                time: SystemTime::now(),
                act: "credential_brokered",
                kid: String::new(),
                retired_kid: None,
                jti: None,
                route: Some(self.route.clone()),
                audience: self
                    .config
                    .audience
                    .clone()
                    .or_else(|| self.config.resource.clone()),
                expires: Some(SystemTime::now() + lifetime),
                // A credential is fetched once per caller and lifetime: the copy is rare.
                principal: principal.map(|p| Arc::new(p.clone())),
                client_id: Some(self.config.client_id.clone()),
                grant: Some(self.config.kind.as_str()),
            }
            .into(),
        );
        Ok(Cached {
            token: Arc::new(Secret::new(token)),
            refresh_at: expires_at.checked_sub(early).unwrap_or(started),
            expires_at,
        })
    }
}
