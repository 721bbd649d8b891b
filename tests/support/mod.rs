//! Story-test scaffolding: a recording upstream, the proxy on port 0, raw and hyper clients.
#![allow(dead_code)]

pub mod airflow;
pub mod browser;
pub mod collector;
pub mod config;
pub mod haproxy;
pub mod idp;
pub mod issuer;
pub mod luigi;
pub mod otlp;
pub mod pki;
pub mod redis;
pub mod replicas;
pub mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub use config::{Config, Route};
use serve::{Serve, Server};

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
    server: Server,
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
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = serve::serve(Serve::auto(), move |_, req: Request<Incoming>| {
            let (log, handler) = (log.clone(), handler.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let seen = Seen {
                    method: parts.method.to_string(),
                    target: target(&parts.uri),
                    authority: parts.uri.authority().map(|a| a.to_string()),
                    version: parts.version,
                    headers: parts.headers,
                    body_len: body.len(),
                    body,
                };
                let response = handler(&seen);
                log.lock().unwrap().push(seen);
                tokio::time::sleep(delay).await;
                response
            }
        })
        .await;
        Recorder {
            addr: server.addr,
            seen,
            server,
        }
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
    /// Starts the proxy with `config` on top of its basics: the listeners on port 0 and the audit
    /// log in a temp dir.
    pub async fn start(config: impl Into<Config>) -> Gateway {
        let config = config.into();
        Self::prebind(&config).await.start(config).await
    }

    /// Binds the listeners (port 0, with the `[server]` keys of `config`) before the rest of
    /// the config is written, for configs that must name the proxy's own address (an IdP's
    /// redirect URI, the token issuer).
    pub async fn prebind(config: impl Into<Config>) -> Prebound {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.jsonl");
        let mut head = Config::new()
            .server("http", "127.0.0.1:0")
            .set("admin.listen", "127.0.0.1:0")
            .set("audit.path", audit_path.as_path());
        if let Some(server) = config.into().table().get("server") {
            head = head.merge(Config::new().set("server", server.clone()));
        }
        let bound = portcullis::app::bind(&parse(&head.to_toml())).await.unwrap();
        Prebound {
            http: bound.http_addr().unwrap(),
            https: bound.https_addr(),
            bound,
            head,
            dir,
            audit_path,
        }
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

    /// Waits until `/readyz` is green and lists every identity provider with its keys, or panics.
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            let (status, body) = get(self.admin, "/readyz", &[]).await;
            if status == StatusCode::OK && !body.contains("no signing keys yet") {
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

    /// The access record of the request with this `X-Request-Id`, waiting up to 5 s for it.
    pub async fn audit_event(&self, request_id: &str) -> serde_json::Value {
        let events = self
            .wait_for(1, |e| {
                e.get("http.request.method").is_some() && e["portcullis.request.id"] == request_id
            })
            .await;
        events
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no access record for request {request_id:?}"))
    }

    /// The proxy's own acts that are not requests (policy loads, session refreshes), waiting
    /// briefly for `at_least`.
    pub async fn acts(&self, at_least: usize) -> Vec<serde_json::Value> {
        self.wait_for(at_least, |e| {
            e.get("portcullis.act").is_some() && e.get("http.request.method").is_none()
        })
        .await
    }

    /// The records of the proxy's act `act` (`revocation`, `policy_reload`, …), waiting up to
    /// 5 s for the first.
    pub async fn act_records(&self, act: &str) -> Vec<serde_json::Value> {
        self.wait_for(1, |e| {
            e["portcullis.act"] == act && e.get("http.request.method").is_none()
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
    head: Config,
    pub dir: tempfile::TempDir,
    audit_path: PathBuf,
}

impl Prebound {
    /// Starts the proxy with the rest of the config (routes, providers, …).
    pub async fn start(self, rest: impl Into<Config>) -> Gateway {
        let config = parse(&self.head.merge(rest).to_toml());
        let problems = portcullis::config::validate(&config);
        assert!(problems.is_empty(), "config problems: {problems:?}");
        Gateway::run(config, self.bound, self.dir, self.audit_path)
    }
}

fn parse(text: &str) -> portcullis::config::Config {
    match portcullis::config::parse(text) {
        Ok(c) => c,
        Err(p) => panic!("config did not parse: {p:?}\n{text}"),
    }
}

/// What `config::validate` finds wrong with `config` (which must parse).
pub fn problems(config: impl Into<Config>) -> Vec<portcullis::config::Problem> {
    portcullis::config::validate(&parse(&config.into().to_toml()))
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

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// The body as JSON (`Value::Null` when it is not JSON; then see `text`).
    pub json: serde_json::Value,
    pub text: String,
    /// The proxy's `X-Request-Id` (empty when there is none, as from a peer called directly).
    pub request_id: String,
}

impl Reply {
    pub async fn read(response: Response<Incoming>) -> Reply {
        let status = response.status();
        let request_id = header_text(response.headers(), "x-request-id");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            text: String::from_utf8_lossy(&body).into_owned(),
            request_id,
        }
    }
}

/// Header `name` as text, empty when absent.
pub fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
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
pub fn strip_extra() -> Config {
    Config::new().server("strip_request_headers", ["x-corp-auth-*", "X-Internal-Role"])
}

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
pub fn public_route(upstream: impl config::UpstreamUrl) -> Config {
    Config::new().route(Route::public("app").host("app.test").upstream(upstream))
}

/// The shipped Casbin model.
pub const MODEL: &str = include_str!("../../policies/model.conf");

/// A policy directory `dir` with the shipped model and `csv` as its only rules.
pub fn write_policy(dir: &std::path::Path, csv: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.conf"), MODEL).unwrap();
    std::fs::write(dir.join("policy.csv"), csv).unwrap();
}

/// A temp dir holding the shipped model and `csv` as its only rules.
pub fn policy(csv: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), csv);
    dir
}

/// Path of the built `portcullis` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portcullis"))
}

