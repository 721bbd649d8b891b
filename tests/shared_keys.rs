//! One key set for upstreams across replicas: three replicas of the proxy on one real Redis,
//! each with its own private key ring, publish one JWKS. What any of them signs verifies
//! against the keys fetched from any of them; a key revoked on one is gone from all within 2 s;
//! a replica that stops is trusted until its published keys expire.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::StatusCode;
use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;
use support::idp::verify_jwt;
use support::issuer::TestIssuer;
use support::redis::{RedisServer, session_key_file};
use support::{Config, Gateway, Recorder, Route, get};

const AUDIENCE: &str = "https://app.test";

/// A replica's configuration: the `app` route sending assertions to `upstream` for the test
/// issuer's callers, its own key ring in `keys`, sessions (and so the key set) in `redis`.
fn replica_config(
    issuer_url: &str,
    keys: &Path,
    idp: &TestIssuer,
    upstream: &Recorder,
    redis: &str,
    session_key: &Path,
) -> Config {
    Config::new()
        .provider(idp.provider("test"))
        .tokens(issuer_url, keys)
        // Short, so the test sees a stopped replica's keys leave (the default is 16 minutes).
        .set("tokens.shared_keys_expiry", "3s")
        .route(
            Route::authenticated("app")
                .host("app.test")
                .providers(["test"])
                .upstream(upstream)
                .set("assertion.audience", AUDIENCE),
        )
        .set("sessions.store", "redis")
        .set("sessions.redis.url", redis)
        .set("sessions.redis.encryption_key_file", session_key)
}

fn private_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

