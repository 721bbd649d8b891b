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
//!
//! Several replicas publish one key set ([`shared`]): each keeps its private keys to itself,
//! publishes its public keys in the shared store, and serves the union of every live replica's
//! keys, less any key revoked on any of them.

pub mod broker;
pub mod keyring;
pub mod shared;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::audit::{AuditSink, TokenEvent};
use crate::config::{MAX_ASSERTION_LIFETIME, SigningAlgorithm, Tokens};
use crate::identity::Principal;
pub use keyring::{Change, KeyError, KeyRing, Schedule};

/// Clock skew the verifiers of our assertions may allow: retired keys are kept this much longer.
const LEEWAY: Duration = Duration::from_secs(60);

impl Schedule {
    /// The ring's schedule under `[tokens]`: a retired key is kept until every assertion it
    /// signed has expired, plus the verifiers' leeway.
    pub fn of(config: &Tokens) -> Schedule {
        Schedule {
            rotate_every: config.rotate_every,
            publish_ahead: config.publish_ahead,
            keep: MAX_ASSERTION_LIFETIME + LEEWAY,
        }
    }
}

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

/// What the other replicas publish, as last read from the shared store.
#[derive(Debug, Default)]
struct Others {
    /// Their public JWKs, each with a `kid` (this replica's own come from its ring).
    keys: Vec<serde_json::Value>,
    /// Key ids revoked on any replica: published by none, and signed with by none.
    revoked: HashSet<String>,
}

fn jwk_kid(jwk: &serde_json::Value) -> &str {
    jwk.get("kid")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
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
    /// The other replicas' keys and the revoked ids (empty with a single process).
    others: ArcSwap<Others>,
    /// Woken when the ring changed, so that the key set is published again at once.
    changed: tokio::sync::Notify,
    /// Woken when another replica announced one of this ring's keys revoked, so that the ring
    /// withdraws it at once rather than at its next scheduled check.
    withdraw: tokio::sync::Notify,
    /// Keys revoked here, still to be announced to the other replicas.
    announce: Mutex<Vec<String>>,
    /// The shared key set's last exchange with Redis, for `/readyz` (none with a single process).
    sharing: Mutex<Option<Sharing>>,
}

