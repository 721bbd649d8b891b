//! Forwarding an allowed request: strip, then inject headers; stream bodies both ways through a
//! pooled hyper client; pass upgrades through once the response says 101, and only for the
//! protocols the route allows (WebSocket by default, with a valid handshake; never `h2c`, which
//! would let a client speak HTTP/2 to the upstream past every decision).
//!
//! Untrusted input: every inbound header and the request body. The forwarder only runs with a
//! [`Permit`]. A body that fails on the client's side is the client's fault (400, 408, 413 or
//! 499), never reported as the upstream's.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;

use crate::body::ProxyBody;
use crate::canonical::Canonical;
use crate::config::{self, UpstreamProtocol};
use crate::decision::{Permit, Reason};
use crate::error::ProxyError;
use crate::pem::{self, BuildError};
use crate::proxy::body::{BodyFault, ClientBody, Inbound};
use crate::proxy::context::RequestCtx;
use crate::proxy::cookies::outbound_cookies;
use crate::proxy::routes::Route;

/// A route's upstream: where it is and the pooled client that reaches it.
#[derive(Debug)]
pub struct Upstream {
    client: Client<FixedTarget<HttpsConnector<HttpConnector>>, ClientBody>,
    scheme: Scheme,
    authority: Authority,
    version: Version,
}

/// Connects to the route's upstream whatever authority a request's URI names, so that the URI
/// can carry the authority the upstream should see: with `preserve_host`, the client's, which
/// HTTP/2 sends as `:authority` (it must agree with `Host`, RFC 9113 §8.3.1). TLS names the
/// upstream (or `server_name`) all the same.
#[derive(Debug, Clone)]
pub struct FixedTarget<C> {
    inner: C,
    target: Uri,
}

impl<C: tower::Service<Uri>> tower::Service<Uri> for FixedTarget<C> {
    type Response = C::Response;
    type Error = C::Error;
    type Future = C::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        self.inner.call(self.target.clone())
    }
}

impl Upstream {
    pub fn build(
        cfg: &config::Upstream,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, BuildError> {
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|_| BuildError::Invalid(format!("bad upstream url {:?}", cfg.url)))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| BuildError::Invalid("upstream url has no host".into()))?;

        // A route to a public HTTPS service trusts the system's roots; plain HTTP needs none.
        let roots = match (&cfg.ca, scheme == Scheme::HTTPS) {
            (None, false) => rustls::RootCertStore::empty(),
            (ca, _) => pem::trust_roots(ca.as_deref(), "upstream CA")?,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let tls = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(pem::read_certs(cert, "client certificate")?, pem::read_key(key)?)?,
            _ => builder.with_no_client_auth(),
        };

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout()));
        let builder = HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let builder = match &cfg.server_name {
            Some(name) => {
                let name =
                    ServerName::try_from(name.clone()).map_err(|e| BuildError::Invalid(e.to_string()))?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = match cfg.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
            UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90));
        if cfg.protocol == UpstreamProtocol::Http2 {
            client.http2_only(true);
        }
        let version = if cfg.protocol == UpstreamProtocol::Http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let connector = FixedTarget {
            inner: connector,
            target: uri.clone(),
        };
        Ok(Upstream {
            client: client.build(connector),
            scheme,
            authority,
            version,
        })
    }
}

