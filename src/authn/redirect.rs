//! Where a browser may be sent after sign-in: only a same-origin relative path.
//!
//! Untrusted input: the `rd` parameter of `/.portcullis/sign_in`. Browsers read `//host`,
//! `/\host`, `\\host`, tabs and newlines inside a URL, and encoded forms of these in ways that
//! leave the origin, so anything that is not plainly a path on this host is refused, and what
//! is accepted is re-issued in canonical form.

use crate::canonical::canonical_path;

const MAX_LEN: usize = 2048;

/// The path (and query) to redirect to, or `None` if `raw` could leave this origin.
pub fn safe_return_to(raw: &str) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_LEN {
        return None;
    }
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') || matches!(bytes.get(1), Some(b'/' | b'\\')) {
        return None;
    }
    if bytes
        .iter()
        .any(|&b| b == b'\\' || b.is_ascii_whitespace() || b.is_ascii_control() || b >= 0x80)
    {
        return None;
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    // The path is decoded once and must then still be a plain path (no encoded `/`, `\` or
    // controls, no double encoding: canonical_path refuses those).
    let path = canonical_path(path).ok()?;
    if path.starts_with("//") {
        return None;
    }
    Some(match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_paths_are_kept_in_canonical_form() {
        assert_eq!(safe_return_to("/").as_deref(), Some("/"));
        assert_eq!(
            safe_return_to("/dags/etl?tab=runs").as_deref(),
            Some("/dags/etl?tab=runs")
        );
        assert_eq!(safe_return_to("/a/./b/../c").as_deref(), Some("/a/c"));
        assert_eq!(
            safe_return_to("/next?u=https://evil.example").as_deref(),
            Some("/next?u=https://evil.example")
        );
        assert_eq!(
            safe_return_to("/.//evil.example").as_deref(),
            Some("/evil.example")
        );
    }

    #[test]
    fn every_open_redirect_form_is_refused() {
        let forms = [
            "//evil.example",
            "///evil.example",
            "////evil.example/",
            "/\\evil.example",
            "/\\/evil.example",
            "\\\\evil.example",
            "\\/evil.example",
            "https://evil.example",
            "http:evil.example",
            "https:/evil.example",
            "//evil.example/%2e%2e",
            "/%2f%2fevil.example",
            "/%2F/evil.example",
            "/%5cevil.example",
            "/%5C%5Cevil.example",
            "%2f%2fevil.example",
            " //evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "/%09/evil.example",
            "/%0d%0aLocation:%20https://evil.example",
            "/%252f%252fevil.example",
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "evil.example",
            "@evil.example",
            "",
            "/\u{3000}/evil.example",
            "//evil.example@good.example",
        ];
        for form in forms {
            assert_eq!(safe_return_to(form), None, "{form:?} was accepted");
        }
        assert!(forms.len() >= 20);
    }
}
