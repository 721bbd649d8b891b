//! The canonical request view: built once per request, from untrusted input.
//!
//! The router, the decision point, the audit event and the forwarder all read this one value, so
//! no two of them can disagree about which host or path a request is for. Anything that could be
//! read two ways is refused here with a reason, before any routing happens.

use http::{HeaderMap, Method, Uri, Version, header};

use crate::decision::Reason;
use crate::error::ProxyError;

/// What a request is for, in one unambiguous form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub method: Method,
    /// `https` when the request arrived over TLS, else `http`.
    pub scheme: &'static str,
    /// Lower-case host name or bracketed IPv6 literal, without port.
    pub host: String,
    /// Port the client named, if any.
    pub port: Option<u16>,
    /// Percent-decoded once, dot segments resolved, repeated slashes merged. Always starts with `/`.
    pub path: String,
    /// The query exactly as received (never decoded, never logged whole).
    pub query: Option<String>,
}

impl Canonical {
    /// Builds the view or says why the request is ambiguous.
    pub fn build(
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        tls: bool,
    ) -> Result<Self, ProxyError> {
        // CONNECT would turn the proxy into a tunnel to anywhere; its target is not a path.
        if *method == Method::CONNECT {
            return Err(malformed("CONNECT is not accepted by this proxy"));
        }
        // TRACE echoes request headers (cookies included) back to the caller.
        if *method == Method::TRACE {
            return Err(ProxyError::denied(
                Reason::MethodNotAllowed,
                "TRACE is not accepted by this proxy",
            ));
        }
        let scheme = if tls { "https" } else { "http" };
        let (host, port) = authority(uri, version, headers, scheme)?;
        let path = canonical_path(uri.path())?;
        let query = match uri.query() {
            Some(q) if q.bytes().any(|b| b.is_ascii_control()) => {
                return Err(ProxyError::denied(
                    Reason::MalformedRequest,
                    "the query holds control characters",
                ));
            }
            q => q.map(str::to_owned),
        };
        Ok(Canonical {
            method: method.clone(),
            scheme,
            host,
            port,
            path,
            query,
        })
    }

    /// The authority as the client named it, normalized: `host` or `host:port`.
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    /// The path and query to send upstream: the canonical path re-encoded so that the upstream
    /// decodes it to exactly [`Canonical::path`], followed by the untouched query.
    pub fn wire_path_and_query(&self) -> String {
        let mut out = encode_path(&self.path);
        if let Some(q) = &self.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

fn malformed(detail: &'static str) -> ProxyError {
    ProxyError::denied(Reason::MalformedRequest, detail)
}

fn ambiguous(detail: &'static str) -> ProxyError {
    ProxyError::denied(Reason::AmbiguousPath, detail)
}

/// One authority from the request line (absolute form or HTTP/2 `:authority`) and `Host`;
/// both present and different is ambiguous.
fn authority(
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    scheme: &str,
) -> Result<(String, Option<u16>), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(malformed("more than one Host header"));
    }
    let from_header = match host_header {
        Some(v) => Some(parse_authority(
            v.to_str()
                .map_err(|_| malformed("the Host header is not ASCII"))?,
        )?),
        None => None,
    };
    let from_uri = match uri.authority() {
        Some(a) => {
            if let Some(s) = uri.scheme_str()
                && !s.eq_ignore_ascii_case(scheme)
            {
                return Err(malformed("the request's scheme does not match the connection"));
            }
            Some(parse_authority(a.as_str())?)
        }
        None => None,
    };
    match (from_uri, from_header) {
        (Some(a), Some(b)) => {
            if same_authority(&a, &b, scheme) {
                Ok(a)
            } else {
                Err(malformed(
                    "the Host header and the request target name different hosts",
                ))
            }
        }
        (Some(a), None) => Ok(a),
        (None, Some(b)) => Ok(b),
        (None, None) if version == Version::HTTP_2 || version == Version::HTTP_3 => {
            Err(malformed("the request has no :authority"))
        }
        (None, None) => Err(malformed("the request has no Host header")),
    }
}

fn same_authority(a: &(String, Option<u16>), b: &(String, Option<u16>), scheme: &str) -> bool {
    let default = if scheme == "https" { 443 } else { 80 };
    a.0 == b.0 && a.1.unwrap_or(default) == b.1.unwrap_or(default)
}

fn parse_authority(raw: &str) -> Result<(String, Option<u16>), ProxyError> {
    if raw.contains('@') {
        return Err(malformed("the authority carries user information"));
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| malformed("the authority is not a valid host"))?;
        let (v6, after) = rest.split_at(end);
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(malformed("the authority is not a valid host"));
        }
        (
            format!("[{}]", v6.to_ascii_lowercase()),
            after.get(1..).unwrap_or(""),
        )
    } else {
        match raw.rfind(':') {
            Some(i) => (
                raw.get(..i).unwrap_or("").to_ascii_lowercase(),
                raw.get(i..).unwrap_or(""),
            ),
            None => (raw.to_ascii_lowercase(), ""),
        }
    };
    let port = match port.strip_prefix(':') {
        Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| malformed("the authority has an invalid port"))?,
        ),
        None if port.is_empty() => None,
        None => return Err(malformed("the authority is not a valid host")),
    };
    let valid_name = !host.is_empty()
        && (host.starts_with('[')
            || host.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
    if !valid_name {
        return Err(malformed("the authority is not a valid host"));
    }
    Ok((host, port))
}

