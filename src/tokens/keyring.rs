//! The signing key ring: one active key, the next key published ahead of signing (so verifiers
//! that fetch keys seldom know it before it signs), and retired keys kept (and published) until
//! every assertion they signed has expired. Persisted one file per key in a directory only the
//! proxy's user may read, so a restart keeps the ring and `portcullis keys rotate` can act on a
//! running proxy (which reloads the directory).
//!
//! Untrusted input: the key files (an operator or a disk fault may damage them); a file that
//! does not parse is an error naming it, never a panic.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::config::SigningAlgorithm;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{dir} has mode {mode:04o}: group or others may read the signing keys (fix: chmod 700 {dir}, and 600 for its files)"
    )]
    TooOpen { dir: String, mode: u32 },
    #[error("{path}: {detail}")]
    Damaged { path: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("generating a key: {0}")]
    Generate(String),
    #[error("no key {0} in the ring (see portcullis keys list)")]
    Unknown(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A key as stored: the private half as PKCS#8, times as Unix seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    kid: String,
    alg: String,
    created: u64,
    /// When it starts signing; absent: when it was created.
    #[serde(default)]
    activates: Option<u64>,
    retired: Option<u64>,
    pkcs8: String,
}

/// A private key, parsed once. jsonwebtoken's `encode` parses the PKCS#8 document (and checks
/// its public half) on every call: 12.6 µs of a 43 µs mint here (`cargo bench --bench tokens`).
pub enum Signer {
    Es256(signature::EcdsaKeyPair),
    EdDsa(signature::Ed25519KeyPair),
}

impl Signer {
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
        match self {
            Signer::Es256(pair) => pair
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec()),
            Signer::EdDsa(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

/// One signing key.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    pub algorithm: Algorithm,
    pub created: SystemTime,
    /// When it starts (or started) signing.
    pub activates: SystemTime,
    /// Published ahead, not signing yet (as of when the ring was read).
    pub pending: bool,
    pub retired: Option<SystemTime>,
    pub signer: Arc<Signer>,
    /// The JWS protected header of the tokens this key signs, base64url-encoded once.
    pub header: Arc<str>,
    /// The public JWK.
    pub jwk: serde_json::Value,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created", &self.created)
            .field("activates", &self.activates)
            .field("pending", &self.pending)
            .field("retired", &self.retired)
            .finish_non_exhaustive()
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

impl Key {
    fn from_stored(stored: &Stored, path: &Path, now: SystemTime) -> Result<Key, KeyError> {
        let damaged = |detail: &str| KeyError::Damaged {
            path: path.display().to_string(),
            detail: detail.to_string(),
        };
        let der = STANDARD
            .decode(&stored.pkcs8)
            .map_err(|_| damaged("pkcs8 is not base64"))?;
        let (algorithm, signer, jwk) = match stored.alg.as_str() {
            "ES256" => {
                let pair =
                    signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                        .map_err(|_| damaged("not a P-256 PKCS#8 key"))?;
                // The public key is the uncompressed point 04 ‖ X ‖ Y.
                let point = pair.public_key().as_ref();
                let (x, y) = (point.get(1..33), point.get(33..65));
                let (Some(x), Some(y)) = (x, y) else {
                    return Err(damaged("unexpected public key length"));
                };
                let jwk = serde_json::json!({
                    "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": stored.kid,
                    "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
                });
                (Algorithm::ES256, Signer::Es256(pair), jwk)
            }
            "EdDSA" => {
                let pair = signature::Ed25519KeyPair::from_pkcs8(&der)
                    .map_err(|_| damaged("not an Ed25519 PKCS#8 key"))?;
                let jwk = serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": stored.kid,
                    "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                });
                (Algorithm::EdDSA, Signer::EdDsa(pair), jwk)
            }
            other => return Err(damaged(&format!("unknown algorithm {other:?}"))),
        };
        let header = serde_json::json!({"alg": stored.alg, "kid": stored.kid, "typ": "JWT"});
        let activates = at(stored.activates.unwrap_or(stored.created));
        Ok(Key {
            kid: stored.kid.clone(),
            algorithm,
            created: at(stored.created),
            activates,
            pending: stored.retired.is_none() && now < activates,
            retired: stored.retired.map(at),
            signer: Arc::new(signer),
            header: Arc::from(URL_SAFE_NO_PAD.encode(header.to_string())),
            jwk,
        })
    }
}

fn generate(algorithm: SigningAlgorithm, now: SystemTime, activates: SystemTime) -> Result<Stored, KeyError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let (der, public) = match algorithm {
        SigningAlgorithm::Es256 => {
            let doc =
                signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|e| KeyError::Generate(e.to_string()))?;
            let pair = signature::EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                doc.as_ref(),
            )
            .map_err(|e| KeyError::Generate(e.to_string()))?;
            (doc.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
        }
        SigningAlgorithm::EdDsa => {
            let doc = signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|e| KeyError::Generate(e.to_string()))?;
            let pair = signature::Ed25519KeyPair::from_pkcs8(doc.as_ref())
                .map_err(|e| KeyError::Generate(e.to_string()))?;
            (doc.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
        }
    };
    // The kid names the public key (a thumbprint of it), never anything secret.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public);
    let kid = URL_SAFE_NO_PAD.encode(digest.as_ref().get(..16).unwrap_or_default());
    Ok(Stored {
        kid,
        alg: algorithm.as_str().into(),
        created: secs(now),
        activates: Some(secs(activates)),
        retired: None,
        pkcs8: STANDARD.encode(der),
    })
}

