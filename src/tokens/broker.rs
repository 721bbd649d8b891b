//! Brokered upstream credentials: the route's upstream gets a short-lived token the proxy
//! obtained for it, never a long-lived secret and never the caller's own credentials.
//!
//! `client_credentials` (RFC 6749 4.4, with an RFC 8707 `resource` when configured) against
//! an identity provider's token endpoint: one token per route, cached until shortly before it
//! expires and refreshed by one request at a time (single flight), so the upstream only ever sees
//! valid tokens. Each refresh is an audit act; the token never is.
//!
//! Untrusted input: the token endpoint's response (size-bounded by the HTTP client; any field
//! missing or mistyped is a refusal to forward, never a panic).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use openidconnect::url::form_urlencoded;
use tokio::sync::Mutex;

use crate::audit::{AuditSink, TokenEvent};
use crate::authn::http::IdpClient;
use crate::config::{ClientAuth, UpstreamCredentials};
use crate::session::Secret;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("token endpoint: {0}")]
    Endpoint(String),
    #[error("the token endpoint refused: {0}")]
    Refused(String),
}

struct Cached {
    token: Arc<Secret>,
    /// When to fetch a new one: before expiry by `refresh_before`, or a tenth of the lifetime.
    refresh_at: Instant,
    expires_at: Instant,
}

/// One route's brokered credential.
pub struct ClientCredentials {
    config: UpstreamCredentials,
    secret: Secret,
    http: IdpClient,
    route: Arc<String>,
    token_url: Mutex<Option<String>>,
    current: Mutex<Option<Cached>>,
    audit: Arc<dyn AuditSink>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.config.client_id)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl ClientCredentials {
    pub fn new(
        config: UpstreamCredentials,
        secret: Secret,
        http: IdpClient,
        route: Arc<String>,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        let token_url = config.token_url.clone();
        ClientCredentials {
            config,
            secret,
            http,
            route,
            token_url: Mutex::new(token_url),
            current: Mutex::new(None),
            audit,
        }
    }

    /// A valid token: the cached one, or a new one (one fetch at a time; the others wait for it).
    pub async fn token(&self) -> Result<Arc<Secret>, BrokerError> {
        let mut current = self.current.lock().await;
        let now = Instant::now();
        if let Some(c) = current.as_ref()
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        match self.fetch().await {
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
    fn form(&self) -> (String, Option<String>) {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !self.config.scopes.is_empty() {
            form.append_pair("scope", &self.config.scopes.join(" "));
        }
        if let Some(resource) = &self.config.resource {
            form.append_pair("resource", resource);
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

    async fn fetch(&self) -> Result<Cached, BrokerError> {
        let url = self.endpoint().await?;
        let (body, basic) = self.form();
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
                audience: self.config.resource.clone(),
                expires: Some(SystemTime::now() + lifetime),
                principal: None,
                client_id: Some(self.config.client_id.clone()),
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
