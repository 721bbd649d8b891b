//! CORS for routes that configure it. The proxy answers preflights itself, before
//! authentication, because browsers send them without credentials; and it owns the CORS
//! headers of every response on such a route (the upstream's are replaced), so one policy in
//! one place decides which origins may read what.
//!
//! Untrusted input: `Origin` and the `Access-Control-Request-*` headers.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;
use crate::config::Cors;
use crate::decision::Reason;
use crate::error::ProxyError;

/// An `OPTIONS` request a browser sends before a cross-origin request.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    *method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn allowed_origin<'a>(cors: &Cors, origin: &'a HeaderValue) -> Option<&'a HeaderValue> {
    let text = origin.to_str().ok()?;
    cors.allowed_origins
        .iter()
        .any(|o| o == "*" || o == text)
        .then_some(origin)
}

/// The answer to a preflight: 204 with the route's CORS policy, or 403 `cors_refused`.
pub fn preflight(cors: &Cors, headers: &HeaderMap) -> Result<Response<ProxyBody>, ProxyError> {
    let refused = || ProxyError::deny(Reason::CorsRefused);
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| allowed_origin(cors, o))
        .ok_or_else(refused)?;
    let method = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| m.to_str().ok())
        .ok_or_else(refused)?;
    if !cors.allowed_methods.iter().any(|m| m == method) {
        return Err(refused());
    }
    let requested = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty());
    for name in requested {
        if !cors.allowed_headers.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return Err(refused());
        }
    }
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    allow(cors, origin, out);
    insert(
        out,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        &cors.allowed_methods.join(", "),
    );
    if !cors.allowed_headers.is_empty() {
        insert(
            out,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &cors.allowed_headers.join(", "),
        );
    }
    insert(
        out,
        header::ACCESS_CONTROL_MAX_AGE,
        &cors.max_age.as_secs().to_string(),
    );
    out.append(
        header::VARY,
        HeaderValue::from_static("access-control-request-method, access-control-request-headers"),
    );
    Ok(response)
}

/// Sets the CORS headers of a response on a route with a CORS policy.
pub fn decorate(cors: &Cors, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    for name in [
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::ACCESS_CONTROL_MAX_AGE,
    ] {
        headers.remove(name);
    }
    let Some(origin) = origin.and_then(|o| allowed_origin(cors, o)) else {
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        return;
    };
    allow(cors, origin, headers);
    if !cors.expose_headers.is_empty() {
        insert(
            headers,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &cors.expose_headers.join(", "),
        );
    }
}

fn allow(cors: &Cors, origin: &HeaderValue, headers: &mut HeaderMap) {
    // The origin is echoed rather than `*` so that credentialed requests work and caches key on it.
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

fn insert(headers: &mut HeaderMap, name: http::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            allowed_origins: vec!["https://ui.example".into()],
            allow_credentials: true,
            ..Cors::default()
        }
    }

    fn preflight_from(origin: &str, method: &str, headers: &str) -> Result<Response<ProxyBody>, ProxyError> {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).unwrap(),
        );
        if !headers.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_str(headers).unwrap(),
            );
        }
        preflight(&cors(), &h)
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_the_policy() {
        let response = preflight_from("https://ui.example", "POST", "Content-Type, authorization").unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let h = response.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://ui.example");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(
            h[header::ACCESS_CONTROL_ALLOW_METHODS]
                .to_str()
                .unwrap()
                .contains("POST")
        );
    }

    #[test]
    fn preflights_for_other_origins_methods_or_headers_are_refused() {
        for (origin, method, headers) in [
            ("https://evil.example", "GET", ""),
            ("https://ui.example.evil.example", "GET", ""),
            ("null", "GET", ""),
            ("https://ui.example", "PROPFIND", ""),
            ("https://ui.example", "GET", "x-secret"),
        ] {
            let error = preflight_from(origin, method, headers).unwrap_err();
            assert_eq!(error.code(), "cors_refused", "{origin} {method} {headers}");
        }
    }

    #[test]
    fn responses_carry_cors_headers_only_for_allowed_origins() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        decorate(
            &cors(),
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut h,
        );
        assert!(
            !h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            "the upstream's * survived"
        );

        let mut h = HeaderMap::new();
        decorate(
            &cors(),
            Some(&HeaderValue::from_static("https://ui.example")),
            &mut h,
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://ui.example");
    }
}
