//! The reserved endpoints under `/.portcullis/`: starting a sign-in, its callback, signing out.
//! Untrusted input: every query parameter and cookie.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Method, Response};
use openidconnect::url::form_urlencoded;

use super::pages::{chooser_page, html, redirect, signed_out_page};
use super::{Browser, BrowserClient, LOGIN_COOKIE, RESERVED, SESSION_COOKIE, cookie, set_cookie};
use crate::authn::oidc::{self, IdTokenError, LoginFinished};
use crate::authn::provider::LOGOUT_TOKEN_MAX_AGE;
use crate::body::ProxyBody;
use crate::canonical::Canonical;
use crate::decision::Reason;
use crate::error::ProxyError;
use crate::session::{PendingLogin, Revocation, Scope, Session, SessionId, StoreError};

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
    /// A refusal's claim at fault (its name only), for the audit record.
    pub claim: Option<Arc<str>>,
}

impl Browser {
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
                    .and_then(|rd| crate::authn::redirect::safe_return_to(&rd))
                    .unwrap_or_else(|| "/".into());
                let path = return_to.split('?').next().unwrap_or("/");
                let options = options(path);
                self.sign_in(&origin, headers, return_to, param("provider"), &options)
                    .await
            }
            // GET only: a HEAD (a link prefetcher) must not use up the sign-in's state.
            "callback" if *method == Method::GET => {
                let state = param("state").unwrap_or_default();
                self.callback(&origin, headers, &state, param("code"), param("error"))
                    .await
            }
            "sign_out" if read_only || *method == Method::POST => self.sign_out(&origin, headers).await,
            "signed_out" if read_only => Ok(Served {
                response: html(signed_out_page()),
                reason: Reason::SignedOut,
                principal: None,
                claim: None,
            }),
            _ => Err(ProxyError::deny(Reason::RouteNotFound)),
        }
    }

    /// `sign_in`: to the provider named (or the only one), else to the page that lists them.
    async fn sign_in(
        &self,
        origin: &Origin,
        headers: &HeaderMap,
        return_to: String,
        provider: Option<String>,
        options: &[Arc<BrowserClient>],
    ) -> Result<Served, ProxyError> {
        let chosen = match provider {
            Some(name) => options.iter().find(|c| c.name() == name),
            None if options.len() == 1 => options.first(),
            None => None,
        };
        let response = match chosen {
            Some(client) => self.start(client, origin, headers, return_to).await?,
            None if options.is_empty() => return Err(ProxyError::deny(Reason::RouteNotFound)),
            None => html(chooser_page(options, &return_to)),
        };
        Ok(Served {
            response,
            reason: Reason::SignInStarted,
            principal: None,
            claim: None,
        })
    }

    /// Sends the browser to `client`'s provider, with the sign-in kept until its callback.
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

    /// `callback`: the provider's answer to a sign-in this browser started becomes a session.
    async fn callback(
        &self,
        origin: &Origin,
        headers: &HeaderMap,
        state: &str,
        code: Option<String>,
        error: Option<String>,
    ) -> Result<Served, ProxyError> {
        let pending = self.take_sign_in(origin, headers, state).await?;
        if let Some(error) = error {
            tracing::info!(provider = %pending.provider, error = %bounded(&error), "the provider refused the sign-in");
            return Err(ProxyError::deny(Reason::LoginFailed));
        }
        let code = code.ok_or_else(|| ProxyError::deny(Reason::LoginFailed))?;
        let client = self
            .client(&pending.provider)
            .ok_or_else(|| ProxyError::deny(Reason::LoginFailed))?;
        let finished = client.finish_sign_in(&pending, &code).await?;
        self.open_session(headers, &pending, finished).await
    }

    /// The sign-in `state` names, when this browser started it and it comes back to this origin.
    async fn take_sign_in(
        &self,
        origin: &Origin,
        headers: &HeaderMap,
        state: &str,
    ) -> Result<PendingLogin, ProxyError> {
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
        Ok(pending)
    }

    /// A new session for the signed-in principal, and the browser sent back to where it was going.
    async fn open_session(
        &self,
        headers: &HeaderMap,
        pending: &PendingLogin,
        finished: LoginFinished,
    ) -> Result<Served, ProxyError> {
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
            sid: finished.sid,
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
            claim: None,
        })
    }

    /// `sign_out`: ends the session here and, when the provider offers it, there too.
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
            claim: None,
        })
    }

    /// `backchannel-logout`: a logout token from a provider with `backchannel_logout` ends
    /// the sessions of the provider session it names (`sid`) or, without one, of its subject,
    /// on every replica (a deny entry, as `portcullis revoke` writes). 200 when done; 400 with
    /// an `error` JSON body when the token does not hold; nothing is cached.
    pub async fn backchannel_logout(&self, body: &[u8]) -> Served {
        let token = form_urlencoded::parse(body)
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned());
        let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 16 * 1024) else {
            return logout_refused(None, "the form has no logout_token");
        };
        let Some(issuer) = unverified_issuer(&token) else {
            return logout_refused(None, "the logout token is malformed");
        };
        let Some(client) = self
            .clients
            .iter()
            .find(|c| c.backchannel_logout && c.provider.config.issuer == issuer)
        else {
            return logout_refused(
                Some("iss"),
                "no provider with back-channel logout has this issuer",
            );
        };
        let verified = match client
            .provider
            .verify_logout_token(&token, &client.client_id)
            .await
        {
            Ok(verified) => verified,
            Err(refusal) => return logout_refused(refusal.claim, refusal.why),
        };
        let provider = client.name();
        let leeway = client.provider.config.leeway;
        // Long enough that the token is too old by the time its jti is forgotten.
        let remember = LOGOUT_TOKEN_MAX_AGE + leeway * 2;
        match self
            .store
            .first_use(&format!("logout\n{provider}\n{}", verified.jti), remember)
            .await
        {
            Ok(true) => {}
            Ok(false) => return logout_refused(Some("jti"), "this logout token was used already"),
            Err(e) => return logout_unavailable(&e),
        }
        let (scope, name) = match (&verified.sid, &verified.sub) {
            (Some(sid), _) => (Scope::ProviderSession, sid.as_str()),
            (None, Some(sub)) => (Scope::SessionsOf, sub.as_str()),
            (None, None) => {
                return logout_refused(Some("sid"), "neither sid nor sub says whose sessions end");
            }
        };
        let revocation = Revocation::now(scope, provider, name, self.settings.lifetime.get());
        if let Err(e) = self.store.revoke(revocation).await {
            return logout_unavailable(&e);
        }
        tracing::info!(
            provider,
            by = scope.as_str(),
            "back-channel logout: sessions ended"
        );
        let principal = verified.sub.map(|subject| {
            Arc::new(crate::identity::Principal {
                kind: crate::identity::PrincipalKind::User,
                subject,
                issuer: client.provider.config.issuer.clone(),
                provider: provider.to_string(),
                email: None,
                name: None,
                groups: Vec::new(),
                auth_method: crate::identity::AuthMethod::Session,
                client_id: None,
                token_id: None,
                session_id_hash: None,
            })
        });
        Served {
            response: logout_answer(http::StatusCode::OK, None),
            reason: Reason::SignedOut,
            principal,
            claim: None,
        }
    }
}

