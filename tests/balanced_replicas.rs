//! Three replicas behind a real round-robin load balancer (haproxy), sharing one real Redis: a
//! person signs in through the balancer in a real browser (Chromium) at a real OpenID Provider,
//! is served by every replica in turn, signs out through the balancer, and every replica refuses
//! the old session cookie at once; a logout at the provider (OIDC Back-Channel Logout) and
//! `portcullis revoke --subject` of a CI job reach every replica just as fast.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::Reply;
use support::browser::{LiveRun, cookie};
use support::replicas::{Options, Replica, SESSION_COOKIE, ThreeReplicas};

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

/// Asks every replica (straight, past the balancer) with `ask` until each has refused (401;
/// anything but 200 before that fails): the refusal of each, and how long after `since` the
/// slowest came. Fails once `limit` has passed.
async fn until_every_replica_refuses(
    cluster: &ThreeReplicas,
    since: Instant,
    limit: Duration,
    ask: &impl AsyncFn(&Replica) -> Reply,
) -> (Vec<Reply>, Duration) {
    let mut refusals = Vec::new();
    for (i, replica) in cluster.replicas.iter().enumerate() {
        loop {
            let reply = ask(replica).await;
            if reply.status == StatusCode::UNAUTHORIZED {
                refusals.push(reply);
                break;
            }
            assert_eq!(reply.status, StatusCode::OK, "replica {i}: {}", reply.text);
            assert!(
                since.elapsed() < limit,
                "replica {i} still serves after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (refusals, since.elapsed())
}

/// Each replica's refusal says `revoked`, and its record says so and whose credential it was.
async fn each_refusal_is_recorded_as_revoked(cluster: &ThreeReplicas, refusals: &[Reply], whom: &str) {
    for (replica, refusal) in cluster.replicas.iter().zip(refusals) {
        assert_eq!(refusal.json["error"], "revoked", "{}", refusal.text);
        let record = replica.gateway.audit_event(&refusal.request_id).await;
        assert_eq!(record["portcullis.reason"], "revoked", "{record}");
        assert_eq!(record["portcullis.decision"], "deny", "{record}");
        assert_eq!(record["http.response.status_code"], 401, "{record}");
        assert_eq!(record["enduser.id"], whom, "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signed_in_through_the_balancer_who_logs_out_at_the_provider_is_refused_by_every_replica_within_a_second_through_back_channel_logout()
 {
    let cluster = ThreeReplicas::start_with(Options {
        backchannel_logout: true,
        ..Options::default()
    })
    .await;
    let origin = cluster.url();
    let end_session = cluster.idp.endpoint("end_session_endpoint").await;
    // Chromium signs in through the balancer, waits while the test uses the session, then
    // logs out at the provider itself (its end_session page, confirmed), as a person would,
    // and finally opens the app again.
    let mut browser = LiveRun::start(
        [
            "--url",
            &format!("{origin}/home"),
            "--login",
            "alice",
            "--wait-before-sign-out",
            "--sign-out",
            &format!("{end_session}?client_id=web"),
            "--after",
            &format!("{origin}/home"),
        ]
        .map(str::to_string)
        .to_vec(),
    );
    let landed = browser.step("landed").await;
    assert_eq!(landed["url"], format!("{origin}/home").as_str(), "{landed:#}");
    assert_eq!(landed["body"], "upstream ok");
    let session = cookie(&landed, SESSION_COOKIE).expect("a session cookie");
    let session = format!("{SESSION_COOKIE}={}", session["value"].as_str().unwrap());
    let api_call = async |replica: &Replica| {
        replica
            .get(
                "/api/items",
                &[("accept", "application/json"), ("cookie", &session)],
            )
            .await
    };

    // The session serves on every replica, each of which now holds it in its cache.
    for replica in &cluster.replicas {
        for _ in 0..2 {
            let reply = api_call(replica).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        }
    }
    let forwarded = cluster.upstream.requests().len();

    // She logs out at the provider, which posts a logout token through the balancer (to
    // whichever replica) before it shows her that she is signed out.
    browser.proceed();
    let signed_out = browser.step("signed_out").await;
    let done = Instant::now();
    assert!(
        signed_out["url"]
            .as_str()
            .unwrap()
            .starts_with(&cluster.idp.issuer),
        "{signed_out:#}"
    );
    assert_eq!(signed_out["status"], 200, "{signed_out:#}");
    let (refusals, slowest) =
        until_every_replica_refuses(&cluster, done, Duration::from_secs(1), &api_call).await;
    eprintln!("every replica refused the session {slowest:?} after the provider's logout page");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    each_refusal_is_recorded_as_revoked(&cluster, &refusals, "alice").await;
    assert_eq!(
        cluster.upstream.requests().len(),
        forwarded,
        "nothing was forwarded after the logout"
    );

    // One replica took the logout token, and recorded whose provider session ended; never the
    // token itself.
    let mut logouts = Vec::new();
    for replica in &cluster.replicas {
        let records = replica.gateway.audit_events(1).await;
        logouts.extend(
            records
                .into_iter()
                .filter(|r| r["portcullis.act"] == "backchannel_logout"),
        );
    }
    assert_eq!(logouts.len(), 1, "{logouts:#?}\n{}", cluster.idp.stderr());
    let logout = &logouts[0];
    assert_eq!(logout["portcullis.decision"], "allow", "{logout}");
    assert_eq!(logout["http.response.status_code"], 200, "{logout}");
    assert_eq!(logout["enduser.id"], "alice", "{logout}");
    assert_eq!(
        logout["portcullis.principal.issuer"],
        cluster.idp.issuer.as_str(),
        "{logout}"
    );
    assert!(!logout.to_string().contains("eyJ"), "{logout}");

    // Her browser, opening the app again, is sent to sign in at the provider, which no longer
    // knows her either.
    let after = browser.step("after").await;
    assert!(
        after["url"].as_str().unwrap().starts_with(&cluster.idp.issuer),
        "{after:#}"
    );
    browser.finish().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_revoke_subject_of_a_ci_job_refuses_its_bearer_token_on_every_replica_within_a_second_audited_while_another_job_s_token_still_passes()
 {
    let cluster = ThreeReplicas::start().await;
    let token = cluster
        .idp
        .client_credentials_token("ci-bot", "ci-bot-secret", None)
        .await;
    let other = cluster
        .idp
        .client_credentials_token("svc-es", "svc-es-secret", None)
        .await;
    let call = |token: &str| {
        let bearer = format!("Bearer {token}");
        async move |replica: &Replica| {
            replica
                .get(
                    "/api/v1/dags",
                    &[("accept", "application/json"), ("authorization", &bearer)],
                )
                .await
        }
    };
    let (ci_job, other_job) = (call(&token), call(&other));

    // The CI job's token is verified (and cached) by every replica, and passes the balancer.
    let mut subjects = Vec::new();
    for replica in &cluster.replicas {
        let reply = ci_job(replica).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let record = replica.gateway.audit_event(&reply.request_id).await;
        subjects.push(record["enduser.id"].as_str().unwrap().to_string());
    }
    let subject = subjects[0].clone();
    assert!(subjects.iter().all(|s| *s == subject), "{subjects:?}");
    let through_balancer = |token: &str| {
        let headers = [
            ("host", "localhost".to_string()),
            ("authorization", format!("Bearer {token}")),
        ];
        let addr = cluster.balancer.addr;
        async move {
            let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            support::get(addr, "/api/v1/dags", &headers).await.0
        }
    };
    assert_eq!(through_balancer(&token).await, StatusCode::OK);
    let forwarded = cluster.upstream.requests().len();

    // An operator revokes the job's subject at the provider, with a replica's configuration.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    cluster.replicas[1].write_config(&config);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("revoke")
        .arg("--config")
        .arg(&config)
        .args(["--subject", &subject, "--provider", "oidc"])
        .output()
        .unwrap();
    let done = Instant::now();
    let said = support::output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("revoked subject oidc/{subject}")),
        "{said}"
    );

    let (refusals, slowest) =
        until_every_replica_refuses(&cluster, done, Duration::from_secs(1), &ci_job).await;
    eprintln!("every replica refused the CI job's token {slowest:?} after `portcullis revoke`");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    each_refusal_is_recorded_as_revoked(&cluster, &refusals, &subject).await;
    assert_eq!(through_balancer(&token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        cluster.upstream.requests().len(),
        forwarded,
        "nothing was forwarded after the revocation"
    );

    // Another job of the same provider is not touched, on any replica.
    for replica in &cluster.replicas {
        let reply = other_job(replica).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    assert_eq!(through_balancer(&other).await, StatusCode::OK);
    cluster.stop().await;
}