async fn jwks(addr: SocketAddr, host: &str) -> JwkSet {
    let (status, body) = get(addr, "/.well-known/jwks.json", &[("host", host)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn kids(set: &JwkSet) -> Vec<String> {
    set.keys.iter().filter_map(|k| k.common.key_id.clone()).collect()
}

/// Waits up to `limit` for `done` to hold of the JWKS `replica` serves (on its admin listener);
/// the time it took.
async fn until_jwks(
    replica: &Gateway,
    limit: Duration,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let published = kids(&jwks(replica.admin, "admin").await);
        if done(&published) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}; the JWKS holds {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The assertion `replica` sends the upstream for `bearer`, and its key id.
async fn assertion_through(replica: &Gateway, upstream: &Recorder, bearer: &str) -> (String, String) {
    let (status, body) = get(
        replica.http,
        "/run",
        &[("host", "app.test"), ("authorization", bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = upstream.last().header("x-portcullis-assertion").unwrap();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    (token, kid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertions_minted_by_three_replicas_verify_against_one_replica_s_jwks_a_revoked_key_leaves_every_jwks_within_2s_a_stopped_replica_s_keys_expire_and_without_redis_the_last_union_serves()
 {
    let mut redis = RedisServer::start();
    let idp = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let session_key = session_key_file(dir.path());

    let prebound = [
        Gateway::prebind(Config::new()).await,
        Gateway::prebind(Config::new()).await,
        Gateway::prebind(Config::new()).await,
    ];
    // One issuer for all: the address upstreams know the proxy by (here A's).
    let issuer_url = format!("http://{}", prebound[0].http);
    let mut configs = Vec::new();
    let mut replicas = Vec::new();
    for (i, p) in prebound.into_iter().enumerate() {
        let keys = private_dir(dir.path(), &format!("keys-{i}"));
        let config = replica_config(&issuer_url, &keys, &idp, &upstream, &redis.url(), &session_key);
        configs.push(config.clone());
        let gw = p.start(config).await;
        gw.wait_ready().await;
        replicas.push(gw);
    }
    let [a, b, c] = <[Gateway; 3]>::try_from(replicas).ok().unwrap();

    // Each replica signs with its own key.
    let bearer = format!("Bearer {}", idp.token("alice"));
    let (from_a, kid_a) = assertion_through(&a, &upstream, &bearer).await;
    let (from_b, kid_b) = assertion_through(&b, &upstream, &bearer).await;
    let (from_c, kid_c) = assertion_through(&c, &upstream, &bearer).await;
    assert!(
        kid_a != kid_b && kid_b != kid_c && kid_a != kid_c,
        "one key ring per replica"
    );

    // A's JWKS serves all three, each once, on its admin listener and on the issuer's host.
    until_jwks(&a, Duration::from_secs(2), "A serves B's and C's keys", |k| {
        [&kid_a, &kid_b, &kid_c].iter().all(|kid| k.contains(kid))
    })
    .await;
    let issuer_host = issuer_url.trim_start_matches("http://");
    let published = jwks(a.http, issuer_host).await;
    assert_eq!(kids(&published).len(), 3, "{:?}", kids(&published));
    for token in [&from_a, &from_b, &from_c] {
        let claims = verify_jwt(token, &published, &issuer_url, AUDIENCE).unwrap();
        assert_eq!(claims["sub"], "test/alice");
    }
    // The discovery document points at that set, and C serves the same set.
    let (_, discovery) = get(
        a.http,
        "/.well-known/openid-configuration",
        &[("host", issuer_host)],
    )
    .await;
    let discovery: Value = serde_json::from_str(&discovery).unwrap();
    assert_eq!(
        discovery["jwks_uri"],
        format!("{issuer_url}/.well-known/jwks.json")
    );
    until_jwks(&c, Duration::from_secs(2), "C serves all three", |k| k.len() == 3).await;
    let (_, readiness) = get(a.admin, "/readyz", &[]).await;
    assert!(
        readiness.contains("signing keys: shared through the session store; 2 public keys of other replicas"),
        "{readiness}"
    );
    // Only public keys travel: no replica's private key is in Redis.
    let entries: Vec<(String, String)> = redis
        .dump()
        .into_iter()
        .filter(|(k, _)| k.contains("{keys}:replica:"))
        .collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
    for (_, value) in &entries {
        let document: Value = serde_json::from_str(value.trim()).unwrap();
        for jwk in document["keys"].as_array().unwrap() {
            assert!(jwk.get("d").is_none() && !value.contains("pkcs8"), "{value}");
        }
    }

    // B's key leaks: `keys revoke` against B's key directory, as an operator would run it in
    // B's container. The running B picks it up, a new key signs there, and the old one is gone
    // from A's (and C's) JWKS within 2 s.
    let cli_config = dir.path().join("b.toml");
    configs[1].write(&cli_config);
    let out = std::process::Command::new(support::binary())
        .args(["keys", "revoke", "--config"])
        .arg(&cli_config)
        .arg(&kid_b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::output_text(&out));
    let took = until_jwks(
        &a,
        Duration::from_secs(2),
        "B's revoked key leaves A's JWKS",
        |k| !k.contains(&kid_b),
    )
    .await;
    eprintln!("the revoked key left A's JWKS after {took:?}");
    until_jwks(
        &c,
        Duration::from_secs(2),
        "B's revoked key leaves C's JWKS",
        |k| !k.contains(&kid_b),
    )
    .await;
    // B's new key is served by A too, and B's next assertion (signed with it) verifies there.
    until_jwks(&a, Duration::from_secs(2), "B's new key is served by A", |k| {
        k.len() == 3
    })
    .await;
    let published = jwks(a.admin, "admin").await;
    assert!(
        verify_jwt(&from_b, &published, &issuer_url, AUDIENCE).is_err(),
        "the revoked key still verifies"
    );
    let (again_b, new_b) = assertion_through(&b, &upstream, &bearer).await;
    assert_ne!(new_b, kid_b);
    verify_jwt(&again_b, &published, &issuer_url, AUDIENCE).unwrap();

    // A's key leaks, and the operator is in C's container: C's directory does not hold it, so
    // the command announces it through the shared key set; A withdraws it (a new key signs
    // there) and no replica serves it within 2 s.
    let c_config = dir.path().join("c.toml");
    configs[2].write(&c_config);
    let c_keys = std::fs::read_dir(dir.path().join("keys-2")).unwrap().count();
    let c_arg = support::arg(&c_config);
    let out = support::run(&["keys", "revoke", "--json", "--config", c_arg, &kid_a]);
    let said = support::output_text(&out);
    assert!(out.status.success(), "{said}");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer["changes"],
        serde_json::json!([{ "change": "announced", "kid": kid_a }]),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("keys-2")).unwrap().count(),
        c_keys
    );
    for (name, replica) in [("A", &a), ("B", &b), ("C", &c)] {
        until_jwks(replica, Duration::from_secs(2), name, |k| !k.contains(&kid_a)).await;
    }
    // A signs with a new key within the same 2 s.
    let started = Instant::now();
    let new_a = loop {
        let (_, kid) = assertion_through(&a, &upstream, &bearer).await;
        if kid != kid_a {
            break kid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "A still signs with its revoked key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "A signed with a new key {:?} after the announcement",
        started.elapsed()
    );
    let withdrawn = a.act_records("key_revoked").await;
    assert_eq!(
        withdrawn[0]["portcullis.token.kid"],
        kid_a.as_str(),
        "{withdrawn:#?}"
    );
    // A key no replica publishes is still an unknown key.
    let out = support::run(&["keys", "revoke", "--config", c_arg, "no-such-kid"]);
    assert!(!out.status.success());
    assert!(
        support::output_text(&out).contains("no-such-kid"),
        "{}",
        support::output_text(&out)
    );

    // C stops: what it signed still verifies until its keys expire (3 s here), then its keys
    // leave the set.
    c.stop().await;
    let published = jwks(a.admin, "admin").await;
    verify_jwt(&from_c, &published, &issuer_url, AUDIENCE)
        .expect("C's last assertion verifies right after it stopped");
    let took = until_jwks(
        &a,
        Duration::from_secs(6),
        "the stopped replica's key expires",
        |k| !k.contains(&kid_c),
    )
    .await;
    eprintln!("the stopped replica's key left A's JWKS after {took:?}");
    let left = kids(&jwks(a.admin, "admin").await);
    assert!(
        left.contains(&new_a) && left.contains(&new_b) && left.len() == 2,
        "{left:?}"
    );

    // Redis goes away: A says so, and serves its own key and B's as it last read them.
    redis.kill();
    let started = Instant::now();
    loop {
        let (status, readiness) = get(a.admin, "/readyz", &[]).await;
        assert_eq!(status, StatusCode::OK, "{readiness}");
        if readiness.contains("signing keys: the session store is unreachable") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{readiness}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kids(&jwks(a.admin, "admin").await), left);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_memory_store_a_replica_publishes_nothing_and_serves_its_own_keys() {
    let idp = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = private_dir(dir.path(), "keys");
    let prebound = Gateway::prebind(Config::new()).await;
    let issuer_url = format!("http://{}", prebound.http);
    let config = Config::new()
        .provider(idp.provider("test"))
        .tokens(&issuer_url, &keys)
        .route(
            Route::authenticated("app")
                .host("app.test")
                .providers(["test"])
                .upstream(&upstream)
                .set("assertion.audience", AUDIENCE),
        );
    let gw = prebound.start(config).await;
    gw.wait_ready().await;
    let bearer = format!("Bearer {}", idp.token("alice"));
    let (token, kid) = assertion_through(&gw, &upstream, &bearer).await;
    let published = jwks(gw.admin, "admin").await;
    assert_eq!(kids(&published), [kid]);
    verify_jwt(&token, &published, &issuer_url, AUDIENCE).unwrap();
    gw.stop().await;
}

#[test]
fn a_shared_keys_expiry_under_a_second_is_refused_with_its_key_path_and_the_fix() {
    let problems = support::problems(
        support::public_route("http://127.0.0.1:1").set("tokens.shared_keys_expiry", "500ms"),
    );
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with("tokens.shared_keys_expiry: must be at least 1s") && p.contains("16m")),
        "{text:?}"
    );
    assert!(
        support::problems(support::public_route("http://127.0.0.1:1").set("tokens.shared_keys_expiry", "1s"))
            .is_empty()
    );
}
