//! Session values sealed for a shared store: AES-256-GCM (aws-lc-rs) with a random 96-bit
//! nonce per write, and the name the value is kept under as associated data, so a value copied
//! to another session id (or sign-in state) does not open. Sessions hold refresh tokens; whoever
//! can read the store must learn nothing from it.
//!
//! A sealed value is `version (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`. The previous key opens
//! values too, so the key can be rotated without signing anyone out: what the previous key
//! sealed is sealed again with the current key the next time it is written.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
#[cfg(test)]
use base64::Engine as _;

const VERSION: u8 = 1;

/// Seals with the current key; opens with the current or the previous one.
pub struct Sealer {
    current: LessSafeKey,
    previous: Option<LessSafeKey>,
}

#[derive(Debug, thiserror::Error)]
#[error("sealing failed")]
pub struct SealError;

impl Sealer {
    pub fn new(current: &[u8; 32], previous: Option<&[u8; 32]>) -> Result<Sealer, SealError> {
        let key = |bytes: &[u8; 32]| {
            UnboundKey::new(&AES_256_GCM, bytes)
                .map(LessSafeKey::new)
                .map_err(|_| SealError)
        };
        Ok(Sealer {
            current: key(current)?,
            previous: previous.map(key).transpose()?,
        })
    }

    /// `plain` sealed for the name `aad`, under a fresh random nonce.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.current
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| SealError)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plain value, when `sealed` was sealed for `aad` by the current or previous key and
    /// not changed since; `None` otherwise.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find_map(|key| {
                let mut body = body.to_vec();
                let plain = key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
                    .ok()?;
                Some(plain.to_vec())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];

    #[test]
    fn a_sealed_value_opens_only_under_its_own_name_and_unchanged() {
        let sealer = Sealer::new(&K1, None).unwrap();
        let sealed = sealer.seal(b"session/a", b"refresh-token").unwrap();
        assert_eq!(
            sealer.open(b"session/a", &sealed).as_deref(),
            Some(&b"refresh-token"[..])
        );
        assert!(
            sealer.open(b"session/b", &sealed).is_none(),
            "moved to another name"
        );
        assert!(
            !sealed.windows(13).any(|w| w == b"refresh-token"),
            "the value is in clear text"
        );
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x40;
            assert!(sealer.open(b"session/a", &tampered).is_none(), "byte {i} changed");
        }
        assert!(sealer.open(b"session/a", &sealed[..sealed.len() - 1]).is_none());
        assert!(sealer.open(b"session/a", b"").is_none());
        assert_ne!(
            sealer.seal(b"session/a", b"x").unwrap(),
            sealer.seal(b"session/a", b"x").unwrap(),
            "every write takes a new nonce"
        );
    }

    #[test]
    fn after_a_rotation_the_previous_key_still_opens_and_only_the_new_one_seals() {
        let before = Sealer::new(&K1, None).unwrap();
        let old = before.seal(b"n", b"v").unwrap();
        let after = Sealer::new(&K2, Some(&K1)).unwrap();
        assert_eq!(after.open(b"n", &old).as_deref(), Some(&b"v"[..]));
        let new = after.seal(b"n", b"v").unwrap();
        assert!(before.open(b"n", &new).is_none(), "sealed with the previous key");
        let forgotten = Sealer::new(&K2, None).unwrap();
        assert!(forgotten.open(b"n", &old).is_none());
    }

    use crate::config::parse_key;

    #[test]
    fn keys_are_read_from_hex_or_base64_of_exactly_32_bytes() {
        let hex = "01".repeat(32);
        assert_eq!(parse_key(&hex), Ok(K1));
        assert_eq!(parse_key(&format!(" {hex}\n")), Ok(K1));
        let b64 = base64::engine::general_purpose::STANDARD.encode(K1);
        assert_eq!(parse_key(&b64), Ok(K1));
        assert_eq!(parse_key(b64.trim_end_matches('=')), Ok(K1));
        for bad in ["", "01", &"01".repeat(31), &"zz".repeat(32), "not a key at all"] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert!(parse_key(&short).is_err());
    }
}
