//! When things go wrong: the upstream is down or slow, the client is slow, the route is closed,
//! the process is told to stop. Each answer is the documented status, audited once.
#![cfg(test)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use support::serve::{Serve, Server, serve};
use support::{Binary, Config, Gateway, Recorder, Route, get, public_route, raw, raw_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use toml::toml;

/// A recording upstream behind a public route, the proxy started with these `[server.limits]`.
async fn limited(limits: toml::Table) -> (Recorder, Gateway) {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream).set("server.limits", limits)).await;
    (upstream, gw)
}

/// An HTTP/1.1 upstream that answers every request `slow` after `delay`.
async fn slow_upstream(delay: Duration) -> Server {
    serve(Serve::http1(), move |_, _| async move {
        tokio::time::sleep(delay).await;
        Response::new(Full::new(Bytes::from_static(b"slow")))
    })
    .await
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_answers_502_and_is_audited_as_an_allowed_request_that_failed() {
    let down = closed_port().await;
    let gw = Gateway::start(public_route(down)).await;
    let (status, body) = get(gw.http, "/x", &[]).await;
    assert_eq!(status, 502);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "upstream_unavailable");
    // The random request id is left out: it may contain the port's digits by chance.
    let request_id = json["request_id"].as_str().unwrap_or_default();
    assert!(
        !body.replace(request_id, "").contains(&down.port().to_string()),
        "internal detail leaked: {body}"
    );
    let events = gw.audit_events(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["portcullis.decision"], "allow");
    assert_eq!(events[0]["http.response.status_code"], 502);
    assert_eq!(events[0]["error.type"], "upstream_unavailable");
    assert!(
        gw.metrics()
            .await
            .contains("portcullis_upstream_errors_total{route=\"app\",kind=\"upstream_unavailable\"} 1")
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_answers_504_after_the_route_timeout() {
    let slow = slow_upstream(Duration::from_secs(5)).await;
    let route = Route::public("app")
        .host("app.test")
        .upstream(&slow)
        .set("timeout", "300ms");
    let gw = Gateway::start(Config::new().route(route)).await;
    let started = Instant::now();
    let (status, body) = get(gw.http, "/x", &[]).await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(body.contains("upstream_timeout"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off_audited_and_nothing_is_forwarded() {
    let (upstream, gw) = limited(toml! { header_read_timeout = "300ms" }).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(upstream.requests().is_empty());
    // The unfinished head is one audited refusal.
    let events = gw.audit_events(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["portcullis.decision"], "deny");
    assert_eq!(events[0]["portcullis.reason"], "header_timeout");
    assert_eq!(events[0]["http.response.status_code"], 408);

    // A keep-alive connection that answered its request and then stays quiet until the header
    // read timeout is closed without another record.
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the quiet connection stayed open"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reasons: Vec<String> = gw
        .audit_events(2)
        .await
        .iter()
        .map(|e| e["portcullis.reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons, ["header_timeout", "public_route"]);
    gw.stop().await;
}

/// A keep-alive HTTP/1.1 connection to `addr` on which `GET target` for app.test was answered
/// 200, left open.
async fn kept_alive(addr: SocketAddr, target: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_upstream, gw) = limited(toml! { idle_timeout = "400ms" header_read_timeout = "30s" }).await;
    let mut stream = kept_alive(gw.http, "/").await;
    let mut buf = vec![0u8; 4096];
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "expected the proxy to close the idle connection"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    gw.stop().await;
}

/// An HTTP/2 frame: 9-byte header (length, type, flags, stream 0) and payload.
fn h2_frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

/// A connection to `addr` that has spoken HTTP/2's preface and an empty SETTINGS frame, and
/// nothing more.
async fn h2_opened(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&h2_frame(0x4, 0, &[])).await.unwrap();
    stream
}

/// Whether `received` holds a GOAWAY frame (type 7, 8-byte payload, no debug data).
fn has_goaway(received: &[u8]) -> bool {
    received.windows(4).any(|w| w[3] == 0x7 && w[..3] == [0, 0, 8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_only_pings_is_closed_after_the_idle_timeout() {
    // The header read timeout also bounds how long a peer may ignore the GOAWAY.
    let (upstream, gw) = limited(toml! { idle_timeout = "400ms" header_read_timeout = "300ms" }).await;
    let (mut reader, mut writer) = h2_opened(gw.http).await.into_split();
    // Bytes keep moving both ways (PING and its ACK every 100 ms), but no request ever begins.
    let pinger = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(&h2_frame(0x6, 0, &[7; 8])).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    pinger.abort();
    assert!(closed.is_ok(), "the pinging connection was still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Closed gracefully: a GOAWAY frame (type 7) came before the end.
    assert!(has_goaway(&received), "no GOAWAY among {} bytes", received.len());
    assert!(upstream.requests().is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_with_no_request_within_the_header_read_timeout_gets_a_goaway() {
    let (upstream, gw) = limited(toml! { header_read_timeout = "300ms" idle_timeout = "60s" }).await;
    let mut stream = h2_opened(gw.http).await;
    let started = Instant::now();
    let mut received = Vec::new();
    let goaway = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        while !has_goaway(&received) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        goaway.is_ok(),
        "no GOAWAY within 5 s of a connection with no request"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Nothing was asked, so nothing was served or recorded.
    assert!(upstream.requests().is_empty());
    assert!(gw.audit_events(0).await.is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_headers_are_refused_before_routing() {
    let (upstream, gw) = limited(toml! { max_headers = 20 max_header_bytes = 8192 }).await;
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = raw(
        gw.http,
        &format!("GET / HTTP/1.1\r\nHost: app.test\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431);
    let big = "a".repeat(16 * 1024);
    let (status, _) = raw(
        gw.http,
        &format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431);
    let (status, _) = raw(gw.http, "GET / HTTP/1.1\r\nHost app.test\r\n\r\n").await;
    assert_eq!(status, 400);
    assert!(upstream.requests().is_empty());
    // Refused while hyper read them, and still each one audited action.
    let events = gw.audit_events(3).await;
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e["portcullis.reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["headers_too_large", "headers_too_large", "malformed_request"]
    );
    for e in &events {
        assert_eq!(e["portcullis.decision"], "deny");
        assert_eq!(e["http.request.method"], "_OTHER");
        assert!(e.get("url.path").is_none());
    }
    assert_eq!(events[0]["http.response.status_code"], 431);
    assert_eq!(events[2]["http.response.status_code"], 400);
    gw.stop().await;
}

/// An HTTP/2 GET for `/` on app.test with `headers`, and its status once the whole answer has
/// arrived (the access record is written when the body ends); no answer fails the test.
async fn h2_get(gw: &Gateway, headers: &[(&str, String)]) -> u16 {
    let mut sender = support::h2c(gw.http).await;
    let mut req = http::Request::builder().uri("http://app.test/");
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let req = req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
    match sender.send_request(req).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            status
        }
        Err(e) => panic!("the HTTP/2 request failed instead of getting an answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_heads_over_the_limits_get_431_each_audited_with_its_method() {
    let (upstream, gw) = limited(toml! { max_headers = 20 max_header_bytes = 8192 }).await;
    // Within the limits: 19 fields, and 30 cookie crumbs that are one Cookie header.
    let mut fine: Vec<(&str, String)> = (0..18).map(|i| ("x-h", format!("v{i}"))).collect();
    fine.extend((0..30).map(|i| ("cookie", format!("c{i}=1"))));
    assert_eq!(h2_get(&gw, &fine).await, 200);
    let many: Vec<(&str, String)> = (0..40).map(|i| ("x-h", format!("v{i}"))).collect();
    assert_eq!(h2_get(&gw, &many).await, 431);
    assert_eq!(h2_get(&gw, &[("x-big", "a".repeat(9 * 1024))]).await, 431);
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the request within the limits is forwarded"
    );

    let events = gw.audit_events(3).await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["portcullis.reason"], "public_route");
    for e in &events[1..] {
        assert_eq!(e["portcullis.decision"], "deny");
        assert_eq!(e["portcullis.reason"], "headers_too_large");
        assert_eq!(e["http.response.status_code"], 431);
        assert_eq!(e["http.request.method"], "GET");
        assert_eq!(e["network.protocol.version"], "2");
    }

    // Far over (beyond the codec's cap of twice the limits) the h2 codec refuses it itself.
    let mut sender = support::h2c(gw.http).await;
    let req = http::Request::builder()
        .uri("http://app.test/")
        .header("x-huge", "a".repeat(64 * 1024))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    if let Ok(response) = sender.send_request(req).await {
        assert_eq!(response.status(), 431);
    }
    assert_eq!(upstream.requests().len(), 1, "nothing more is forwarded");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_route_fails_closed_with_401_and_forwards_nothing() {
    let upstream = Recorder::start().await;
    let route = Route::protected("app").host("app.test").upstream(&upstream);
    let gw = Gateway::start(Config::new().route(route)).await;
    let response = support::send(
        gw.http,
        http::Method::POST,
        "/api/v1/dags/etl/dagRuns",
        &[],
        "{}".into(),
    )
    .await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("www-authenticate").is_some());
    let (status, html) = get(gw.http, "/ui", &[("accept", "text/html,application/xhtml+xml")]).await;
    assert_eq!(status, 401);
    assert!(
        html.starts_with("<!doctype html>") && html.contains("Request id"),
        "{html}"
    );
    assert!(upstream.requests().is_empty());
    let events = gw.audit_events(2).await;
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e["portcullis.decision"], "deny");
        assert_eq!(e["portcullis.reason"], "no_credentials");
        assert_eq!(e["portcullis.route"], "app");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_yields_exactly_one_audit_event_with_its_request_id() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let mut ids = Vec::new();
    for target in ["/a", "/b%2fc", "/d", "/e;x"] {
        let (_, text) = raw_get(gw.http, "app.test", target).await;
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap()
            .trim()
            .to_string();
        ids.push(id);
    }
    let (_, text) = raw_get(gw.http, "nowhere.test", "/").await;
    ids.push(
        text.lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap()
            .trim()
            .to_string(),
    );
    let events = gw.audit_events(5).await;
    let logged: Vec<&str> = events
        .iter()
        .map(|e| e["portcullis.request.id"].as_str().unwrap())
        .collect();
    assert_eq!(logged, ids);
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e["portcullis.reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "public_route",
            "ambiguous_path",
            "public_route",
            "ambiguous_path",
            "route_not_found"
        ]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    let slow = slow_upstream(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = public_route(&slow)
        .server("shutdown_grace", "10s")
        .set("audit.path", dir.path().join("audit.jsonl"));
    let child = Binary::serve(dir.path(), &config, &[]).await;
    let http = child.http;

    let in_flight = tokio::spawn(async move { raw_get(http, "app.test", "/slow").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    child.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(http).await.is_err(),
        "a new connection was accepted during shutdown"
    );

    let (status, text) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("slow"));
    let exit = child.exit().await;
    assert!(exit.success());
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(
        audit.lines().count(),
        1,
        "the in-flight request's audit event was written before exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let (upstream, gw) = limited(toml! { max_connections = 1 }).await;
    let first = kept_alive(gw.http, "/first").await;

    // The first connection stays open (keep-alive), so the second is not served yet.
    let second = tokio::spawn(async move { raw_get(gw.http, "app.test", "/second").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!second.is_finished(), "a connection over the limit was served");
    assert_eq!(upstream.requests().len(), 1);

    drop(first);
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(upstream.last().target, "/second");
    let metrics = gw.metrics().await;
    assert!(metrics.contains("portcullis_open_connections"), "{metrics}");
    gw.stop().await;
}
