//! The browser path's OpenID Connect client: discovery and the start of an authorization-code
//! flow with PKCE (S256), `state` and `nonce`, through the openidconnect crate driven by our own
//! HTTP client (no reqwest, no second TLS stack); the code exchange, ID token verification,
//! refresh and the logout URL. The browser endpoints that use these live in `authn::browser`.

use std::sync::Arc;
use std::time::SystemTime;

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreTokenResponse};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl, LogoutRequest,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    ProviderMetadataWithLogout, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse,
};

use super::provider::principal_from_claims;
use crate::config::ResolvedProvider;
use crate::decision::Reason;
use crate::identity::{AuthMethod, Principal};
use crate::outbound::HttpsClient;
use crate::secret::Secret;

/// A provider's discovery document, with the RP-initiated logout endpoint when it has one.
pub type Metadata = ProviderMetadataWithLogout;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("issuer {0:?} is not a URL")]
    BadIssuer(String),
    #[error("redirect URL {0:?} is not a URL")]
    BadRedirect(String),
    #[error("discovery failed: {0}")]
    Discovery(String),
}

/// Reads `<issuer>/.well-known/openid-configuration`; the crate checks that the document's
/// `issuer` is exactly the configured one.
pub async fn discover(issuer: &str, http: &HttpsClient) -> Result<Metadata, OidcError> {
    let issuer_url =
        IssuerUrl::new(issuer.to_string()).map_err(|_| OidcError::BadIssuer(issuer.to_string()))?;
    Metadata::discover_async(issuer_url, http)
        .await
        .map_err(|e| OidcError::Discovery(e.to_string()))
}

/// Everything the callback needs to finish a login, kept server-side under `state`.
#[derive(Debug)]
pub struct LoginStart {
    /// Where to send the browser.
    pub authorize_url: String,
    pub state: String,
    pub nonce: Secret,
    pub pkce_verifier: Secret,
}

/// The relying party: one provider's metadata and this proxy's client registration there.
pub struct RelyingParty<'a> {
    pub metadata: &'a Metadata,
    pub client_id: &'a str,
    pub client_secret: Option<&'a Secret>,
    /// Empty for requests that need none (refresh).
    pub redirect_url: &'a str,
}

impl RelyingParty<'_> {
    fn client(
        &self,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        OidcError,
    > {
        let client = CoreClient::from_provider_metadata(
            self.metadata.clone(),
            ClientId::new(self.client_id.to_string()),
            self.client_secret
                .map(|s| ClientSecret::new(s.expose().to_string())),
        );
        // A refresh names no redirect URI; every other flow does.
        if self.redirect_url.is_empty() {
            return Ok(client);
        }
        let redirect = RedirectUrl::new(self.redirect_url.to_string())
            .map_err(|_| OidcError::BadRedirect(self.redirect_url.to_string()))?;
        Ok(client.set_redirect_uri(redirect))
    }
}

/// A completed sign-in: who, and the tokens the session keeps.
#[derive(Debug)]
pub struct LoginFinished {
    pub principal: Principal,
    pub id_token: Secret,
    pub access_token: Secret,
    pub access_token_expires: Option<SystemTime>,
    pub refresh_token: Option<Secret>,
    /// The ID token's `sid`: the provider's session, which back-channel logout may end.
    pub sid: Option<String>,
}

/// Why an ID token was refused: `Keys` may pass once the provider's keys are fetched again.
#[derive(Debug, PartialEq, Eq)]
pub enum IdTokenError {
    Keys,
    Refused(Reason),
    /// `claims_not_bound`, naming the claim (its name only: the value may be a secret).
    Unbound(Arc<str>),
}

/// Redeems the authorization code with the PKCE verifier.
pub async fn redeem_code(
    rp: &RelyingParty<'_>,
    http: &HttpsClient,
    code: &str,
    pkce_verifier: &Secret,
) -> Result<CoreTokenResponse, Reason> {
    let client = rp.client().map_err(|_| Reason::LoginFailed)?;
    client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .map_err(|_| Reason::LoginFailed)?
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose().to_string()))
        .request_async(http)
        .await
        .map_err(|e| {
            tracing::info!(error = %e, "authorization code refused");
            Reason::LoginFailed
        })
}