/// What a change to the ring did, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Rotated {
        active: String,
        retired: Option<String>,
    },
    Removed {
        kid: String,
    },
    /// Withdrawn before its time (`portcullis keys revoke`): assertions it signed stop verifying.
    Revoked {
        kid: String,
    },
}

/// The keys in a directory.
#[derive(Debug, Clone)]
pub struct KeyRing {
    dir: PathBuf,
    /// Newest first; the first unretired one not pending signs.
    keys: Vec<Key>,
}

/// When keys change: `rotate_every` after the active key began signing a new one takes over,
/// published `publish_ahead` earlier (at most half of `rotate_every`); a retired key is removed
/// `keep` after it retired (when every assertion it signed has expired).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub rotate_every: Duration,
    pub publish_ahead: Duration,
    pub keep: Duration,
}

impl Schedule {
    /// How long a revocation must be remembered: as long as the key could still be in a ring
    /// (signing for `rotate_every`, published ahead before, kept after it retired).
    pub fn remembered(&self) -> Duration {
        self.rotate_every + self.publish_ahead + self.keep
    }

    fn lead(&self) -> Duration {
        self.publish_ahead.min(self.rotate_every / 2)
    }
}

impl KeyRing {
    /// Opens `dir` (creating it with mode 0700), refusing it if group or others may read it.
    pub fn open(dir: &Path) -> Result<KeyRing, KeyError> {
        Self::open_at(dir, SystemTime::now())
    }

