//! Object patterns in policy rules, and the `resourceMatch` function the Casbin matcher calls.
//!
//! Casbin's own pattern functions are unsafe for an access proxy: `keyMatch` is a prefix compare
//! that crosses `/`, `regexMatch` is unanchored, `keyMatch2` reads `:name` as a parameter, and
//! `regexMatch`/`globMatch` compile on every call and panic on a bad pattern. Here:
//!
//! - a pattern without wildcards matches only itself;
//! - `*` matches any run of characters within one `/`-separated segment, `**` any run across
//!   segments; everything else is literal;
//! - `regex:<re>` is a regular expression, always anchored at both ends;
//!
//! and every pattern is compiled once, when the policy loads (a bad one fails the load with its
//! file and line). Casbin calls custom functions through plain `fn` pointers, so the compiled
//! patterns live in a process-wide registry keyed by the pattern text: a pattern means the same
//! thing in every policy version, so sharing them across reloads is safe.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use casbin::rhai::Dynamic;
use regex::Regex;

const REGEX_PREFIX: &str = "regex:";

static COMPILED: LazyLock<ArcSwap<HashMap<Box<str>, Arc<Regex>>>> =
    LazyLock::new(|| ArcSwap::from_pointee(HashMap::new()));

/// Checks and compiles a pattern, registering it for [`resource_match`]. The error is a sentence
/// for the operator (the caller adds file and line).
pub fn compile(pattern: &str) -> Result<(), String> {
    if !is_pattern(pattern) || COMPILED.load().contains_key(pattern) {
        return Ok(());
    }
    let regex = to_regex(pattern)?;
    COMPILED.rcu(|map| {
        let mut map = HashMap::clone(map);
        map.insert(pattern.into(), Arc::new(regex.clone()));
        map
    });
    Ok(())
}

/// Whether `pattern` has wildcards or is a regex (and so needs [`compile`]).
pub fn is_pattern(pattern: &str) -> bool {
    pattern.starts_with(REGEX_PREFIX) || pattern.contains('*')
}

fn to_regex(pattern: &str) -> Result<Regex, String> {
    let source = match pattern.strip_prefix(REGEX_PREFIX) {
        Some("") => return Err("the regex after `regex:` is empty".into()),
        Some(re) => format!("^(?:{re})$"),
        None => {
            if pattern.contains("***") {
                return Err(format!(
                    "`{pattern}` has `***`: write `*` (one segment) or `**` (any depth)"
                ));
            }
            let mut source = String::from("^");
            let mut rest = pattern;
            while let Some(i) = rest.find('*') {
                let (literal, tail) = rest.split_at(i);
                source.push_str(&regex::escape(literal));
                if let Some(after) = tail.strip_prefix("**") {
                    source.push_str(".*");
                    rest = after;
                } else {
                    source.push_str("[^/]*");
                    rest = tail.get(1..).unwrap_or_default();
                }
            }
            source.push_str(&regex::escape(rest));
            source.push('$');
            source
        }
    };
    regex::RegexBuilder::new(&source)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| match pattern.strip_prefix(REGEX_PREFIX) {
            Some(_) => format!(
                "invalid regex: {}",
                e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            None => format!("`{pattern}` is too complex to compile"),
        })
}

/// Whether `object` is matched by `pattern`. A pattern that was never compiled matches nothing:
/// the policy loader compiles every pattern before Casbin sees it, so this only fails closed.
pub fn matches(object: &str, pattern: &str) -> bool {
    if !is_pattern(pattern) {
        return object == pattern;
    }
    COMPILED.load().get(pattern).is_some_and(|re| re.is_match(object))
}

/// `resourceMatch(r.obj, p.obj)` for the Casbin matcher.
pub fn resource_match(object: Dynamic, pattern: Dynamic) -> Dynamic {
    let (Ok(object), Ok(pattern)) = (object.into_immutable_string(), pattern.into_immutable_string()) else {
        return false.into();
    };
    matches(object.as_str(), pattern.as_str()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each object against `pattern`: whether it matches.
    fn check(pattern: &str, objects: &[(&str, bool)]) {
        compile(pattern).unwrap();
        for (object, want) in objects {
            assert_eq!(matches(object, pattern), *want, "{pattern} ~ {object}");
        }
    }

    #[test]
    fn a_star_stays_inside_one_segment() {
        check(
            "dag:etl_*",
            &[
                ("dag:etl_daily", true),
                ("dag:etl_", true),
                ("dag:etl_x/../y", false),
                ("dag:etl_x/y", false),
                ("xdag:etl_a", false),
                ("dag:reporting", false),
            ],
        );
        check(
            "pipelinerun:ci/*",
            &[
                ("pipelinerun:ci/build-1", true),
                ("pipelinerun:ci/a/b", false),
                ("pipelinerun:cix/a", false),
            ],
        );
    }

    #[test]
    fn a_double_star_crosses_segments_only_where_written() {
        check("/api/**", &[("/api/v1/dags", true), ("/apix/v1", false)]);
        check("**", &[("anything/at/all", true)]);
    }

    #[test]
    fn regexes_are_anchored_at_both_ends() {
        check(
            "regex:dag:etl_.*",
            &[("dag:etl_daily", true), ("xdag:etl_daily", false)],
        );
        check("regex:dag:(a|b)", &[("dag:ab", false)]);
    }

    #[test]
    fn regex_metacharacters_in_globs_are_literal() {
        check("job:a.b*", &[("job:a.bc", true), ("job:axbc", false)]);
    }

    #[test]
    fn a_literal_matches_only_itself() {
        assert!(matches("dag:etl", "dag:etl"));
        assert!(!matches("dag:etl2", "dag:etl"));
    }

    #[test]
    fn an_invalid_regex_is_an_error_not_a_panic() {
        let error = compile("regex:dag:(etl").unwrap_err();
        assert!(error.starts_with("invalid regex"), "{error}");
        assert!(!matches("dag:(etl", "regex:dag:(etl"));
        assert!(compile("regex:").is_err());
        assert!(compile("dag:***").is_err());
    }
}
