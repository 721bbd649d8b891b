//! Story-test scaffolding: a recording upstream, the proxy on port 0, raw and hyper clients.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod airflow;
pub mod browser;
pub mod collector;
pub mod idp;
pub mod issuer;
pub mod luigi;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What one request looked like when it reached the upstream.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as received on the wire.
    pub target: String,
    /// The request URI's authority: HTTP/2's `:authority` (HTTP/1 origin-form has none).
    pub authority: Option<String>,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// The body as received.
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
    /// Every header name that, spelled any way, normalizes to `name`.
    pub fn has_any_spelling_of(&self, name: &str) -> bool {
        self.headers
            .keys()
            .any(|k| k.as_str().replace(['_', '.'], "-").eq_ignore_ascii_case(name))
    }
}

/// Path and query of a request as an upstream received it.
pub fn target(uri: &http::Uri) -> String {
    uri.path_and_query().map(|p| p.to_string()).unwrap_or_default()
}

pub type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// An upstream that records every request it receives and answers through `handler`.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        Self::with(Arc::new(|_| {
            Response::new(Full::new(Bytes::from_static(b"upstream ok")))
        }))
        .await
    }

    pub async fn with(handler: Handler) -> Recorder {
        Self::answering_after(handler, Duration::ZERO).await
    }

    /// An upstream that records each request as it arrives and answers `delay` later (a slow
    /// action: the test can tell "received" from "answered").
    pub async fn slow(delay: Duration) -> Recorder {
        Self::answering_after(
            Arc::new(|_| Response::new(Full::new(Bytes::from_static(b"upstream ok")))),
            delay,
        )
        .await
    }

    async fn answering_after(handler: Handler, delay: Duration) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let body_len = body.len();
                            let seen = Seen {
                                method: parts.method.to_string(),
                                target: target(&parts.uri),
                                authority: parts.uri.authority().map(|a| a.to_string()),
                                version: parts.version,
                                headers: parts.headers,
                                body_len,
                                body,
                            };
                            let response = handler(&seen);
                            log.lock().unwrap().push(seen);
                            tokio::time::sleep(delay).await;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder { addr, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream received no request")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The proxy, started in-process from a TOML config on port 0, with its audit log in a temp dir.
pub struct Gateway {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    audit_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// `routes_toml` holds `[[routes]]` tables (and any other sections but server/admin/audit).
    pub async fn start(routes_toml: &str) -> Gateway {
        Self::start_with("", routes_toml).await
    }

    /// `server_toml` is extra keys for the `[server]` table.
    pub async fn start_with(server_toml: &str, routes_toml: &str) -> Gateway {
        Self::prebind(server_toml).await.start(routes_toml).await
    }

    /// Binds the listeners (port 0) before the rest of the config is written, for configs
    /// that must name the proxy's own address (an IdP's redirect URI).
    pub async fn prebind(server_toml: &str) -> Prebound {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.jsonl");
        let head = format!(
            "[server]\nhttp = \"127.0.0.1:0\"\n{server_toml}\n[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\npath = {:?}\n",
            audit_path.display().to_string()
        );
        let config = match portcullis::config::parse(&head) {
            Ok(c) => c,
            Err(p) => panic!("config did not parse: {p:?}\n{head}"),
        };
        let bound = portcullis::app::bind(&config).await.unwrap();
        Prebound {
            http: bound.http_addr().unwrap(),
            https: bound.https_addr(),
            bound,
            head,
            dir,
            audit_path,
        }
    }

    pub async fn start_config(
        config: portcullis::config::Config,
        dir: tempfile::TempDir,
        audit_path: PathBuf,
    ) -> Gateway {
        let bound = portcullis::app::bind(&config).await.unwrap();
        Self::run(config, bound, dir, audit_path)
    }

    fn run(
        config: portcullis::config::Config,
        bound: portcullis::app::Bound,
        dir: tempfile::TempDir,
        audit_path: PathBuf,
    ) -> Gateway {
        let http = bound.http_addr().unwrap();
        let https = bound.https_addr();
        let admin = bound.admin_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            portcullis::app::run(config, bound, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Gateway {
            http,
            https,
            admin,
            dir,
            audit_path,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until `/readyz` is green (identity providers' keys fetched), or panics.
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if get(self.admin, "/readyz", &[]).await.0 == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the proxy never became ready");
    }

    /// Access records (one per request, the proxy's own endpoints included) written so far,
    /// waiting briefly for `at_least` of them.
    pub async fn audit_events(&self, at_least: usize) -> Vec<serde_json::Value> {
        self.wait_for(at_least, |e| e.get("http.request.method").is_some())
            .await
    }

    /// The proxy's own acts that are not requests (policy loads, session refreshes), waiting
    /// briefly for `at_least`.
    pub async fn acts(&self, at_least: usize) -> Vec<serde_json::Value> {
        self.wait_for(at_least, |e| {
            e.get("portcullis.act").is_some() && e.get("http.request.method").is_none()
        })
        .await
    }

    async fn wait_for(
        &self,
        at_least: usize,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let read =
            || -> Vec<serde_json::Value> { self.read_audit().into_iter().filter(|e| keep(e)).collect() };
        // Up to 5 s: a policy reload waits for writes to settle, and CI runs tests side by side.
        for _ in 0..250 {
            let events = read();
            if events.len() >= at_least {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        read()
    }

    /// The complete lines written so far: the writer may be in the middle of a line, which a
    /// reader then sees without its end (and skips until the next read).
    fn read_audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = get(self.admin, "/metrics", &[]).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Listeners bound, config not yet complete: see [`Gateway::prebind`].
pub struct Prebound {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    bound: portcullis::app::Bound,
    head: String,
    pub dir: tempfile::TempDir,
    audit_path: PathBuf,
}

impl Prebound {
    /// Starts the proxy with the rest of the config (routes, providers, …).
    pub async fn start(self, rest_toml: &str) -> Gateway {
        let text = format!("{}{rest_toml}", self.head);
        let config = match portcullis::config::parse(&text) {
            Ok(c) => c,
            Err(p) => panic!("config did not parse: {p:?}\n{text}"),
        };
        let problems = portcullis::config::validate(&config);
        assert!(problems.is_empty(), "config problems: {problems:?}");
        Gateway::run(config, self.bound, self.dir, self.audit_path)
    }
}

/// Sends raw bytes and returns the status and the whole response text (the proxy is asked to
/// close the connection afterwards). Lets tests send targets no HTTP library would build.
pub async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// `GET target` for `host` over a fresh HTTP/1.1 connection, as raw bytes.
pub async fn raw_get(addr: SocketAddr, host: &str, target: &str) -> (u16, String) {
    raw(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// A GET through hyper's client with extra headers; returns status and body.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let response = send(addr, http::Method::GET, target, headers, Bytes::new()).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP/2 connection with prior knowledge (h2c) to `addr`.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn send(
    addr: SocketAddr,
    method: http::Method,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(target);
    let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
    if !has_host {
        req = req.header("host", "app.test");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap()
}

/// Identity headers of Portcullis and of the products an upstream may have sat behind before
/// (oauth2-proxy, Pomerium, Google IAP, AWS ALB, Cloudflare Access, Azure App Service, Authelia,
/// Authentik, Grafana), several spellings of each family: none may reach an upstream from a
/// client, on any route. The last two are what the tests' `strip_request_headers` adds.
pub const IDENTITY_SPOOFS: &[&str] = &[
    "X-Portcullis-User",
    "x_portcullis_groups",
    "X.Portcullis.Email",
    "X-Portcullis-Provider",
    "X-Forwarded-User",
    "x_forwarded_email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Preferred-Username",
    "x_auth_request_groups",
    "X-Auth.Request.Email",
    "X-Goog-Authenticated-User-Email",
    "x_goog_authenticated_user_id",
    "X-Goog-Iap-Jwt-Assertion",
    "X.GOOG.IAP.JWT.ASSERTION",
    "Remote-User",
    "Remote-Email",
    "remote_groups",
    "Remote-Name",
    "X-Remote-User",
    "X-Amzn-Oidc-Data",
    "x-amzn-oidc-identity",
    "X_Amzn_Oidc_Accesstoken",
    "Cf-Access-Authenticated-User-Email",
    "CF_ACCESS_JWT_ASSERTION",
    "X-Ms-Client-Principal",
    "X-MS-CLIENT-PRINCIPAL-NAME",
    "x_ms_client_principal_id",
    "X-Ms-Client-Principal-Idp",
    "X-Pomerium-Jwt-Assertion",
    "x_pomerium_claim_email",
    "X-Webauth-User",
    "X-Authentik-Username",
    "x_authentik_groups",
    "X-MS-TOKEN-AAD-ID-TOKEN",
    "X-Corp-Auth-User",
    "x_internal_role",
];

/// The `[server]` key that makes the last two of [`IDENTITY_SPOOFS`] identity headers too.
pub const STRIP_EXTRA: &str = "strip_request_headers = [\"x-corp-auth-*\", \"X-Internal-Role\"]";

/// Every [`IDENTITY_SPOOFS`] header as `name: spoofed-by-client` lines of a raw request.
pub fn spoofed_identity_lines() -> String {
    IDENTITY_SPOOFS
        .iter()
        .map(|n| format!("{n}: spoofed-by-client\r\n"))
        .collect()
}

/// The upstream received none of the client's identity headers, in any spelling; `own` lists
/// the proxy's own identity headers it may have added (with values the client did not send).
pub fn assert_no_client_identity(seen: &Seen, own: &[&str]) {
    assert!(
        seen.headers.values().all(|v| v != "spoofed-by-client"),
        "a client's identity header reached the upstream: {:?}",
        seen.headers
    );
    for name in IDENTITY_SPOOFS {
        let norm = name.to_ascii_lowercase().replace(['_', '.'], "-");
        if own.contains(&norm.as_str()) {
            continue;
        }
        assert!(
            !seen.has_any_spelling_of(&norm),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
}

/// One public route named `app` for host `app.test` in front of `upstream`.
pub fn public_route(upstream: &str) -> String {
    format!(
        "[[routes]]\nname = \"app\"\nhosts = [\"app.test\"]\naccess = \"public\"\n[routes.upstream]\nurl = \"{upstream}\"\n"
    )
}

/// Path of the built `portcullis` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portcullis"))
}