/// Runs the `portcullis` binary with `args` to its end.
pub fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary()).args(args).output().unwrap()
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// What a command printed: its stdout, then its stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A free loopback address (a port nothing listens on now).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The real binary, `portcullis serve`, in a child process: `config` with `[server] http` and
/// `[admin] listen` on fresh ports, written to `dir/portcullis.toml`; stderr to
/// `dir/portcullis.stderr`. Killed when dropped.
pub struct Binary {
    child: Option<std::process::Child>,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    stderr: PathBuf,
    /// The listeners every version of its config file starts with.
    basics: Config,
}

impl Binary {
    /// Starts it with `env` added to the environment and waits until `/readyz` is green.
    pub async fn serve(dir: &std::path::Path, config: &Config, env: &[(&str, &str)]) -> Binary {
        Self::serve_file(&dir.join("portcullis.toml"), dir, config, env).await
    }

    /// As [`Binary::serve`], the config file at `path` (through a symlink, the link's target).
    pub async fn serve_file(
        path: &std::path::Path,
        dir: &std::path::Path,
        config: &Config,
        env: &[(&str, &str)],
    ) -> Binary {
        let (http, admin) = (free_addr(), free_addr());
        let basics = Config::new()
            .server("http", http.to_string())
            .set("admin.listen", admin.to_string());
        std::fs::write(path, basics.clone().merge(config).to_toml()).unwrap();
        let stderr = dir.join("portcullis.stderr");
        let child = std::process::Command::new(binary())
            .args(["serve", "--config"])
            .arg(path)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Binary {
            child: Some(child),
            http,
            admin,
            stderr,
            basics,
        };
        for _ in 0..400 {
            if let Some(status) = proxy.child_mut().try_wait().unwrap() {
                panic!("the proxy exited with {status}:\n{}", proxy.log());
            }
            if TcpStream::connect(admin).await.is_ok() && get(admin, "/readyz", &[]).await.0 == StatusCode::OK
            {
                return proxy;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the proxy never became ready:\n{}", proxy.log());
    }

    /// The text of a config file for it: `config` on the listeners it serves on.
    pub fn config_text(&self, config: &Config) -> String {
        self.basics.clone().merge(config).to_toml()
    }

    fn child_mut(&mut self) -> &mut std::process::Child {
        self.child.as_mut().expect("the proxy has exited")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("the proxy has exited").id()
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Peak resident set size, from /proc.
    pub fn vm_hwm_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc/<pid>/status");
        let kib: u64 = line
            .trim_start_matches("VmHWM:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib * 1024
    }

    /// Sends SIGTERM (a graceful stop) and returns at once.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `HUP`, …) and returns at once.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([format!("-{name}").as_str(), &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for it to exit; its exit status.
    pub async fn exit(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the proxy has exited");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
    }

    /// SIGTERM, and it exits successfully.
    pub async fn sigterm(self) {
        self.terminate();
        let exit = self.exit().await;
        assert!(exit.success(), "{exit:?}");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
