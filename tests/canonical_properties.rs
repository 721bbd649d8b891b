//! Properties of the canonical view over arbitrary input: it never panics, and what the upstream
//! is sent reads back as exactly the canonical path (so proxy and upstream cannot disagree).
#![cfg(test)]

use http::{HeaderMap, Method, Uri, Version};
use portcullis::canonical::{Canonical, canonical_path};
use proptest::prelude::*;

/// Paths built from the pieces that path-confusion attacks are made of.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/",
        "//",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        ";",
        "%3b",
        "%25",
        "%252e",
        "%00",
        "%0a",
        "%C0%AE",
        "%c3%bc",
        "%e2%82%ac",
        "%ff",
        "%",
        "%4",
        "a",
        "B",
        "api",
        "admin",
        "~",
        "-",
        "!",
        "@",
        ":",
        "%20",
        "%41",
    ]);
    prop::collection::vec(piece, 0..16).prop_map(|pieces| format!("/{}", pieces.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn canonicalizing_never_panics_on_arbitrary_strings(raw in ".{0,64}") {
        let _ = canonical_path(&raw);
    }

    #[test]
    fn the_wire_form_reads_back_as_the_same_canonical_path(raw in hostile_path()) {
        if let Ok(path) = canonical_path(&raw) {
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains("//"), "{path}");
            prop_assert!(!path.split('/').any(|s| s == "." || s == ".."), "{path}");
            let view = Canonical {
                method: Method::GET,
                scheme: "http",
                host: "h".into(),
                port: None,
                path: path.clone(),
                query: None,
            };
            let wire = view.wire_path_and_query();
            prop_assert_eq!(canonical_path(&wire).ok(), Some(path.clone()), "wire form {} of {}", wire, raw);
        }
    }

    #[test]
    fn building_a_view_from_any_host_header_never_panics(host in "[ -~]{0,40}", target in hostile_path()) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = host.parse() {
            headers.insert(http::header::HOST, v);
        }
        if let Ok(uri) = target.parse::<Uri>() {
            let _ = Canonical::build(&Method::GET, &uri, Version::HTTP_11, &headers, false);
        }
    }
}
