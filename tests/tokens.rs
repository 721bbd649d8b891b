//! Identity assertions as an upstream sees them: a JWT it verifies with a standard library
//! against the keys the proxy publishes, for its own audience only, from a key ring that
//! rotates under load without a single failed verification and survives a restart.
#![cfg(test)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::jwk::JwkSet;
use serde_json::{Value, json};
use support::config::UpstreamUrl;
use support::idp::verify_jwt;
use support::issuer::TestIssuer;
use support::serve::{Serve, Server, serve};
use support::{Config, Gateway, Recorder, Route, get};

fn private_dir(parent: &Path) -> std::path::PathBuf {
    let dir = parent.join("keys");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// `[tokens]` and two routes that send assertions: `a` (see [`route_a`]), and `b` with
/// audience `https://b.test` and a 120 s lifetime, in front of `upstream_b`.
fn config(issuer_url: &str, keys: &Path, idp: &TestIssuer, a: Route, upstream_b: impl UpstreamUrl) -> Config {
    Config::new()
        .provider(idp.provider("test"))
        .tokens(issuer_url, keys)
        .route(a)
        .route(
            caller_route("b", upstream_b)
                .set("assertion.audience", "https://b.test")
                .set("assertion.lifetime", "120s"),
        )
}

/// Route `a`: assertions with audience `https://a.test` and identity headers, in front of
/// `upstream`.
fn route_a(upstream: impl UpstreamUrl) -> Route {
    caller_route("a", upstream)
        .set("assertion.audience", "https://a.test")
        .set("assertion.identity_headers", true)
}

/// An authenticated route `name` for `name.test` open to the `test` provider's callers.
fn caller_route(name: &str, upstream: impl UpstreamUrl) -> Route {
    Route::authenticated(name)
        .host(&format!("{name}.test"))
        .providers(["test"])
        .upstream(upstream)
}

/// The proxy signing assertions as its own HTTP address (keys in its temp dir), with
/// `server`'s `[server]` keys and [`config`]'s routes to `a` and `b`, ready; and its issuer URL.
async fn signing_gateway(server: Config, idp: &TestIssuer, a: &Recorder, b: &Recorder) -> (Gateway, String) {
    let prebound = Gateway::prebind(server).await;
    let issuer_url = format!("http://{}", prebound.http);
    let keys = private_dir(prebound.dir.path());
    let gw = prebound
        .start(config(&issuer_url, &keys, idp, route_a(a), b))
        .await;
    gw.wait_ready().await;
    (gw, issuer_url)
}

async fn jwks(addr: SocketAddr, host: &str) -> JwkSet {
    let (status, body) = get(addr, "/.well-known/jwks.json", &[("host", host)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_verifies_the_assertion_against_the_published_keys_and_only_for_its_own_audience() {
    let idp = TestIssuer::start().await;
    let (a, b) = (Recorder::start().await, Recorder::start().await);
    let (gw, issuer_url) = signing_gateway(support::strip_extra(), &idp, &a, &b).await;
    let token = idp.token("alice");

    let bearer = format!("Bearer {token}");
    let mut spoof = vec![
        ("host", "a.test"),
        ("authorization", bearer.as_str()),
        ("x-portcullis-assertion", "forged.by.client"),
        ("X_Portcullis_User", "mallory"),
    ];
    spoof.extend(support::IDENTITY_SPOOFS.iter().map(|n| (*n, "spoofed-by-client")));
    let (status, _) = get(gw.http, "/jobs", &spoof).await;
    assert_eq!(status, StatusCode::OK);
    let seen = a.last();
    // Of all the identity headers the client sent, only the proxy's own arrive, with its values.
    support::assert_no_client_identity(
        &seen,
        &["x-portcullis-user", "x-portcullis-email", "x-portcullis-groups"],
    );
    let assertion = seen.header("x-portcullis-assertion").unwrap();
    assert_ne!(assertion, "forged.by.client");
    assert!(
        !seen.has_any_spelling_of("x-portcullis-user")
            || seen.header("x-portcullis-user").as_deref() == Some("test/alice")
    );
    // The user names the provider that vouched for it.
    assert_eq!(seen.header("x-portcullis-user").as_deref(), Some("test/alice"));
    assert_eq!(
        seen.header("x-portcullis-email").as_deref(),
        Some("alice@example.test")
    );
    assert_eq!(seen.header("x-portcullis-groups").as_deref(), Some("deployers"));
    assert_eq!(seen.headers.get_all("x-portcullis-assertion").iter().count(), 1);

    // The discovery document names the JWKS, on the issuer's own host and on the admin listener.
    let host = issuer_url.trim_start_matches("http://");
    let (status, discovery) = get(gw.http, "/.well-known/openid-configuration", &[("host", host)]).await;
    assert_eq!(status, StatusCode::OK);
    let discovery: Value = serde_json::from_str(&discovery).unwrap();
    assert_eq!(discovery["issuer"], issuer_url.as_str());
    assert_eq!(
        discovery["jwks_uri"],
        format!("{issuer_url}/.well-known/jwks.json")
    );
    let published = jwks(gw.http, host).await;
    assert_eq!(jwks(gw.admin, "admin").await.keys.len(), published.keys.len());
    let (status, _) = get(gw.http, "/.well-known/jwks.json", &[("host", "a.test")]).await;
    assert_ne!(
        status,
        StatusCode::OK,
        "another host's .well-known is that route's, not the issuer's"
    );

    let claims = verify_jwt(&assertion, &published, &issuer_url, "https://a.test").unwrap();
    assert_eq!(claims["sub"], "test/alice");
    assert_eq!(claims["provider"], "test");
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(claims["groups"], serde_json::json!(["deployers"]));
    assert_eq!(claims["auth_method"], "bearer");
    assert_eq!(claims["idp"], idp.issuer.as_str());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(
        jsonwebtoken::decode_header(&assertion).unwrap().alg,
        jsonwebtoken::Algorithm::ES256
    );

    // Replayed to route b's upstream, it is refused there: b checks its own audience.
    let refused = verify_jwt(&assertion, &published, &issuer_url, "https://b.test").unwrap_err();
    assert_eq!(*refused.kind(), jsonwebtoken::errors::ErrorKind::InvalidAudience);
    let (status, _) = get(
        gw.http,
        "/jobs",
        &[("host", "b.test"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let for_b = b.last().header("x-portcullis-assertion").unwrap();
    let claims_b = verify_jwt(&for_b, &published, &issuer_url, "https://b.test").unwrap();
    assert_eq!(
        claims_b["exp"].as_u64().unwrap() - claims_b["iat"].as_u64().unwrap(),
        120
    );
    assert!(
        b.last().header("x-portcullis-user").is_none(),
        "b does not ask for plain headers"
    );

    // Cached per caller and route: the same caller gets the same assertion; another caller its own.
    let (status, _) = get(gw.http, "/jobs", &spoof).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a.last().header("x-portcullis-assertion").unwrap(), assertion);
    let bob = format!("Bearer {}", idp.token("bob"));
    let (status, _) = get(gw.http, "/jobs", &[("host", "a.test"), ("authorization", &bob)]).await;
    assert_eq!(status, StatusCode::OK);
    let bobs = a.last().header("x-portcullis-assertion").unwrap();
    assert_eq!(
        verify_jwt(&bobs, &published, &issuer_url, "https://a.test").unwrap()["sub"],
        "test/bob"
    );

    // Each mint is one audit act (three: alice on a, alice on b, bob on a); the trail holds no token.
    let acts = gw.acts(4).await;
    let mints: Vec<&Value> = acts
        .iter()
        .filter(|e| e["portcullis.act"] == "assertion_minted")
        .collect();
    assert_eq!(mints.len(), 3, "{mints:?}");
    assert!(
        acts.iter().any(|e| e["portcullis.act"] == "key_rotation"),
        "the first key is an audited act"
    );
    let trail = serde_json::to_string(&acts).unwrap();
    assert!(!trail.contains(&assertion[..40]) && !trail.contains(&token[..40]));
    gw.stop().await;
}

impl VerifyingUpstream {
    /// Every one of the `sent` requests arrived with a token that verified.
    fn assert_all_verified(&self, sent: usize) {
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "tokens that did not verify at the upstream: {failures:?}"
        );
        assert_eq!(self.verified.load(Ordering::Relaxed), sent);
    }
}

/// Where a verifying upstream gets its keys.
#[derive(Clone)]
enum Keys {
    /// The proxy's issuer URL (`at`, with `host` as the issuer's host).
    Proxy { at: SocketAddr, host: String },
    /// An identity provider's JWKS URL.
    Url(String),
}

impl Keys {
    async fn fetch(&self) -> JwkSet {
        match self {
            Keys::Proxy { at, host } => jwks(*at, host).await,
            Keys::Url(url) => serde_json::from_value(support::idp::get_json(url).await.1).unwrap(),
        }
    }
}

/// An upstream that verifies every request's token the way a service would: a cached JWKS,
/// fetched again when a token names an unknown key. `header` carries the token (`authorization`
/// with a `Bearer ` prefix, or the assertion header).
struct VerifyingUpstream {
    server: Server,
    verified: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    kids: Arc<Mutex<HashMap<String, usize>>>,
    /// The claims of every token that verified, in arrival order.
    claims: Arc<Mutex<Vec<Value>>>,
}

async fn verifying_upstream(
    keys_from: Keys,
    header: &'static str,
    issuer: String,
    audience: &'static str,
) -> VerifyingUpstream {
    let verified = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let kids = Arc::new(Mutex::new(HashMap::new()));
    let claims = Arc::new(Mutex::new(Vec::new()));
    let cache: Arc<tokio::sync::Mutex<Option<JwkSet>>> = Arc::new(tokio::sync::Mutex::new(None));
    let (v, f, k, c) = (verified.clone(), failures.clone(), kids.clone(), claims.clone());
    let server = serve(Serve::auto(), move |_, req| {
        let (v, f, k, c, cache, issuer, source) = (
            v.clone(),
            f.clone(),
            k.clone(),
            c.clone(),
            cache.clone(),
            issuer.clone(),
            keys_from.clone(),
        );
        async move {
            let value = req
                .headers()
                .get(header)
                .and_then(|t| t.to_str().ok())
                .unwrap_or("");
            let token = value.strip_prefix("Bearer ").unwrap_or(value).to_string();
            let kid = jsonwebtoken::decode_header(&token)
                .ok()
                .and_then(|h| h.kid)
                .unwrap_or_default();
            let mut keys = cache.lock().await;
            if keys.as_ref().is_none_or(|set| set.find(&kid).is_none()) {
                *keys = Some(source.fetch().await);
            }
            match verify_jwt(&token, keys.as_ref().unwrap(), &issuer, audience) {
                Ok(verified) => {
                    v.fetch_add(1, Ordering::Relaxed);
                    *k.lock().unwrap().entry(kid).or_default() += 1;
                    c.lock().unwrap().push(verified);
                }
                Err(e) => f.lock().unwrap().push(format!("{kid}: {e}")),
            }
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    VerifyingUpstream {
        server,
        verified,
        failures,
        kids,
        claims,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotated_under_load_fail_no_verification_at_the_upstream_and_a_restart_keeps_the_ring() {
    let idp = TestIssuer::start().await;
    let b = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = private_dir(dir.path());

    // A first run makes the ring.
    let prebound = Gateway::prebind(Config::new()).await;
    let issuer_url = format!("http://{}", prebound.http);
    let text = config(&issuer_url, &keys, &idp, route_a("http://127.0.0.1:1"), &b);
    let gw = prebound.start(&text).await;
    gw.wait_ready().await;
    gw.stop().await;
    let first = portcullis::tokens::KeyRing::open(&keys)
        .unwrap()
        .active()
        .unwrap()
        .kid
        .clone();

    // The second run on the same directory rotates every 2 s, in front of an upstream that
    // verifies every assertion with keys it fetches from the issuer's own URL.
    let prebound = Gateway::prebind(Config::new()).await;
    let issuer_url = format!("http://{}", prebound.http);
    let host = issuer_url.trim_start_matches("http://").to_string();
    let keys_from = Keys::Proxy {
        at: prebound.http,
        host: host.clone(),
    };
    let verifier = verifying_upstream(
        keys_from,
        "x-portcullis-assertion",
        issuer_url.clone(),
        "https://a.test",
    )
    .await;
    // Assertions are cached for their lifetime: a short one shows each new key within seconds.
    let a = route_a(&verifier.server).set("assertion.lifetime", "2s");
    let text = config(&issuer_url, &keys, &idp, a, &b).set("tokens.rotate_every", "2s");
    let gw = prebound.start(&text).await;
    gw.wait_ready().await;
    assert!(
        jwks(gw.admin, "admin").await.find(&first).is_some(),
        "the restarted proxy lost the key ring it had"
    );

    // `portcullis keys rotate` acts on the same directory from outside, twice, during the load.
    let cli_config = dir.path().join("keys-cli.toml");
    text.write(&cli_config);
    let token = format!("Bearer {}", idp.token("alice"));
    let started = Instant::now();
    let (mut sent, mut rotated) = (0, 0u64);
    while started.elapsed() < Duration::from_secs(8) {
        for _ in 0..20 {
            let (status, body) = get(gw.http, "/run", &[("host", "a.test"), ("authorization", &token)]).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            sent += 1;
        }
        if rotated < 2 && started.elapsed() > Duration::from_secs(2 + 3 * rotated) {
            let out = std::process::Command::new(support::binary())
                .args(["keys", "rotate", "--config"])
                .arg(&cli_config)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            rotated += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    verifier.assert_all_verified(sent);
    let kids = verifier.kids.lock().unwrap().clone();
    assert!(
        kids.len() >= 3,
        "the assertions were signed by only {} keys: {kids:?}",
        kids.len()
    );
    let listed = std::process::Command::new(support::binary())
        .args(["keys", "list", "--config"])
        .arg(&cli_config)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.ends_with("active")).count(),
        1,
        "{listed}"
    );
    assert!(listed.contains(&first), "{listed}");
    let acts = gw.acts(1).await;
    assert!(
        acts.iter()
            .filter(|e| e["portcullis.act"] == "key_rotation")
            .count()
            >= 3
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_directory_that_others_may_read_is_refused_at_start_up_with_the_fix() {
    let idp = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = config("http://127.0.0.1:1", &keys, &idp, route_a(&upstream), &upstream)
        .server("http", "127.0.0.1:0")
        .set("admin.listen", "127.0.0.1:0")
        .set("audit.path", dir.path().join("audit.jsonl"))
        .to_toml();
    let config = portcullis::config::parse(&text).unwrap();
    assert!(portcullis::config::validate(&config).is_empty());
    let bound = portcullis::app::bind(&config).await.unwrap();
    let error = portcullis::app::run(config, bound, async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("tokens.key_dir"), "{error}");
    assert!(error.contains("0755") && error.contains("chmod 700"), "{error}");
}

/// Rounds of concurrent `GET /deploy`, one per `Authorization` value, every 200 ms for `how_long`;
/// every answer must be 200. Returns how many were sent.
async fn send_for(gw: &Gateway, how_long: Duration, authorizations: &[&str]) -> usize {
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < how_long {
        let replies = futures_util::future::join_all(
            authorizations
                .iter()
                .map(|auth| async move { get(gw.http, "/deploy", &[("authorization", auth)]).await }),
        )
        .await;
        for (status, body) in replies {
            assert_eq!(status, StatusCode::OK, "{body}");
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sent
}

/// The OpenID Provider started with `args`; an upstream that verifies the `Authorization` token
/// of every request for `audience` against the provider's JWKS; and the secret of the provider's
/// `client` (`<client>-secret`) in a file of the returned directory.
async fn provider_and_verifier(
    args: &[&str],
    audience: &'static str,
    client: &str,
) -> (
    support::idp::Idp,
    VerifyingUpstream,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let idp = support::idp::Idp::start_with(args).await;
    let jwks_uri = idp.discovery().await["jwks_uri"].as_str().unwrap().to_string();
    let verifier =
        verifying_upstream(Keys::Url(jwks_uri), "authorization", idp.issuer.clone(), audience).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join(format!("{client}.secret"));
    std::fs::write(&secret, format!("{client}-secret\n")).unwrap();
    (idp, verifier, dir, secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brokered_client_credentials_token_is_refreshed_before_expiry_and_the_upstream_sees_only_valid_ones()
 {
    // Access tokens live 4 s at the provider; the proxy refreshes 2 s before expiry.
    let api = "https://api.portcullis.test";
    let (idp, verifier, _dir, secret) =
        provider_and_verifier(&["--access-token-ttl", "4"], api, "ci-bot").await;
    let route = Route::public("api")
        .host("app.test")
        .upstream(&verifier.server)
        .set(
            "upstream_credentials",
            toml::toml! {
                client_id = "ci-bot"
                auth_method = "client_secret_post"
                scopes = ["read"]
                refresh_before = "2s"
            },
        )
        .set("upstream_credentials.issuer", &idp.issuer)
        .set("upstream_credentials.client_secret_file", &secret)
        .set("upstream_credentials.resource", api);
    let gw = Gateway::start(Config::new().route(route)).await;
    gw.wait_ready().await;

    // Over three token lifetimes, with the client's own Authorization replaced every time.
    let own = "Bearer the-client-s-own-token";
    let sent = send_for(&gw, Duration::from_secs(12), &[own, own, own]).await;
    verifier.assert_all_verified(sent);
    let acts = gw.acts(3).await;
    let refreshes: Vec<&Value> = acts
        .iter()
        .filter(|e| e["portcullis.act"] == "credential_brokered")
        .collect();
    assert!(
        refreshes.len() >= 4,
        "only {} tokens over three lifetimes",
        refreshes.len()
    );
    assert!(
        refreshes
            .iter()
            .all(|e| e["portcullis.client.id"] == "ci-bot" && e["portcullis.route"] == "api")
    );
    let trail = std::fs::read_to_string(gw.dir.path().join("audit.jsonl")).unwrap();
    assert!(!trail.contains("ci-bot-secret") && !trail.contains("the-client-s-own-token"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_s_token_is_exchanged_for_its_own_upstream_token_refreshed_before_expiry_and_never_forwarded_itself()
 {
    // Exchanged tokens live 3 s at the provider; the proxy exchanges again 1 s before expiry.
    let other = "https://other.portcullis.test";
    let (idp, verifier, _dir, secret) =
        provider_and_verifier(&["--exchanged-token-ttl", "3"], other, "exchanger").await;
    let exchange = |name: &str, host: &str, audience: &str| {
        Route::authenticated(name)
            .host(host)
            .providers(["oidc"])
            .upstream(&verifier.server)
            .set("upstream_credentials.kind", "token_exchange")
            .set("upstream_credentials.issuer", &idp.issuer)
            .set("upstream_credentials.client_id", "exchanger")
            .set("upstream_credentials.client_secret_file", &secret)
            .set("upstream_credentials.audience", audience)
    };
    let config = Config::new()
        .provider(idp.provider("oidc"))
        .route(exchange("deploy", "app.test", other).set("upstream_credentials.refresh_before", "1s"))
        .route(exchange("elsewhere", "elsewhere.test", "https://unknown.test"));
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;

    // Two CI callers with their own tokens (audience: the proxy's API), over several lifetimes of
    // the exchanged ones.
    let ci = idp
        .client_credentials_token("ci-bot", "ci-bot-secret", None)
        .await;
    let svc = idp
        .client_credentials_token("svc-es", "svc-es-secret", None)
        .await;
    let (ci_auth, svc_auth) = (format!("Bearer {ci}"), format!("Bearer {svc}"));
    let sent = send_for(
        &gw,
        Duration::from_secs(8),
        &[&ci_auth, &ci_auth, &svc_auth, &svc_auth],
    )
    .await;

    // Every request reached the upstream with a token for the upstream's audience that verified
    // (a caller's own token, for the API, would not), issued to the proxy on the caller's behalf.
    verifier.assert_all_verified(sent);
    let claims = verifier.claims.lock().unwrap().clone();
    let subject_of = |token: &str| support::idp::decode_jwt_unverified(token).1["sub"].clone();
    let callers = [subject_of(&ci), subject_of(&svc)];
    for caller in &callers {
        let tokens: std::collections::HashSet<&Value> = claims
            .iter()
            .filter(|c| &c["sub"] == caller)
            .map(|c| &c["jti"])
            .collect();
        assert!(
            tokens.len() >= 3,
            "{caller}: {} exchanged tokens over 8 s",
            tokens.len()
        );
    }
    assert!(
        claims
            .iter()
            .all(|c| callers.contains(&c["sub"]) && c["act"]["sub"] == "exchanger")
    );

    // An exchange the provider refuses (it issues nothing for that audience) forwards nothing:
    // 503, and the caller's own token never goes upstream instead.
    let (status, body) = get(
        gw.http,
        "/deploy",
        &[
            ("host", "elsewhere.test"),
            ("authorization", &format!("Bearer {ci}")),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("upstream_credential_unavailable"), "{body}");
    verifier.assert_all_verified(sent);

    // One audit act per exchange, naming the caller; neither token is ever in the trail.
    let acts = gw.acts(6).await;
    let exchanges: Vec<&Value> = acts
        .iter()
        .filter(|e| e["portcullis.act"] == "credential_brokered")
        .collect();
    assert!(exchanges.len() >= 6, "{exchanges:?}");
    for e in &exchanges {
        assert_eq!(e["portcullis.token.grant"], "token_exchange");
        assert_eq!(e["portcullis.client.id"], "exchanger");
        assert_eq!(e["portcullis.token.audience"], other);
        assert!(callers.contains(&e["enduser.id"]), "{e}");
    }
    let trail = std::fs::read_to_string(gw.dir.path().join("audit.jsonl")).unwrap();
    assert!(!trail.contains(&ci[..40]) && !trail.contains(&svc[..40]) && !trail.contains("exchanger-secret"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_leaves_the_jwks_at_once_and_the_proxy_stops_sending_what_it_signed() {
    let idp = TestIssuer::start().await;
    let (a, b) = (Recorder::start().await, Recorder::start().await);
    let dir = tempfile::tempdir().unwrap();
    let keys = private_dir(dir.path());
    let prebound = Gateway::prebind(Config::new()).await;
    let issuer_url = format!("http://{}", prebound.http);
    let text = config(&issuer_url, &keys, &idp, route_a(&a), &b);
    let gw = prebound.start(&text).await;
    gw.wait_ready().await;
    let token = format!("Bearer {}", idp.token("alice"));
    let request = [("host", "a.test"), ("authorization", token.as_str())];
    let (status, _) = get(gw.http, "/run", &request).await;
    assert_eq!(status, StatusCode::OK);
    let before = a.last().header("x-portcullis-assertion").unwrap();
    let leaked = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();

    // The active key is revoked from outside, as after a leak.
    let cli_config = dir.path().join("keys-cli.toml");
    text.write(&cli_config);
    let out = std::process::Command::new(support::binary())
        .args(["keys", "revoke", "--config"])
        .arg(&cli_config)
        .arg(&leaked)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unknown = std::process::Command::new(support::binary())
        .args(["keys", "revoke", "--config"])
        .arg(&cli_config)
        .arg("no-such-kid")
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no key no-such-kid"));
    // A base64url key id may begin with "-": it is still the id, not an option.
    let dashed = std::process::Command::new(support::binary())
        .args(["keys", "revoke", "--config"])
        .arg(&cli_config)
        .arg("-dashed-kid")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&dashed.stderr).contains("no key -dashed-kid"),
        "{}",
        String::from_utf8_lossy(&dashed.stderr)
    );

    // Within the proxy's maintenance interval the key is gone from the published set, and the
    // caller's next assertion (cached for 60 s otherwise) is signed by the new key and verifies.
    let host = issuer_url.trim_start_matches("http://");
    let started = Instant::now();
    while jwks(gw.http, host).await.find(&leaked).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the revoked key is still published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = get(gw.http, "/run", &request).await;
    assert_eq!(status, StatusCode::OK);
    let after = a.last().header("x-portcullis-assertion").unwrap();
    assert_ne!(after, before);
    let published = jwks(gw.http, host).await;
    assert!(verify_jwt(&before, &published, &issuer_url, "https://a.test").is_err());
    let claims = verify_jwt(&after, &published, &issuer_url, "https://a.test").unwrap();
    assert_eq!(claims["sub"], "test/alice");

    let acts = gw.acts(1).await;
    assert!(
        acts.iter()
            .any(|e| e["portcullis.act"] == "key_revoked" && e["portcullis.token.kid"] == leaked.as_str()),
        "{acts:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_name_holds_a_comma_reaches_the_upstream_as_one_group() {
    let idp = TestIssuer::start().await;
    let (a, b) = (Recorder::start().await, Recorder::start().await);
    let (gw, _) = signing_gateway(Config::new(), &idp, &a, &b).await;
    let groups = ["CN=dev,OU=admins", "ops", "100%", "équipe"];
    let mut claims = idp.claims("alice");
    claims["groups"] = serde_json::json!(groups);
    let bearer = format!("Bearer {}", idp.sign(&claims));
    let (status, _) = get(gw.http, "/x", &[("host", "a.test"), ("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    let header = a.last().header("x-portcullis-groups").unwrap();
    assert_eq!(header, "CN=dev%2COU=admins,ops,100%25,%C3%A9quipe");
    // What an upstream does: split on commas, percent-decode each item.
    let decoded: Vec<String> = header
        .split(',')
        .map(|g| {
            let bytes = g.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    out.push(u8::from_str_radix(&g[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        })
        .collect();
    assert_eq!(decoded, groups);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_s_jwks_adds_the_upstream_s_own_keys_which_no_other_jwks_carries() {
    let idp = TestIssuer::start().await;
    let (a, b) = (Recorder::start().await, Recorder::start().await);
    let prebound = Gateway::prebind(Config::new()).await;
    let issuer_url = format!("http://{}", prebound.http);
    let keys = private_dir(prebound.dir.path());
    let own = json!({"kty": "OKP", "crv": "Ed25519", "x": "yQaPxaNJChrfAqalU8bNjepvRzX3gf3QWWIsG--T_2E", "kid": "upstream-own", "alg": "EdDSA"});
    let file = prebound.dir.path().join("upstream-jwks.json");
    std::fs::write(&file, json!({ "keys": [own] }).to_string()).unwrap();
    let with_keys = |file: &Path| {
        let a = route_a(&a).set("assertion.upstream_jwks", file);
        config(&issuer_url, &keys, &idp, a, &b)
    };
    let text = with_keys(&file);
    let gw = prebound.start(&text).await;
    gw.wait_ready().await;
    let host = issuer_url.trim_start_matches("http://");

    let (status, body) = get(gw.http, "/.well-known/jwks/a.json", &[("host", host)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let route: Value = serde_json::from_str(&body).unwrap();
    let issuer = jwks(gw.http, host).await;
    let kids = |set: &Value| -> Vec<String> {
        set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let mut expected: Vec<String> = issuer
        .keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect();
    expected.push("upstream-own".into());
    assert_eq!(kids(&route), expected, "the proxy's keys, then the upstream's");
    // The issuer's JWKS, and a route without upstream keys, never carry them.
    assert!(issuer.find("upstream-own").is_none());
    for path in ["/.well-known/jwks/b.json", "/.well-known/jwks/nope.json"] {
        let (status, body) = get(gw.http, path, &[("host", host)]).await;
        assert_ne!(status, StatusCode::OK, "{path}: {body}");
    }
    // Only on the issuer's host.
    let (status, _) = get(gw.http, "/.well-known/jwks/a.json", &[("host", "a.test")]).await;
    assert_ne!(status, StatusCode::OK);

    // A file with private key material, or a key without a kid, is refused with the key path.
    for (bad, says) in [
        (
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA", "d": "BB", "kid": "k"}]}),
            "private",
        ),
        (
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k"}]}),
            "private",
        ),
        (
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}),
            "kid",
        ),
        (json!({"not": "a jwks"}), "not a JWKS"),
    ] {
        let file = gw.dir.path().join("bad-jwks.json");
        std::fs::write(&file, bad.to_string()).unwrap();
        let config = gw.dir.path().join("bad.toml");
        with_keys(&file).write(&config);
        let out = std::process::Command::new(support::binary())
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = support::output_text(&out);
        assert!(!out.status.success(), "{bad}");
        assert!(
            text.contains("routes[0].assertion.upstream_jwks") && text.contains(says),
            "{bad}: {text}"
        );
    }
    gw.stop().await;
}
