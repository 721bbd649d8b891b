//! OpenID Connect Back-Channel Logout: a provider's logout token, checked as the specification
//! requires, or refused with 400 and an `error` body, audited either way. The forged tokens are
//! signed by an issuer the test controls (its keys are the provider's JWKS), so each differs
//! from a good one in exactly one way. The real provider's logout (oidc-provider) across
//! replicas is in `redis_sessions.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::idp::form_encode;
use support::issuer::{TestIssuer, now};
use support::{Config, Gateway, Recorder, Route};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
const CLIENT_ID: &str = "proxy-client";

async fn gateway(issuer: &TestIssuer, upstream: &Recorder) -> Gateway {
    let provider = issuer
        .provider("corp")
        .set("browser.client_id", CLIENT_ID)
        .set("browser.backchannel_logout", true);
    let config = Config::new().provider(provider).route(
        Route::authenticated("app")
            .host("app.localhost")
            .upstream(upstream)
            .providers(["corp"]),
    );
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    gw
}

/// Claims of a logout token that passes every check.
fn good(issuer: &TestIssuer, jti: &str) -> Value {
    json!({
        "iss": issuer.issuer, "aud": CLIENT_ID, "iat": now(), "exp": now() + 120, "jti": jti,
        "sub": "alice", "sid": "provider-session-1", "events": { EVENT: {} },
    })
}

fn logout_jwt(issuer: &TestIssuer, claims: &Value) -> String {
    issuer.sign_with("k1", claims, |h| h.typ = Some("logout+jwt".into()))
}

struct Answer {
    status: StatusCode,
    cache_control: Option<String>,
    body: String,
}

async fn post_logout(gw: &Gateway, form: &[(&str, &str)]) -> Answer {
    let response = support::send(
        gw.http,
        Method::POST,
        "/.portcullis/backchannel-logout",
        &[
            ("host", "app.localhost"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Bytes::from(form_encode(form)),
    )
    .await;
    let status = response.status();
    let cache_control = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        cache_control,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_forged_logout_token_gets_400_with_an_error_body_and_is_audited_with_the_claim_at_fault()
{
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let gw = gateway(&issuer, &upstream).await;
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good(&issuer, &format!("jti-{}", rand_suffix()));
        change(&mut claims);
        logout_jwt(&issuer, &claims)
    };
    let good_token = with(&|_| {});
    let mut bad_signature = good_token.clone();
    let last = bad_signature.pop().unwrap();
    bad_signature.push(if last == 'A' { 'B' } else { 'A' });
    let unsigned = {
        let claims = good(&issuer, "jti-none");
        let h = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "logout+jwt"}).to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{h}.{p}.")
    };
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://elsewhere.example")),
            Some("iss"),
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("another-client")),
            Some("aud"),
        ),
        ("a nonce", with(&|c| c["nonce"] = json!("n-1")), Some("nonce")),
        (
            "no events",
            with(&|c| {
                c.as_object_mut().unwrap().remove("events");
            }),
            Some("events"),
        ),
        (
            "the event not an object",
            with(&|c| c["events"] = json!({ EVENT: "yes" })),
            Some("events"),
        ),
        (
            "another event only",
            with(&|c| c["events"] = json!({"http://schemas.openid.net/event/other": {}})),
            Some("events"),
        ),
        (
            "no jti",
            with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            Some("jti"),
        ),
        (
            "neither sid nor sub",
            with(&|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("sid");
                o.remove("sub");
            }),
            Some("sid"),
        ),
        (
            "expired",
            with(&|c| {
                c["iat"] = json!(now() - 100);
                c["exp"] = json!(now() - 90);
            }),
            Some("exp"),
        ),
        (
            "issued long ago",
            with(&|c| c["iat"] = json!(now() - 3600)),
            Some("iat"),
        ),
        (
            "issued in the future",
            with(&|c| c["iat"] = json!(now() + 3600)),
            Some("iat"),
        ),
        (
            "a sub that is not a string",
            with(&|c| c["sub"] = json!(42)),
            Some("sub"),
        ),
        ("a bad signature", bad_signature, None),
        ("alg none", unsigned, None),
        (
            "an access token's typ",
            issuer.sign_with("k1", &good(&issuer, "jti-at"), |h| h.typ = Some("at+jwt".into())),
            None,
        ),
        ("not a JWT", "not-a-jwt".into(), None),
    ];
    for (sent, (what, token, claim)) in cases.iter().enumerate() {
        let answer = post_logout(&gw, &[("logout_token", token)]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{what}: {}", answer.body);
        let body: Value = serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(body["error"], "invalid_request", "{what}: {body}");
        assert_eq!(answer.cache_control.as_deref(), Some("no-store"), "{what}");
        let records = gw.audit_events(sent + 1).await;
        let record = records.last().unwrap();
        assert_eq!(
            record["portcullis.reason"], "logout_token_refused",
            "{what}: {record}"
        );
        assert_eq!(record["portcullis.act"], "backchannel_logout", "{what}: {record}");
        assert_eq!(record["http.response.status_code"], 400, "{what}: {record}");
        assert_eq!(
            record.get("portcullis.reason.claim").and_then(Value::as_str),
            *claim,
            "{what}: {record}"
        );
        assert!(
            !record.to_string().contains("eyJ"),
            "{what}: a token reached the audit record"
        );
    }
    let missing = post_logout(&gw, &[("other", "x")]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);

    // The good token is accepted once; the same jti again is a replay.
    let accepted = post_logout(&gw, &[("logout_token", &good_token)]).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    assert_eq!(accepted.cache_control.as_deref(), Some("no-store"));
    let records = gw.audit_events(cases.len() + 2).await;
    let record = records.last().unwrap();
    assert_eq!(record["portcullis.decision"], "allow", "{record}");
    assert_eq!(record["portcullis.reason"], "signed_out", "{record}");
    assert_eq!(record["enduser.id"], "alice", "{record}");
    assert_eq!(
        record["portcullis.principal.issuer"],
        issuer.issuer.as_str(),
        "{record}"
    );
    let replayed = post_logout(&gw, &[("logout_token", &good_token)]).await;
    assert_eq!(replayed.status, StatusCode::BAD_REQUEST, "{}", replayed.body);
    let records = gw.audit_events(cases.len() + 3).await;
    assert_eq!(records.last().unwrap()["portcullis.reason.claim"], "jti");

    // Only POST; nothing reached the upstream.
    let get = support::send(
        gw.http,
        Method::GET,
        "/.portcullis/backchannel-logout",
        &[("host", "app.localhost")],
        Bytes::new(),
    )
    .await;
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_back_channel_logout_has_its_logout_tokens_refused() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let provider = issuer.provider("corp").set("browser.client_id", CLIENT_ID);
    let config = Config::new().provider(provider).route(
        Route::authenticated("app")
            .host("app.localhost")
            .upstream(&upstream)
            .providers(["corp"]),
    );
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    let token = logout_jwt(&issuer, &good(&issuer, "jti-off"));
    let answer = post_logout(&gw, &[("logout_token", &token)]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert!(
        answer.body.contains("no provider with back-channel logout"),
        "{}",
        answer.body
    );
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", now(), N.fetch_add(1, Ordering::Relaxed))
}