/// Sends an allowed request upstream and returns the upstream's response head with its body
/// still streaming. The `Permit` is the decision point's proof; there is no other way in.
/// `idle` is how long the client may leave the request body waiting.
pub async fn forward(
    _permit: Permit,
    ctx: &mut RequestCtx,
    route: &Route,
    mut req: Request<Inbound>,
    identity: Vec<(HeaderName, HeaderValue)>,
    strip_extra: &[String],
    idle: Duration,
) -> Result<Response<ProxyBody>, ProxyError> {
    let canonical = ctx
        .canonical
        .as_ref()
        .ok_or_else(|| ProxyError::UpstreamUnavailable("no canonical view".into()))?;
    let upstream = &route.upstream;
    let limit = route.config.max_body_bytes;
    if limit > 0 && content_length(req.headers()).is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    framed_once(&req)?;
    let upgrade = requested_upgrade(&req, &route.config.upgrades)?;
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut headers = outbound_headers(parts.headers, ctx, strip_extra);
    if let Some((_, name)) = &route.assertion {
        // A configured assertion header outside x-portcullis-*: stripped here in every spelling.
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| normalized(k) == normalized(name))
            .cloned()
            .collect();
        for k in doomed {
            headers.remove(k);
        }
    }
    for (name, value) in identity {
        headers.insert(name, value);
    }
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    let authority = if route.config.preserve_host {
        Authority::try_from(canonical.authority())
            .map_err(|_| ProxyError::UpstreamUnavailable("could not build the upstream URI".into()))?
    } else {
        upstream.authority.clone()
    };
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    let uri = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(authority)
        .path_and_query(canonical.wire_path_and_query())
        .build()
        .map_err(|_| ProxyError::UpstreamUnavailable("could not build the upstream URI".into()))?;

    let read = matches!(body, Inbound::Read(_));
    let (body, tally) = ClientBody::new(body, limit, idle);
    // A body read for the policy was counted (and its faults judged) when it was read.
    if !read || ctx.tally.is_none() {
        ctx.tally = Some(tally.clone());
    }
    let mut outbound = Request::new(body);
    *outbound.method_mut() = parts.method;
    *outbound.uri_mut() = uri;
    *outbound.version_mut() = upstream.version;
    *outbound.headers_mut() = headers;

    let sent = Instant::now();
    let result = tokio::time::timeout(route.config.timeout.get(), upstream.client.request(outbound)).await;
    ctx.upstream_duration = Some(sent.elapsed());
    let mut response = match result {
        // The upstream waited for a body the client stopped sending: the client's stall.
        Err(_) if tally.waiting_on_client() => return Err(ProxyError::deny(Reason::BodyTimeout)),
        Err(_) => return Err(ProxyError::UpstreamTimeout),
        Ok(Err(e)) => {
            return Err(match tally.fault() {
                Some(fault) => client_fault(fault),
                None => ProxyError::UpstreamUnavailable(describe(&e)),
            });
        }
        Ok(Ok(response)) => response,
    };
    ctx.upstream_status = Some(response.status().as_u16());

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(downstream), Some(protocol)) = (downstream_upgrade, upgrade) else {
            return Err(ProxyError::UpstreamUnavailable(
                "upstream switched protocols unasked".into(),
            ));
        };
        let agreed = response
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(protocol.as_bytes()));
        if !agreed {
            return Err(ProxyError::UpstreamUnavailable(
                "upstream switched to another protocol than the one asked for".into(),
            ));
        }
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(down), Ok(up)) = (downstream.await, upstream_upgrade.await) {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut TokioIo::new(up)).await;
            }
        });
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
        return Ok(Response::from_parts(
            parts,
            crate::body::full(bytes::Bytes::new()),
        ));
    }

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, http_body_util::BodyExt::boxed(body)))
}

fn too_large() -> ProxyError {
    ProxyError::denied(
        Reason::PayloadTooLarge,
        "the request body is larger than this route accepts",
    )
}

/// Reads what a request acts on from the route's upstream (a template rule's `lookup`): GET
/// `path` with the identity the request itself would carry, nothing of the client's. `Ok(None)`
/// when the upstream answered but not with a JSON document of at most `limit` bytes; an upstream
/// that cannot be reached is the same error as for the request. The answer only feeds the
/// decision: it never reaches the client.
pub async fn look_up(
    route: &Route,
    canonical: &Canonical,
    path: &str,
    identity: Vec<(HeaderName, HeaderValue)>,
    limit: usize,
) -> Result<Option<serde_json::Value>, ProxyError> {
    use http_body_util::BodyExt as _;
    let upstream = &route.upstream;
    let authority = if route.config.preserve_host {
        Authority::try_from(canonical.authority())
            .map_err(|_| ProxyError::UpstreamUnavailable("could not build the upstream URI".into()))?
    } else {
        upstream.authority.clone()
    };
    let uri = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::UpstreamUnavailable("could not build the lookup URI".into()))?;
    let (body, _) = ClientBody::new(Inbound::Read(bytes::Bytes::new()), 0, route.config.timeout.get());
    let mut request = Request::new(body);
    *request.uri_mut() = uri;
    *request.version_mut() = upstream.version;
    let headers = request.headers_mut();
    for (name, value) in identity {
        headers.insert(name, value);
    }
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let response =
        match tokio::time::timeout(route.config.timeout.get(), upstream.client.request(request)).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => return Err(ProxyError::UpstreamUnavailable(describe(&e))),
            Ok(Ok(response)) => response,
        };
    if !response.status().is_success() {
        return Ok(None);
    }
    let collected = tokio::time::timeout(
        route.config.timeout.get(),
        http_body_util::Limited::new(response.into_body(), limit).collect(),
    )
    .await;
    Ok(match collected {
        Ok(Ok(body)) => serde_json::from_slice(&body.to_bytes()).ok(),
        _ => None,
    })
}

