//! The canonical request view, end to end: for each raw request target, either the exact path the
//! upstream received and the route that served it, or a 400 with nothing forwarded.
#![cfg(test)]

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use support::{Config, Gateway, Recorder, Route, raw, raw_get};

/// Each upstream names itself in its body, so a response tells which route served it.
async fn named(name: &'static str) -> Recorder {
    Recorder::with(Arc::new(move |_| {
        Response::new(Full::new(Bytes::from_static(name.as_bytes())))
    }))
    .await
}

enum Expect {
    /// Forwarded by this route with exactly this target.
    To(&'static str, &'static str),
    /// Refused with this status, nothing forwarded.
    Refused(u16),
}
use Expect::{Refused, To};

const TABLE: &[(&str, Expect)] = &[
    ("/api/v1/dags", To("api", "/api/v1/dags")),
    ("/api/./v1", To("api", "/api/v1")),
    ("/api/v1/../v2", To("api", "/api/v2")),
    ("/x/../api/v1", To("api", "/api/v1")),
    ("//api//v1", To("api", "/api/v1")),
    ("/../../api/x", To("api", "/api/x")),
    ("/%2e/api", To("api", "/api")),
    ("/api/...", To("api", "/api/...")),
    ("/api", To("api", "/api")),
    ("/api/", To("api", "/api/")),
    ("/apiv1", To("root", "/apiv1")),
    ("/API/v1", To("root", "/API/v1")),
    ("/ADMIN", To("root", "/ADMIN")),
    ("/admin/../api/x", To("api", "/api/x")),
    ("/api/%41BC", To("api", "/api/ABC")),
    ("/api/a%20b", To("api", "/api/a%20b")),
    ("/api/%E2%82%AC", To("api", "/api/%E2%82%AC")),
    ("/api/%e2%82%ac", To("api", "/api/%E2%82%AC")),
    ("/api/%3Bx", To("api", "/api/%3Bx")),
    ("/api/x?q=%2F..%2F&r=1", To("api", "/api/x?q=%2F..%2F&r=1")),
    // dot segments that lead into the protected route are resolved before routing
    ("/api/%2e%2e/admin", Refused(401)),
    ("/api/%2E%2E/admin/", Refused(401)),
    ("/api/./../admin/./x", Refused(401)),
    ("/admin", Refused(401)),
    // encoded separators
    ("/api%2Fv1", Refused(400)),
    ("/api%2fv1", Refused(400)),
    ("/api/..%2fadmin", Refused(400)),
    ("/api/%5Cv1", Refused(400)),
    ("/api/%5cv1", Refused(400)),
    // double encoding that would decode again
    ("/api%252fv1", Refused(400)),
    ("/api/%252e%252e/admin", Refused(400)),
    ("/api/%2541", Refused(400)),
    // path parameters
    ("/api;jsessionid=1", Refused(400)),
    ("/api/v1;x=1", Refused(400)),
    ("/admin;/../api", Refused(400)),
    // control characters, decoded
    ("/api/%00", Refused(400)),
    ("/api/%0d%0a", Refused(400)),
    ("/api/%09", Refused(400)),
    ("/api/%7f", Refused(400)),
    // invalid and overlong UTF-8
    ("/%C0%AE%C0%AE/admin", Refused(400)),
    ("/api/%C0%AF", Refused(400)),
    ("/api/%ff", Refused(400)),
    ("/api/%E2%82", Refused(400)),
    // broken escapes
    ("/api/a%", Refused(400)),
    ("/api/a%g1", Refused(400)),
    ("/api/a%2", Refused(400)),
    // not an origin-form path
    ("*", Refused(400)),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_in_the_table_is_forwarded_exactly_canonical_or_refused() {
    let api = named("api").await;
    let root = named("root").await;
    let under = |route: Route, prefix: &str, upstream: &Recorder| {
        route
            .host("app.test")
            .set("path_prefix", prefix)
            .upstream(upstream)
    };
    let routes = Config::new()
        .route(under(Route::public("api"), "/api", &api))
        .route(under(Route::protected("admin"), "/admin", &api))
        .route(under(Route::public("root"), "/", &root));
    let gw = Gateway::start(routes).await;
    let mut failures = Vec::new();
    for (target, expect) in TABLE {
        let before = api.requests().len() + root.requests().len();
        let (status, text) = raw_get(gw.http, "app.test", target).await;
        let after_api = api.requests();
        let after_root = root.requests();
        match expect {
            To(route, path) => {
                let upstream = if *route == "api" { &after_api } else { &after_root };
                let body_names_route = text.ends_with(route);
                let got = upstream.last().map(|s| s.target.clone()).unwrap_or_default();
                if status != 200 || !body_names_route || got != *path {
                    failures.push(format!("{target}: expected {route} {path}, got {status} {got:?}"));
                }
            }
            Refused(code) => {
                let forwarded = after_api.len() + after_root.len() - before;
                if status != *code || forwarded != 0 {
                    failures.push(format!("{target}: expected {code} and nothing forwarded, got {status} ({forwarded} forwarded)"));
                }
                if *code == 400 && !text.contains("request_id") && !text.is_empty() {
                    failures.push(format!("{target}: a 400 without a request id"));
                }
            }
        }
    }
    assert!(TABLE.len() >= 30);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n")
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_gets_404_and_nothing_is_forwarded_anywhere() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(support::public_route(&upstream)).await;
    for host in ["other.test", "app.test.evil", "xapp.test", "[::1]", "127.0.0.1"] {
        let (status, body) = raw_get(gw.http, host, "/").await;
        assert_eq!(status, 404, "{host}");
        assert!(body.contains("route_not_found"), "{host}: {body}");
    }
    assert!(upstream.requests().is_empty());
    let events = gw.audit_events(5).await;
    assert_eq!(events.len(), 5);
    assert!(
        events
            .iter()
            .all(|e| e["portcullis.reason"] == "route_not_found" && e["portcullis.decision"] == "deny")
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_match_exactly_or_by_wildcard_case_insensitively_and_ignore_the_port() {
    let exact = named("exact").await;
    let wild = named("wild").await;
    let routes = Config::new()
        .route(Route::public("exact").host("a.example.test").upstream(&exact))
        .route(Route::public("wild").host("*.example.test").upstream(&wild));
    let gw = Gateway::start(routes).await;
    for (host, expect) in [
        ("a.example.test", Some("exact")),
        ("A.EXAMPLE.TEST:8080", Some("exact")),
        ("b.example.test", Some("wild")),
        ("deep.b.example.test", Some("wild")),
        ("example.test", None),
    ] {
        let (status, text) = raw_get(gw.http, host, "/").await;
        match expect {
            Some(name) => assert!(status == 200 && text.ends_with(name), "{host}: {status} {text}"),
            None => assert_eq!(status, 404, "{host}"),
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_authorities_and_connect_are_refused_with_400() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(support::public_route(&upstream)).await;
    let cases = [
        "GET http://other.test/ HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        "GET http://app.test/ HTTP/1.1\r\nHost: app.test:444\r\nConnection: close\r\n\r\n",
        "GET https://app.test/ HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@app.test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\nConnection: close\r\n\r\n",
    ];
    for request in cases {
        let (status, _) = raw(gw.http, request).await;
        assert_eq!(status, 400, "{request:?}");
    }
    let (status, _) = raw(
        gw.http,
        "GET http://app.test/ok HTTP/1.1\r\nHost: app.test:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(upstream.last().target, "/ok");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_authority_and_host_header_that_disagree_are_refused_with_400() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(support::public_route(&upstream)).await;
    let mut sender = support::h2c(gw.http).await;
    let mut send = |authority: &str, host: Option<&str>| {
        let mut req = http::Request::builder().uri(format!("http://{authority}/ok"));
        if let Some(host) = host {
            req = req.header("host", host);
        }
        sender.send_request(req.body(Full::new(Bytes::new())).unwrap())
    };
    for (authority, host) in [
        ("app.test", "other.test"),
        ("other.test", "app.test"),
        ("app.test", "app.test:444"),
        ("user@app.test", "app.test"),
    ] {
        let response = send(authority, Some(host)).await.unwrap();
        assert_eq!(response.status(), 400, ":authority {authority}, host {host}");
    }
    assert!(upstream.requests().is_empty());
    // The same authority twice (the port the scheme implies included) is one authority.
    for host in [None, Some("app.test"), Some("APP.test:80")] {
        let response = send("app.test", host).await.unwrap();
        assert_eq!(response.status(), 200, "host {host:?}");
    }
    assert_eq!(upstream.requests().len(), 3);
    assert_eq!(upstream.last().target, "/ok");
    gw.stop().await;
}
