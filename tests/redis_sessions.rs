//! Stories of replicas sharing their sessions through a real Redis: a person signs in at a real
//! OpenID Provider through one replica and is served by another; what Redis holds is of no use
//! to whoever reads it; Redis going away fails browser routes closed while bearer and public
//! routes keep serving, and its return needs no restart of the proxy.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use portcullis::session::{SessionId, SessionStore};
use support::config::{Config, Route};
use support::idp::Idp;
use support::redis::{RedisServer, SESSION_KEY_HEX, session_key_file};
use support::{Gateway, Recorder};

const CALLBACK: &str = "http://app.localhost/.portcullis/callback";
const SIGNED_OUT: &str = "http://app.localhost/.portcullis/signed_out";
const HTML: &str = "text/html,application/xhtml+xml";
const SESSION: &str = "__Host-portcullis_session";
const LOGIN: &str = "__Host-portcullis_login";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn location(&self) -> String {
        self.headers["location"].to_str().unwrap().to_string()
    }

    /// The value `Set-Cookie` gives `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .find_map(|c| c.strip_prefix(&format!("{name}=")))
            .map(|rest| rest.split(';').next().unwrap().to_string())
    }
}

/// A request to `host` (loopback names count as secure contexts, so sessions work over HTTP).
async fn fetch(gw: &Gateway, host: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut headers = headers.to_vec();
    headers.push(("host", host));
    let response = support::send(gw.http, Method::GET, target, &headers, Bytes::new()).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A page navigation on `app.localhost`, with `cookie` when not empty.
async fn page(gw: &Gateway, target: &str, cookie: &str) -> Reply {
    let mut headers = vec![("accept", HTML)];
    if !cookie.is_empty() {
        headers.push(("cookie", cookie));
    }
    fetch(gw, "app.localhost", target, &headers).await
}

async fn api_call(gw: &Gateway, target: &str, cookie: &str) -> Reply {
    fetch(
        gw,
        "app.localhost",
        target,
        &[("accept", "application/json"), ("cookie", cookie)],
    )
    .await
}

fn target_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_string()
}

/// A replica of the proxy in front of `upstream`, keeping its sessions in `redis`: the `app`
/// route on `app.localhost` (browser sessions and bearer tokens of `idp`) and a public route on
/// `open.localhost`.
async fn replica(idp: &Idp, upstream: &Recorder, redis_url: &str, key_file: &Path) -> Gateway {
    let gw = start_replica(idp, upstream, redis_url, key_file, |config| config).await;
    gw.wait_ready().await;
    gw
}

/// A replica as [`replica`] makes, its configuration changed by `tweak` first, not waited for.
async fn start_replica(
    idp: &Idp,
    upstream: &Recorder,
    redis_url: &str,
    key_file: &Path,
    tweak: impl FnOnce(Config) -> Config,
) -> Gateway {
    let prebound = Gateway::prebind(Config::new()).await;
    let secret = prebound.dir.path().join("web-secret");
    let app = Route::authenticated("app")
        .host("app.localhost")
        .upstream(upstream);
    let config = idp
        .browser_config(&secret, app)
        .route(Route::public("open").host("open.localhost").upstream(upstream))
        .set("sessions.store", "redis")
        .set("sessions.redis.url", redis_url)
        .set("sessions.redis.encryption_key_file", key_file)
        .set("sessions.redis.command_timeout", "500ms")
        .set("sessions.redis.connect_timeout", "500ms");
    prebound.start(tweak(config)).await
}

async fn provider() -> Idp {
    Idp::start_with(&["--redirect", CALLBACK, "--post-logout-redirect", SIGNED_OUT]).await
}

/// Starts a sign-in at `start`, goes through the provider's pages as `login`, and brings the
/// callback to `finish`: returns the session cookie pair.
async fn sign_in(idp: &Idp, start: &Gateway, finish: &Gateway, target: &str, login: &str) -> String {
    let first = page(start, target, "").await;
    assert_eq!(first.status, StatusCode::FOUND, "{}", first.body);
    let binding = first.cookie(LOGIN).unwrap();
    let callback = idp.sign_in_without_browser(&first.location(), login).await;
    assert!(callback.starts_with(CALLBACK), "{callback}");
    let back = page(finish, &target_of(&callback), &format!("{LOGIN}={binding}")).await;
    assert_eq!(back.status, StatusCode::FOUND, "{}", back.body);
    assert_eq!(back.location(), target);
    format!("{SESSION}={}", back.cookie(SESSION).unwrap())
}

