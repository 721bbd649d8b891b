//! One issuer's signing keys: fetched through discovery before the proxy reports ready,
//! refreshed in the background, refetched on an unknown `kid` at most once per interval
//! (single-flight, with unknown kids remembered for that interval), and kept in use while the
//! issuer is unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::decision::Reason;
use crate::metrics::Metrics;
use crate::outbound::{FetchError, HttpsClient};

/// A verification key from the issuer's JWKS.
pub struct Key {
    pub kid: Option<String>,
    /// The `alg` the JWKS pins this key to, if it does.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.decoding.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

pub struct Jwks {
    issuer: String,
    jwks_uri: Option<String>,
    client: HttpsClient,
    keys: ArcSwapOption<Vec<Arc<Key>>>,
    /// Held while fetching; holds when the last fetch started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    unknown_kids: moka::sync::Cache<String, ()>,
    min_refetch: Duration,
    refresh: Duration,
    /// Where fetches are counted, under the provider's name.
    observer: std::sync::OnceLock<(Arc<Metrics>, Arc<str>)>,
}

impl Jwks {
    pub fn new(
        issuer: &str,
        jwks_uri: Option<String>,
        client: HttpsClient,
        refresh: Duration,
        min_refetch: Duration,
    ) -> Self {
        Jwks {
            issuer: issuer.to_string(),
            jwks_uri,
            client,
            keys: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(None),
            unknown_kids: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(min_refetch)
                .build(),
            min_refetch,
            refresh,
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Counts this key set's fetches in `metrics` as `provider`'s.
    pub fn observe(&self, metrics: Arc<Metrics>, provider: &str) {
        let _ = self.observer.set((metrics, Arc::from(provider)));
    }

    pub fn ready(&self) -> bool {
        self.keys.load().is_some()
    }

    /// The key for a token's `kid` and `alg`. A token without `kid` is accepted only when exactly
    /// one key fits its algorithm.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<Key>, Reason> {
        if let Some(key) = self.cached(kid, alg) {
            return Ok(key);
        }
        if let Some(kid) = kid
            && self.unknown_kids.contains_key(kid)
        {
            return Err(Reason::UnknownKey);
        }
        // Single flight: whoever holds the lock fetches; the rest find its result afterwards.
        let mut last = self.fetching.lock().await;
        if let Some(key) = self.cached(kid, alg) {
            return Ok(key);
        }
        // Even with no keys at all the rate limit holds: the background refresher retries, and a
        // request must not queue behind one slow fetch after another.
        if last.is_none_or(|at| at.elapsed() >= self.min_refetch) {
            *last = Some(Instant::now());
            if let Err(e) = self.fetch().await {
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS fetch failed; keeping the keys we have");
            }
        }
        drop(last);
        if !self.ready() {
            return Err(Reason::IdpUnavailable);
        }
        match self.cached(kid, alg) {
            Some(key) => Ok(key),
            None => {
                if let Some(kid) = kid {
                    self.unknown_kids.insert(kid.to_string(), ());
                }
                Err(Reason::UnknownKey)
            }
        }
    }

    fn cached(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        find(self.keys.load().as_deref()?, kid, alg).cloned()
    }

    /// Fetches discovery (unless the JWKS URL is configured) and the key set, and swaps it in.
    /// Fetches the keys (through discovery when no `jwks_uri` is configured) and counts it.
    pub async fn fetch(&self) -> Result<(), FetchError> {
        let fetched = self.fetch_keys().await;
        if let Some((metrics, provider)) = self.observer.get() {
            metrics.key_fetch(provider, fetched.is_ok());
        }
        fetched
    }

    async fn fetch_keys(&self) -> Result<(), FetchError> {
        let jwks_uri = match &self.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let doc = self.client.get_json(&url).await?;
                // Mix-up defence: the document must speak for exactly the issuer we trust.
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
                    return Err(FetchError::Failed {
                        url,
                        detail: "its `issuer` is not the configured issuer".into(),
                    });
                }
                doc.get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .ok_or(FetchError::Failed {
                        url,
                        detail: "no jwks_uri".into(),
                    })?
            }
        };
        let doc = self.client.get_json(&jwks_uri).await?;
        let keys = parse_keys(&doc);
        if keys.is_empty() {
            return Err(FetchError::Failed {
                url: jwks_uri,
                detail: "no usable signing key".into(),
            });
        }
        self.keys.store(Some(Arc::new(keys)));
        self.unknown_kids.invalidate_all();
        Ok(())
    }

    /// Fetches now (retrying with backoff until it succeeds), then every `refresh`, for as long
    /// as the key set is in use: a provider a configuration reload removed stops being fetched.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let keys = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let Some(this) = keys.upgrade() else { return };
                let ok = {
                    let mut last = this.fetching.lock().await;
                    *last = Some(Instant::now());
                    this.fetch().await
                };
                let wait = match ok {
                    Ok(()) => {
                        backoff = Duration::from_millis(250);
                        this.refresh
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %this.issuer, error = %e, "JWKS refresh failed; keeping the keys we have");
                        let wait = backoff;
                        backoff = (backoff * 2).min(this.refresh).min(Duration::from_secs(30));
                        wait
                    }
                };
                // Not held while waiting: a removed provider is dropped, and this loop ends.
                drop(this);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

fn find<'a>(keys: &'a [Arc<Key>], kid: Option<&str>, alg: Algorithm) -> Option<&'a Arc<Key>> {
    match kid {
        Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid) && k.fits(alg)),
        None => {
            let mut fitting = keys.iter().filter(|k| k.fits(alg));
            match (fitting.next(), fitting.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    }
}

/// Signing keys only; symmetric (`oct`) keys are never taken from a JWKS, and keys this crate
/// cannot read are skipped rather than failing the whole set.
fn parse_keys(doc: &serde_json::Value) -> Vec<Arc<Key>> {
    let Some(items) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| serde_json::from_value::<Jwk>(item.clone()).ok())
        .filter(|jwk| !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)))
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .filter_map(|jwk| {
            let decoding = DecodingKey::from_jwk(&jwk).ok()?;
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            Some(Arc::new(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                decoding,
            }))
        })
        .collect()
}