/// Verifies the ID token of a code exchange: signature with the provider's keys, issuer,
/// audience, expiry and the nonce of this sign-in; `azp` when the audience has several values,
/// and `iat` not in the future (the crate checks neither).
pub fn verify_login(
    rp: &RelyingParty<'_>,
    provider: &ResolvedProvider,
    response: &CoreTokenResponse,
    nonce: &Secret,
) -> Result<LoginFinished, IdTokenError> {
    let expected = Nonce::new(nonce.expose().to_string());
    let principal = verify_id_token(rp, provider, response, &expected)?
        .ok_or(IdTokenError::Refused(Reason::LoginFailed))?;
    let id_token = response
        .id_token()
        .map(|t| Secret::new(t.to_string()))
        .ok_or(IdTokenError::Refused(Reason::LoginFailed))?;
    let sid = sid_of(id_token.expose());
    Ok(LoginFinished {
        principal,
        sid,
        id_token,
        access_token: Secret::new(response.access_token().secret().clone()),
        access_token_expires: response.expires_in().map(|d| SystemTime::now() + d),
        refresh_token: response.refresh_token().map(|t| Secret::new(t.secret().clone())),
    })
}

/// The `sid` of an ID token verified already: a string without control characters, or none.
fn sid_of(compact: &str) -> Option<String> {
    let payload = compact.split('.').nth(1)?;
    let claims = super::claims::jws_part::<serde_json::Map<String, serde_json::Value>>(payload).ok()?;
    let sid = claims.get("sid")?.as_str()?;
    crate::session::acceptable_name(sid).then(|| sid.to_string())
}

/// The principal an ID token in `response` names, if it carries one.
fn verify_id_token(
    rp: &RelyingParty<'_>,
    provider: &ResolvedProvider,
    response: &CoreTokenResponse,
    nonce: impl openidconnect::NonceVerifier,
) -> Result<Option<Principal>, IdTokenError> {
    let refused = IdTokenError::Refused;
    let Some(id_token) = response.id_token() else {
        return Ok(None);
    };
    // The same strictness as the bearer path, before the crate reads anything: no member
    // named twice, no `crit` extension, and a `typ` that says "ID token" (none or `JWT`).
    let compact = id_token.to_string();
    let mut parts = compact.split('.');
    let header = parts.next().unwrap_or_default();
    let payload = parts.next().unwrap_or_default();
    let read = |part: &str| {
        super::claims::jws_part::<serde_json::Map<String, serde_json::Value>>(part).map_err(|e| match e {
            super::claims::PartError::Duplicate => refused(Reason::DuplicateClaim),
            super::claims::PartError::NotJson => refused(Reason::Malformed),
        })
    };
    let jose = read(header)?;
    read(payload)?;
    if jose.contains_key("crit") {
        return Err(refused(Reason::UnknownCriticalHeader));
    }
    if jose
        .get("typ")
        .is_some_and(|t| !t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("jwt")))
    {
        return Err(refused(Reason::WrongTokenType));
    }
    let client = rp.client().map_err(|_| refused(Reason::LoginFailed))?;
    let verifier = client
        .id_token_verifier()
        .set_other_audience_verifier_fn(|_| false);
    let claims = id_token.claims(&verifier, nonce).map_err(|e| {
        tracing::info!(error = %e, provider = %provider.name, "ID token refused");
        match e {
            ClaimsVerificationError::SignatureVerification(_) => IdTokenError::Keys,
            ClaimsVerificationError::Expired(_) => refused(Reason::Expired),
            ClaimsVerificationError::InvalidIssuer(_) => refused(Reason::WrongIssuer),
            ClaimsVerificationError::InvalidAudience(_) => refused(Reason::WrongAudience),
            _ => refused(Reason::LoginFailed),
        }
    })?;
    let audiences = claims.audiences();
    if audiences.len() > 1 && claims.authorized_party().map(|p| p.as_str()) != Some(rp.client_id) {
        return Err(refused(Reason::WrongAudience));
    }
    let latest = SystemTime::now() + provider.leeway;
    let latest = latest
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if u64::try_from(claims.issue_time().timestamp()).unwrap_or(u64::MAX) > latest {
        return Err(refused(Reason::IssuedInFuture));
    }
    // openidconnect's claims type keeps only the standard claims (groups and other custom
    // claims would be lost): read the payload of the token it has just verified.
    let map = read(payload)?;
    if let Some(claim) = super::claims::unbound(&map, &provider.bound_claims) {
        tracing::info!(provider = %provider.name, claim, "ID token refused: a bound claim has another value");
        return Err(IdTokenError::Unbound(Arc::from(claim)));
    }
    principal_from_claims(provider, &map, AuthMethod::Session)
        .map(Some)
        .map_err(refused)
}

