//! The browser path's OpenID Connect client: discovery and the start of an authorization-code
//! flow with PKCE (S256), `state` and `nonce`, through the openidconnect crate driven by our own
//! HTTP client (no reqwest, no second TLS stack). The callback, sessions and sign-out build on
//! this (issue #3, next increment).

use std::time::SystemTime;

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};

use super::http::IdpClient;
use super::provider::principal_from_claims;
use super::{AuthMethod, Principal};
use crate::config::ResolvedProvider;
use crate::decision::Reason;
use crate::session::Secret;

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
pub async fn discover(issuer: &str, http: &IdpClient) -> Result<CoreProviderMetadata, OidcError> {
    let issuer_url =
        IssuerUrl::new(issuer.to_string()).map_err(|_| OidcError::BadIssuer(issuer.to_string()))?;
    let client = |request| http.send(request);
    CoreProviderMetadata::discover_async(issuer_url, &client)
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
    pub metadata: &'a CoreProviderMetadata,
    pub client_id: &'a str,
    pub client_secret: Option<&'a Secret>,
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
        let redirect = RedirectUrl::new(self.redirect_url.to_string())
            .map_err(|_| OidcError::BadRedirect(self.redirect_url.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            self.metadata.clone(),
            ClientId::new(self.client_id.to_string()),
            self.client_secret
                .map(|s| ClientSecret::new(s.expose().to_string())),
        )
        .set_redirect_uri(redirect))
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
}

/// Redeems the authorization code (with the PKCE verifier) and verifies the ID token: signature
/// with the provider's keys, issuer, audience, expiry and the nonce of this sign-in; `azp` when
/// the audience has several values, and `iat` not in the future (the crate checks neither).
pub async fn finish_login(
    rp: &RelyingParty<'_>,
    provider: &ResolvedProvider,
    http: &IdpClient,
    code: &str,
    pkce_verifier: &Secret,
    nonce: &Secret,
) -> Result<LoginFinished, Reason> {
    let client = rp.client().map_err(|_| Reason::LoginFailed)?;
    let send = |request| http.send(request);
    let response = client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .map_err(|_| Reason::LoginFailed)?
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose().to_string()))
        .request_async(&send)
        .await
        .map_err(|e| {
            tracing::info!(error = %e, provider = %provider.name, "authorization code refused");
            Reason::LoginFailed
        })?;
    let id_token = response.id_token().ok_or(Reason::LoginFailed)?;
    let verifier = client
        .id_token_verifier()
        .set_other_audience_verifier_fn(|_| false);
    let claims = id_token
        .claims(&verifier, &Nonce::new(nonce.expose().to_string()))
        .map_err(|e| {
            tracing::info!(error = %e, provider = %provider.name, "ID token refused");
            Reason::LoginFailed
        })?;
    let audiences = claims.audiences();
    if audiences.len() > 1 && claims.authorized_party().map(|p| p.as_str()) != Some(rp.client_id) {
        return Err(Reason::WrongAudience);
    }
    let latest = SystemTime::now() + provider.leeway;
    let latest = latest
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if u64::try_from(claims.issue_time().timestamp()).unwrap_or(u64::MAX) > latest {
        return Err(Reason::NotYetValid);
    }
    let json = serde_json::to_value(claims).map_err(|_| Reason::Malformed)?;
    let map = json.as_object().ok_or(Reason::Malformed)?;
    let principal = principal_from_claims(provider, map, AuthMethod::Session)?;
    Ok(LoginFinished {
        principal,
        id_token: Secret::new(id_token.to_string()),
        access_token: Secret::new(response.access_token().secret().clone()),
        access_token_expires: response.expires_in().map(|d| SystemTime::now() + d),
        refresh_token: response.refresh_token().map(|t| Secret::new(t.secret().clone())),
    })
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
