//! Who is calling: the principal and the authenticator chain.
//!
//! Authenticators run in order and each answers Authenticated, NotMine (no credentials of its
//! kind: the next one tries) or Rejected (credentials of its kind that do not hold: the chain
//! stops, so a bad token never falls through to a weaker method). The chain is the bearer JWT
//! authenticator, then the browser session: a caller that presents a token means that token,
//! whatever cookies its HTTP client also carries.
//!
//! Untrusted input: the Authorization header, cookies, and every byte of the token.

pub mod bearer;
pub mod browser;
mod claims;
pub mod jwks;
pub mod oidc;
pub mod provider;
pub mod redirect;

use std::sync::Arc;

use ::http::HeaderMap;

pub use provider::{Provider, Refusal};

use crate::identity::Principal;

/// One authenticator's answer.
#[derive(Debug)]
pub enum Outcome {
    /// A bearer token held (the token is the request's own `Authorization`).
    Authenticated(Arc<Principal>),
    /// A browser session held. `moved`: the session moved to a new id (its principal's groups
    /// changed at a refresh), and the response must set this cookie.
    Session {
        session: Arc<crate::session::Session>,
        moved: Option<String>,
    },
    NotMine,
    Rejected(Refusal),
}

/// The ordered chain of authenticators.
pub struct Authn {
    bearer: bearer::BearerAuthenticator,
    pub browser: browser::Browser,
    providers: Vec<Arc<Provider>>,
}

impl Authn {
    pub fn new(providers: Vec<Arc<Provider>>, browser: browser::Browser) -> Self {
        Authn {
            bearer: bearer::BearerAuthenticator::new(browser.revocations()),
            browser,
            providers,
        }
    }

    /// The first Authenticated wins; a Rejected stops the chain.
    /// `during` names the request, for the acts authentication causes (a session refresh).
    /// `secure`: the request came over HTTPS (or from a trusted TLS terminator, or for a
    /// loopback host): only then is a session cookie a credential.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        accepted: &[Arc<Provider>],
        during: crate::audit::During<'_>,
        secure: bool,
    ) -> Outcome {
        match self.bearer.authenticate(headers, accepted).await {
            Outcome::NotMine if secure => self.browser.authenticate(headers, accepted, during).await,
            decided => decided,
        }
    }

    /// Each provider, and whether it has what it needs to verify tokens (an HMAC-only provider
    /// always has).
    pub fn key_states(&self) -> Vec<(String, bool)> {
        self.providers
            .iter()
            .map(|p| (p.config.name.clone(), !p.needs_jwks() || p.keys.ready()))
            .collect()
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.config.name == name)
    }
}
