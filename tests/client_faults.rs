//! Whatever the client does, every action has exactly one record, and the client's faults are
//! the client's: a client that leaves (HTTP/1 close, HTTP/2 `RST_STREAM`) before the answer or
//! during it, a malformed or stalled request body, a head that frames its body two ways, and
//! upgrades a route does not allow (`h2c` above all).
#![cfg(test)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::Value;
use support::serve::{Serve, Server, serve};
use support::{Config, Gateway, Recorder, Route, public_route, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The records for `path`, after waiting for `at_least` of them and a moment more (so that a
/// second record, if one were written, would be seen).
async fn records_for(gw: &Gateway, path: &str, at_least: usize) -> Vec<Value> {
    for _ in 0..250 {
        let found = matching(gw, path).await;
        if found.len() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    matching(gw, path).await
}

async fn matching(gw: &Gateway, path: &str) -> Vec<Value> {
    gw.audit_events(0)
        .await
        .into_iter()
        .filter(|e| e["url.path"] == path)
        .collect()
}

/// An HTTP/2 client connection (the h2 codec itself, so a test can reset a stream).
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.unwrap()
}

fn h2_request(method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://app.test{path}"))
        .body(())
        .unwrap()
}

/// The client's fault is never counted as the upstream's.
async fn assert_no_upstream_error(gw: &Gateway) {
    let metrics = gw.metrics().await;
    // The series exist from the start, at zero: none may have counted anything.
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_upstream_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(counted.is_empty(), "{counted:?} in:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_client_leaves_before_the_answer_completes_upstream_and_is_recorded_once_as_client_closed()
 {
    let upstream = Recorder::slow(Duration::from_secs(2)).await;
    let gw = Gateway::start(public_route(&upstream)).await;

    // HTTP/1.1: the client closes its connection 0.3 s after sending the whole request.
    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(b"POST /h1/dags/etl/dagRuns HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);

    // HTTP/2: the client resets the stream 0.3 s after sending the whole request.
    let mut client = h2_client(gw.http).await;
    let (response, mut stream) = client
        .send_request(h2_request("POST", "/h2/dags/etl/dagRuns"), false)
        .unwrap();
    stream.send_data(Bytes::from_static(b"{}"), true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(response);

    for path in ["/h1/dags/etl/dagRuns", "/h2/dags/etl/dagRuns"] {
        let records = records_for(&gw, path, 1).await;
        assert_eq!(records.len(), 1, "{path}: {records:?}");
        let r = &records[0];
        assert_eq!(r["portcullis.decision"], "allow", "{path}");
        assert_eq!(r["http.response.status_code"], 499, "{path}");
        assert_eq!(r["portcullis.outcome"], "client_closed", "{path}");
        // The upstream executed the action and answered; the record says so.
        assert_eq!(r["portcullis.upstream.status_code"], 200, "{path}");
        assert_eq!(r["http.request.body.size"], 2, "{path}");
        assert!(
            r["portcullis.duration.upstream_ms"].as_f64().unwrap() >= 1900.0,
            "{path}"
        );
        assert!(r.get("error.type").is_none_or(|t| t == "client_closed"), "{path}");
    }
    let received: Vec<String> = upstream.requests().iter().map(|s| s.target.clone()).collect();
    assert_eq!(received, ["/h1/dags/etl/dagRuns", "/h2/dags/etl/dagRuns"]);
    assert_no_upstream_error(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_client_leaves_is_cancelled_upstream_and_recorded_once() {
    let upstream = Recorder::slow(Duration::from_secs(2)).await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(b"GET /h1/dags HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut client = h2_client(gw.http).await;
    let (response, mut stream) = client.send_request(h2_request("GET", "/h2/dags"), true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);
    stream.send_reset(h2::Reason::CANCEL);
    drop(response);
    for path in ["/h1/dags", "/h2/dags"] {
        let records = records_for(&gw, path, 1).await;
        assert_eq!(records.len(), 1, "{path}: {records:?}");
        assert_eq!(records[0]["http.response.status_code"], 499, "{path}");
        assert_eq!(records[0]["portcullis.outcome"], "client_closed", "{path}");
        // A read is not worth finishing for nobody: the upstream exchange was dropped.
        assert!(
            records[0].get("portcullis.upstream.status_code").is_none(),
            "{path}"
        );
    }
    gw.stop().await;
}

/// An upstream that answers a 1 MB body slowly (64 KiB every 20 ms).
async fn slow_download() -> Server {
    serve(Serve::http1(), |_, _| async {
        let chunks = futures_util::stream::unfold(0, |i| async move {
            if i == 16 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let chunk = Frame::data(Bytes::from(vec![b'x'; 65536]));
            Some((Ok::<_, std::convert::Infallible>(chunk), i + 1))
        });
        Response::builder()
            .header("content-length", "1048576")
            .body(StreamBody::new(chunks))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_the_client_cuts_off_is_recorded_once_with_the_bytes_it_got() {
    let upstream = slow_download().await;
    let gw = Gateway::start(public_route(&upstream)).await;

    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(b"GET /h1/artifact HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 16384];
    while got < 100_000 {
        got += tcp.read(&mut buf).await.unwrap();
    }
    drop(tcp);

    let mut client = h2_client(gw.http).await;
    let (response, _) = client
        .send_request(h2_request("GET", "/h2/artifact"), true)
        .unwrap();
    let mut body = response.await.unwrap().into_body();
    let mut got = 0;
    while got < 100_000 {
        let data = body.data().await.unwrap().unwrap();
        got += data.len();
        let _ = body.flow_control().release_capacity(data.len());
    }
    drop(body);
    drop(client);

    for path in ["/h1/artifact", "/h2/artifact"] {
        let records = records_for(&gw, path, 1).await;
        assert_eq!(records.len(), 1, "{path}: {records:?}");
        let r = &records[0];
        assert_eq!(r["http.response.status_code"], 200, "{path}");
        assert_eq!(r["portcullis.outcome"], "client_closed", "{path}");
        let sent = r["http.response.body.size"].as_u64().unwrap();
        assert!(sent > 0 && sent < 1_048_576, "{path}: {sent}");
    }
    // A download that completes says so, with every byte.
    let (status, body) = support::get(gw.http, "/whole", &[]).await;
    assert_eq!((status.as_u16(), body.len()), (200, 1_048_576));
    let records = records_for(&gw, "/whole", 1).await;
    assert_eq!(records[0]["portcullis.outcome"], "completed");
    assert_eq!(records[0]["http.response.body.size"], 1_048_576);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_reset_before_its_body_ends_is_recorded_once() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let mut client = h2_client(gw.http).await;
    // HEADERS without END_STREAM, then RST_STREAM: at once, after some DATA, after a pause.
    for (i, (data, pause)) in [(0usize, 0u64), (100, 0), (100, 200), (0, 200)]
        .iter()
        .enumerate()
    {
        let (response, mut stream) = client
            .send_request(h2_request("POST", &format!("/reset/{i}")), false)
            .unwrap();
        if *data > 0 {
            stream.send_data(Bytes::from(vec![b'a'; *data]), false).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(*pause)).await;
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
    }
    for i in 0..4 {
        let path = format!("/reset/{i}");
        let records = records_for(&gw, &path, 1).await;
        assert_eq!(records.len(), 1, "{path}: {records:?}");
        assert_eq!(records[0]["http.response.status_code"], 499, "{path}");
        assert_eq!(records[0]["portcullis.outcome"], "client_closed", "{path}");
    }
    assert_no_upstream_error(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_client_s_400_never_an_upstream_failure() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(20_000));
    let bodies = [
        ("bare-lf", "5\nhello\r\n0\r\n\r\n".to_string()),
        ("hex-prefix", "0x5\r\nhello\r\n0\r\n\r\n".to_string()),
        ("plus-sign", "+5\r\nhello\r\n0\r\n\r\n".to_string()),
        (
            "overflow",
            "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n".to_string(),
        ),
        ("long-extension", long_extension),
        ("no-crlf-after-data", "5\r\nhelloXX0\r\n\r\n".to_string()),
    ];
    for (name, body) in &bodies {
        let request = format!(
            "POST /chunked/{name} HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let (status, text) = raw(gw.http, &request).await;
        assert_eq!(status, 400, "{name}: {text}");
        assert!(text.contains("bad_request_body"), "{name}: {text}");
    }
    for (name, _) in &bodies {
        let path = format!("/chunked/{name}");
        let records = records_for(&gw, &path, 1).await;
        assert_eq!(records.len(), 1, "{name}");
        assert_eq!(records[0]["portcullis.reason"], "bad_request_body", "{name}");
        assert_eq!(records[0]["http.response.status_code"], 400, "{name}");
    }
    // A client that closes in the middle of its body is gone, not malformed.
    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(b"POST /eof HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    tcp.shutdown().await.unwrap();
    let records = records_for(&gw, "/eof", 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["http.response.status_code"], 499);
    assert_eq!(records[0]["portcullis.outcome"], "client_closed");
    assert_eq!(records[0]["http.request.body.size"], 10);
    assert_no_upstream_error(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_body_timeout_after_the_idle_timeout_on_both_protocols() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream).set("server.limits.idle_timeout", "700ms")).await;
    let started = std::time::Instant::now();
    let (status, text) = raw(
        gw.http,
        "POST /stall/h1 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\nab",
    )
    .await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the route timeout (30 s) was not awaited"
    );

    let mut client = h2_client(gw.http).await;
    let request = http::Request::builder()
        .method("POST")
        .uri("http://app.test/stall/h2")
        .header("content-length", "1000")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream.send_data(Bytes::from_static(b"ab"), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 408);
    drop(stream);

    for path in ["/stall/h1", "/stall/h2"] {
        let records = records_for(&gw, path, 1).await;
        assert_eq!(records.len(), 1, "{path}");
        assert_eq!(records[0]["portcullis.reason"], "body_timeout", "{path}");
        assert_eq!(records[0]["http.response.status_code"], 408, "{path}");
    }
    assert_no_upstream_error(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_frames_its_body_two_ways_is_refused_with_400_and_forwards_nothing() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let heads = [
        (
            "cl-then-te",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "te-then-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        ),
        (
            "te-twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        ("te-list", "Transfer-Encoding: chunked, chunked\r\n"),
        ("cl-case", "content-LENGTH: 5\r\ntransfer-encoding: chunked\r\n"),
    ];
    for (name, head) in heads {
        let request =
            format!("POST /framing/{name} HTTP/1.1\r\nHost: app.test\r\n{head}\r\n5\r\nhello\r\n0\r\n\r\n");
        let (status, text) = raw(gw.http, &request).await;
        assert_eq!(status, 400, "{name}: {text}");
        let records = records_for(&gw, &format!("/framing/{name}"), 1).await;
        assert_eq!(records.len(), 1, "{name}");
        assert_eq!(records[0]["portcullis.reason"], "bad_request_body", "{name}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    // One framing is fine, and so is a chunked body whose data mentions the header names.
    let request = "POST /framing/ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                   13\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    let (status, text) = raw(gw.http, request).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(upstream.last().body_len, 19);
    gw.stop().await;
}

/// An upstream that answers every request `101 Switching Protocols` to `h2c` and then speaks
/// nothing: what a server that honours h2c upgrades looks like to the proxy.
async fn h2c_upgrading_upstream() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&seen).to_ascii_lowercase());
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_never_forwarded_and_an_upstream_that_switches_anyway_gets_no_tunnel() {
    let (upstream, heads) = h2c_upgrading_upstream().await;
    let gw = Gateway::start(public_route(upstream)).await;
    let variants = [
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
        "Connection: upgrade\r\nUpgrade: H2C\r\n",
        "Connection: keep-alive, Upgrade\r\nUpgrade: h2c, websocket\r\n",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n",
        "Connection: Upgrade\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nUpgrade: h2c\r\n",
    ];
    for (i, headers) in variants.iter().enumerate() {
        let mut tcp = TcpStream::connect(gw.http).await.unwrap();
        let request = format!("GET /h2c/{i} HTTP/1.1\r\nHost: app.test\r\n{headers}\r\n");
        let request = request.replacen("Connection: ", "Connection: close, ", 1);
        tcp.write_all(request.as_bytes()).await.unwrap();
        // The client would now speak HTTP/2 straight to the upstream, for any path.
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 502"), "variant {i}: {text}");
        // One answer, and it is not the upstream's 101 (a request id may well contain "101").
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "variant {i}: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(
            !lower.contains("switching protocols") && !lower.contains("upgrade:"),
            "variant {i}: {text}"
        );
    }
    for head in heads.lock().unwrap().iter() {
        assert!(
            !head.contains("upgrade: h2c") && !head.contains("http2-settings"),
            "{head}"
        );
        assert!(
            !head.contains("upgrade:"),
            "an Upgrade reached the upstream: {head}"
        );
    }
    assert_eq!(heads.lock().unwrap().len(), variants.len());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_needs_a_valid_handshake_and_a_route_that_allows_it() {
    let upstream = Recorder::start().await;
    let plain = Route::public("plain")
        .host("plain.test")
        .set("upgrades", Vec::<&str>::new())
        .upstream(&upstream);
    let gw = Gateway::start(public_route(&upstream).route(plain)).await;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let broken = [
        ("no-key", "Sec-WebSocket-Version: 13\r\n".to_string(), "GET"),
        (
            "short-key",
            "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n".into(),
            "GET",
        ),
        ("old-version", format!("{key}Sec-WebSocket-Version: 8\r\n"), "GET"),
        (
            "two-keys",
            format!("{key}{key}Sec-WebSocket-Version: 13\r\n"),
            "GET",
        ),
        ("post", format!("{key}Sec-WebSocket-Version: 13\r\n"), "POST"),
    ];
    for (name, headers, method) in &broken {
        let request = format!(
            "{method} /ws/{name} HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n{headers}Content-Length: 0\r\n\r\n"
        );
        let (status, text) = raw(gw.http, &request).await;
        assert_eq!(status, 400, "{name}: {text}");
    }
    assert!(upstream.requests().is_empty());
    // On a route that allows no upgrade, a WebSocket handshake is an ordinary request.
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: plain.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{key}Sec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = raw(gw.http, &request).await;
    assert_eq!(status, 200);
    let seen = upstream.last();
    assert!(seen.header("upgrade").is_none() && seen.header("connection").is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_extended_connect_is_refused_and_recorded() {
    let upstream = Recorder::start().await;
    let gw = Gateway::start(public_route(&upstream)).await;
    let mut client = h2_client(gw.http).await;
    for protocol in ["websocket", "h2c"] {
        let mut request = http::Request::builder()
            .method("CONNECT")
            .uri("http://app.test/tunnel")
            .body(())
            .unwrap();
        request.extensions_mut().insert(h2::ext::Protocol::from(protocol));
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert!(
            response.status().is_client_error(),
            "{protocol}: {}",
            response.status()
        );
    }
    assert!(upstream.requests().is_empty());
    let events = gw.audit_events(2).await;
    assert!(
        events.iter().all(|e| e["portcullis.decision"] == "deny"),
        "{events:?}"
    );
    gw.stop().await;
}

#[test]
fn a_route_that_allows_h2c_upgrades_is_refused_with_its_key_path() {
    let problems = support::problems(
        Config::new().route(
            Route::public("a")
                .host("a.test")
                .set("upgrades", ["websocket", "h2c"])
                .upstream("http://127.0.0.1:9"),
        ),
    );
    assert!(
        problems
            .iter()
            .any(|p| p.path == "routes[0].upgrades[1]" && p.message.contains("h2c")),
        "{problems:?}"
    );
}