    /// [`open`](Self::open), judging which keys are still pending as of `now`.
    pub fn open_at(dir: &Path, now: SystemTime) -> Result<KeyRing, KeyError> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_at(dir))?;
        }
        let mode = fs::metadata(dir).map_err(io_at(dir))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                dir: dir.display().to_string(),
                mode,
            });
        }
        let mut keys = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_at(dir))? {
            let path = entry.map_err(io_at(dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let file_mode = fs::metadata(&path).map_err(io_at(&path))?.permissions().mode() & 0o777;
            if file_mode & 0o077 != 0 {
                return Err(KeyError::TooOpen {
                    dir: path.display().to_string(),
                    mode: file_mode,
                });
            }
            let text = fs::read_to_string(&path).map_err(io_at(&path))?;
            let stored: Stored = serde_json::from_str(&text).map_err(|e| KeyError::Damaged {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
            keys.push(Key::from_stored(&stored, &path, now)?);
        }
        keys.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.kid.cmp(&a.kid)));
        Ok(KeyRing {
            dir: dir.to_path_buf(),
            keys,
        })
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key that signs.
    pub fn active(&self) -> Option<&Key> {
        self.keys.iter().find(|k| k.retired.is_none() && !k.pending)
    }

    /// The key published ahead that signs next.
    pub fn pending(&self) -> Option<&Key> {
        self.keys.iter().find(|k| k.pending)
    }

    fn write(&self, stored: &Stored) -> Result<(), KeyError> {
        let path = self.dir.join(format!("{}.json", stored.kid));
        let tmp = self.dir.join(format!(".{}.tmp", stored.kid));
        let text = serde_json::to_string_pretty(stored).map_err(|e| KeyError::Generate(e.to_string()))?;
        {
            use std::io::Write as _;
            let mut file = fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_at(&tmp))?;
            file.write_all(text.as_bytes()).map_err(io_at(&tmp))?;
            file.sync_all().map_err(io_at(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_at(&path))
    }

    fn stored(key: &Key, path: &Path) -> Result<Stored, KeyError> {
        let text = fs::read_to_string(path).map_err(io_at(path))?;
        let mut stored: Stored = serde_json::from_str(&text).map_err(|e| KeyError::Damaged {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        stored.retired = key.retired.map(secs);
        Ok(stored)
    }

    /// A new active key at once; every other unretired key (the active one, one pending)
    /// retires now. The new key is written first, so a crash between the writes leaves two
    /// unretired keys, and the newer signs. Not published ahead: for a key that must go now, or
    /// an algorithm change.
    pub fn rotate(&mut self, algorithm: SigningAlgorithm, now: SystemTime) -> Result<Change, KeyError> {
        let stored = generate(algorithm, now, now)?;
        self.write(&stored)?;
        let previous = self.active().map(|k| k.kid.clone());
        self.retire_all(now)?;
        let path = self.dir.join(format!("{}.json", stored.kid));
        self.keys.insert(0, Key::from_stored(&stored, &path, now)?);
        Ok(Change::Rotated {
            active: stored.kid,
            retired: previous,
        })
    }

    /// Retires every unretired key but `except`, on disk and in the ring.
    fn retire_all_but(&mut self, except: Option<&str>, now: SystemTime) -> Result<(), KeyError> {
        for key in self.keys.iter_mut() {
            if key.retired.is_none() && Some(key.kid.as_str()) != except {
                key.retired = Some(now);
                key.pending = false;
            }
        }
        for key in self.keys.iter().filter(|k| k.retired == Some(now)) {
            let path = self.dir.join(format!("{}.json", key.kid));
            let updated = Self::stored(key, &path)?;
            self.write(&updated)?;
        }
        Ok(())
    }

    fn retire_all(&mut self, now: SystemTime) -> Result<(), KeyError> {
        self.retire_all_but(None, now)
    }

    /// Publishes the next key, to sign from `activates`.
    fn publish_next(
        &mut self,
        algorithm: SigningAlgorithm,
        now: SystemTime,
        activates: SystemTime,
    ) -> Result<(), KeyError> {
        let stored = generate(algorithm, now, activates)?;
        self.write(&stored)?;
        let path = self.dir.join(format!("{}.json", stored.kid));
        self.keys.insert(0, Key::from_stored(&stored, &path, now)?);
        Ok(())
    }

    /// The pending key whose time has come starts signing; the one before retires.
    fn activate_due(&mut self, now: SystemTime) -> Result<Option<Change>, KeyError> {
        let Some(next) = self
            .keys
            .iter()
            .find(|k| k.pending && k.activates <= now)
            .map(|k| k.kid.clone())
        else {
            return Ok(None);
        };
        let previous = self.active().map(|k| k.kid.clone());
        self.retire_all_but(Some(&next), now)?;
        for key in self.keys.iter_mut().filter(|k| k.kid == next) {
            key.pending = false;
        }
        Ok(Some(Change::Rotated {
            active: next,
            retired: previous,
        }))
    }

    /// Keeps the ring on its [`Schedule`]: the next key published ahead, then signing in its
    /// turn; a key at once when there is none or the algorithm changed (or the next key's time
    /// passed unseen); retired keys removed once every assertion they signed has expired.
    pub fn maintain(
        &mut self,
        algorithm: SigningAlgorithm,
        schedule: Schedule,
        now: SystemTime,
    ) -> Result<Vec<Change>, KeyError> {
        let mut changes = Vec::new();
        changes.extend(self.activate_due(now)?);
        let wanted = jwt_algorithm(algorithm);
        match self.active() {
            Some(k) if k.algorithm == wanted && now < k.activates + schedule.rotate_every => {
                let next_at = k.activates + schedule.rotate_every;
                let pending_ok = self.pending().is_some_and(|p| p.algorithm == wanted);
                if !pending_ok && now + schedule.lead() >= next_at {
                    self.publish_next(algorithm, now, next_at)?;
                }
            }
            _ => changes.push(self.rotate(algorithm, now)?),
        }
        let keep = schedule.keep;
        let expired: Vec<String> = self
            .keys
            .iter()
            .filter(|k| k.retired.is_some_and(|r| r + keep <= now))
            .map(|k| k.kid.clone())
            .collect();
        for kid in expired {
            self.forget(&kid)?;
            changes.push(Change::Removed { kid });
        }
        Ok(changes)
    }

    /// Withdraws a key now, for a key that may have leaked: if it is the active one a new key
    /// takes over first; then it leaves the directory and the JWKS, so upstreams stop accepting
    /// what it signed once they refetch the keys.
    pub fn revoke(
        &mut self,
        kid: &str,
        algorithm: SigningAlgorithm,
        now: SystemTime,
    ) -> Result<Vec<Change>, KeyError> {
        if !self.keys.iter().any(|k| k.kid == kid) {
            return Err(KeyError::Unknown(kid.to_string()));
        }
        let mut changes = Vec::new();
        if self.active().is_some_and(|k| k.kid == kid) {
            changes.push(self.rotate(algorithm, now)?);
        }
        self.forget(kid)?;
        changes.push(Change::Revoked { kid: kid.to_string() });
        Ok(changes)
    }

    /// Deletes a key's file (one already gone is fine) and drops it from the ring.
    fn forget(&mut self, kid: &str) -> Result<(), KeyError> {
        let path = self.dir.join(format!("{kid}.json"));
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_at(&path)(e)),
            _ => {}
        }
        self.keys.retain(|k| k.kid != kid);
        Ok(())
    }

    /// The JWK Set upstreams verify against: the active key and every retired key still kept.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<&serde_json::Value> = self.keys.iter().map(|k| &k.jwk).collect();
        serde_json::json!({ "keys": keys })
    }
}

pub fn jwt_algorithm(algorithm: SigningAlgorithm) -> Algorithm {
    match algorithm {
        SigningAlgorithm::Es256 => Algorithm::ES256,
        SigningAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn a_rotated_ring_signs_with_the_new_key_and_keeps_publishing_the_old_until_it_expires() {
        let dir = private_dir();
        let t0 = SystemTime::now();
        let mut ring = KeyRing::open(dir.path()).unwrap();
        // Rotate every 100 s, nothing published ahead, keep retired keys 10 s.
        let schedule = Schedule {
            rotate_every: Duration::from_secs(100),
            publish_ahead: Duration::ZERO,
            keep: Duration::from_secs(10),
        };
        let step = |ring: &mut KeyRing, at| ring.maintain(SigningAlgorithm::Es256, schedule, at).unwrap();
        let changes = step(&mut ring, t0);
        assert!(matches!(&changes[..], [Change::Rotated { retired: None, .. }]));
        let first = ring.active().unwrap().kid.clone();

        let t1 = t0 + Duration::from_secs(100);
        step(&mut ring, t1);
        let second = ring.active().unwrap().kid.clone();
        assert_ne!(first, second);
        let published: Vec<&str> = ring.keys().iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(published, [second.as_str(), first.as_str()]);

        // A restart reads the same ring back.
        let reopened = KeyRing::open_at(dir.path(), t1).unwrap();
        assert_eq!(reopened.active().unwrap().kid, second);
        assert_eq!(reopened.keys().len(), 2);

        let changes = step(&mut ring, t1 + Duration::from_secs(10));
        assert_eq!(changes, [Change::Removed { kid: first }]);
        assert_eq!(ring.keys().len(), 1);
        assert_eq!(KeyRing::open(dir.path()).unwrap().keys().len(), 1);
    }

    #[test]
    fn the_next_key_is_published_ahead_and_signs_in_its_turn_on_this_ring_and_after_a_restart() {
        let dir = private_dir();
        let t0 = SystemTime::now();
        let schedule = Schedule {
            rotate_every: Duration::from_secs(100),
            publish_ahead: Duration::from_secs(30),
            keep: Duration::from_secs(10),
        };
        let mut ring = KeyRing::open_at(dir.path(), t0).unwrap();
        let step = |ring: &mut KeyRing, at| ring.maintain(SigningAlgorithm::Es256, schedule, at).unwrap();
        step(&mut ring, t0);
        let first = ring.active().unwrap().kid.clone();
        assert!(ring.pending().is_none());

        // 30 s before its turn the next key is published, and does not sign yet.
        assert!(step(&mut ring, t0 + Duration::from_secs(69)).is_empty());
        assert!(ring.pending().is_none());
        assert!(step(&mut ring, t0 + Duration::from_secs(70)).is_empty());
        let next = ring.pending().unwrap().kid.clone();
        assert_eq!(ring.active().unwrap().kid, first);
        let published: Vec<&str> = ring.keys().iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(published, [next.as_str(), first.as_str()]);
        // A restart meanwhile reads it back as pending.
        let reopened = KeyRing::open_at(dir.path(), t0 + Duration::from_secs(80)).unwrap();
        assert_eq!(reopened.active().unwrap().kid, first);
        assert_eq!(reopened.pending().unwrap().kid, next);
        // Its turn: it signs, the first retires; no second key is published meanwhile.
        let mut ring = reopened;
        assert!(step(&mut ring, t0 + Duration::from_secs(99)).is_empty());
        let changes = step(&mut ring, t0 + Duration::from_secs(100));
        assert_eq!(
            changes,
            [Change::Rotated {
                active: next.clone(),
                retired: Some(first.clone())
            }]
        );
        assert_eq!(ring.active().unwrap().kid, next);
        assert!(ring.pending().is_none());
        let reopened = KeyRing::open_at(dir.path(), t0 + Duration::from_secs(101)).unwrap();
        assert_eq!(reopened.active().unwrap().kid, next);

        // At most half the rotation period ahead.
        let short = Schedule {
            publish_ahead: Duration::from_secs(3600),
            ..schedule
        };
        ring.maintain(SigningAlgorithm::Es256, short, t0 + Duration::from_secs(149))
            .unwrap();
        assert!(ring.pending().is_none());
        ring.maintain(SigningAlgorithm::Es256, short, t0 + Duration::from_secs(150))
            .unwrap();
        assert!(ring.pending().is_some());
    }

    #[test]
    fn a_revoked_key_leaves_the_ring_and_the_disk_and_an_active_one_is_replaced_first() {
        let dir = private_dir();
        let now = SystemTime::now();
        let mut ring = KeyRing::open(dir.path()).unwrap();
        ring.rotate(SigningAlgorithm::Es256, now).unwrap();
        let retired = ring.active().unwrap().kid.clone();
        ring.rotate(SigningAlgorithm::Es256, now).unwrap();
        let active = ring.active().unwrap().kid.clone();

        // A retired key just goes.
        let changes = ring.revoke(&retired, SigningAlgorithm::Es256, now).unwrap();
        assert_eq!(changes, [Change::Revoked { kid: retired.clone() }]);
        assert_eq!(ring.active().unwrap().kid, active);

        // The active key: a new one signs first, then it goes.
        let changes = ring.revoke(&active, SigningAlgorithm::Es256, now).unwrap();
        assert!(
            matches!(&changes[..], [Change::Rotated { retired: Some(r), .. }, Change::Revoked { kid }] if *r == active && *kid == active)
        );
        let reopened = KeyRing::open(dir.path()).unwrap();
        assert_eq!(reopened.keys().len(), 1);
        assert!(
            reopened
                .keys()
                .iter()
                .all(|k| k.kid != active && k.kid != retired)
        );
        assert!(matches!(
            ring.revoke(&active, SigningAlgorithm::Es256, now),
            Err(KeyError::Unknown(_))
        ));
    }

    #[test]
    fn a_key_directory_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let e = KeyRing::open(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("0755") && e.to_string().contains("chmod 700"),
            "{e}"
        );
    }

    #[test]
    fn key_files_are_written_for_the_owner_only_and_eddsa_keys_publish_okp_jwks() {
        let dir = private_dir();
        let mut ring = KeyRing::open(dir.path()).unwrap();
        ring.rotate(SigningAlgorithm::EdDsa, SystemTime::now()).unwrap();
        let kid = ring.active().unwrap().kid.clone();
        let mode = fs::metadata(dir.path().join(format!("{kid}.json")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ring.jwks()["keys"][0]["kty"], "OKP");
        assert!(
            ring.jwks().to_string().find("pkcs8").is_none(),
            "a private key is published"
        );
    }
}