/// The answer for a request body that failed on the client's side.
pub(crate) fn client_fault(fault: BodyFault) -> ProxyError {
    match fault {
        BodyFault::TooLarge => too_large(),
        BodyFault::Malformed => ProxyError::deny(Reason::BadRequestBody),
        BodyFault::Stalled => ProxyError::deny(Reason::BodyTimeout),
        BodyFault::ClientClosed => ProxyError::ClientClosed,
    }
}

/// One framing for an HTTP/1 body: `Transfer-Encoding` at most once and exactly `chunked`
/// (hyper refuses other codings, and drops a `Content-Length` sent beside it, which the
/// listener detects). Anything else is refused rather than re-framed for the upstream.
fn framed_once<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        return Ok(());
    };
    let single_chunked = first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked");
    let twice = req.extensions().get::<crate::proxy::FramedTwice>().is_some();
    if codings.next().is_some() || !single_chunked || twice {
        return Err(ProxyError::denied(
            Reason::BadRequestBody,
            "the request body is framed more than one way",
        ));
    }
    Ok(())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The protocol a client may switch to: an HTTP/1.1 `Connection: upgrade` request for one the
/// route allows, WebSocket only with a valid handshake. An upgrade to anything else is not
/// forwarded (the request goes on as a plain one, its `Upgrade` removed); `h2c` is never
/// allowed (configuration refuses it). HTTP/2's extended CONNECT never gets here: CONNECT is
/// refused with the canonical view.
fn requested_upgrade<B>(req: &Request<B>, allowed: &[String]) -> Result<Option<HeaderValue>, ProxyError> {
    if req.version() != Version::HTTP_11
        || !connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Ok(None);
    }
    let mut values = req.headers().get_all(header::UPGRADE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Ok(None);
    };
    let Ok(text) = value.to_str() else {
        return Ok(None);
    };
    let wanted = text.trim();
    let permitted = allowed.iter().any(|p| p.eq_ignore_ascii_case(wanted));
    if !permitted || wanted.eq_ignore_ascii_case("h2c") {
        return Ok(None);
    }
    if wanted.eq_ignore_ascii_case("websocket") && !websocket_handshake(req) {
        return Err(ProxyError::denied(
            Reason::MalformedRequest,
            "not a valid WebSocket handshake (RFC 6455 4.2.1)",
        ));
    }
    Ok(Some(value.clone()))
}

/// RFC 6455 §4.2.1: a GET with `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` that is
/// the base64 of 16 bytes.
fn websocket_handshake<B>(req: &Request<B>) -> bool {
    use base64::Engine as _;
    let one = |name: &str| {
        let mut values = req.headers().get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Some(v.as_bytes().trim_ascii()),
            _ => None,
        }
    };
    let key_ok = one("sec-websocket-key").is_some_and(|key| {
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
    });
    req.method() == http::Method::GET && key_ok && one("sec-websocket-version") == Some(b"13")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The error chain, for the operator's log only; never sent to the client.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "http2-settings",
];

/// Identity header families: the proxy's own (`x-portcullis-*`) and those of the products an
/// upstream may have sat behind before (oauth2-proxy, Pomerium, Google IAP, AWS ALB, Cloudflare
/// Access, Azure App Service, Authelia, Authentik, Grafana's auth proxy), which it may still
/// trust. Judged on the normalized name, so `X_Goog_Iap_Jwt_Assertion` is one of them too.
const IDENTITY_PREFIXES: [&str; 13] = [
    "x-portcullis-",
    "x-auth-request-",
    "x-pomerium-",
    "remote-",
    "x-remote-",
    "x-authentik-",
    "x-goog-authenticated-",
    "x-goog-iap-",
    "x-amzn-oidc-",
    "cf-access-",
    "x-ms-client-principal",
    "x-ms-token-",
    "x-webauth-",
];

/// Single identity headers outside those families (oauth2-proxy's `X-Forwarded-*` identity
/// names are identity, not forwarding: stripped even from trusted proxies).
const IDENTITY_NAMES: [&str; 6] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-user",
];

