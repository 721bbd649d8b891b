//! Strict JSON: a document in which some object names a member twice is read differently by
//! different parsers (serde_json and Python keep the last, others the first), so anything
//! Portcullis decides on (a token's claims, a request body naming the objects it changes) must
//! name each member once.
//!
//! Untrusted input: the bytes.

/// Why a document is not strict JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    NotJson,
    /// An object names a member twice, at some depth.
    Duplicate,
}

/// Whether `bytes` is one JSON value whose objects never repeat a member name (also when the
/// two spellings differ only in escapes: `"sub"` and `"s\u0075b"`).
pub fn unique_members(bytes: &[u8]) -> Result<(), Strictness> {
    match serde_json::from_slice::<Unique>(bytes) {
        Ok(Unique) => Ok(()),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(Strictness::Duplicate),
        Err(_) => Err(Strictness::NotJson),
    }
}

const DUPLICATE: &str = "duplicate member";

/// Any JSON value whose objects never repeat a member name (checked, then thrown away).
pub struct Unique;

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom(DUPLICATE));
            }
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
}
