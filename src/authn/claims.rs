//! Reading claims by configured path, with their JSON types checked.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::BoundValue;
use crate::config::claims::{ClaimTemplate, Part};

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

/// Why a part of a compact JWS could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartError {
    /// Not base64url, not JSON, or not of the expected shape.
    NotJson,
    /// A JSON object names one member twice: parsers disagree on which one counts (RFC 7515
    /// §5.2 and RFC 8725 §3.8 say to refuse it), so a token carrying one is refused.
    Duplicate,
}

/// One base64url part of a compact JWS (header or payload) read as JSON, refused when any object
/// in it, at any depth, names a member twice.
pub fn jws_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, PartError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| PartError::NotJson)?;
    match crate::json::unique_members(&bytes) {
        Ok(()) => {}
        Err(crate::json::Strictness::Duplicate) => return Err(PartError::Duplicate),
        Err(crate::json::Strictness::NotJson) => return Err(PartError::NotJson),
    }
    serde_json::from_slice(&bytes).map_err(|_| PartError::NotJson)
}

/// A claim as text for a subject or group: strings as they are (empty counts as absent),
/// integers in decimal, booleans as `true`/`false`. `Err` for any other JSON type.
fn text_value(value: Option<&Value>) -> Result<Option<String>, ()> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(()),
    }
}

/// The text a claim template makes of these claims: `Ok(None)` when a claim it needs is absent
/// (for every alternative), `Err` when one has a type no identifier has.
pub fn render(template: &ClaimTemplate, claims: &Map<String, Value>) -> Result<Option<String>, ()> {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            Part::Literal(text) => out.push_str(text),
            Part::Claim(paths) => {
                let mut found = None;
                for path in paths {
                    if let Some(v) = text_value(lookup(claims, path))? {
                        found = Some(v);
                        break;
                    }
                }
                let Some(value) = found else { return Ok(None) };
                out.push_str(&value);
            }
        }
    }
    Ok(Some(out))
}

/// Whether the token says its email address was verified: `email_verified` is `true` (or the
/// string `"true"`, as some providers send it).
pub fn email_verified(claims: &Map<String, Value>) -> bool {
    match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The first claim of `bound` the token does not satisfy (absent, of another type, or a value
/// none of the accepted ones matches), or `None` when every one holds.
pub fn unbound<'b>(claims: &Map<String, Value>, bound: &'b BTreeMap<String, BoundValue>) -> Option<&'b str> {
    bound
        .iter()
        .find(|(path, accepted)| {
            let value = match lookup(claims, path) {
                Some(Value::Array(items)) => {
                    // A list claim is bound when one of its items is accepted.
                    return !items.iter().any(|item| {
                        text_value(Some(item))
                            .ok()
                            .flatten()
                            .is_some_and(|v| accepted.values().iter().any(|a| glob(a, &v)))
                    });
                }
                other => text_value(other).ok().flatten(),
            };
            !value.is_some_and(|v| accepted.values().iter().any(|a| glob(a, &v)))
        })
        .map(|(path, _)| path.as_str())
}

/// `*` matches any run of characters (none included); everything else matches itself.
pub fn glob(pattern: &str, value: &str) -> bool {
    let mut pieces = pattern.split('*');
    let Some(first) = pieces.next() else {
        return value.is_empty();
    };
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = rest.get(i + piece.len()..).unwrap_or_default(),
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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
    fn a_json_object_that_names_a_member_twice_is_refused_at_any_depth() {
        use base64::Engine as _;
        let part = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let read = |json: &str| jws_part::<Map<String, Value>>(&part(json)).map(|_| ());
        assert_eq!(read(r#"{"groups":["a"],"sub":"x"}"#), Ok(()));
        assert_eq!(
            read(r#"{"groups":["a"],"groups":["admins"]}"#),
            Err(PartError::Duplicate)
        );
        assert_eq!(read(r#"{"a":{"b":1,"b":2}}"#), Err(PartError::Duplicate));
        assert_eq!(read(r#"{"a":[{"b":1,"b":2}]}"#), Err(PartError::Duplicate));
        // The same name spelled with an escape is the same member.
        assert_eq!(read(r#"{"sub":"x","s\u0075b":"y"}"#), Err(PartError::Duplicate));
        assert_eq!(read("not json"), Err(PartError::NotJson));
    }

    #[test]
    fn templates_join_claims_and_alternatives_take_the_first_present() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"project_id":"42","ref_type":"branch","ref":"main","n":7,"b":true,"f":1.5,"kubernetes.io":{"serviceaccount":{"uid":"u-1"}}}"#,
        )
        .unwrap();
        let t = |text: &str| render(&ClaimTemplate::parse(text).unwrap(), &claims);
        assert_eq!(
            t("project:{project_id}:{ref_type}:{ref}").unwrap().as_deref(),
            Some("project:42:branch:main")
        );
        assert_eq!(t("uid|ref").unwrap().as_deref(), Some("main"));
        assert_eq!(t("{n}/{b}").unwrap().as_deref(), Some("7/true"));
        assert_eq!(
            t("sa:{kubernetes.io.serviceaccount.uid}").unwrap().as_deref(),
            Some("sa:u-1")
        );
        assert_eq!(t("env:{environment}").unwrap(), None);
        assert!(t("{f}").is_err(), "a float is no identifier");
    }

    #[test]
    fn bound_claims_need_an_accepted_value_and_name_the_first_that_has_none() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"ref_protected":"true","ref":"refs/heads/release-2","project_id":"42","aud":["a","b"]}"#,
        )
        .unwrap();
        let bound = |pairs: &[(&str, BoundValue)]| -> BTreeMap<String, BoundValue> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        };
        let one = |v: &str| BoundValue::One(v.into());
        assert_eq!(unbound(&claims, &bound(&[("ref_protected", one("true"))])), None);
        assert_eq!(
            unbound(
                &claims,
                &bound(&[
                    ("ref", one("refs/heads/release-*")),
                    ("project_id", BoundValue::Any(vec!["7".into(), "42".into()]))
                ])
            ),
            None
        );
        assert_eq!(
            unbound(&claims, &bound(&[("ref_protected", one("false"))])),
            Some("ref_protected")
        );
        assert_eq!(
            unbound(&claims, &bound(&[("environment", one("*"))])),
            Some("environment")
        );
        assert_eq!(unbound(&claims, &bound(&[("aud", one("b"))])), None);
        assert!(glob("a*b*c", "axxbyyc") && glob("*", "") && !glob("a*c", "ab") && glob("abc", "abc"));
        assert!(!glob("release-*", "prerelease-1") && !glob("a*a", "a"));
    }

    #[test]
    fn an_email_is_verified_only_when_the_token_says_so() {
        let read = |json: &str| email_verified(&serde_json::from_str(json).unwrap());
        assert!(read(r#"{"email_verified":true}"#));
        assert!(read(r#"{"email_verified":"true"}"#));
        assert!(!read(r#"{"email_verified":false}"#));
        assert!(!read(r#"{"email_verified":"yes"}"#));
        assert!(!read(r#"{}"#));
    }

    #[test]
    fn claims_of_the_wrong_type_are_errors() {
        let claims: Map<String, Value> = serde_json::from_str(r#"{"groups":[1,2],"email":5}"#).unwrap();
        assert!(groups(&claims, "groups").is_err());
        assert!(string(&claims, "email").is_err());
    }
}
