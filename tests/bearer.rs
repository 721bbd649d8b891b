//! The bearer path, told as stories: services and CI jobs present JWTs, and each kind of bad
//! token gets 401 with `invalid_token`, nothing forwarded, and one audit event naming the reason.
#![cfg(test)]

mod support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::config::Provider;
use support::idp::{Idp, OTHER_AUDIENCE, decode_jwt_unverified};
use support::issuer::{AUDIENCE, TestIssuer, now};
use support::{Config, Gateway, Recorder, Route, get};

/// `provider` and the route `app.test` open to its callers alone, in front of `upstream`.
fn api_for(provider: Provider, upstream: &Recorder) -> Config {
    let name = provider.name();
    Config::new().provider(provider).route(
        Route::authenticated("api")
            .host("app.test")
            .providers([name.as_str()])
            .upstream(upstream),
    )
}

/// Sends a request with `token` and returns the status and the WWW-Authenticate header.
async fn call(gw: &Gateway, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let response = support::send(
        gw.http,
        http::Method::GET,
        "/api/v1/dags",
        &[("authorization", &auth)],
        bytes::Bytes::new(),
    )
    .await;
    let challenge = support::header_text(response.headers(), "www-authenticate");
    (response.status().as_u16(), challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_real_idp_in_rs256_es256_and_eddsa_are_accepted_and_audited() {
    let idp = Idp::start().await;
    let upstream = Recorder::start().await;
    let provider = idp
        .provider("oidc")
        .set("algorithms", ["RS256", "ES256", "EdDSA"]);
    let gw = Gateway::start(api_for(provider, &upstream)).await;
    gw.wait_ready().await;

    let rs256 = idp
        .client_credentials_token("ci-bot", "ci-bot-secret", None)
        .await;
    assert_eq!(call(&gw, &rs256).await.0, 200);
    let es256 = idp
        .client_credentials_token("svc-es", "svc-es-secret", None)
        .await;
    assert_eq!(call(&gw, &es256).await.0, 200);
    let eddsa = idp
        .client_credentials_token("svc-ed", "svc-ed-secret", None)
        .await;
    assert_eq!(decode_jwt_unverified(&eddsa).0["alg"], "EdDSA");
    assert_eq!(call(&gw, &eddsa).await.0, 200);
    // The same token again is served from the verified-token cache, with the same answer.
    assert_eq!(call(&gw, &rs256).await.0, 200);
    assert_eq!(upstream.requests().len(), 4);

    let other = idp
        .client_credentials_token("ci-bot", "ci-bot-secret", Some(OTHER_AUDIENCE))
        .await;
    let (status, challenge) = call(&gw, &other).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(
        upstream.requests().len(),
        4,
        "a wrong-audience token reached the upstream"
    );

    let events = gw.audit_events(5).await;
    let first = &events[0];
    assert_eq!(first["portcullis.decision"], "allow");
    assert_eq!(first["portcullis.reason"], "authenticated");
    assert_eq!(first["enduser.id"], "ci-bot");
    assert_eq!(first["portcullis.principal.kind"], "service");
    assert_eq!(first["portcullis.principal.issuer"], idp.issuer.as_str());
    assert_eq!(first["portcullis.principal.groups"], json!(["ci"]));
    assert_eq!(first["portcullis.auth.method"], "bearer");
    assert_eq!(first["portcullis.client.id"], "ci-bot");
    assert!(first["portcullis.token.id"].is_string());
    assert_eq!(events[1]["enduser.id"], "svc-es");
    assert_eq!(events[2]["enduser.id"], "svc-ed");
    assert_eq!(events[4]["portcullis.reason"], "wrong_audience");
    // No token in the trail.
    let trail = serde_json::to_string(&events).unwrap();
    assert!(!trail.contains(&rs256[..40]) && !trail.contains(&other[..40]));
    gw.stop().await;
}

/// One gateway in front of a test-controlled issuer (as provider `test`, `tweak`ed), for the
/// bad-token table.
async fn gateway_for(
    issuer: &TestIssuer,
    upstream: &Recorder,
    tweak: impl FnOnce(Provider) -> Provider,
) -> Gateway {
    let gw = Gateway::start(api_for(tweak(issuer.provider("test")), upstream)).await;
    gw.wait_ready().await;
    gw
}

fn forged(header: serde_json::Value, claims: &serde_json::Value, signature: &str) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{h}.{p}.{signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_token_gets_401_with_its_reason_and_nothing_is_forwarded() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let gw = gateway_for(&issuer, &upstream, |p| p).await;
    let good = issuer.claims("deploy-bot");
    let valid = issuer.token("deploy-bot");
    let sig = valid.rsplit('.').next().unwrap().to_string();
    let attacker_key = EncodingKey::from_ec_pem(support::pki::signing_key_pem().as_bytes()).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let hs256 = jsonwebtoken::encode(
        &Header {
            kid: Some("k1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &good,
        &EncodingKey::from_secret(issuer.issuer.as_bytes()),
    )
    .unwrap();
    let mut attacker_header = Header::new(Algorithm::ES256);
    attacker_header.kid = Some("k1".into());
    attacker_header.jku = Some("http://127.0.0.1:1/attacker-jwks".into());
    attacker_header.x5u = Some("http://127.0.0.1:1/attacker.pem".into());
    let jku_token = jsonwebtoken::encode(&attacker_header, &good, &attacker_key).unwrap();
    let leeway = 30;

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            forged(json!({"alg": "none", "typ": "JWT"}), &good, ""),
            "alg_not_allowed",
        ),
        (
            "HS256 with a public value as the secret",
            hs256,
            "alg_not_allowed",
        ),
        (
            "a kid that matches nothing",
            issuer.sign_with("k1", &good, |h| h.kid = Some("nope".into())),
            "unknown_key",
        ),
        (
            "jku and x5u pointing at an attacker's key",
            jku_token,
            "bad_signature",
        ),
        (
            "a payload swapped under a valid signature",
            forged(
                json!({"alg": "ES256", "kid": "k1"}),
                &with(&|c| c["sub"] = json!("admin")),
                &sig,
            ),
            "bad_signature",
        ),
        (
            "expired beyond the leeway",
            issuer.sign(&with(&|c| c["exp"] = json!(now() - leeway - 5))),
            "expired",
        ),
        (
            "not yet valid beyond the leeway",
            issuer.sign(&with(&|c| c["nbf"] = json!(now() + leeway + 60))),
            "not_yet_valid",
        ),
        (
            "a wrong issuer claimed by a known key",
            issuer.sign(&with(&|c| c["iss"] = json!("https://evil.example"))),
            "wrong_issuer",
        ),
        (
            "a wrong audience",
            issuer.sign(&with(&|c| c["aud"] = json!("someone-else"))),
            "wrong_audience",
        ),
        (
            "no sub",
            issuer.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            "malformed",
        ),
        (
            "sub of the wrong JSON type",
            issuer.sign(&with(&|c| c["sub"] = json!(42))),
            "malformed",
        ),
        (
            "groups of the wrong JSON type",
            issuer.sign(&with(&|c| c["groups"] = json!({"a": 1}))),
            "malformed",
        ),
        (
            "exp of the wrong JSON type",
            issuer.sign(&with(&|c| c["exp"] = json!("tomorrow"))),
            "malformed",
        ),
        (
            "an ID token used as a bearer token",
            issuer.sign(&with(&|c| c["nonce"] = json!("n-1"))),
            "wrong_token_type",
        ),
        ("garbage", "not.a.jwt".into(), "malformed"),
        ("two dots only", "..".into(), "malformed"),
    ];
    // Tokens that say they are meant for something else, or that parsers would read two ways:
    // each refused for its own reason, in every spelling.
    let mut cases = cases;
    for typ in [
        "id_token+jwt",
        "logout+jwt",
        "application/logout+jwt",
        "secevent+jwt",
        "refresh+jwt",
        "Logout+JWT",
        "dpop+jwt",
        "JWE",
    ] {
        cases.push((
            "an explicit non-access typ",
            issuer.sign_with("k1", &good, |h| h.typ = Some(typ.into())),
            "wrong_token_type",
        ));
    }
    let payload = good.to_string();
    let body = payload.trim_start_matches('{');
    for (header, why) in [
        (
            r#"{"alg":"ES256","kid":"k1","crit":["exp"],"exp":1}"#,
            "crit naming a header",
        ),
        (
            r#"{"alg":"ES256","kid":"k1","crit":["b64"],"b64":false}"#,
            "crit b64 (RFC 7797)",
        ),
        (r#"{"alg":"ES256","kid":"k1","crit":[]}"#, "an empty crit"),
    ] {
        cases.push((why, issuer.sign_raw(header, &payload), "unknown_critical_header"));
    }
    let header = r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#;
    for (payload, why) in [
        (format!(r#"{{"groups":["admins"],{body}"#), "groups twice"),
        (format!(r#"{{"sub":"admin",{body}"#), "sub twice"),
        (
            format!(r#"{{"s\u0075b":"admin",{body}"#),
            "sub twice, once escaped",
        ),
        (
            format!(r#"{{"realm_access":{{"roles":["a"],"roles":["b"]}},{body}"#),
            "a nested member twice",
        ),
        (format!(r#"{{"exp":1,{body}"#), "exp twice"),
    ] {
        cases.push((why, issuer.sign_raw(header, &payload), "duplicate_claim"));
    }
    cases.push((
        "the header names kid twice",
        issuer.sign_raw(r#"{"alg":"ES256","kid":"nope","kid":"k1"}"#, &payload),
        "duplicate_claim",
    ));
    cases.push((
        "iat in the future beyond the leeway",
        issuer.sign(&with(&|c| c["iat"] = json!(now() + leeway + 60))),
        "issued_in_future",
    ));
    for iat in [json!("yesterday"), json!(true), json!([1]), json!(null)] {
        cases.push((
            "iat of the wrong JSON type",
            issuer.sign(&with(&|c| c["iat"] = iat.clone())),
            "malformed",
        ));
    }
    let mut failures = Vec::new();
    for (name, token, reason) in &cases {
        let (status, challenge) = call(&gw, token).await;
        if status != 401 || !challenge.contains("invalid_token") || !challenge.contains(reason) {
            failures.push(format!(
                "{name}: expected 401 {reason}, got {status} {challenge:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(upstream.requests().is_empty(), "a bad token reached the upstream");
    let events = gw.audit_events(cases.len()).await;
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e["portcullis.reason"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = cases.iter().map(|(_, _, r)| *r).collect();
    assert_eq!(reasons, expected);
    // The foreign issuer is named in the record (untrusted text: recorded, never trusted).
    for e in events.iter().filter(|e| e["portcullis.reason"] == "wrong_issuer") {
        assert_eq!(e["portcullis.token.issuer"], "https://evil.example", "{e}");
    }

    // Inside the leeway both ways is still fine, and so are the access-token types.
    let edge = issuer.sign(&with(&|c| {
        c["exp"] = json!(now() - 10);
        c["nbf"] = json!(now() + 10);
        c["iat"] = json!(now() + 10);
    }));
    assert_eq!(call(&gw, &edge).await.0, 200);
    for typ in [None, Some("JWT"), Some("at+jwt"), Some("application/at+jwt")] {
        let token = issuer.sign_with("k1", &good, |h| h.typ = typ.map(str::to_string));
        assert_eq!(call(&gw, &token).await.0, 200, "typ {typ:?}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_gets_a_plain_challenge_and_another_scheme_is_not_a_token() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let gw = gateway_for(&issuer, &upstream, |p| p).await;
    let (status, body) = get(gw.http, "/x", &[]).await;
    assert_eq!(status, 401);
    assert!(body.contains("no_credentials"));
    let response = support::send(
        gw.http,
        http::Method::GET,
        "/x",
        &[("authorization", "Basic YTpi")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\""
    );
    assert!(upstream.requests().is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_an_issuer_the_route_does_not_accept_is_refused() {
    let accepted = TestIssuer::start().await;
    let other = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let config = api_for(accepted.provider("accepted"), &upstream).provider(other.provider("other"));
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    assert_eq!(call(&gw, &accepted.token("a")).await.0, 200);
    let (status, challenge) = call(&gw, &other.token("b")).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("wrong_issuer"), "{challenge}");
    assert_eq!(upstream.requests().len(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_once_and_a_flood_of_unknown_kids_costs_at_most_one_fetch() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let gw = gateway_for(&issuer, &upstream, |p| p.set("jwks_min_refetch", "1s")).await;
    // Past the refetch interval since the start-up fetch, a new kid may trigger one fetch.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let initial = issuer.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst);

    issuer.add_key("k2");
    let rotated = issuer.sign_with("k2", &issuer.claims("after-rotation"), |_| {});
    assert_eq!(
        call(&gw, &rotated).await.0,
        200,
        "a token signed with the new key is accepted"
    );
    let after_rotation = issuer.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after_rotation, initial + 1);

    let claims = issuer.claims("flood");
    let mut calls = Vec::new();
    for i in 0..200 {
        let token = issuer.sign_with("k1", &claims, |h| h.kid = Some(format!("unknown-{i}")));
        let http = gw.http;
        calls.push(tokio::spawn(async move {
            let auth = format!("Bearer {token}");
            support::send(
                http,
                http::Method::GET,
                "/",
                &[("authorization", &auth)],
                bytes::Bytes::new(),
            )
            .await
            .status()
            .as_u16()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 401);
    }
    let after_flood = issuer.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        after_flood <= after_rotation + 1,
        "{} JWKS fetches for a flood of unknown kids",
        after_flood - after_rotation
    );
    assert_eq!(upstream.requests().len(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_keep_serving_while_the_issuer_is_down() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let gw = gateway_for(&issuer, &upstream, |p| p.set("jwks_min_refetch", "100ms")).await;
    let token = issuer.token("while-down");
    issuer.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(&gw, &token).await.0, 200);
    assert_eq!(get(gw.admin, "/readyz", &[]).await.0, 200);
    // The issuer really is unreachable: a refetch for a new key is attempted and fails.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let fetched = issuer.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst);
    issuer.add_key("k2");
    let unknown = issuer.sign_with("k2", &issuer.claims("new-key"), |_| {});
    let (status, challenge) = call(&gw, &unknown).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("unknown_key"), "{challenge}");
    assert_eq!(
        issuer.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst),
        fetched
    );
    assert_eq!(
        call(&gw, &token).await.0,
        200,
        "the cached key still serves after the failed fetch"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_down_at_cold_start_leaves_the_proxy_ready_and_its_routes_answer_503() {
    let down = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = Recorder::start().await;
    let provider = Provider::new("down", &format!("http://{down}")).audiences([AUDIENCE]);
    let gw = Gateway::start(api_for(provider, &upstream)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Ready: one provider's outage must not take the other routes out of a load balancer.
    let (status, readiness) = get(gw.admin, "/readyz", &[]).await;
    assert_eq!(status, 200, "{readiness}");
    assert!(
        readiness.contains("identity provider down: no signing keys yet"),
        "{readiness}"
    );
    let token = forged(
        json!({"alg": "RS256", "kid": "x"}),
        &json!({"iss": format!("http://{down}"), "sub": "s"}),
        "c2ln",
    );
    let (status, _) = call(&gw, &token).await;
    assert_eq!(status, 503);
    assert!(upstream.requests().is_empty());
    let events = gw.audit_events(1).await;
    assert_eq!(events[0]["portcullis.reason"], "idp_unavailable");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotated_at_the_idp_during_load_fail_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let issuer = Arc::new(TestIssuer::start().await);
    let upstream = Recorder::start().await;
    let gw = gateway_for(&issuer, &upstream, |p| {
        p.set("jwks_refresh", "1s").set("jwks_min_refetch", "1s")
    })
    .await;
    let use_new_key = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = std::time::Instant::now() + Duration::from_millis(3500);
    let mut workers = Vec::new();
    for w in 0..4 {
        let (issuer, use_new_key, ok, failed, http) = (
            issuer.clone(),
            use_new_key.clone(),
            ok.clone(),
            failed.clone(),
            gw.http,
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while std::time::Instant::now() < deadline {
                i += 1;
                // A fresh token each time, so every request is verified, none served from the cache.
                let claims = issuer.claims(&format!("worker-{w}-{i}"));
                let kid = if use_new_key.load(Ordering::SeqCst) {
                    "k2"
                } else {
                    "k1"
                };
                let token = issuer.sign_with(kid, &claims, |_| {});
                let auth = format!("Bearer {token}");
                let status = support::send(
                    http,
                    http::Method::GET,
                    "/",
                    &[("authorization", &auth)],
                    bytes::Bytes::new(),
                )
                .await
                .status();
                if status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst)
                } else {
                    failed.fetch_add(1, Ordering::SeqCst)
                };
            }
        }));
    }
    // The IdP publishes the new key first and signs with it a little later, as IdPs do.
    tokio::time::sleep(Duration::from_millis(500)).await;
    issuer.add_key("k2");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    use_new_key.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} of {} requests failed across the rotation",
        failed.load(Ordering::SeqCst),
        ok.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) > 50);
    let events = gw.audit_events(1).await;
    assert!(events.iter().all(|e| e["portcullis.reason"] == "authenticated"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_tokens_pass_only_with_the_operators_shared_secret_never_a_jwks_key() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef-shared";
    let secret_file = dir.path().join("hmac");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let provider = issuer
        .provider("test")
        .set("algorithms", ["ES256", "HS256"])
        .set("hmac_secret_file", &secret_file);
    let gw = Gateway::start(api_for(provider, &upstream)).await;
    gw.wait_ready().await;

    let claims = issuer.claims("svc-hmac");
    let hs256 = |key: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    assert_eq!(call(&gw, &hs256(secret.as_bytes())).await.0, 200);
    assert_eq!(
        call(&gw, &issuer.token("svc-es")).await.0,
        200,
        "ES256 still works beside it"
    );

    let (status, challenge) = call(&gw, &hs256(b"another-secret-of-thirty-two-bytes!!")).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("bad_signature"), "{challenge}");
    // The issuer's public JWKS, used as an HMAC secret, is just another wrong secret.
    let jwks = issuer.jwks_json().to_string();
    assert_eq!(call(&gw, &hs256(jwks.as_bytes())).await.0, 401);
    assert_eq!(upstream.requests().len(), 2);

    // Without a secret, HS256 is a configuration error that names the fix.
    let problems = support::problems(
        Config::new()
            .provider(
                Provider::new("x", "https://x.example")
                    .audiences(["a"])
                    .set("algorithms", ["HS256"]),
            )
            .route(Route::new("r").host("a.test").upstream("http://127.0.0.1:1")),
    );
    assert!(
        problems
            .iter()
            .any(|p| p.path == "identity_providers[0].algorithms[0]" && p.hint.contains("hmac_secret")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_requires_at_jwt_refuses_every_other_type() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let gw = gateway_for(&issuer, &upstream, |p| p.set("require_at_jwt", true)).await;
    let claims = issuer.claims("deploy-bot");
    for (typ, status) in [
        (None, 401),
        (Some("JWT"), 401),
        (Some("at+jwt"), 200),
        (Some("application/AT+JWT"), 200),
    ] {
        let token = issuer.sign_with("k1", &claims, |h| h.typ = typ.map(str::to_string));
        let (got, challenge) = call(&gw, &token).await;
        assert_eq!(got, status, "typ {typ:?}: {challenge}");
    }
    assert_eq!(upstream.requests().len(), 2);
    gw.stop().await;
}
