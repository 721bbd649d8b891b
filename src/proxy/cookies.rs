//! The `Cookie` header as an upstream gets it. Untrusted input: every cookie the client sent.

use http::{HeaderMap, HeaderValue, header};

use crate::authn::browser::{LOGIN_COOKIE, SESSION_COOKIE};

/// The cookies as the upstream gets them: the proxy's own removed (an upstream never sees a
/// session id), and several `Cookie` fields (the crumbs HTTP/2 clients send, or repeated
/// headers) joined into the one header an HTTP/1 upstream reads (RFC 9113 §8.2.3: "; " between
/// them). A value that is not text is dropped.
pub fn outbound_cookies(headers: &mut HeaderMap) {
    let own = |pair: &str| {
        let name = pair.trim().split('=').next().unwrap_or("");
        name == SESSION_COOKIE || name == LOGIN_COOKIE
    };
    // Most requests carry one Cookie header and none of ours: look before copying anything.
    let mut values = headers.get_all(header::COOKIE).iter();
    match (values.next(), values.next()) {
        (None, _) => return,
        (Some(only), None) if only.to_str().is_ok_and(|v| !v.split(';').any(own)) => return,
        _ => {}
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|text| text.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !own(pair))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::browser::cookie;

    /// A request's `Cookie` fields, in order.
    fn cookies(fields: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in fields {
            h.append(header::COOKIE, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn own_cookies_are_stripped_and_the_others_kept_in_one_header() {
        let mut h = cookies(&[
            "a=1; __Host-portcullis_session=secret; b=2",
            "__Host-portcullis_login=x",
        ]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("secret"));
        outbound_cookies(&mut h);
        let left: Vec<_> = h.get_all("cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["a=1; b=2"]);

        let mut untouched = cookies(&["a=1"]);
        outbound_cookies(&mut untouched);
        assert_eq!(untouched.get("cookie").unwrap(), "a=1");

        let mut only_ours = cookies(&["__Host-portcullis_session=secret"]);
        outbound_cookies(&mut only_ours);
        assert!(only_ours.get("cookie").is_none());
    }

    #[test]
    fn cookie_crumbs_become_one_header_in_their_order() {
        let mut h = cookies(&["a=1", "b=2; c=3", "d=4"]);
        outbound_cookies(&mut h);
        let left: Vec<_> = h.get_all("cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["a=1; b=2; c=3; d=4"]);
    }
}
