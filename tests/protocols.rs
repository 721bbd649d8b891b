//! Protocols through the proxy: HTTP/1.1 and HTTP/2 on both sides, gRPC with trailers,
//! WebSocket upgrades, very large streamed bodies and the request body limit.
#![cfg(test)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};

use support::serve::{Serve, Server, serve};
use support::{Config, Route, h2c};

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 and HTTP/2
// ---------------------------------------------------------------------------------------------

/// Dot segments and repeated slashes resolved, `%64` decoded, the space re-encoded.
const RAW_TARGET: &str = "/a//b/./c/../%64%20e?x=1&y=%2F";
const CANONICAL_TARGET: &str = "/a/b/d%20e?x=1&y=%2F";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_reaches_an_http1_upstream_at_the_canonical_path() {
    let upstream = support::Recorder::start().await;
    let gw = support::Gateway::start(support::public_route(&upstream)).await;

    let (status, body) = support::get(gw.http, RAW_TARGET, &[]).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "upstream ok");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "exactly one request reaches the upstream");
    assert_eq!(requests[0].target, CANONICAL_TARGET);
    assert_eq!(requests[0].version, Version::HTTP_11);
    assert_eq!(requests[0].header("host"), Some(upstream.addr.to_string()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_prior_knowledge_client_reaches_an_http1_upstream_at_the_canonical_path() {
    let upstream = support::Recorder::start().await;
    let gw = support::Gateway::start(support::public_route(&upstream)).await;
    let mut sender = h2c(gw.http).await;

    // Several streams on the one connection, each answered and each forwarded once.
    for i in 0..3 {
        let req = Request::builder()
            .uri(format!("http://app.test{RAW_TARGET}"))
            .header("x-attempt", i.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"upstream ok");
    }

    let requests = upstream.requests();
    assert_eq!(requests.len(), 3);
    for (i, seen) in requests.iter().enumerate() {
        assert_eq!(seen.target, CANONICAL_TARGET);
        assert_eq!(seen.version, Version::HTTP_11, "the upstream speaks HTTP/1.1");
        assert_eq!(seen.header("x-attempt"), Some(i.to_string()));
        assert_eq!(seen.header("host"), Some(upstream.addr.to_string()));
    }
    gw.stop().await;
}

/// An upstream that answers with the HTTP version it was spoken to in.
async fn version_echo() -> support::Recorder {
    support::Recorder::with(Arc::new(|seen| {
        Response::new(Full::new(Bytes::from(format!("{:?}", seen.version))))
    }))
    .await
}

/// A public route `app.test` to `upstream` spoken to in HTTP/2 (prior knowledge in clear text).
fn http2_route(name: &str, host: &str, upstream: impl support::config::UpstreamUrl) -> Route {
    Route::public(name)
        .host(host)
        .upstream(upstream)
        .set("upstream.protocol", "http2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_is_spoken_to_in_http2_from_http1_and_http2_clients() {
    let upstream = version_echo().await;
    let gw = support::Gateway::start(Config::new().route(http2_route("h2", "app.test", &upstream))).await;

    let (status, body) = support::get(gw.http, "/from/h1", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "HTTP/2.0");

    let mut sender = h2c(gw.http).await;
    let req = Request::builder()
        .uri("http://app.test/from/h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"HTTP/2.0");

    let own = upstream.addr.to_string();
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for (seen, target) in seen.iter().zip(["/from/h1", "/from/h2"]) {
        assert_eq!(seen.version, Version::HTTP_2);
        assert_eq!(seen.target, target);
        assert_eq!(seen.authority.as_deref(), Some(own.as_str()));
        assert_eq!(seen.header("host").as_deref(), Some(own.as_str()));
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_preserve_host_an_http2_upstream_gets_the_clients_host_as_authority_and_host_alike() {
    let upstream = version_echo().await;
    let route = http2_route("h2", "app.test", &upstream).set("preserve_host", true);
    let gw = support::Gateway::start(Config::new().route(route)).await;
    let (status, body) = support::get(gw.http, "/kept", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "HTTP/2.0");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/kept");
    assert_eq!(seen[0].authority.as_deref(), Some("app.test"));
    assert_eq!(seen[0].header("host").as_deref(), Some("app.test"));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// gRPC over h2c, with a hand-written server: 5-byte length prefixes and status trailers
// ---------------------------------------------------------------------------------------------

type GrpcBody = BoxBody<Bytes, Infallible>;

/// One gRPC message on the wire: uncompressed flag, big-endian length, payload.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// Takes one complete message off the front of `buf`, if there is one.
fn take_grpc_message(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let (&compressed, rest) = buf.split_first()?;
    let len: [u8; 4] = rest.get(..4)?.try_into().unwrap();
    let len = u32::from_be_bytes(len) as usize;
    let message = rest.get(4..4 + len)?.to_vec();
    assert_eq!(compressed, 0, "messages are not compressed");
    buf.drain(..5 + len);
    Some(message)
}

fn grpc_trailers(message: &'static str, count: usize) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static(message));
    trailers.insert("x-echo-count", HeaderValue::from_str(&count.to_string()).unwrap());
    trailers
}

/// What one call looked like at the gRPC server.
#[derive(Debug, Clone)]
struct GrpcSeen {
    version: Version,
    path: String,
    content_type: Option<String>,
    te: Option<String>,
    messages: Vec<Vec<u8>>,
}

struct GrpcServer {
    server: Server,
    seen: Arc<Mutex<Vec<GrpcSeen>>>,
    /// The streaming method sends its next message only after a `()` arrives here, so a proxy
    /// that buffered the response would stall the call.
    next: mpsc::UnboundedSender<()>,
}

/// `/echo.Echo/Unary` answers `hello, <name>`; `/echo.Echo/Stream` answers `<name> #0..#4`,
/// one at a time; both end with `grpc-status: 0` trailers.
async fn grpc_server() -> GrpcServer {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (next, next_rx) = mpsc::unbounded_channel::<()>();
    let next_rx = Arc::new(tokio::sync::Mutex::new(next_rx));
    let log = seen.clone();
    let server = serve(Serve::http2(), move |_, req| {
        grpc_call(req, log.clone(), next_rx.clone())
    })
    .await;
    GrpcServer { server, seen, next }
}

async fn grpc_call(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<GrpcSeen>>>,
    next_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>>,
) -> Response<GrpcBody> {
    let (parts, body) = req.into_parts();
    let mut buf = body.collect().await.unwrap().to_bytes().to_vec();
    let mut messages = Vec::new();
    while let Some(m) = take_grpc_message(&mut buf) {
        messages.push(m);
    }
    let header = |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    let seen = GrpcSeen {
        version: parts.version,
        path: parts.uri.path().to_string(),
        content_type: header("content-type"),
        te: header("te"),
        messages: messages.clone(),
    };
    log.lock().unwrap().push(seen);
    let name = String::from_utf8(messages.first().cloned().unwrap_or_default()).unwrap();

    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    match parts.uri.path() {
        "/echo.Echo/Unary" => {
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(grpc_frame(format!("hello, {name}").as_bytes()))))
                    .await;
                let _ = tx.send(Ok(Frame::trailers(grpc_trailers("ok", 1)))).await;
            });
        }
        "/echo.Echo/Stream" => {
            tokio::spawn(async move {
                let mut next = next_rx.lock().await;
                for i in 0..5 {
                    if i > 0 && next.recv().await.is_none() {
                        return;
                    }
                    let message = format!("{name} #{i}");
                    if tx
                        .send(Ok(Frame::data(grpc_frame(message.as_bytes()))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = tx
                    .send(Ok(Frame::trailers(grpc_trailers("stream done", 5))))
                    .await;
            });
        }
        _ => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("12"));
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
            });
        }
    }
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Response::builder()
        .header("content-type", "application/grpc")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn grpc_request(path: &str, message: &[u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri(format!("http://grpc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(message)))
        .unwrap()
}

fn grpc_route(server: &GrpcServer) -> Config {
    Config::new().route(http2_route("grpc", "grpc.test", &server.server))
}

/// Reads a gRPC response body to its end, calling `on_message` as each message completes.
async fn read_grpc(body: Incoming, mut on_message: impl FnMut(&[u8])) -> (Vec<Vec<u8>>, Option<HeaderMap>) {
    let mut body = body;
    let mut buf = Vec::new();
    let mut messages = Vec::new();
    let mut trailers = None;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the response stalled: was it buffered by the proxy?");
        let Some(frame) = frame else { break };
        match frame.unwrap().into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                while let Some(m) = take_grpc_message(&mut buf) {
                    on_message(&m);
                    messages.push(m);
                }
            }
            Err(frame) => {
                assert!(trailers.is_none(), "only one trailers frame");
                trailers = Some(frame.into_trailers().expect("a frame is data or trailers"));
            }
        }
    }
    assert!(buf.is_empty(), "a partial message was left over: {buf:?}");
    (messages, trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_call_returns_one_message_and_the_status_trailers() {
    let server = grpc_server().await;
    let gw = support::Gateway::start(grpc_route(&server)).await;
    let mut sender = h2c(gw.http).await;

    let response = sender
        .send_request(grpc_request("/echo.Echo/Unary", b"portcullis"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/grpc"
    );
    let (messages, trailers) = read_grpc(response.into_body(), |_| {}).await;

    assert_eq!(messages, vec![b"hello, portcullis".to_vec()]);
    let trailers = trailers.expect("the call ends with trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "ok");
    assert_eq!(trailers.get("x-echo-count").unwrap(), "1");

    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].path, "/echo.Echo/Unary");
    assert_eq!(seen[0].content_type.as_deref(), Some("application/grpc"));
    assert_eq!(
        seen[0].te.as_deref(),
        Some("trailers"),
        "te: trailers reaches the upstream"
    );
    assert_eq!(seen[0].messages, vec![b"portcullis".to_vec()]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_streaming_keeps_every_message_and_the_trailers() {
    let server = grpc_server().await;
    let gw = support::Gateway::start(grpc_route(&server)).await;
    let mut sender = h2c(gw.http).await;

    let response = sender
        .send_request(grpc_request("/echo.Echo/Stream", b"tick"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Each message must arrive on its own before the server is allowed to send the next one.
    let next = server.next.clone();
    let (messages, trailers) = read_grpc(response.into_body(), |_| {
        let _ = next.send(());
    })
    .await;

    let expected: Vec<Vec<u8>> = (0..5).map(|i| format!("tick #{i}").into_bytes()).collect();
    assert_eq!(messages, expected, "every message, in order");
    let trailers = trailers.expect("the stream ends with trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "stream done");
    assert_eq!(trailers.get("x-echo-count").unwrap(), "5");

    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/echo.Echo/Stream");
    assert_eq!(seen[0].te.as_deref(), Some("trailers"));
    assert_eq!(seen[0].messages, vec![b"tick".to_vec()]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// A WebSocket echo server (an HTTP/1.1 upgrade) that records each handshake's target; its
/// [`Server`] counts TCP connections.
async fn ws_echo_server() -> (Server, Arc<Mutex<Vec<String>>>) {
    let targets = Arc::new(Mutex::new(Vec::new()));
    let log = targets.clone();
    let server = serve(Serve::http1(), move |_, mut req: Request<Incoming>| {
        log.lock().unwrap().push(support::target(req.uri()));
        let key = req
            .headers()
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or(HeaderValue::from_static(""));
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                } else if message.is_close() {
                    return;
                }
            }
        });
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        async move {
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    })
    .await;
    (server, targets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_text_and_binary_messages_echo_through_the_proxy() {
    let (upstream, targets) = ws_echo_server().await;
    let gw = support::Gateway::start(support::public_route(&upstream)).await;

    let stream = TcpStream::connect(gw.http).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://app.test/chat?room=1", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let messages = vec![
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 254, 255]),
        Message::text("grüße, 世界"),
        Message::binary(big),
        Message::text(""),
    ];
    for message in messages {
        ws.send(message.clone()).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no echo within 5s")
            .expect("the connection closed")
            .unwrap();
        assert_eq!(echoed, message);
    }
    ws.close(None).await.unwrap();

    assert_eq!(upstream.connections(), 1);
    assert_eq!(*targets.lock().unwrap(), vec!["/chat?room=1".to_string()]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_protected_route_gets_401_and_never_reaches_the_upstream() {
    let (upstream, targets) = ws_echo_server().await;
    let gw = support::Gateway::start(
        Config::new().route(Route::protected("closed").host("app.test").upstream(&upstream)),
    )
    .await;

    let stream = TcpStream::connect(gw.http).await.unwrap();
    let result = tokio_tungstenite::client_async("ws://app.test/chat", stream).await;
    match result {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert!(response.headers().get("upgrade").is_none());
        }
        Err(e) => panic!("expected a 401 response, got error {e}"),
        Ok((_, response)) => panic!("the upgrade was accepted with {}", response.status()),
    }

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(upstream.connections(), 0, "the upstream saw a connection");
    assert!(targets.lock().unwrap().is_empty());
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 100 MiB each way through the real binary, with bounded memory
// ---------------------------------------------------------------------------------------------

const CHUNK: usize = 64 * 1024;
const HUNDRED_MIB: u64 = 100 * 1024 * 1024;
static CHUNK_BYTES: [u8; CHUNK] = [b'x'; CHUNK];

type StreamedBody = BoxBody<Bytes, Infallible>;

/// `total` bytes produced chunk by chunk as they are polled; never held in memory at once.
fn generated_body(total: u64) -> StreamedBody {
    let stream = futures_util::stream::unfold(0u64, move |sent| async move {
        if sent >= total {
            return None;
        }
        let n = (total - sent).min(CHUNK as u64) as usize;
        let chunk = Bytes::from_static(&CHUNK_BYTES).slice(..n);
        Some((Ok::<_, Infallible>(Frame::data(chunk)), sent + n as u64))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Counts a body's bytes frame by frame.
async fn count_bytes(body: Incoming) -> u64 {
    let mut body = body;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            n += data.len() as u64;
        }
    }
    n
}

/// `POST /upload` answers with the number of bytes it received; `GET /download` streams 100 MiB.
async fn bulk_upstream() -> Server {
    serve(Serve::http1(), |_, req: Request<Incoming>| async move {
        match req.uri().path() {
            "/upload" => {
                let n = count_bytes(req.into_body()).await;
                Response::new(BodyExt::boxed(Full::new(Bytes::from(n.to_string()))))
            }
            "/download" => Response::new(generated_body(HUNDRED_MIB)),
            _ => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(BodyExt::boxed(Full::new(Bytes::new())))
                .unwrap(),
        }
    })
    .await
}

async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<StreamedBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_body_streams_each_way_through_the_binary_with_bounded_memory() {
    let upstream = bulk_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new()
        .set("audit.path", dir.path().join("audit.jsonl"))
        .route(
            Route::public("bulk")
                .host("app.test")
                .upstream(&upstream)
                .set("max_body_bytes", 0)
                .set("timeout", "60s"),
        );
    let proxy = support::Binary::serve(dir.path(), &config, &[("RUST_LOG", "warn")]).await;
    let http = proxy.http;

    // Upload: chunked, generated as it is sent; the upstream counts what arrives.
    let mut sender = http1(http).await;
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "app.test")
        .body(generated_body(HUNDRED_MIB))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(120), async {
        let response = sender.send_request(req).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    })
    .await
    .expect("the upload took more than 120s");
    assert_eq!(response.0, StatusCode::OK, "{}", proxy.log());
    assert_eq!(response.1, HUNDRED_MIB.to_string(), "bytes the upstream received");

    // Download: streamed by the upstream, counted at the client.
    let req = Request::builder()
        .uri("/download")
        .header("host", "app.test")
        .body(BodyExt::boxed(Full::new(Bytes::new())))
        .unwrap();
    let (status, received) = tokio::time::timeout(Duration::from_secs(120), async {
        // The same keep-alive connection, once it has finished with the upload.
        sender.ready().await.unwrap();
        let response = sender.send_request(req).await.unwrap();
        (response.status(), count_bytes(response.into_body()).await)
    })
    .await
    .expect("the download took more than 120s");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received, HUNDRED_MIB, "bytes the client received");

    let peak = proxy.vm_hwm_bytes();
    assert!(
        peak < 80 * 1024 * 1024,
        "the proxy's peak RSS was {} MiB while moving 200 MiB",
        peak / (1024 * 1024)
    );
    drop(proxy);
}

// ---------------------------------------------------------------------------------------------
// The request body limit
// ---------------------------------------------------------------------------------------------

fn limited_route(upstream: &support::Recorder) -> Config {
    Config::new().route(
        Route::public("small")
            .host("app.test")
            .upstream(upstream)
            .set("max_body_bytes", 1024),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_with_content_length_gets_413_and_never_reaches_the_upstream() {
    let upstream = support::Recorder::start().await;
    let gw = support::Gateway::start(limited_route(&upstream)).await;

    let response = support::send(
        gw.http,
        http::Method::POST,
        "/upload",
        &[],
        Bytes::from(vec![b'a'; 1025]),
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        upstream.requests().is_empty(),
        "the upstream saw {:?}",
        upstream.requests()
    );

    // Exactly at the limit passes whole.
    let response = support::send(
        gw.http,
        http::Method::POST,
        "/upload",
        &[],
        Bytes::from(vec![b'a'; 1024]),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body_len, 1024);
    gw.stop().await;
}

/// A POST whose body is sent chunked, in `chunks` pieces of `size` bytes.
async fn post_chunked(addr: SocketAddr, chunks: usize, size: usize) -> StatusCode {
    let mut sender = http1(addr).await;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'c'; size])))),
    );
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "app.test")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    sender.send_request(req).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_gets_413() {
    let upstream = support::Recorder::start().await;
    let gw = support::Gateway::start(limited_route(&upstream)).await;

    assert_eq!(
        post_chunked(gw.http, 4, 1000).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Under the limit, chunked passes whole.
    assert_eq!(post_chunked(gw.http, 2, 500).await, StatusCode::OK);
    let last = upstream.last();
    assert_eq!(last.body_len, 1000);
    assert_eq!(last.header("transfer-encoding").as_deref(), Some("chunked"));
    gw.stop().await;
}
