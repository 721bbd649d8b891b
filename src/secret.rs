//! A value that must never be printed: tokens, client secrets, keys' passwords. Shared
//! vocabulary: sessions keep tokens in it, the OTLP exporter and the token broker their
//! credentials.

use std::fmt;

/// A value that must never reach a log, a span or an error body.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A short name for a secret in logs and records that does not reveal it: the first 8 bytes
/// of its SHA-256, in hex (a session's `id_hash`, a provider session's `sid_hash`).
pub fn short_digest(value: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value);
    crate::hex::encode(digest.as_ref().get(..8).unwrap_or_default())
}

/// SHA-256 of a secret value: a cache keyed by it never holds the value itself (a bearer
/// token's verification, a caller's exchanged token).
pub fn fingerprint(value: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