/// The store as a replica builds it from the same settings: the test reads what a session
/// holds through it.
fn same_store(redis_url: &str, key_file: &Path) -> portcullis::session::RedisStore {
    let text = format!(
        "[sessions]\nstore = \"redis\"\n[sessions.redis]\nurl = \"{redis_url}\"\nencryption_key_file = {:?}\n",
        key_file.display().to_string()
    );
    let config = portcullis::config::parse(&text).unwrap();
    let redis = config.sessions.redis.unwrap();
    let key = portcullis::session::parse_key(SESSION_KEY_HEX).unwrap();
    portcullis::session::RedisStore::new(
        &redis,
        portcullis::session::RedisSecrets {
            password: None,
            sentinel_password: None,
            sealer: portcullis::session::Sealer::new(&key, None).unwrap(),
            ca: None,
            client: None,
        },
        portcullis::session::Lifetimes {
            idle: Duration::from_secs(3600),
            absolute: Duration::from_secs(12 * 3600),
            login: Duration::from_secs(600),
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_begun_on_one_replica_completes_on_another_and_the_session_serves_on_both() {
    let redis = RedisServer::start();
    let idp = provider().await;
    let upstream = Recorder::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = session_key_file(keys.path());
    let a = replica(&idp, &upstream, &redis.url(), &key).await;
    let b = replica(&idp, &upstream, &redis.url(), &key).await;

    // The sign-in starts on A (state, PKCE verifier and nonce go to Redis) and its callback
    // lands on B, which finds them there.
    let session = sign_in(&idp, &a, &b, "/dags/etl?tab=runs", "alice").await;

    // Either replica serves the session, and the upstream sees both requests.
    for gw in [&a, &b, &a] {
        let app = page(gw, "/dags/etl?tab=runs", &session).await;
        assert_eq!(app.status, StatusCode::OK, "{}", app.body);
        assert_eq!(app.body, "upstream ok");
    }
    assert_eq!(upstream.requests().len(), 3);
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.target == "/dags/etl?tab=runs")
    );
    // A wrote three records (the sign-in's start and two requests), each when its exchange
    // ended: wait for all of them.
    let allowed = a.audit_events(3).await;
    let last = allowed.last().unwrap();
    assert_eq!(last["portcullis.auth.method"], "session");
    assert_eq!(last["enduser.id"], "alice");

    // Sign-out on B ends the session for A too, within a second: A drops its copy when B
    // announces the sign-out.
    let out = page(&b, "/.portcullis/sign_out", &session).await;
    assert_eq!(out.status, StatusCode::FOUND);
    until_every_replica_refuses(&[&a], Duration::from_secs(1), |_| {
        let (a, session) = (&a, &session);
        async move {
            let api = api_call(a, "/api/v1/dags", session).await;
            api.status == StatusCode::UNAUTHORIZED && api.body.contains("session_expired")
        }
    })
    .await;
    let forwarded = upstream.requests().len();
    let api = api_call(&a, "/api/v1/dags", &session).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{}", api.body);
    assert_eq!(upstream.requests().len(), forwarded, "nothing more was forwarded");
}

/// A counter of `gw`'s metrics with these labels, 0 when absent.
async fn counter(gw: &Gateway, name_and_labels: &str) -> u64 {
    gw.metrics()
        .await
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_two_replicas_for_a_session_due_for_refresh_spend_its_refresh_token_once() {
    let redis = RedisServer::start();
    // Access tokens live 8 s and are refreshed 6 s early: a session falls due 2 s after each
    // refresh. The provider rotates the refresh token at every use and logs every grant.
    let idp = Idp::start_with(&[
        "--redirect",
        CALLBACK,
        "--post-logout-redirect",
        SIGNED_OUT,
        "--access-token-ttl",
        "8",
    ])
    .await;
    let upstream = Recorder::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = session_key_file(keys.path());
    let early = |config: Config| config.set("sessions.refresh_before", "6s");
    let a = start_replica(&idp, &upstream, &redis.url(), &key, early).await;
    let b = start_replica(&idp, &upstream, &redis.url(), &key, early).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let session = sign_in(&idp, &a, &b, "/", "alice").await;
    let id = SessionId::parse(session.split_once('=').unwrap().1).unwrap();
    let store = same_store(&redis.url(), &key);
    let token = |s: &portcullis::session::Session| s.access_token.as_ref().unwrap().expose().to_string();
    let mut before = token(&store.get(&id).await.unwrap().unwrap());
    // Both replicas serve it, and keep a copy of it with the sign-in's tokens.
    for gw in [&a, &b] {
        assert_eq!(page(gw, "/", &session).await.status, StatusCode::OK);
    }
    let refresh_grants = || {
        idp.stderr()
            .lines()
            .filter(|l| *l == "grant.success refresh_token")
            .count()
    };

    for round in 1..=3 {
        // Due now, and eight requests at once, four on each replica.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let replies =
            futures_util::future::join_all((0..8).map(|i| page([&a, &b][i % 2], "/", &session))).await;
        for reply in replies {
            assert_eq!(reply.status, StatusCode::OK, "round {round}: {}", reply.body);
            assert_eq!(reply.body, "upstream ok");
        }
        assert_eq!(
            refresh_grants(),
            round,
            "round {round}: one refresh-token grant per round\n{}",
            idp.stderr()
        );
        // Written once, with the new tokens, and no cookie moved.
        let stored = store.get(&id).await.unwrap().expect("the session survives");
        let now = token(&stored);
        assert_ne!(now, before, "round {round}: the session was not refreshed");
        before = now;
    }
    let log = idp.stderr();
    assert!(
        !log.contains("grant.error") && !log.contains("grant.revoked"),
        "no refresh token was spent twice: {log}"
    );
    let ok = counter(&a, "portcullis_session_refreshes_total{result=\"ok\"}").await
        + counter(&b, "portcullis_session_refreshes_total{result=\"ok\"}").await;
    assert_eq!(ok, 3, "one refresh per round between the two replicas");
    for gw in [&a, &b] {
        assert_eq!(
            counter(gw, "portcullis_session_refreshes_total{result=\"refused\"}").await,
            0
        );
        assert_eq!(page(gw, "/", &session).await.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_keyspace_dump_shows_no_token_no_cookie_and_no_name_in_clear_text() {
    let redis = RedisServer::start();
    let idp = provider().await;
    let upstream = Recorder::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = session_key_file(keys.path());
    let gw = replica(&idp, &upstream, &redis.url(), &key).await;
    let session = sign_in(&idp, &gw, &gw, "/", "alice").await;
    // A second sign-in stays in progress: its state, verifier and nonce are in Redis too.
    let pending = page(&gw, "/other", "").await;
    assert_eq!(pending.status, StatusCode::FOUND);

    // What the session holds, read the way a replica reads it (with the key).
    let cookie = session.split_once('=').unwrap().1;
    let id = SessionId::parse(cookie).unwrap();
    let stored = same_store(&redis.url(), &key).get(&id).await.unwrap().unwrap();
    let tokens: Vec<String> = [&stored.access_token, &stored.refresh_token, &stored.id_token]
        .into_iter()
        .flatten()
        .map(|t| t.expose().to_string())
        .collect();
    assert_eq!(tokens.len(), 3, "access, refresh and ID tokens are kept");

    let dump = redis.dump();
    assert_eq!(dump.len(), 2, "one session and one sign-in in progress: {dump:?}");
    let text = format!("{dump:?}");
    let state = pending
        .location()
        .split_once("state=")
        .unwrap()
        .1
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let mut clear: Vec<String> = tokens.clone();
    clear.extend([
        cookie.to_string(),
        state,
        "alice".into(),
        "eyJ".into(),
        SESSION_KEY_HEX.into(),
    ]);
    // Tokens are long: a piece of one would give it away as much as the whole.
    clear.extend(
        tokens
            .iter()
            .filter(|t| t.len() > 24)
            .map(|t| t[8..24].to_string()),
    );
    for secret in &clear {
        assert!(!text.contains(secret.as_str()), "{secret} is readable in Redis");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_browser_routes_answer_503_audited_bearer_and_public_routes_serve_and_it_recovers_by_itself()
 {
    let mut redis = RedisServer::start();
    let idp = provider().await;
    let upstream = Recorder::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = session_key_file(keys.path());
    let gw = replica(&idp, &upstream, &redis.url(), &key).await;
    let session = sign_in(&idp, &gw, &gw, "/", "alice").await;
    assert_eq!(page(&gw, "/", &session).await.status, StatusCode::OK);
    let token = idp
        .client_credentials_token("ci-bot", "ci-bot-secret", None)
        .await;
    let bearer = format!("Bearer {token}");

    redis.kill();
    // The replica notices within a second (its subscription's check) and stops serving the
    // copies of sessions it holds; nothing can be signed out or revoked meanwhile, as both
    // need Redis.
    let started = Instant::now();
    loop {
        let (_, readiness) = support::get(gw.admin, "/readyz", &[]).await;
        if readiness.contains("revocations: not subscribed") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{readiness}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A signed-in browser is not let through, nor sent to sign in again: 503, audited.
    let app = api_call(&gw, "/api/v1/dags", &session).await;
    assert_eq!(app.status, StatusCode::SERVICE_UNAVAILABLE, "{}", app.body);
    assert!(app.body.contains("session_store_unavailable"), "{}", app.body);
    let shown = page(&gw, "/dags", &session).await;
    assert_eq!(shown.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        shown.body.contains("<html") || shown.body.contains("<!DOCTYPE"),
        "{}",
        shown.body
    );
    // Starting a sign-in needs the store too.
    let start = page(&gw, "/dags", "").await;
    assert_eq!(start.status, StatusCode::SERVICE_UNAVAILABLE, "{}", start.body);
    // A record is written when its exchange is over: the last ones may still be on their way.
    let started = Instant::now();
    loop {
        let records = gw.audit_events(1).await;
        let refused = records
            .iter()
            .filter(|r| r["portcullis.reason"] == "session_store_unavailable")
            .filter(|r| r["http.response.status_code"] == 503)
            .count();
        if refused == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{refused} refusals audited: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let forwarded = upstream.requests().len();
    // The replica stays in the balancer (bearer and public routes serve), and says why browser
    // routes do not.
    let (status, readiness) = support::get(gw.admin, "/readyz", &[]).await;
    assert_eq!(status, StatusCode::OK, "{readiness}");
    assert!(
        readiness.contains("session store: redis, unreachable")
            && readiness.contains("session_store_unavailable"),
        "{readiness}"
    );

    // Bearer tokens and public routes do not need the store.
    let api = fetch(
        &gw,
        "app.localhost",
        "/api/v1/dags",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(api.status, StatusCode::OK, "{}", api.body);
    let open = fetch(&gw, "open.localhost", "/status", &[]).await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.body);
    assert_eq!(upstream.requests().len(), forwarded + 2);
    assert_eq!(upstream.last().target, "/status");

    // Redis comes back with its data: the same session works again, the proxy untouched.
    redis.restart();
    let started = Instant::now();
    loop {
        let again = page(&gw, "/dags", &session).await;
        if again.status == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {} after Redis returned: {}",
            again.status,
            again.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(upstream.last().target, "/dags");
    let started = Instant::now();
    loop {
        let (_, readiness) = support::get(gw.admin, "/readyz", &[]).await;
        if readiness.contains("session store: redis, reachable")
            && readiness.contains("revocations: subscribed, 0 deny entries in force")
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{readiness}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_redis_is_down_takes_no_traffic_until_it_has_read_the_deny_list() {
    let mut redis = RedisServer::start();
    let idp = provider().await;
    let upstream = Recorder::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = session_key_file(keys.path());
    let running = replica(&idp, &upstream, &redis.url(), &key).await;
    let token = idp
        .client_credentials_token("ci-bot", "ci-bot-secret", None)
        .await;
    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str())];
    let call = |gw| fetch(gw, "app.localhost", "/api/v1/dags", &headers);
    redis.kill();

    // The new replica cannot know what was revoked before it started: not ready. The running
    // one keeps the copy it read, and stays in the balancer.
    let fresh = start_replica(&idp, &upstream, &redis.url(), &key, |c| c).await;
    let readiness = |gw: &Gateway| support::get(gw.admin, "/readyz", &[]);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let (status, text) = readiness(&fresh).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("the deny list has not been read"), "{text}");
        let (status, text) = readiness(&running).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Sent a token anyway, it checks nothing against a list it does not have: 503, audited.
    let forwarded = upstream.requests().len();
    let refused = call(&fresh).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("session_store_unavailable"),
        "{}",
        refused.body
    );
    let record = fresh.audit_events(1).await;
    assert_eq!(
        record[0]["portcullis.reason"], "session_store_unavailable",
        "{record:#?}"
    );
    assert_eq!(call(&running).await.status, StatusCode::OK);
    assert_eq!(upstream.requests().len(), forwarded + 1);

    // Redis returns: the new replica reads the list and becomes ready by itself.
    redis.restart();
    let started = Instant::now();
    loop {
        let (status, text) = readiness(&fresh).await;
        if status == StatusCode::OK {
            assert!(text.contains("revocations: subscribed"), "{text}");
            assert_eq!(call(&fresh).await.status, StatusCode::OK);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_does_not_start_with_an_encryption_key_that_is_not_32_bytes_and_says_which_key() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short-key");
    std::fs::write(&short, "0123456789abcdef\n").unwrap();
    let text = Config::new()
        .route(
            Route::public("open")
                .host("open.localhost")
                .upstream("http://127.0.0.1:1"),
        )
        .set("sessions.store", "redis")
        .set("sessions.redis.url", "redis://127.0.0.1:1")
        .set("sessions.redis.encryption_key_file", short.as_path())
        .to_toml();
    let config = portcullis::config::parse(&text).unwrap();
    assert!(portcullis::config::validate(&config).is_empty());
    let Err(e) = portcullis::app::build(&config, None).await else {
        panic!("started with a 16-byte key");
    };
    let message = e.to_string();
    assert!(
        message.starts_with("sessions.redis.encryption_key_file: ") && message.contains("32 bytes"),
        "{message}"
    );
    assert!(
        !message.contains("0123456789abcdef"),
        "the key was repeated: {message}"
    );
}

/// The configuration the replicas run with, as a file for `portcullis revoke`.
fn replicas_config(idp: &Idp, upstream: &Recorder, redis_url: &str, key_file: &Path, dir: &Path) -> PathBuf {
    let app = Route::authenticated("app")
        .host("app.localhost")
        .upstream(upstream);
    let text = idp
        .browser_config(&dir.join("web-secret"), app)
        .set("sessions.store", "redis")
        .set("sessions.redis.url", redis_url)
        .set("sessions.redis.encryption_key_file", key_file)
        .to_toml();
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `portcullis revoke --config CONFIG ARGS…`; panics unless it succeeds.
fn revoke(config: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(support::binary())
        .arg("revoke")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let text = support::output_text(&out);
    assert!(out.status.success(), "{text}");
    text
}

/// Asks every replica until each has refused once (`refused` says whether a reply is a
/// refusal); returns how long the slowest took, failing after `limit`.
async fn until_every_replica_refuses<F, Fut>(replicas: &[&Gateway], limit: Duration, ask: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for (i, _) in replicas.iter().enumerate() {
        loop {
            if ask(i).await {
                slowest = slowest.max(started.elapsed());
                break;
            }
            assert!(
                started.elapsed() < limit,
                "replica {i} still serves after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    slowest
}

async fn replicas(n: usize, idp: &Idp, upstream: &Recorder, redis_url: &str, key: &Path) -> Vec<Gateway> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(replica(idp, upstream, redis_url, key).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_on_one_replica_is_refused_by_the_others_within_a_second_with_their_caches_warm() {
    let redis = RedisServer::start();
    let idp = provider().await;
    let upstream = Recorder::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = session_key_file(keys.path());
    let all = replicas(3, &idp, &upstream, &redis.url(), &key).await;
    let session = sign_in(&idp, &all[0], &all[1], "/", "alice").await;
    // Each replica has read the session, so each holds a copy.
    for gw in &all {
        assert_eq!(api_call(gw, "/api", &session).await.status, StatusCode::OK);
        assert_eq!(api_call(gw, "/api", &session).await.status, StatusCode::OK);
    }
    let forwarded = upstream.requests().len();

    let out = page(&all[2], "/.portcullis/sign_out", &session).await;
    assert_eq!(out.status, StatusCode::FOUND);
    let slowest = until_every_replica_refuses(&[&all[0], &all[1]], Duration::from_secs(1), |i| {
        let (gw, session) = (&all[i], &session);
        async move {
            let reply = api_call(gw, "/api", session).await;
            reply.status == StatusCode::UNAUTHORIZED && reply.body.contains("session_expired")
        }
    })
    .await;
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert_eq!(
        upstream.requests().len(),
        forwarded,
        "nothing was forwarded after the sign-out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_revoke_subject_refuses_a_ci_job_s_bearer_token_on_every_replica_within_a_second_audited()
{
    let redis = RedisServer::start();
    let idp = provider().await;
    let upstream = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = session_key_file(dir.path());
    let all = replicas(3, &idp, &upstream, &redis.url(), &key).await;
    let config = replicas_config(&idp, &upstream, &redis.url(), &key, dir.path());
    let token = idp
        .client_credentials_token("ci-bot", "ci-bot-secret", None)
        .await;
    let bearer = format!("Bearer {token}");
    let call = |gw: &Gateway| {
        let bearer = bearer.clone();
        let addr = gw.http;
        async move {
            let response = support::send(
                addr,
                Method::GET,
                "/api/v1/dags",
                &[("host", "app.localhost"), ("authorization", &bearer)],
                Bytes::new(),
            )
            .await;
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    // Verified and cached by every replica.
    for gw in &all {
        assert_eq!(call(gw).await.0, StatusCode::OK);
    }
    let subject = all[0].audit_events(1).await.last().unwrap()["enduser.id"]
        .as_str()
        .unwrap()
        .to_string();
    let forwarded = upstream.requests().len();

    let said = revoke(&config, &["--subject", &subject]);
    assert!(
        said.contains(&format!("revoked subject oidc/{subject}")),
        "{said}"
    );
    let slowest = until_every_replica_refuses(&[&all[0], &all[1], &all[2]], Duration::from_secs(1), |i| {
        let call = call(&all[i]);
        async move {
            let (status, body) = call.await;
            status == StatusCode::UNAUTHORIZED && body.contains("revoked")
        }
    })
    .await;
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert_eq!(
        upstream.requests().len(),
        forwarded,
        "nothing was forwarded after the revocation"
    );

    // Each replica's refusal is audited with the reason, and the challenge names it.
    for gw in &all {
        let records = gw.audit_events(2).await;
        let last = records.last().unwrap();
        assert_eq!(last["portcullis.reason"], "revoked", "{last}");
        assert_eq!(last["http.response.status_code"], 401, "{last}");
        assert_eq!(last["portcullis.decision"], "deny", "{last}");
        // Whose token it was stays in the record; the request acted as nobody.
        assert_eq!(last["enduser.id"], subject.as_str(), "{last}");
        // And each replica recorded, once, that it enforces the revocation.
        let enforced = gw.act_records("revocation").await;
        assert_eq!(enforced.len(), 1, "{enforced:#?}");
        let r = &enforced[0];
        assert_eq!(r["portcullis.revocation.scope"], "subject", "{r}");
        assert_eq!(r["portcullis.principal.provider"], "oidc", "{r}");
        assert_eq!(r["enduser.id"], subject.as_str(), "{r}");
        assert_eq!(r["portcullis.decision"], "allow", "{r}");
        assert!(r["portcullis.revocation.expires"].is_string(), "{r}");
    }
    let response = support::send(
        all[1].http,
        Method::GET,
        "/api/v1/dags",
        &[("host", "app.localhost"), ("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("invalid_token") && challenge.contains("revoked"),
        "{challenge}"
    );

    // Another subject of the same provider is not touched.
    let other = idp
        .client_credentials_token("svc-es", "svc-es-secret", None)
        .await;
    let response = support::send(
        all[2].http,
        Method::GET,
        "/api/v1/dags",
        &[
            ("host", "app.localhost"),
            ("authorization", &format!("Bearer {other}")),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_revoke_session_of_ends_that_person_s_sessions_on_every_replica_and_nobody_else_s() {
    let redis = RedisServer::start();
    let idp = provider().await;
    let upstream = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = session_key_file(dir.path());
    let all = replicas(2, &idp, &upstream, &redis.url(), &key).await;
    let config = replicas_config(&idp, &upstream, &redis.url(), &key, dir.path());
    let alice = sign_in(&idp, &all[0], &all[0], "/", "alice").await;
    let alice_again = sign_in(&idp, &all[1], &all[1], "/", "alice").await;
    let bob = sign_in(&idp, &all[0], &all[1], "/", "bob").await;
    for gw in &all {
        for session in [&alice, &alice_again, &bob] {
            assert_eq!(api_call(gw, "/api", session).await.status, StatusCode::OK);
        }
    }

    revoke(&config, &["--session-of", "alice", "--provider", "oidc"]);
    let slowest = until_every_replica_refuses(&[&all[0], &all[1]], Duration::from_secs(1), |i| {
        let (gw, a, b) = (&all[i], &alice, &alice_again);
        async move {
            let (x, y) = (api_call(gw, "/api", a).await, api_call(gw, "/api", b).await);
            x.status == StatusCode::UNAUTHORIZED
                && y.status == StatusCode::UNAUTHORIZED
                && x.body.contains("revoked")
        }
    })
    .await;
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    for gw in &all {
        assert_eq!(
            api_call(gw, "/api", &bob).await.status,
            StatusCode::OK,
            "bob is untouched"
        );
    }
    // A page is sent to sign in again, and a new sign-in is not refused.
    let shown = page(&all[1], "/", &alice).await;
    assert_eq!(shown.status, StatusCode::FOUND, "{}", shown.body);
    let fresh = sign_in(&idp, &all[1], &all[0], "/", "alice").await;
    assert_eq!(api_call(&all[0], "/api", &fresh).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_revoke_with_the_memory_store_refuses_and_says_revocation_needs_the_shared_store() {
    let dir = tempfile::tempdir().unwrap();
    let text = Config::new()
        .route(
            Route::public("open")
                .host("open.localhost")
                .upstream("http://127.0.0.1:1"),
        )
        .to_toml();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(support::binary())
        .args(["revoke", "--config"])
        .arg(&config)
        .arg("--all-sessions")
        .output()
        .unwrap();
    let text = support::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("sessions.store") && text.contains("store = \"redis\""),
        "{text}"
    );
    // One of the three is required.
    let out = std::process::Command::new(support::binary())
        .args(["revoke", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_at_the_provider_ends_the_session_on_every_replica_through_back_channel_logout() {
    let redis = RedisServer::start();
    let upstream = Recorder::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = session_key_file(keys.path());
    let (a, b) = (
        Gateway::prebind(Config::new()).await,
        Gateway::prebind(Config::new()).await,
    );
    // The provider posts logout tokens to replica A (any replica would do: the deny entry
    // reaches all of them).
    let logout_uri = format!(
        "http://127.0.0.1:{}/.portcullis/backchannel-logout",
        a.http.port()
    );
    let idp = Idp::start_with(&[
        "--redirect",
        CALLBACK,
        "--post-logout-redirect",
        SIGNED_OUT,
        "--backchannel-logout",
        &logout_uri,
    ])
    .await;
    let config = |secret: &Path| {
        Config::new()
            .provider(
                idp.browser_provider("oidc", secret)
                    .set("browser.backchannel_logout", true),
            )
            .route(
                Route::authenticated("app")
                    .host("app.localhost")
                    .upstream(&upstream)
                    .providers(["oidc"]),
            )
            .route(Route::public("loopback").host("127.0.0.1").upstream(&upstream))
            .set("sessions.store", "redis")
            .set("sessions.redis.url", redis.url())
            .set("sessions.redis.encryption_key_file", key.as_path())
    };
    let (secret_a, secret_b) = (a.dir.path().join("web-secret"), b.dir.path().join("web-secret"));
    let a = a.start(config(&secret_a)).await;
    let b = b.start(config(&secret_b)).await;
    a.wait_ready().await;
    b.wait_ready().await;

    // Alice signs in (the provider's session cookies are kept, as her browser would).
    let first = page(&a, "/", "").await;
    let binding = first.cookie(LOGIN).unwrap();
    let (callback, provider_cookies) = idp.sign_in_keeping_cookies(&first.location(), "alice").await;
    let back = page(&b, &target_of(&callback), &format!("{LOGIN}={binding}")).await;
    assert_eq!(back.status, StatusCode::FOUND, "{}", back.body);
    let session = format!("{SESSION}={}", back.cookie(SESSION).unwrap());
    for gw in [&a, &b] {
        assert_eq!(api_call(gw, "/api", &session).await.status, StatusCode::OK);
    }
    // The session keeps the provider session it belongs to.
    let id = SessionId::parse(session.split_once('=').unwrap().1).unwrap();
    let stored = same_store(&redis.url(), &key).get(&id).await.unwrap().unwrap();
    assert!(stored.sid.is_some(), "the ID token's sid was not kept");

    // She logs out at the provider, which posts a logout token to A before it answers.
    let status = idp.log_out_at_provider(&provider_cookies).await;
    assert!(
        status.is_redirection() || status.is_success(),
        "{status}: {}",
        idp.stderr()
    );
    let slowest = until_every_replica_refuses(&[&a, &b], Duration::from_secs(1), |i| {
        let (gw, session) = ([&a, &b][i], &session);
        async move {
            let reply = api_call(gw, "/api", session).await;
            reply.status == StatusCode::UNAUTHORIZED && reply.body.contains("revoked")
        }
    })
    .await;
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    // A recorded the logout: the provider and whose, never the token.
    let records = a.audit_events(1).await;
    let logout = records
        .iter()
        .find(|r| r["portcullis.act"] == "backchannel_logout")
        .unwrap_or_else(|| panic!("no back-channel logout record: {records:#?}"));
    assert_eq!(logout["portcullis.decision"], "allow", "{logout}");
    assert_eq!(logout["http.response.status_code"], 200, "{logout}");
    assert_eq!(logout["enduser.id"], "alice", "{logout}");
    assert_eq!(
        logout["portcullis.principal.issuer"],
        idp.issuer.as_str(),
        "{logout}"
    );
    assert!(!logout.to_string().contains("eyJ"), "{logout}");
    // Both replicas recorded the provider session's revocation they enforce: its sid only as a
    // digest.
    let sid = stored.sid.clone().unwrap();
    for gw in [&a, &b] {
        let enforced = gw.act_records("revocation").await;
        assert_eq!(enforced.len(), 1, "{enforced:#?}");
        let r = &enforced[0];
        assert_eq!(r["portcullis.revocation.scope"], "sid", "{r}");
        assert_eq!(r["portcullis.principal.provider"], "oidc", "{r}");
        assert_eq!(
            r["portcullis.revocation.sid_hash"].as_str().map(str::len),
            Some(16),
            "{r}"
        );
        assert!(!r.to_string().contains(&sid), "{r}");
    }
}

/// The revocation delay, measured: three replicas on one Redis, each with the session in its
/// cache; 100 times, `revoke --session-of` (the library call the command makes) of a person
/// with a live session, then the time from its return until every replica has refused that
/// session. Prints p50 and max (BENCHMARKS.md); run with
/// `cargo test --release --test redis_sessions revocation_delay -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints the revocation delay over 100 revocations"]
async fn revocation_delay_over_100_revocations() {
    let redis = RedisServer::start();
    let idp = provider().await;
    let upstream = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = session_key_file(dir.path());
    let all = replicas(3, &idp, &upstream, &redis.url(), &key).await;
    let path = replicas_config(&idp, &upstream, &redis.url(), &key, dir.path());
    let config = portcullis::app::load_config(&path).unwrap();
    let store = same_store(&redis.url(), &key);
    let mut delays = Vec::new();
    for i in 0..100 {
        let subject = format!("person-{i}");
        let id = SessionId::random().unwrap();
        let principal = portcullis::identity::Principal {
            kind: portcullis::identity::PrincipalKind::User,
            subject: subject.clone(),
            issuer: idp.issuer.clone(),
            provider: "oidc".into(),
            email: None,
            name: None,
            groups: vec!["users".into()],
            auth_method: portcullis::identity::AuthMethod::Session,
            client_id: None,
            token_id: None,
            session_id_hash: Some(id.hash()),
        };
        let session = portcullis::session::Session {
            principal: std::sync::Arc::new(principal),
            created: std::time::SystemTime::now() - Duration::from_millis(5),
            access_token: None,
            access_token_expires: None,
            refresh_token: None,
            id_token: None,
            sid: None,
        };
        store.put(id.clone(), session).await.unwrap();
        let cookie = format!("{SESSION}={}", id.cookie_value());
        for gw in &all {
            for _ in 0..2 {
                let reply = api_call(gw, "/api", &cookie).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            }
        }
        portcullis::app::revoke(
            &config,
            portcullis::app::Revoke::SessionsOf(subject),
            Some("oidc"),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        let delay = until_every_replica_refuses(&[&all[0], &all[1], &all[2]], Duration::from_secs(1), |i| {
            let (gw, cookie) = (&all[i], &cookie);
            async move { api_call(gw, "/api", cookie).await.status == StatusCode::UNAUTHORIZED }
        })
        .await;
        delays.push(delay);
    }
    delays.sort();
    let p50 = delays[delays.len() / 2];
    let max = delays[delays.len() - 1];
    println!(
        "revocation delay over {} revocations, 3 replicas: p50 {:.2} ms, max {:.2} ms",
        delays.len(),
        p50.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
    assert!(max < Duration::from_secs(1), "{max:?}");
}
