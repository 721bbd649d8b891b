//! The bearer path: `Authorization: Bearer <JWT>` from services, CI jobs and API clients.
//!
//! Verified tokens are cached by a SHA-256 of the token, each entry dropped no later than its
//! `exp`; a hit is still checked against the route's accepted providers and against the deny
//! list (revoked subjects), so the cache never widens access.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, header};

use super::Outcome;
use super::claims::{PartError, jws_part};
use super::provider::{Header, Provider, Refusal, Verified};
use crate::decision::Reason;
use crate::identity::Principal;
use crate::session::Revocations;

/// Longest a verified token stays cached, whatever its `exp`.
const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_ENTRIES: u64 = 100_000;
/// Tokens longer than this are refused unread.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Clone)]
struct Cached {
    /// The provider that vouched for the token; a hit counts only on routes that accept it.
    provider: Arc<Provider>,
    principal: Arc<Principal>,
    exp: u64,
    iat: Option<u64>,
}

struct UntilExp;

impl moka::Expiry<[u8; 32], Cached> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Cached,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.exp.saturating_sub(now_secs())).min(MAX_CACHE_TTL))
    }
}

pub struct BearerAuthenticator {
    verified: moka::sync::Cache<[u8; 32], Cached>,
    /// This replica's copy of the deny list: revoked subjects' tokens are refused.
    revocations: Arc<Revocations>,
}

impl BearerAuthenticator {
    pub fn new(revocations: Arc<Revocations>) -> Self {
        BearerAuthenticator {
            revocations,
            verified: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .expire_after(UntilExp)
                .build(),
        }
    }

    pub async fn authenticate(&self, headers: &HeaderMap, accepted: &[Arc<Provider>]) -> Outcome {
        let token = match extract(headers) {
            None => return Outcome::NotMine,
            Some(Err(reason)) => return Outcome::Rejected(reason.into()),
            Some(Ok(token)) => token,
        };
        let digest = crate::secret::fingerprint(token);
        if let Some(hit) = self.verified.get(&digest)
            && hit.exp > now_secs()
        {
            return if accepted.iter().any(|p| Arc::ptr_eq(p, &hit.provider)) {
                self.unless_revoked(&hit.provider, hit.principal, hit.iat)
            } else {
                Outcome::Rejected(Refusal::wrong_issuer(&hit.provider.config.issuer))
            };
        }
        let (header, issuer) = match peek(token) {
            Ok(parts) => parts,
            Err(reason) => return Outcome::Rejected(reason.into()),
        };
        let Some(provider) = accepted.iter().find(|p| p.config.issuer == issuer) else {
            return Outcome::Rejected(Refusal::wrong_issuer(&issuer));
        };
        match provider.verify(token, &header).await {
            Ok(Verified { principal, exp, iat }) => {
                self.verified.insert(
                    digest,
                    Cached {
                        provider: provider.clone(),
                        principal: principal.clone(),
                        exp,
                        iat,
                    },
                );
                self.unless_revoked(provider, principal, iat)
            }
            Err(refusal) => Outcome::Rejected(refusal),
        }
    }

    /// A verified token, refused when its subject was revoked (at its provider) after it was
    /// issued.
    fn unless_revoked(&self, provider: &Provider, principal: Arc<Principal>, iat: Option<u64>) -> Outcome {
        let c = &provider.config;
        if self.revocations.unknown() {
            return Outcome::Rejected(Reason::SessionStoreUnavailable.into());
        }
        if self
            .revocations
            .refuses_token(&c.name, &principal.subject, iat, c.leeway)
        {
            return Outcome::Rejected(Refusal::revoked(principal));
        }
        Outcome::Authenticated(principal)
    }
}

/// The well-formed bearer token the request presents, if any: what the bearer path verified.
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    extract(headers).and_then(Result::ok)
}

/// `None`: no Authorization header or another scheme (not ours). `Some(Err)`: a Bearer
/// credential that is not a well-formed compact JWS.
fn extract(headers: &HeaderMap) -> Option<Result<&str, Reason>> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return Some(Err(Reason::Malformed));
    }
    let value = match value.to_str() {
        Ok(v) => v,
        Err(_) => return Some(Err(Reason::Malformed)),
    };
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    let well_formed = !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    Some(if well_formed {
        Ok(token)
    } else {
        Err(Reason::Malformed)
    })
}

#[derive(serde::Deserialize)]
struct RawIssuer {
    iss: String,
}

/// Reads the header and the (still unverified) issuer, to choose the provider and key. A
/// header or payload that names a member twice is refused here, before either is trusted.
fn peek(token: &str) -> Result<(Header, String), Reason> {
    let mut parts = token.split('.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
        return Err(Reason::Malformed);
    };
    let refused = |e| match e {
        PartError::Duplicate => Reason::DuplicateClaim,
        PartError::NotJson => Reason::Malformed,
    };
    let header: Header = jws_part(h).map_err(refused)?;
    let payload: RawIssuer = jws_part(p).map_err(refused)?;
    Ok((header, payload.iss))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
