//! The pages a person sees when the proxy refuses them: in a real browser (Debian's chromium
//! through `tests/peers/browser/pages.mjs`), a 401 that offers the way to sign in (and back to
//! the page) or says there is none, and a 403 that says who you are, what was refused, the
//! request id, and how to sign out; over plain HTTP, that names and paths are escaped and that
//! API clients still get the same JSON.
#![cfg(test)]

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use support::browser::{link, pages};
use support::idp::{Idp, https_for_browsers};
use support::issuer::TestIssuer;
use support::{Config, Gateway, Recorder, Route};

/// The proxy on HTTPS for `localhost`, the real provider registered for its callback and
/// sign-out, and `config` (built with the provider and the secret file's path) served.
async fn https_world(config: impl FnOnce(&Idp, &std::path::Path) -> Config) -> (Idp, Gateway, String) {
    let (prebound, origin, idp) = https_for_browsers().await;
    let secret = prebound.dir.path().join("web-secret");
    let config = config(&idp, &secret);
    let gw = prebound.start(config).await;
    gw.wait_ready().await;
    (idp, gw, origin)
}

fn text(page: &serde_json::Value) -> &str {
    page["body"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_refused_with_401_is_offered_sign_in_and_brought_back_or_told_there_is_none() {
    let ci = TestIssuer::start().await;
    let upstream = Recorder::with(Arc::new(|_| {
        Response::new(Full::new(Bytes::from_static(b"Quarterly report: all green")))
    }))
    .await;
    let (_idp, gw, origin) = https_world(|idp, secret| {
        Config::new()
            .provider(idp.browser_provider("oidc", secret))
            .provider(ci.provider("ci"))
            .route(
                Route::authenticated("app")
                    .host("localhost")
                    .providers(["oidc"])
                    .upstream(&upstream),
            )
            .route(
                Route::authenticated("api")
                    .host("localhost")
                    .set("path_prefix", "/api")
                    .providers(["ci"])
                    .upstream(&upstream),
            )
    })
    .await;

    let lines = pages(vec![
        "--login".into(),
        "alice".into(),
        "--open".into(),
        format!("{origin}/api/dags"),
        "--post".into(),
        format!("{origin}/reports/q3?tab=runs"),
        "--click".into(),
        "Sign in".into(),
    ])
    .await;

    // A route only programs can use: no way to sign in, and the page says so.
    let api = &lines[0];
    assert_eq!(api["status"], 401, "{api:#}");
    assert_eq!(api["cacheControl"], "no-store");
    assert!(
        text(api).contains("No browser sign-in is available here"),
        "{api:#}"
    );
    assert!(link(api, "Sign in").is_none(), "{api:#}");
    assert!(text(api).contains(api["requestId"].as_str().unwrap()));

    // A form sent without a session (it ended while the person typed): 401, with the way back.
    let posted = &lines[1];
    assert_eq!(posted["step"], "post");
    assert_eq!(posted["status"], 401, "{posted:#}");
    assert_eq!(posted["cacheControl"], "no-store");
    assert!(text(posted).contains("POST /reports/q3"), "{posted:#}");
    assert!(
        !text(posted).contains("tab=runs"),
        "the query is not shown: {posted:#}"
    );
    assert_eq!(
        link(posted, "Sign in"),
        Some(format!("{origin}/.portcullis/sign_in?rd=%2Freports%2Fq3%3Ftab%3Druns").as_str()),
        "{posted:#}"
    );

    // The link signs the person in at the provider and brings them back to the page.
    let back = &lines[2];
    assert_eq!(back["step"], "click");
    assert_eq!(back["url"], format!("{origin}/reports/q3?tab=runs").as_str());
    assert_eq!(back["status"], 200, "{back:#}");
    assert!(text(back).contains("Quarterly report: all green"), "{back:#}");
    assert_eq!(upstream.last().target, "/reports/q3?tab=runs");
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the page after sign-in was forwarded"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_refused_with_403_sees_who_it_is_what_was_refused_and_signs_out() {
    let upstream = Recorder::start().await;
    let policy = support::policy("p, user:oidc/bob, app, /**, GET\n");
    let (_idp, gw, origin) = https_world(|idp, secret| {
        Config::new()
            .policy_dir(policy.path())
            .provider(
                idp.browser_provider("oidc", secret)
                    .set("browser.display_name", "Portcullis Test IdP"),
            )
            .route(
                Route::protected("app")
                    .host("localhost")
                    .providers(["oidc"])
                    .upstream(&upstream),
            )
    })
    .await;

    let lines = pages(vec![
        "--login".into(),
        "alice".into(),
        "--open".into(),
        format!("{origin}/admin/users?page=2"),
        "--click".into(),
        "Sign out".into(),
    ])
    .await;

    let refused = &lines[0];
    assert_eq!(refused["url"], format!("{origin}/admin/users?page=2").as_str());
    assert_eq!(refused["status"], 403, "{refused:#}");
    assert_eq!(refused["cacheControl"], "no-store");
    let body = text(refused);
    assert!(
        body.contains("You are signed in as alice (alice@portcullis.test) with Portcullis Test IdP"),
        "{body}"
    );
    assert!(body.contains("Refused: GET /admin/users"), "{body}");
    let request_id = refused["requestId"].as_str().expect("an X-Request-Id header");
    assert!(body.contains(&format!("Request id: {request_id}")), "{body}");
    for internal in ["user:oidc", "role:", "policy.csv", "/**", "page=2"] {
        assert!(!body.contains(internal), "{internal} shown: {body}");
    }
    assert_eq!(
        link(refused, "Sign out"),
        Some(format!("{origin}/.portcullis/sign_out").as_str())
    );
    assert!(upstream.requests().is_empty());

    // The sign-out link ends the session here and at the provider.
    let out = &lines[1];
    assert_eq!(out["url"], format!("{origin}/.portcullis/signed_out").as_str());
    assert!(text(out).contains("You have signed out"), "{out:#}");

    let events = gw.audit_events(4).await;
    let denied = events
        .iter()
        .find(|e| e["portcullis.reason"] == "forbidden")
        .expect("the 403 is audited");
    assert_eq!(denied["portcullis.request.id"], request_id);
    assert_eq!(denied["enduser.id"], "alice");
    assert!(
        events
            .iter()
            .any(|e| e["portcullis.reason"] == "signed_out" && e["enduser.id"] == "alice"),
        "{events:#?}"
    );
    gw.stop().await;
}

/// A request with `headers` to the gateway's HTTP listener: status, headers, body.
async fn call(
    gw: &Gateway,
    method: http::Method,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let response = support::send(gw.http, method, target, headers, Bytes::new()).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

const HTML: &str = "text/html,application/xhtml+xml";
const HOSTILE_PATH: &str = "/reports/%3Cscript%3Ealert(1)%3C/script%3E";

/// A protected route on `app.localhost` accepting tokens of `ci` (sub `<script>…`: refused by a
/// policy that allows only `bob`) and sessions of `web`, a browser provider.
async fn hostile_world(issuer: &TestIssuer, upstream: &Recorder) -> (Gateway, tempfile::TempDir) {
    let policy = support::policy("p, ci:ci/bob, app, /**, GET\n");
    let prebound = Gateway::prebind(Config::new()).await;
    let secret = prebound.dir.path().join("secret");
    std::fs::write(&secret, "web-secret\n").unwrap();
    let config = Config::new()
        .policy_dir(policy.path())
        .provider(issuer.provider("ci").set("principal_kind", "ci_job"))
        .provider(
            issuer
                .provider("web")
                .set("browser.client_id", "web")
                .set("browser.client_secret_file", &secret),
        )
        .route(
            Route::protected("app")
                .host("app.localhost")
                .providers(["ci", "web"])
                .upstream(upstream),
        );
    let gw = prebound.start(config).await;
    gw.wait_ready().await;
    (gw, policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_paths_on_error_pages_are_escaped_and_the_pages_are_never_cached() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let (gw, _policy) = hostile_world(&issuer, &upstream).await;
    let mut claims = issuer.claims("<script>alert('sub')</script>");
    // No email: the page names the caller by subject.
    claims.as_object_mut().unwrap().remove("email");
    let bearer = format!("Bearer {}", issuer.sign(&claims));

    let (status, headers, html) = call(
        &gw,
        http::Method::GET,
        HOSTILE_PATH,
        &[
            ("host", "app.localhost"),
            ("accept", HTML),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(status, 403, "{html}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(!html.contains("<script"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(&#39;sub&#39;)&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("Refused: <code>GET /reports/&lt;script&gt;alert(1)&lt;/script&gt;</code>"),
        "{html}"
    );
    assert!(
        !html.contains("Sign out"),
        "a token holder has no session to end: {html}"
    );
    for internal in ["ci:ci/bob", "policy.csv", "/**"] {
        assert!(!html.contains(internal), "{internal} shown: {html}");
    }

    // Unauthenticated, from a form: the sign-in link carries the path encoded, then escaped.
    let (status, headers, html) = call(
        &gw,
        http::Method::POST,
        &format!("{HOSTILE_PATH}?x=%22%3E%3Cb%3E&y='"),
        &[("host", "app.localhost"), ("accept", HTML)],
    )
    .await;
    assert_eq!(status, 401, "{html}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(!html.contains("<script") && !html.contains("<b>"), "{html}");
    let href = html
        .split("id=\"sign-in\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no sign-in link: {html}"));
    assert!(
        href.starts_with("/.portcullis/sign_in?rd=%2Freports%2F%253Cscript%253E"),
        "{href}"
    );
    assert!(upstream.requests().is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clients_get_the_same_json_errors_as_before() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let (gw, _policy) = hostile_world(&issuer, &upstream).await;
    let bearer = format!("Bearer {}", issuer.token("mallory"));
    for (headers, status, code, message) in [
        (
            vec![("host", "app.localhost"), ("accept", "application/json")],
            401,
            "no_credentials",
            "this route requires you to sign in",
        ),
        (
            vec![("host", "app.localhost"), ("authorization", bearer.as_str())],
            403,
            "forbidden",
            "you are signed in, but the policy does not allow this request",
        ),
    ] {
        let (got, response_headers, body) = call(&gw, http::Method::GET, "/reports/q3", &headers).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(response_headers["content-type"], "application/json");
        assert_eq!(response_headers["cache-control"], "no-store");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["error", "message", "request_id"], "{body}");
        assert_eq!(json["error"], code);
        assert_eq!(json["message"], message, "{body}");
        assert_eq!(
            json["request_id"],
            response_headers["x-request-id"].to_str().unwrap()
        );
    }
    gw.stop().await;
}
