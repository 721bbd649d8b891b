//! A person in a real browser (Debian's chromium, driven by playwright-core through
//! `tests/peers/browser/signin.mjs`) opens a protected page over HTTPS, is sent to the real
//! OpenID Provider, signs in, lands back on the page and sees the upstream's answer; then signs
//! out and is refused: the next visit goes to the provider's login page, not the app.
#![cfg(test)]

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use support::browser::{browse, cookie, step};
use support::idp::https_for_browsers;
use support::{Recorder, Route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_with_a_real_browser_sees_the_app_then_signs_out_and_is_refused() {
    let (prebound, origin, idp) = https_for_browsers().await;
    let upstream = Recorder::with(Arc::new(|_| {
        Response::new(Full::new(Bytes::from_static(b"Airflow: 3 DAGs running")))
    }))
    .await;
    let secret = prebound.dir.path().join("web-secret");
    let route = Route::authenticated("airflow")
        .host("localhost")
        .upstream(&upstream);
    let gw = prebound.start(idp.browser_config(&secret, route)).await;
    gw.wait_ready().await;

    let app = format!("{origin}/home?tab=dags");
    let lines = browse(vec![
        "--url".into(),
        app.clone(),
        "--login".into(),
        "alice".into(),
        "--sign-out".into(),
        format!("{origin}/.portcullis/sign_out"),
        "--after".into(),
        app.clone(),
    ])
    .await;

    // Signed in: back on the very page, showing the upstream's answer.
    let landed = step(&lines, "landed");
    assert_eq!(landed["url"], app.as_str());
    assert_eq!(landed["status"], 200);
    assert!(
        landed["body"]
            .as_str()
            .unwrap()
            .contains("Airflow: 3 DAGs running")
    );
    let session = cookie(landed, "__Host-portcullis_session").expect("a session cookie");
    assert_eq!(session["secure"], true);
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Lax");
    assert_eq!(session["path"], "/");
    assert!(
        cookie(landed, "__Host-portcullis_login").is_none(),
        "the login cookie is gone after sign-in"
    );
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(upstream.last().target, "/home?tab=dags");
    assert!(
        upstream
            .last()
            .header("cookie")
            .is_none_or(|c| !c.contains("portcullis"))
    );

    // Signed out, here and at the provider.
    let out = step(&lines, "signed_out");
    assert_eq!(out["url"], format!("{origin}/.portcullis/signed_out").as_str());
    assert!(out["body"].as_str().unwrap().contains("You have signed out"));
    assert!(cookie(out, "__Host-portcullis_session").is_none());

    // Refused afterwards: the browser is at the provider's login page, the app unseen.
    let after = step(&lines, "after");
    let url = after["url"].as_str().unwrap();
    assert!(
        url.starts_with(&idp.issuer) && url.contains("/interaction/"),
        "{url}"
    );
    assert!(!after["body"].as_str().unwrap().contains("Airflow"));
    assert_eq!(upstream.requests().len(), 1, "nothing more reached the upstream");

    let events = gw.audit_events(5).await;
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e["portcullis.reason"].as_str().unwrap())
        .collect();
    for expected in ["no_credentials", "signed_in", "authenticated", "signed_out"] {
        assert!(reasons.contains(&expected), "{reasons:?}");
    }
    let allowed = events
        .iter()
        .find(|e| e["portcullis.reason"] == "authenticated")
        .unwrap();
    assert_eq!(allowed["enduser.id"], "alice");
    assert_eq!(allowed["user.email"], "alice@portcullis.test");
    assert_eq!(allowed["portcullis.auth.method"], "session");
    assert_eq!(allowed["url.scheme"], "https");
    gw.stop().await;
}
