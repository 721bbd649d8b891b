//! Three replicas behind a real round-robin load balancer (haproxy), sharing one real Redis: a
//! person signs in through the balancer in a real browser (Chromium) at a real OpenID Provider,
//! is served by every replica in turn, signs out through the balancer, and every replica refuses
//! the old session cookie at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::browser::{LiveRun, cookie};
use support::replicas::{SESSION_COOKIE, ThreeReplicas};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_through_the_balancer_is_served_by_every_replica_whose_assertions_verify_against_the_jwks_of_any_and_after_sign_out_every_replica_refuses_the_old_cookie_within_a_second()
 {
    let cluster = ThreeReplicas::start().await;
    let origin = cluster.url();
    let mut args = vec![
        "--url".to_string(),
        format!("{origin}/home"),
        "--login".into(),
        "alice".into(),
    ];
    for i in 0..30 {
        args.extend(["--fetch".to_string(), format!("GET {origin}/api/items/{i}")]);
    }
    args.extend(["--sign-out".to_string(), format!("{origin}/.portcullis/sign_out")]);
    let mut browser = LiveRun::start(args);

    // Signed in through the balancer: the sign-in may start on one replica and come back to
    // another; either way the page is the upstream's.
    let landed = browser.step("landed").await;
    assert_eq!(landed["url"], format!("{origin}/home").as_str(), "{landed:#}");
    assert_eq!(landed["status"], 200);
    assert_eq!(landed["body"], "upstream ok");
    let session = cookie(&landed, SESSION_COOKIE).expect("a session cookie");
    let old_cookie = format!("{SESSION_COOKIE}={}", session["value"].as_str().unwrap());

    // 30 calls from the page, each served.
    for i in 0..30 {
        let call = browser.step("fetch").await;
        assert_eq!(call["url"], format!("{origin}/api/items/{i}").as_str());
        assert_eq!(call["status"], 200, "{call:#}");
    }

    // Signed out through the balancer (whichever replica took it): every replica refuses the
    // old cookie, within a second of the sign-out page.
    let signed_out = browser.step("signed_out").await;
    let done = Instant::now();
    assert!(
        signed_out["body"]
            .as_str()
            .unwrap()
            .contains("You have signed out"),
        "{signed_out:#}"
    );
    for (i, replica) in cluster.replicas.iter().enumerate() {
        loop {
            let reply = replica
                .get(
                    "/api/items",
                    &[("accept", "application/json"), ("cookie", &old_cookie)],
                )
                .await;
            if reply.status == StatusCode::UNAUTHORIZED {
                assert!(reply.text.contains("session_expired"), "{}", reply.text);
                break;
            }
            assert!(
                done.elapsed() < Duration::from_secs(1),
                "replica {i} still answers {} to the old cookie",
                reply.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let refused_within = done.elapsed();
    browser.finish().await;
    eprintln!("every replica refused the old cookie {refused_within:?} after the sign-out page");

    // The 30 calls were spread over every replica: each one's assertion names its key.
    let calls: Vec<_> = cluster
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/api/items/"))
        .collect();
    assert_eq!(calls.len(), 30);
    let mut per_replica = [0; 3];
    for call in &calls {
        let assertion = call.header("x-portcullis-assertion").expect("an assertion");
        let replica = cluster
            .replica_of(&assertion)
            .expect("signed by one of the replicas");
        per_replica[replica] += 1;
    }
    assert!(per_replica.iter().all(|n| *n >= 5), "{per_replica:?}");
    eprintln!("the 30 calls per replica: {per_replica:?}");

    // The upstream verifies every one of them against the key set fetched through the balancer
    // (from whichever replica answers), as it would in production.
    let issuer_host = cluster.issuer.trim_start_matches("http://");
    for _ in 0..3 {
        let (status, body) = support::get(
            cluster.balancer.addr,
            "/.well-known/jwks.json",
            &[("host", issuer_host)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&body).unwrap();
        for call in &calls {
            let assertion = call.header("x-portcullis-assertion").unwrap();
            let claims =
                support::idp::verify_jwt(&assertion, &keys, &cluster.issuer, support::replicas::AUDIENCE)
                    .unwrap();
            assert_eq!(claims["sub"], "oidc/alice");
        }
    }
    cluster.stop().await;
}
