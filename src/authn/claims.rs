//! Reading claims by configured path, with their JSON types checked.

use serde_json::{Map, Value};

/// Looks up `path` in the claims: the whole path as one key first (`cognito:groups`,
/// `kubernetes.io`), else the longest key that prefixes it followed by `.`, recursively.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut dots: Vec<usize> = path.match_indices('.').map(|(i, _)| i).collect();
    dots.reverse();
    for i in dots {
        let (head, rest) = (path.get(..i)?, path.get(i + 1..)?);
        if let Some(Value::Object(inner)) = claims.get(head)
            && let Some(v) = lookup(inner, rest)
        {
            return Some(v);
        }
    }
    None
}

/// A claim that must be a string if present. `Err` when it has another JSON type.
pub fn string(claims: &Map<String, Value>, path: &str) -> Result<Option<String>, ()> {
    match lookup(claims, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

/// Groups: an array of strings, or one string. Anything else is a malformed token.
pub fn groups(claims: &Map<String, Value>, path: &str) -> Result<Vec<String>, ()> {
    match lookup(claims, path) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(()))
            .collect(),
        Some(_) => Err(()),
    }
}

/// One base64url part of a compact JWS (header or payload) read as JSON: `None` if it is not.
pub fn jws_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_dotted_keys_are_found() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"cognito:groups":["a"],"realm_access":{"roles":["r"]},"kubernetes.io":{"namespace":"ci"}}"#,
        )
        .unwrap();
        assert_eq!(groups(&claims, "cognito:groups").unwrap(), ["a"]);
        assert_eq!(groups(&claims, "realm_access.roles").unwrap(), ["r"]);
        assert_eq!(groups(&claims, "kubernetes.io.namespace").unwrap(), ["ci"]);
        assert!(groups(&claims, "missing").unwrap().is_empty());
    }

    #[test]
    fn claims_of_the_wrong_type_are_errors() {
        let claims: Map<String, Value> = serde_json::from_str(r#"{"groups":[1,2],"email":5}"#).unwrap();
        assert!(groups(&claims, "groups").is_err());
        assert!(string(&claims, "email").is_err());
    }
}
