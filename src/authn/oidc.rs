//! The browser path's OpenID Connect client: discovery and the start of an authorization-code
//! flow with PKCE (S256), `state` and `nonce`, through the openidconnect crate driven by our own
//! HTTP client (no reqwest, no second TLS stack). The callback, sessions and sign-out build on
//! this (issue #3, next increment).

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge, RedirectUrl, Scope,
};

use super::http::IdpClient;
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

/// Builds the authorization request for one sign-in attempt: fresh state, nonce and PKCE pair.
pub fn start_login(
    metadata: &CoreProviderMetadata,
    client_id: &str,
    client_secret: Option<&Secret>,
    redirect_url: &str,
    scopes: &[String],
) -> Result<LoginStart, OidcError> {
    let redirect = RedirectUrl::new(redirect_url.to_string())
        .map_err(|_| OidcError::BadRedirect(redirect_url.to_string()))?;
    let client = CoreClient::from_provider_metadata(
        metadata.clone(),
        ClientId::new(client_id.to_string()),
        client_secret.map(|s| ClientSecret::new(s.expose().to_string())),
    )
    .set_redirect_uri(redirect);
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