fn is_identity(name: &str) -> bool {
    IDENTITY_PREFIXES.iter().any(|p| name.starts_with(p)) || IDENTITY_NAMES.contains(&name)
}

/// Headers that name the client's address or the original request, or that a trusted hop
/// (Envoy, IIS, an ingress) sets for its upstream; believed only from trusted peers.
fn is_forwarding(name: &str) -> bool {
    name.starts_with("x-forwarded-")
        || name.starts_with("x-original-")
        || name.starts_with("x-envoy-")
        || matches!(
            name,
            "forwarded"
                | "x-real-ip"
                | "x-rewrite-url"
                | "x-client-ip"
                | "true-client-ip"
                | "x-cluster-client-ip"
                | "client-ip"
                | "cf-connecting-ip"
                | "fastly-client-ip"
                | "x-host"
                | "x-http-host-override"
        )
}

/// Headers that ask a server to treat the request as another method than the one decided on.
fn is_method_override(name: &str) -> bool {
    matches!(
        name,
        "x-http-method-override" | "x-http-method" | "x-method-override"
    )
}

/// Header names as CGI-style servers see them: `X_Forwarded_User` and `x.forwarded.user` are
/// `x-forwarded-user` to many frameworks, so every spelling is judged by this form.
fn normalized(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str();
    if s.bytes().any(|b| b == b'_' || b == b'.') {
        std::borrow::Cow::Owned(s.replace(['_', '.'], "-"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Whether an inbound header must not reach the upstream (judged by its normalized name).
/// `extra` is the operator's `strip_request_headers`, normalized: names, or prefixes ending in `*`.
fn must_strip(name: &str, trusted: bool, nominated: &[String], extra: &[String]) -> bool {
    HOP_BY_HOP.contains(&name)
        || name == "upgrade"
        || name == "x-request-id"
        || is_identity(name)
        || is_method_override(name)
        || (!trusted && is_forwarding(name))
        || nominated.iter().any(|t| t == name)
        || extra.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => e == name,
        })
}

/// The operator's extra names in the form `must_strip` compares: lower case, `-` for `_` and `.`.
pub fn normalize_extra(names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| n.to_ascii_lowercase().replace(['_', '.'], "-"))
        .collect()
}

// The forwarding headers the proxy sets, named once: a `&str` name is parsed on every use.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Strip, then inject: every header the client may not set is dropped, then the proxy adds
/// its own forwarding headers and request id. Works in place: most requests drop nothing.
pub fn outbound_headers(mut headers: HeaderMap, ctx: &RequestCtx, strip_extra: &[String]) -> HeaderMap {
    let nominated: Vec<String> = connection_tokens(&headers)
        .map(|t| t.to_ascii_lowercase().replace(['_', '.'], "-"))
        .collect();
    let keep_te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
    });
    let trusted = ctx.conn.trusted;
    let prior_xff = if trusted {
        joined(&headers, X_FORWARDED_FOR)
    } else {
        None
    };
    let prior_forwarded = if trusted {
        joined(&headers, header::FORWARDED)
    } else {
        None
    };

    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| must_strip(&normalized(name), trusted, &nominated, strip_extra))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    outbound_cookies(&mut headers);

    let canonical = ctx.canonical.as_ref();
    let conn = &ctx.conn;
    let scheme = canonical.map_or("http", |c| c.scheme);
    let authority = canonical.map(|c| c.authority()).unwrap_or_default();
    match prior_xff {
        Some(prior) => insert_value(
            &mut headers,
            X_FORWARDED_FOR,
            &format!("{prior}, {}", conn.peer_for),
        ),
        None => insert_value(&mut headers, X_FORWARDED_FOR, &conn.peer_for),
    }
    let element = format!("for={};proto={scheme};host=\"{authority}\"", conn.peer_node);
    let forwarded = match prior_forwarded {
        Some(prior) => format!("{prior}, {element}"),
        None => element,
    };
    insert_value(&mut headers, header::FORWARDED, &forwarded);
    if !(trusted && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if scheme == "https" { "https" } else { "http" }),
        );
    }
    if !(trusted && headers.contains_key(X_FORWARDED_HOST)) {
        insert_value(&mut headers, X_FORWARDED_HOST, &authority);
    }
    insert_value(&mut headers, X_REQUEST_ID, &ctx.request_id);
    ctx.trace.inject(&mut headers);
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers
}

fn insert_value(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn joined(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        None
    } else {
        Some(values.join(", "))
    }
}

/// Response headers that describe the upstream connection, not the message.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}