/// The logout token's `iss`, read before anything is verified, to choose the provider.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Map<String, serde_json::Value> = crate::authn::claims::jws_part(payload).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// A back-channel logout answer: 200 empty, or the error JSON the specification asks for;
/// never cached.
fn logout_answer(status: http::StatusCode, error: Option<(&str, &str)>) -> Response<ProxyBody> {
    let body = match error {
        Some((error, description)) => serde_json::json!({
            "error": error,
            "error_description": description,
        })
        .to_string(),
        None => String::new(),
    };
    let mut response = Response::new(crate::body::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if error.is_some() {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    response
}

fn logout_refused(claim: Option<&'static str>, why: &'static str) -> Served {
    tracing::info!(claim, why, "back-channel logout refused");
    Served {
        response: logout_answer(http::StatusCode::BAD_REQUEST, Some(("invalid_request", why))),
        reason: Reason::LogoutTokenRefused,
        principal: None,
        claim: claim.map(Arc::from),
    }
}

fn logout_unavailable(e: &StoreError) -> Served {
    tracing::error!(error = %e, "back-channel logout: the session store is unavailable");
    Served {
        response: logout_answer(
            http::StatusCode::SERVICE_UNAVAILABLE,
            Some(("temporarily_unavailable", "sessions cannot be ended right now")),
        ),
        reason: Reason::SessionStoreUnavailable,
        principal: None,
        claim: None,
    }
}

impl BrowserClient {
    /// Redeems the callback's `code` and checks the ID token it brings.
    async fn finish_sign_in(&self, pending: &PendingLogin, code: &str) -> Result<LoginFinished, ProxyError> {
        let config = &self.provider.config;
        let discovered = self
            .metadata(config.jwks_refresh)
            .await
            .map_err(ProxyError::deny)?;
        let rp = self.rp(&discovered.metadata, &pending.redirect_url);
        let response = oidc::redeem_code(&rp, &self.http, code, &pending.pkce_verifier)
            .await
            .map_err(ProxyError::deny)?;
        match oidc::verify_login(&rp, config, &response, &pending.nonce) {
            Ok(finished) => Ok(finished),
            // The provider may have rotated its keys since discovery: look once more.
            Err(IdTokenError::Keys) => {
                let fresh = self
                    .metadata(config.jwks_min_refetch)
                    .await
                    .map_err(ProxyError::deny)?;
                let rp = self.rp(&fresh.metadata, &pending.redirect_url);
                oidc::verify_login(&rp, config, &response, &pending.nonce).map_err(|e| match e {
                    IdTokenError::Keys => ProxyError::deny(Reason::BadSignature),
                    IdTokenError::Refused(reason) => ProxyError::deny(reason),
                    IdTokenError::Unbound(claim) => ProxyError::unbound(claim),
                })
            }
            Err(IdTokenError::Refused(reason)) => Err(ProxyError::deny(reason)),
            Err(IdTokenError::Unbound(claim)) => Err(ProxyError::unbound(claim)),
        }
    }
}

fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    crate::hex::encode(digest.as_ref())
}

fn store_error(e: StoreError) -> ProxyError {
    tracing::error!(error = %e, "session store unavailable");
    ProxyError::deny(Reason::SessionStoreUnavailable)
}

fn bounded(text: &str) -> String {
    crate::audit::bounded(text, 64)
}