/// How the last exchange of the shared key set went.
#[derive(Debug, Clone, Copy)]
struct Sharing {
    at: std::time::Instant,
    ok: bool,
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
        let schedule = Schedule::of(config);
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
            others: ArcSwap::default(),
            changed: tokio::sync::Notify::new(),
            withdraw: tokio::sync::Notify::new(),
            announce: Mutex::default(),
            sharing: Mutex::default(),
        };
        minter.report(&changes);
        Ok(minter)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWK Set to publish: this replica's keys and every other live replica's, less the
    /// revoked ones, each key once.
    pub fn jwks(&self) -> serde_json::Value {
        let ring = self.ring.load();
        let others = self.others.load();
        let mut seen = HashSet::new();
        let keys: Vec<&serde_json::Value> = ring
            .keys()
            .iter()
            .map(|k| &k.jwk)
            .chain(others.keys.iter())
            .filter(|jwk| {
                let kid = jwk_kid(jwk);
                !others.revoked.contains(kid) && seen.insert(kid)
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// This replica's own public keys, as it publishes them for the others.
    pub fn own_jwks(&self) -> Vec<serde_json::Value> {
        let others = self.others.load();
        self.ring
            .load()
            .keys()
            .iter()
            .filter(|k| !others.revoked.contains(&k.kid))
            .map(|k| k.jwk.clone())
            .collect()
    }

    /// The other replicas' public keys and the key ids revoked anywhere, as just read from the
    /// shared store. A key without a `kid` is left out (nothing could select it).
    pub fn set_others(&self, keys: Vec<serde_json::Value>, revoked: HashSet<String>) {
        // Public keys only: a private member (`d`) is never passed on, whoever wrote it.
        let keys = keys
            .into_iter()
            .filter(|k| !jwk_kid(k).is_empty() && k.get("d").is_none())
            .collect();
        let own_revoked = self.ring.load().keys().iter().any(|k| revoked.contains(&k.kid));
        self.others.store(Arc::new(Others { keys, revoked }));
        if own_revoked {
            self.withdraw.notify_one();
        }
    }

    /// Whether `kid` was announced revoked (by any replica).
    fn revoked_elsewhere(&self, kid: &str) -> bool {
        let others = self.others.load();
        !others.revoked.is_empty() && others.revoked.contains(kid)
    }

    /// Resolves when another replica announced one of this ring's keys revoked.
    pub async fn withdraw_requested(&self) {
        self.withdraw.notified().await;
    }

    /// Records how the shared key set's exchange with Redis just went.
    pub fn shared(&self, ok: bool) {
        let now = Sharing {
            at: std::time::Instant::now(),
            ok,
        };
        *self
            .sharing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(now);
    }

    /// One line for `/readyz` on the shared key set, when there is one.
    pub fn sharing_state(&self) -> Option<String> {
        let last = (*self
            .sharing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))?;
        let others = self.others.load().keys.len();
        let ago = last.at.elapsed().as_secs_f32();
        Some(if last.ok {
            format!(
                "signing keys: shared through the session store; {others} public keys of other replicas read {ago:.1}s ago"
            )
        } else {
            format!(
                "signing keys: the session store is unreachable ({ago:.1}s ago): serving this replica's keys and the {others} others' as last read"
            )
        })
    }

    /// Resolves when the ring changed since the last call (a rotation, a removal, a revocation).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The keys revoked here since the last call, to announce to the other replicas.
    pub fn take_announcements(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .announce
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Announcements that could not be made, to be tried again.
    pub fn return_announcements(&self, kids: Vec<String>) {
        self.announce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(kids);
    }

    /// How long a revocation must be remembered ([`Schedule::remembered`]).
    pub fn revocation_lifetime(&self) -> Duration {
        self.schedule.remembered()
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
        // Keys another replica announced revoked (the directory was restored from a backup,
        // or the announcement came first): withdrawn here too.
        let mut withdrawn = Vec::new();
        let announced: Vec<String> = {
            let others = self.others.load();
            ring.keys()
                .iter()
                .filter(|k| others.revoked.contains(&k.kid))
                .map(|k| k.kid.clone())
                .collect()
        };
        for kid in announced {
            match ring.revoke(&kid, self.algorithm, now) {
                Ok(changes) => withdrawn.extend(changes),
                Err(e) => {
                    tracing::error!(%kid, error = %e, "a key revoked on another replica could not be withdrawn here")
                }
            }
        }
        match ring.maintain(self.algorithm, self.schedule, now) {
            Ok(mut changes) => {
                changes.splice(0..0, withdrawn);
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
        if !changes.is_empty() {
            self.changed.notify_one();
        }
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
                    self.return_announcements(vec![kid.clone()]);
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
            // Not with a key revoked anywhere: no replica's JWKS serves it any more.
            if left * 10 > lifetime
                && ring.keys().iter().any(|k| k.kid == hit.kid)
                && !self.revoked_elsewhere(&hit.kid)
            {
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
    use crate::audit::Discard;

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

    fn minter(dir: &std::path::Path) -> Minter {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Minter::open(&Tokens::default(), "https://p.example", dir, Arc::new(Discard)).unwrap()
    }

    fn kids(jwks: &serde_json::Value) -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_jwks_serves_the_other_replicas_public_keys_once_each_and_none_revoked_anywhere() {
        let (here, there) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mine, theirs) = (minter(here.path()), minter(there.path()));
        let own = kids(&mine.jwks());
        let other = theirs.own_jwks();
        assert_eq!(own.len(), 1);

        // Another replica's key, sent twice (two entries of a restarted replica), a key without
        // an id, and one with its private half: only the first is served, once.
        let mut private = other[0].clone();
        private["kid"] = "leaked".into();
        private["d"] = "secret".into();
        let keys = vec![
            other[0].clone(),
            other[0].clone(),
            serde_json::json!({"kty": "EC"}),
            private,
        ];
        mine.set_others(keys.clone(), HashSet::new());
        let both = kids(&mine.jwks());
        assert_eq!(both, [own[0].clone(), kids(&theirs.jwks())[0].clone()]);
        assert_eq!(kids(&serde_json::json!({ "keys": mine.own_jwks() })), own);

        // Revoked anywhere: served by no replica, this one's own key included.
        let revoked: HashSet<String> = both.iter().cloned().collect();
        mine.set_others(keys, revoked);
        assert!(kids(&mine.jwks()).is_empty());
        assert!(mine.own_jwks().is_empty());
    }

    #[test]
    fn a_key_announced_revoked_by_another_replica_is_withdrawn_from_this_ring_and_announced_again() {
        let dir = tempfile::tempdir().unwrap();
        let mine = minter(dir.path());
        let active = kids(&mine.jwks()).remove(0);
        mine.set_others(Vec::new(), [active.clone()].into_iter().collect());
        mine.maintain(dir.path());
        let now = kids(&mine.jwks());
        assert_eq!(now.len(), 1);
        assert_ne!(now[0], active, "a new key signs");
        assert!(!dir.path().join(format!("{active}.json")).exists());
        assert_eq!(mine.take_announcements(), [active]);
        assert!(mine.take_announcements().is_empty());
    }
}
