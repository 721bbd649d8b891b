//! Strip, then inject: what a client may not tell the upstream never reaches it.
#![cfg(test)]

mod support;

use support::{Config, Gateway, Recorder, Route, get, public_route, raw};
use support::{assert_no_client_identity, spoofed_identity_lines, strip_extra};

const SPOOFED_IDENTITY: &[&str] = &[
    "X-Portcullis-User",
    "x-portcullis-email",
    "X_Portcullis_Groups",
    "x-portcullis_assertion",
    "X.Portcullis.User",
    "X-PORTCULLIS-ANYTHING",
    "X-Forwarded-User",
    "x_forwarded_email",
    "X-Auth-Request-User",
    "X-Auth_Request_Email",
    "Remote-User",
    "remote_user",
    "X-Pomerium-Jwt-Assertion",
];

const SPOOFED_FORWARDING: &[&str] = &[
    "X-Forwarded-For",
    "x_forwarded_for",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "Forwarded",
    "X-Real-IP",
    "x_real_ip",
    "X-Original-URL",
    "X-Original-Method",
    "X-Rewrite-URL",
    "True-Client-IP",
    "X-Client-IP",
    "X-Envoy-Original-Path",
    "x-envoy-internal",
    "X_Envoy_External_Address",
    "X-Envoy-Decorator-Operation",
    "X-Original-Host",
    "Cf-Connecting-IP",
    "Fastly-Client-IP",
    "X-Host",
    "X-HTTP-Host-Override",
];

const METHOD_OVERRIDES: &[&str] = &[
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "x_http_method_override",
];

