//! The proxy as an issuer: signed identity assertions for upstreams, from a key ring that
//! rotates itself.
//!
//! [`Minter::mint`] makes the assertion for one caller and one route: a JWT (ES256 or EdDSA)
//! with `iss`, `aud`, `sub`, `email`, `groups`, the auth method, `iat`, `exp` and `jti`, cached
//! per (caller, route) and minted again when less than a tenth of its lifetime is left, so a
//! signature is paid once per caller per lifetime, not per request. The ring ([`keyring`])
//! rotates on its schedule; the retired key stays published (`/.well-known/jwks.json`) until
//! every assertion it signed has expired. Every mint and rotation is an audit event; no token
//! or key ever is.

pub mod broker;
pub mod keyring;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::audit::{AuditSink, TokenEvent};
use crate::config::{MAX_ASSERTION_LIFETIME, SigningAlgorithm, Tokens};
use crate::identity::Principal;
pub use keyring::{Change, KeyError, KeyRing, Schedule};

/// Clock skew the verifiers of our assertions may allow: retired keys are kept this much longer.
const LEEWAY: Duration = Duration::from_secs(60);

/// The claims of an identity assertion.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    /// `<provider>/<subject>`: a subject means something only with the provider that vouched
    /// for it, so an upstream keying on `sub` alone cannot confuse two providers' callers.
    sub: String,
    /// The configured name of that provider.
    provider: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    groups: &'a [String],
    /// `bearer` or `session`.
    auth_method: &'static str,
    /// `user`, `service` or `ci_job`.
    principal_kind: &'static str,
    /// The issuer that vouched for the caller.
    idp: &'a str,
    /// The route's own claims (`[routes.assertion] claims`): what an upstream needs to read
    /// (Airflow's `role`). Never one of the names above (configuration refuses them).
    #[serde(flatten)]
    extra: &'a std::collections::BTreeMap<String, String>,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

/// `header.payload.signature`, each part base64url (RFC 7515 7.1), with the key's header
/// encoded once and its private key parsed once (see [`keyring::Signer`]).
fn compact_jws(header: &str, claims: &Claims<'_>, signer: &keyring::Signer) -> Result<String, MintError> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = serde_json::to_vec(claims).map_err(|e| MintError::Sign(e.to_string()))?;
    let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 100);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let signature = signer
        .sign(token.as_bytes())
        .map_err(|_| MintError::Sign("the signing key refused to sign".into()))?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

/// A minted assertion.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    /// The key that signed it: a hit counts only while that key is in the ring (not revoked).
    pub kid: String,
    pub issued: SystemTime,
    pub expires: SystemTime,
}

/// Why an assertion could not be made (the request then fails closed).
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("no active signing key")]
    NoKey,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The ring in use and what maintains it.
