//! The browser path's first steps against a real OpenID Provider: discovery through our own
//! HTTP client, and an authorization request (PKCE S256, state, nonce) that the provider accepts.
#![cfg(test)]

mod support;

use std::sync::Arc;

use portcullis::authn::oidc::{RelyingParty, discover, start_login};
use portcullis::outbound::HttpsClient;
use portcullis::secret::Secret;
use support::idp::Idp;

const CALLBACK: &str = "http://127.0.0.1:8080/.portcullis/callback";

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// The real provider (with our callback registered for the `web` client) and its discovered metadata.
async fn provider_and_metadata() -> (Idp, HttpsClient, portcullis::authn::oidc::Metadata) {
    let idp = Idp::start_with(&["--redirect", CALLBACK]).await;
    let http = HttpsClient::new(None, &Arc::new(rustls::crypto::aws_lc_rs::default_provider())).unwrap();
    let metadata = discover(&idp.issuer, &http).await.unwrap();
    (idp, http, metadata)
}

fn web_client<'a>(metadata: &'a portcullis::authn::oidc::Metadata, secret: &'a Secret) -> RelyingParty<'a> {
    RelyingParty {
        metadata,
        client_id: "web",
        client_secret: Some(secret),
        redirect_url: CALLBACK,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_starts_with_pkce_state_and_nonce_and_the_provider_accepts_it() {
    let (idp, http, metadata) = provider_and_metadata().await;
    let scopes = vec!["email".to_string(), "profile".to_string()];
    let secret = Secret::new("web-secret");
    let rp = web_client(&metadata, &secret);
    let first = start_login(&rp, &scopes).unwrap();
    let second = start_login(&rp, &scopes).unwrap();
    let endpoint = idp.endpoint("authorization_endpoint").await;
    assert!(
        first.authorize_url.starts_with(&endpoint),
        "{}",
        first.authorize_url
    );
    assert_eq!(
        query_param(&first.authorize_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&first.authorize_url, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        query_param(&first.authorize_url, "client_id").as_deref(),
        Some("web")
    );
    assert_eq!(
        query_param(&first.authorize_url, "state").as_deref(),
        Some(first.state.as_str())
    );
    assert!(query_param(&first.authorize_url, "nonce").is_some());
    assert!(
        !first.authorize_url.contains(first.pkce_verifier.expose()),
        "the verifier never leaves the server"
    );
    assert_ne!(first.state, second.state);
    assert_ne!(first.nonce, second.nonce);
    assert_ne!(first.pkce_verifier, second.pkce_verifier);

    // The provider takes the request to its sign-in interaction, not to an error.
    let request = http::Request::get(&first.authorize_url).body(Vec::new()).unwrap();
    let response = http.send(request).await.unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.contains("/interaction/"), "{location}");

    // Without PKCE the same provider refuses: the challenge above is what made it acceptable.
    let without_pkce = first
        .authorize_url
        .split('&')
        .filter(|p| !p.starts_with("code_challenge"))
        .collect::<Vec<_>>()
        .join("&");
    let response = http
        .send(http::Request::get(&without_pkce).body(Vec::new()).unwrap())
        .await
        .unwrap();
    let location = support::header_text(response.headers(), "location");
    assert!(location.contains("error="), "{} {location}", response.status());
}

/// One sign-in through the provider's own login pages, up to the callback's `code`.
async fn code_for(
    idp: &Idp,
    rp: &RelyingParty<'_>,
    login: &str,
) -> (String, portcullis::authn::oidc::LoginStart) {
    let start = start_login(rp, &["email".to_string(), "profile".to_string()]).unwrap();
    let callback = idp.sign_in_without_browser(&start.authorize_url, login).await;
    assert!(callback.starts_with(CALLBACK), "{callback}");
    assert_eq!(
        query_param(&callback, "state").as_deref(),
        Some(start.state.as_str())
    );
    (query_param(&callback, "code").unwrap(), start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_completes_once_with_its_own_verifier_and_nonce_and_never_twice() {
    use portcullis::authn::oidc::{IdTokenError, redeem_code, verify_login};
    use portcullis::decision::Reason;

    let (idp, http, metadata) = provider_and_metadata().await;
    let secret = Secret::new("web-secret");
    let rp = web_client(&metadata, &secret);
    let config = portcullis::config::parse(&format!(
        "[[identity_providers]]\nname = \"oidc\"\nissuer = \"{}\"\naudiences = [\"web\"]\n",
        idp.issuer
    ))
    .unwrap();
    let provider = config.identity_providers[0].resolved();

    let (code, start) = code_for(&idp, &rp, "alice").await;
    let response = redeem_code(&rp, &http, &code, &start.pkce_verifier)
        .await
        .unwrap();
    let done = verify_login(&rp, &provider, &response, &start.nonce).unwrap();
    assert_eq!(done.principal.subject, "alice");
    assert_eq!(done.principal.email.as_deref(), Some("alice@portcullis.test"));
    assert_eq!(done.principal.auth_method.as_str(), "session");
    assert!(!done.access_token.expose().is_empty());

    // The same code again (replay) is refused by the provider.
    let replay = redeem_code(&rp, &http, &code, &start.pkce_verifier).await;
    assert_eq!(replay.unwrap_err(), Reason::LoginFailed);

    // Another sign-in's verifier (a PKCE downgrade or code injection) is refused.
    let (code, _) = code_for(&idp, &rp, "bob").await;
    let other = Secret::new("x".repeat(43));
    assert_eq!(
        redeem_code(&rp, &http, &code, &other).await.unwrap_err(),
        Reason::LoginFailed
    );

    // A nonce that is not this sign-in's (an injected ID token) is refused.
    let (code, start) = code_for(&idp, &rp, "carol").await;
    let wrong_nonce = Secret::new("not-the-nonce");
    let response = redeem_code(&rp, &http, &code, &start.pkce_verifier)
        .await
        .unwrap();
    assert_eq!(
        verify_login(&rp, &provider, &response, &wrong_nonce).unwrap_err(),
        IdTokenError::Refused(Reason::LoginFailed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_is_not_a_bearer_token_unless_the_operator_says_so() {
    use openidconnect::TokenResponse as _;
    use portcullis::authn::oidc::redeem_code;

    let (idp, http, metadata) = provider_and_metadata().await;
    let secret = Secret::new("web-secret");
    let rp = web_client(&metadata, &secret);
    let (code, start) = code_for(&idp, &rp, "alice").await;
    let response = redeem_code(&rp, &http, &code, &start.pkce_verifier)
        .await
        .unwrap();
    let id_token = response.id_token().unwrap().to_string();

    let upstream = support::Recorder::start().await;
    for (token_type, expected) in [("access", 401), ("id", 200)] {
        let config = support::Config::new()
            .provider(
                idp.provider("oidc")
                    .audiences(["web"])
                    .set("token_type", token_type),
            )
            .route(
                support::Route::authenticated("app")
                    .host("app.test")
                    .providers(["oidc"])
                    .upstream(&upstream),
            );
        let gw = support::Gateway::start(config).await;
        let mut status = http::StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..100 {
            let bearer = format!("Bearer {id_token}");
            (status, _) = support::get(gw.http, "/", &[("authorization", &bearer)]).await;
            if status != http::StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(status.as_u16(), expected, "token_type = {token_type}");
        if expected == 401 {
            let events = gw.audit_events(1).await;
            assert_eq!(events.last().unwrap()["portcullis.reason"], "wrong_token_type");
        }
        gw.stop().await;
    }
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the operator-allowed ID token passed"
    );
}

/// Builds an ID token from a sign-in's nonce.
type Forge<'a> = Box<dyn Fn(&str) -> String + 'a>;

/// Signs in through a test-controlled provider whose token endpoint answers with an ID token
/// built by `forge` from the sign-in's nonce: the callback's status and the record's reason.
async fn sign_in_with_forged_id_token(
    issuer: &support::issuer::TestIssuer,
    gw: &support::Gateway,
    forge: impl Fn(&str) -> String,
) -> u16 {
    let html = [("host", "app.localhost"), ("accept", "text/html")];
    let started = support::send(gw.http, http::Method::GET, "/dags", &html, bytes::Bytes::new()).await;
    assert_eq!(started.status(), 302);
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let login = started.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (state, nonce) = (
        query_param(&location, "state").unwrap(),
        query_param(&location, "nonce").unwrap(),
    );
    issuer.answer_code_exchange(serde_json::json!({
        "access_token": "opaque-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": forge(&nonce),
    }));
    let callback = format!("/.portcullis/callback?state={state}&code=c-1");
    let back = support::send(
        gw.http,
        http::Method::GET,
        &callback,
        &[
            ("host", "app.localhost"),
            ("accept", "text/html"),
            ("cookie", &login),
        ],
        bytes::Bytes::new(),
    )
    .await;
    back.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_s_id_token_is_held_to_the_bearer_path_s_strictness() {
    let issuer = support::issuer::TestIssuer::start().await;
    let upstream = support::Recorder::start().await;
    let prebound = support::Gateway::prebind(support::Config::new()).await;
    let secret = prebound.dir.path().join("secret");
    std::fs::write(&secret, "web-secret\n").unwrap();
    let config = support::Config::new()
        .provider(
            issuer
                .provider("test")
                .audiences(["web"])
                .set("browser.client_id", "web")
                .set("browser.client_secret_file", &secret),
        )
        .route(
            support::Route::authenticated("app")
                .host("app.localhost")
                .providers(["test"])
                .upstream(&upstream),
        );
    let gw = prebound.start(config).await;
    gw.wait_ready().await;
    let claims = |nonce: &str| {
        let now = support::issuer::now();
        serde_json::json!({"iss": issuer.issuer, "aud": "web", "sub": "alice", "iat": now, "exp": now + 300,
                           "nonce": nonce, "email": "alice@example.test", "email_verified": true})
    };
    // The control: a well-formed ID token signs in.
    assert_eq!(
        sign_in_with_forged_id_token(&issuer, &gw, |n| issuer.sign(&claims(n))).await,
        302
    );
    // A standard claim or header member twice: openidconnect refuses to parse such a token
    // response at all, so the sign-in fails as `login_failed`; a member twice anywhere else is
    // caught by name.
    let cases: Vec<(&str, Forge<'_>)> = vec![
        (
            "login_failed",
            Box::new(|n| {
                let body = claims(n).to_string();
                issuer.sign_raw(
                    r#"{"alg":"ES256","kid":"k1"}"#,
                    &format!("{{\"sub\":\"root\",{}", &body[1..]),
                )
            }),
        ),
        (
            "duplicate_claim",
            Box::new(|n| {
                let body = claims(n).to_string();
                let nested = r#"{"realm_access":{"roles":["viewer"],"roles":["admin"]},"#;
                issuer.sign_raw(
                    r#"{"alg":"ES256","kid":"k1"}"#,
                    &format!("{nested}{}", &body[1..]),
                )
            }),
        ),
        (
            "login_failed",
            Box::new(|n| {
                issuer.sign_raw(
                    r#"{"alg":"ES256","kid":"nope","kid":"k1"}"#,
                    &claims(n).to_string(),
                )
            }),
        ),
        (
            "unknown_critical_header",
            Box::new(|n| {
                issuer.sign_raw(
                    r#"{"alg":"ES256","kid":"k1","crit":["exp"]}"#,
                    &claims(n).to_string(),
                )
            }),
        ),
        (
            "wrong_token_type",
            Box::new(|n| issuer.sign_with("k1", &claims(n), |h| h.typ = Some("logout+jwt".into()))),
        ),
        (
            "issued_in_future",
            Box::new(|n| {
                let mut c = claims(n);
                c["iat"] = serde_json::json!(support::issuer::now() + 600);
                issuer.sign(&c)
            }),
        ),
    ];
    for (reason, forge) in &cases {
        let status = sign_in_with_forged_id_token(&issuer, &gw, |n| forge(n)).await;
        assert!(status == 401 || status == 403, "{reason}: {status}");
    }
    let events = gw.audit_events(2 * (cases.len() + 1)).await;
    let callbacks: Vec<&str> = events
        .iter()
        .filter(|e| e["portcullis.act"] == "login")
        .map(|e| e["portcullis.reason"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = std::iter::once("signed_in")
        .chain(cases.iter().map(|(r, _)| *r))
        .collect();
    assert_eq!(callbacks, expected);
    gw.stop().await;
}