fn request_with(headers: &[&str], extra: &str) -> String {
    let mut request = String::from("GET /ok HTTP/1.1\r\nHost: app.test\r\n");
    for name in headers {
        request.push_str(&format!("{name}: spoofed\r\n"));
    }
    request.push_str(extra);
    request.push_str("Connection: close\r\n\r\n");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_in_any_spelling_never_reach_the_upstream() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let (status, _) = raw(gw.http, &request_with(SPOOFED_IDENTITY, "")).await;
    assert_eq!(status, 200);
    let seen = upstream.last();
    for name in SPOOFED_IDENTITY {
        let norm = name.to_ascii_lowercase().replace(['_', '.'], "-");
        assert!(
            !seen.has_any_spelling_of(&norm),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert!(
        seen.headers.values().all(|v| v != "spoofed"),
        "{:?}",
        seen.headers
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_header_family_is_stripped_on_a_public_route_even_from_a_trusted_hop() {
    let upstream = Recorder::start().await;
    for server in [
        strip_extra(),
        strip_extra().server("trusted_proxies", ["127.0.0.0/8"]),
    ] {
        let gw = Gateway::start(server.clone().merge(public_route(&upstream))).await;
        let request = format!(
            "GET /ok HTTP/1.1\r\nHost: app.test\r\n{}Connection: close\r\n\r\n",
            spoofed_identity_lines()
        );
        let (status, _) = raw(gw.http, &request).await;
        assert_eq!(status, 200, "{server}");
        assert_no_client_identity(&upstream.last(), &[]);
        gw.stop().await;
    }
    // Without the operator's list, its names are ordinary headers.
    let gw = Gateway::start(public_route(&upstream)).await;
    let (status, _) = raw(
        gw.http,
        "GET /ok HTTP/1.1\r\nHost: app.test\r\nX-Internal-Role: kept\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.last().header("x-internal-role").as_deref(), Some("kept"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_client_are_replaced_by_the_proxys_own() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let (status, _) = raw(
        gw.http,
        &request_with(SPOOFED_FORWARDING, "X-Request-Id: forged-id\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let seen = upstream.last();
    assert!(
        seen.headers.values().all(|v| v != "spoofed"),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(seen.header("x-forwarded-proto").unwrap(), "http");
    assert_eq!(seen.header("x-forwarded-host").unwrap(), "app.test");
    assert_eq!(
        seen.header("forwarded").unwrap(),
        "for=127.0.0.1;proto=http;host=\"app.test\""
    );
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    let id = seen.header("x-request-id").unwrap();
    assert_ne!(id, "forged-id");
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_hop_extends_the_forwarding_chain_and_keeps_its_request_id() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream).server("trusted_proxies", ["127.0.0.0/8"])).await;
    let request = "GET /ok HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\
                   Forwarded: for=203.0.113.7;proto=https\r\nX-Request-Id: edge-42\r\nConnection: close\r\n\r\n";
    let (status, text) = raw(gw.http, request).await;
    assert_eq!(status, 200);
    assert!(text.to_ascii_lowercase().contains("x-request-id: edge-42"));
    let seen = upstream.last();
    assert_eq!(seen.header("x-forwarded-for").unwrap(), "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.header("x-forwarded-proto").unwrap(), "https");
    assert_eq!(
        seen.header("forwarded").unwrap(),
        "for=203.0.113.7;proto=https, for=127.0.0.1;proto=http;host=\"app.test\""
    );
    assert_eq!(seen.header("x-request-id").unwrap(), "edge-42");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_hop_cannot_inject_a_malformed_request_id() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream).server("trusted_proxies", ["127.0.0.1/32"])).await;
    let (status, _) = get(gw.http, "/ok", &[("x-request-id", "a b\"<script>")]).await;
    assert_eq!(status, 200);
    assert_ne!(upstream.last().header("x-request-id").unwrap(), "a b\"<script>");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_in_connection_and_hop_by_hop_headers_are_removed() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let request = "GET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: close, X-Secret-Hop, x_other_hop\r\nX-Secret-Hop: 1\r\n\
                   X-Other-Hop: 2\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n\
                   TE: gzip\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n";
    let (status, _) = raw(gw.http, request).await;
    assert_eq!(status, 200);
    let seen = upstream.last();
    for name in [
        "x-secret-hop",
        "x-other-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(!seen.has_any_spelling_of(name), "{name} reached the upstream");
    }
    assert_eq!(seen.header("x-kept").unwrap(), "yes");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_headers_are_dropped_so_the_decided_method_is_the_one_served() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let (status, _) = raw(gw.http, &request_with(METHOD_OVERRIDES, "")).await;
    assert_eq!(status, 200);
    let seen = upstream.last();
    assert_eq!(seen.method, "GET");
    assert!(
        seen.headers.values().all(|v| v != "spoofed"),
        "{:?}",
        seen.headers
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_its_own_host_unless_the_route_preserves_the_clients() {
    let upstream = Recorder::start().await;
    let plain = Gateway::start(public_route(&upstream)).await;
    get(plain.http, "/ok", &[]).await;
    assert_eq!(upstream.last().header("host").unwrap(), upstream.addr.to_string());
    plain.stop().await;

    let route = Route::public("app")
        .host("app.test")
        .upstream(&upstream)
        .set("preserve_host", true);
    let preserving = Gateway::start(Config::new().route(route)).await;
    get(preserving.http, "/ok", &[]).await;
    assert_eq!(upstream.last().header("host").unwrap(), "app.test");
    preserving.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_crumbs_reach_an_http1_upstream_as_one_cookie_header_without_the_proxys_own() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let mut sender = support::h2c(gw.http).await;
    let request = http::Request::builder()
        .uri("http://app.test/")
        .header("cookie", "theme=dark")
        .header("cookie", "__Host-portcullis_session=not-for-the-upstream")
        .header("cookie", "csrftoken=abc; lang=en")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["theme=dark; csrftoken=abc; lang=en"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_too_no_identity_or_trusted_hop_header_from_a_client_reaches_the_upstream() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(strip_extra().merge(public_route(&upstream))).await;
    let mut sender = support::h2c(gw.http).await;
    let mut request = http::Request::builder()
        .uri("http://app.test/ok")
        .version(http::Version::HTTP_2);
    for name in support::IDENTITY_SPOOFS.iter().chain(SPOOFED_FORWARDING) {
        request = request.header(name.to_ascii_lowercase(), "spoofed-by-client");
    }
    let response = sender
        .send_request(
            request
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_no_client_identity(&seen, &[]);
    for name in SPOOFED_FORWARDING {
        let norm = name.to_ascii_lowercase().replace(['_', '.'], "-");
        assert!(
            seen.header(&norm).is_none_or(|v| v != "spoofed-by-client"),
            "{name} reached the upstream"
        );
    }
    gw.stop().await;
}