pub struct Minter {
    issuer: String,
    algorithm: SigningAlgorithm,
    schedule: Schedule,
    ring: ArcSwap<KeyRing>,
    /// Assertions by (route audience, caller): every claim that differs between callers is in
    /// the key, so a cached assertion never names anyone but its caller.
    cache: moka::sync::Cache<(Arc<str>, String), Arc<Minted>>,
    audit: Arc<dyn AuditSink>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Minter {
    /// Opens the ring, rotating or pruning it as its schedule says.
    pub fn open(
        config: &Tokens,
        issuer: &str,
        dir: &std::path::Path,
        audit: Arc<dyn AuditSink>,
    ) -> Result<Self, KeyError> {
        let mut ring = KeyRing::open(dir)?;
        let schedule = Schedule {
            rotate_every: config.rotate_every,
            publish_ahead: config.publish_ahead,
            keep: MAX_ASSERTION_LIFETIME + LEEWAY,
        };
        let changes = ring.maintain(config.algorithm, schedule, SystemTime::now())?;
        let minter = Minter {
            issuer: issuer.trim_end_matches('/').to_string(),
            algorithm: config.algorithm,
            schedule,
            ring: ArcSwap::from_pointee(ring),
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(MAX_ASSERTION_LIFETIME)
                .build(),
            audit,
        };
        minter.report(&changes);
        Ok(minter)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWK Set to publish.
    pub fn jwks(&self) -> serde_json::Value {
        self.ring.load().jwks()
    }

    /// The issuer's discovery document or its JWK Set at `path`, for upstreams verifying
    /// assertions.
    pub fn document(&self, path: &str) -> Option<String> {
        match path {
            "/.well-known/jwks.json" => Some(self.jwks().to_string()),
            "/.well-known/openid-configuration" => Some(self.discovery().to_string()),
            _ => None,
        }
    }

    /// The discovery document: enough for any OIDC library to find the keys.
    pub fn discovery(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer),
            "id_token_signing_alg_values_supported": [self.algorithm.as_str()],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        })
    }

    /// Rotates or prunes as due, and reloads keys another process (`portcullis keys rotate`)
    /// wrote. Called every few seconds.
    pub fn maintain(&self, dir: &std::path::Path) {
        let mut ring = match KeyRing::open(dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "signing keys could not be reloaded; the ring in use stays");
                return;
            }
        };
        let loaded = self.ring.load();
        let before = loaded.active().map(|k| k.kid.clone());
        // Keys gone from the directory before their time were revoked by another process.
        let now = SystemTime::now();
        let keep = self.schedule.keep;
        let revoked: Vec<String> = loaded
            .keys()
            .iter()
            .filter(|k| k.retired.is_none_or(|r| now < r + keep))
            .filter(|k| !ring.keys().iter().any(|r| r.kid == k.kid))
            .map(|k| k.kid.clone())
            .collect();
        drop(loaded);
        match ring.maintain(self.algorithm, self.schedule, now) {
            Ok(mut changes) => {
                let after = ring.active().map(|k| k.kid.clone());
                // Another process rotated: still this proxy's act to report, once.
                if before != after
                    && !changes.iter().any(|c| matches!(c, Change::Rotated { .. }))
                    && let Some(active) = after
                {
                    changes.push(Change::Rotated {
                        active,
                        retired: before,
                    });
                }
                changes.extend(revoked.into_iter().map(|kid| Change::Revoked { kid }));
                self.ring.store(Arc::new(ring));
                self.report(&changes);
            }
            Err(e) => tracing::error!(error = %e, "signing key rotation failed; the ring in use stays"),
        }
    }

    fn report(&self, changes: &[Change]) {
        for change in changes {
            let (act, kid, retired) = match change {
                Change::Rotated { active, retired } => {
                    tracing::info!(kid = %active, retired = ?retired, "signing key rotated");
                    ("key_rotation", active.clone(), retired.clone())
                }
                Change::Removed { kid } => {
                    tracing::info!(%kid, "retired signing key removed (its assertions have expired)");
                    ("key_removed", kid.clone(), None)
                }
                Change::Revoked { kid } => {
                    // Cached assertions it signed would no longer verify (`mint` already skips
                    // them); free them.
                    self.cache.invalidate_all();
                    tracing::warn!(%kid, "signing key revoked; cached assertions dropped");
                    ("key_revoked", kid.clone(), None)
                }
            };
            self.audit.emit(
                TokenEvent {
                    time: SystemTime::now(),
                    act,
                    kid,
                    retired_kid: retired,
                    jti: None,
                    route: None,
                    audience: None,
                    expires: None,
                    principal: None,
                    client_id: None,
                    grant: None,
                }
                .into(),
            );
        }
    }

    /// The assertion for `principal` on a route with `audience`: cached, or minted now.
    pub fn mint(
        &self,
        principal: &Principal,
        audience: &Arc<str>,
        lifetime: Duration,
        route: &Arc<String>,
        extra: &std::collections::BTreeMap<String, String>,
    ) -> Result<Arc<Minted>, MintError> {
        // The route is part of the key: two routes with one audience may add different claims.
        let who = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            route,
            principal.issuer,
            principal.provider,
            principal.subject,
            principal.email.as_deref().unwrap_or(""),
            principal.name.as_deref().unwrap_or(""),
            principal.groups.join("\u{1}"),
            principal.auth_method.as_str(),
            principal.kind.as_str(),
        );
        let key = (audience.clone(), who);
        let now = SystemTime::now();
        let ring = self.ring.load();
        if let Some(hit) = self.cache.get(&key) {
            let left = hit.expires.duration_since(now).unwrap_or_default();
            if left * 10 > lifetime && ring.keys().iter().any(|k| k.kid == hit.kid) {
                return Ok(hit);
            }
        }
        let signing = ring.active().ok_or(MintError::NoKey)?;
        let iat = unix(now);
        let lifetime = lifetime.min(MAX_ASSERTION_LIFETIME);
        let claims = Claims {
            iss: &self.issuer,
            aud: audience,
            sub: format!("{}/{}", principal.provider, principal.subject),
            provider: &principal.provider,
            email: principal.email.as_deref(),
            name: principal.name.as_deref(),
            groups: &principal.groups,
            auth_method: principal.auth_method.as_str(),
            principal_kind: principal.kind.as_str(),
            idp: &principal.issuer,
            extra,
            iat,
            nbf: iat,
            exp: iat + lifetime.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = compact_jws(&signing.header, &claims, &signing.signer)?;
        let minted = Arc::new(Minted {
            token,
            kid: signing.kid.clone(),
            issued: UNIX_EPOCH + Duration::from_secs(iat),
            expires: UNIX_EPOCH + Duration::from_secs(claims.exp),
        });
        self.cache.insert(key, minted.clone());
        self.audit.emit(
            TokenEvent {
                time: now,
                act: "assertion_minted",
                kid: signing.kid.clone(),
                retired_kid: None,
                jti: Some(claims.jti),
                route: Some(route.clone()),
                audience: Some(audience.to_string()),
                expires: Some(minted.expires),
                // Minted once per caller, route and lifetime: the copy is rare.
                principal: Some(Arc::new(principal.clone())),
                client_id: None,
                grant: None,
            }
            .into(),
        );
        Ok(minted)
    }

    /// A new active key now (`portcullis keys rotate` does the same on the directory).
    pub fn rotate_now(&self, dir: &std::path::Path) -> Result<(), KeyError> {
        let mut ring = KeyRing::open(dir)?;
        let change = ring.rotate(self.algorithm, SystemTime::now())?;
        self.ring.store(Arc::new(ring));
        self.report(&[change]);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::audit::Event;

    struct Discard;

    impl AuditSink for Discard {
        fn emit(&self, _: Event) {}
        fn flush(&self) {}
    }

    #[test]
    fn assertions_of_both_algorithms_verify_with_a_standard_library_against_the_published_jwk() {
        for algorithm in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            let config = Tokens {
                algorithm,
                ..Tokens::default()
            };
            let issuer = "https://portcullis.example.com";
            let minter = Minter::open(&config, issuer, dir.path(), Arc::new(Discard)).unwrap();
            let principal = std::sync::Arc::new(crate::identity::Principal::example());
            let audience: Arc<str> = Arc::from("https://airflow.example.com");
            let minted = minter
                .mint(
                    &principal,
                    &audience,
                    Duration::from_secs(60),
                    &Arc::new("airflow".into()),
                    &[("role".to_string(), "ADMIN".to_string())].into_iter().collect(),
                )
                .unwrap();

            let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_value(minter.jwks()).unwrap();
            let header = jsonwebtoken::decode_header(&minted.token).unwrap();
            assert_eq!(header.alg, keyring::jwt_algorithm(algorithm));
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            let jwk = keys.find(&header.kid.unwrap()).unwrap();
            let mut validation = jsonwebtoken::Validation::new(header.alg);
            validation.set_issuer(&[issuer]);
            validation.set_audience(&[&*audience]);
            let claims = jsonwebtoken::decode::<serde_json::Value>(
                &minted.token,
                &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
                &validation,
            )
            .unwrap()
            .claims;
            assert_eq!(claims["sub"], format!("{}/alice", principal.provider));
            assert_eq!(claims["provider"], principal.provider.as_str());
            assert_eq!(claims["groups"][0], "deployers");
            assert_eq!(claims["auth_method"], "session");
            assert_eq!(claims["role"], "ADMIN");
        }
    }
}