/// The tokens a refresh brought. The refresh token is the new one when the provider rotated
/// it, else the one that was used.
#[derive(Debug)]
pub struct Refreshed {
    pub access_token: Secret,
    pub access_token_expires: Option<SystemTime>,
    pub refresh_token: Secret,
    pub id_token: Option<Secret>,
    /// From the new ID token, when the provider sent one (groups may have changed).
    pub principal: Option<Principal>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RefreshError {
    /// The provider said no (revoked, expired, reused refresh token): the session ends.
    Refused,
    /// The provider could not be asked; the session lives on while its token is valid.
    Unreachable,
}

/// Exchanges the refresh token for new tokens. A new ID token must name the same subject.
pub async fn refresh(
    rp: &RelyingParty<'_>,
    provider: &ResolvedProvider,
    http: &HttpsClient,
    refresh_token: &Secret,
    subject: &str,
) -> Result<Refreshed, RefreshError> {
    let client = rp.client().map_err(|_| RefreshError::Refused)?;
    let token = RefreshToken::new(refresh_token.expose().to_string());
    let response = client
        .exchange_refresh_token(&token)
        .map_err(|_| RefreshError::Refused)?
        .request_async(http)
        .await
        .map_err(|e| {
            tracing::info!(error = %e, provider = %provider.name, "refresh failed");
            match e {
                RequestTokenError::ServerResponse(_) => RefreshError::Refused,
                _ => RefreshError::Unreachable,
            }
        })?;
    // Refreshed ID tokens carry no new nonce (OIDC Core 12.2); the subject must not change.
    let no_nonce = |_: Option<&Nonce>| Ok(());
    let principal = match verify_id_token(rp, provider, &response, no_nonce) {
        Ok(principal) => principal,
        Err(_) => return Err(RefreshError::Refused),
    };
    if principal.as_ref().is_some_and(|p| p.subject != subject) {
        return Err(RefreshError::Refused);
    }
    Ok(Refreshed {
        access_token: Secret::new(response.access_token().secret().clone()),
        access_token_expires: response.expires_in().map(|d| SystemTime::now() + d),
        refresh_token: response
            .refresh_token()
            .map_or_else(|| refresh_token.clone(), |t| Secret::new(t.secret().clone())),
        id_token: response.id_token().map(|t| Secret::new(t.to_string())),
        principal,
    })
}

/// The provider's logout URL for RP-initiated logout, if it advertises an `end_session_endpoint`.
pub fn end_session_url(
    metadata: &Metadata,
    client_id: &str,
    id_token: Option<&Secret>,
    post_logout_redirect: &str,
) -> Option<String> {
    let endpoint = metadata.additional_metadata().end_session_endpoint.clone()?;
    let mut request = LogoutRequest::from(endpoint).set_client_id(ClientId::new(client_id.to_string()));
    if let Some(token) = id_token.and_then(|t| t.expose().parse::<CoreIdToken>().ok()) {
        request = request.set_id_token_hint(&token);
    }
    if let Ok(url) = PostLogoutRedirectUrl::new(post_logout_redirect.to_string()) {
        request = request.set_post_logout_redirect_uri(url);
    }
    Some(request.http_get_url().into())
}

/// Builds the authorization request for one sign-in attempt: fresh state, nonce and PKCE pair.
pub fn start_login(rp: &RelyingParty<'_>, scopes: &[String]) -> Result<LoginStart, OidcError> {
    let client = rp.client()?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for scope in scopes {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, state, nonce) = request.url();
    Ok(LoginStart {
        authorize_url: url.to_string(),
        state: state.secret().clone(),
        nonce: Secret::new(nonce.secret().clone()),
        pkce_verifier: Secret::new(verifier.secret().clone()),
    })
}