/// Decodes the path once and normalizes it. See the module doc for why each case is refused.
pub fn canonical_path(raw: &str) -> Result<String, ProxyError> {
    if is_already_canonical(raw) {
        return Ok(raw.to_string());
    }
    let rest = raw
        .strip_prefix('/')
        .ok_or_else(|| malformed("the request target is not an absolute path"))?;
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw_segment in rest.split('/') {
        let segment = decode_segment(raw_segment)?;
        trailing_slash = true;
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// Most paths need no work: no escapes, no characters we refuse, no dot or empty segments.
fn is_already_canonical(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.first() == Some(&b'/')
        && !bytes
            .iter()
            .any(|&b| matches!(b, b'%' | b'\\' | b';') || !(0x20..0x7f).contains(&b))
        && !raw.contains("//")
        && !raw.contains("/./")
        && !raw.contains("/../")
        && !raw.ends_with("/.")
        && !raw.ends_with("/..")
}

fn decode_segment(raw: &str) -> Result<String, ProxyError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let decoded = match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or_else(|| ambiguous("a '%' in the path is not followed by two hex digits"))?;
                let value = hex_pair(hex)
                    .ok_or_else(|| ambiguous("a '%' in the path is not followed by two hex digits"))?;
                i += 3;
                match value {
                    b'/' => return Err(ambiguous("the path holds an encoded slash (%2F)")),
                    b'\\' => return Err(ambiguous("the path holds an encoded backslash (%5C)")),
                    _ => value,
                }
            }
            b'\\' => return Err(ambiguous("the path holds a backslash")),
            b';' => {
                return Err(ambiguous(
                    "the path holds a ';' parameter, which servers read differently",
                ));
            }
            _ => {
                i += 1;
                b
            }
        };
        if decoded < 0x20 || decoded == 0x7f {
            return Err(ambiguous("the path holds a control character"));
        }
        out.push(decoded);
    }
    let segment = String::from_utf8(out).map_err(|_| ambiguous("the path does not decode to valid UTF-8"))?;
    if segment
        .as_bytes()
        .windows(3)
        .any(|w| w.first() == Some(&b'%') && w.get(1..3).and_then(hex_pair).is_some())
    {
        return Err(ambiguous("the path is encoded twice (it would decode again)"));
    }
    Ok(segment)
}

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    match pair {
        [h, l] => Some((digit(*h)? * 16 + digit(*l)?) as u8),
        _ => None,
    }
}

/// Percent-encodes every byte of the canonical path that is not a `pchar` or `/`, and the few
/// pchars (`;`, `%`) that some servers treat specially.
fn encode_path(path: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> Result<String, &'static str> {
        canonical_path(raw).map_err(|e| e.code())
    }

    #[test]
    fn dot_segments_and_repeated_slashes_are_resolved() {
        assert_eq!(path("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(path("//a///b").unwrap(), "/a/b");
        assert_eq!(path("/../../etc").unwrap(), "/etc");
        assert_eq!(path("/a/b/..").unwrap(), "/a/");
        assert_eq!(path("/a/%2e%2E/b").unwrap(), "/b");
        assert_eq!(path("/").unwrap(), "/");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "/a%2fb", "/a%5Cb", "/a\\b", "/a%00", "/a%252e", "/%C0%AE", "/a%zz", "/a%", "/x;y", "/a%0a",
        ] {
            assert!(path(raw).is_err(), "{raw} should be refused");
        }
    }

    #[test]
    fn the_wire_path_decodes_back_to_the_canonical_path() {
        let c = Canonical {
            method: Method::GET,
            scheme: "http",
            host: "h".into(),
            port: None,
            path: "/a b/ü/%/;".into(),
            query: Some("x=%2F".into()),
        };
        assert_eq!(c.wire_path_and_query(), "/a%20b/%C3%BC/%25/%3B?x=%2F");
    }

    #[test]
    fn host_and_absolute_form_must_agree() {
        let uri: Uri = "http://a.example.com/x".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "b.example.com".parse().unwrap());
        let err = Canonical::build(&Method::GET, &uri, Version::HTTP_11, &headers, false).unwrap_err();
        assert_eq!(err.code(), "malformed_request");
        headers.insert(header::HOST, "A.example.com:80".parse().unwrap());
        let c = Canonical::build(&Method::GET, &uri, Version::HTTP_11, &headers, false).unwrap();
        assert_eq!(c.host, "a.example.com");
    }
}
