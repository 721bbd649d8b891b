//! Authorization stories: a real gateway, tokens from a test issuer, the Casbin policy from a
//! directory the test owns (a copy of `policies/`, or a small one written here), and what the
//! upstream, the client, the metrics and the audit trail saw.
#![cfg(test)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::issuer::TestIssuer;
use support::{Config, Gateway, Recorder, Route, write_policy};

/// Copies `policies/` (model, rules, decision tables) into `dir`.
fn copy_shipped_policy(dir: &Path) {
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    for entry in std::fs::read_dir("policies")
        .unwrap()
        .chain(std::fs::read_dir("policies/tests").unwrap())
    {
        let path = entry.unwrap().path();
        if path.is_file() {
            let relative = path.strip_prefix("policies").unwrap();
            std::fs::copy(&path, dir.join(relative)).unwrap();
        }
    }
}

/// A gateway with one protected Airflow route (`airflow.test`) checked against the policy of
/// `policy_dir`, with `more` config (other `[policy]` keys).
async fn airflow_gateway(
    issuer: &TestIssuer,
    upstream: &Recorder,
    policy_dir: &Path,
    more: Config,
) -> Gateway {
    let config = Config::new()
        .provider(issuer.provider("okta"))
        .policy_dir(policy_dir)
        .route(airflow_route(upstream))
        .merge(more);
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    gw
}

fn token(issuer: &TestIssuer, sub: &str, groups: &[&str]) -> String {
    let mut claims = issuer.claims(sub);
    claims["groups"] = json!(groups);
    issuer.sign(&claims)
}

async fn call(gw: &Gateway, method: http::Method, path: &str, token: &str) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    let response = support::send(
        gw.http,
        method,
        path,
        &[("host", "airflow.test"), ("authorization", &bearer)],
        "{}".into(),
    )
    .await;
    let status = response.status().as_u16();
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The protected Airflow route for `airflow.test`, open to Okta's callers.
fn airflow_route(upstream: impl support::config::UpstreamUrl) -> Route {
    Route::new("airflow")
        .host("airflow.test")
        .providers(["okta"])
        .resources("airflow")
        .upstream(upstream)
}

/// An issuer, an upstream, a copy of the shipped policy and a gateway using it.
struct World {
    issuer: TestIssuer,
    upstream: Recorder,
    policy: tempfile::TempDir,
    gw: Gateway,
}

/// `more`: more config (other `[policy]` keys).
async fn shipped_policy_world(more: Config) -> World {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let policy = tempfile::tempdir().unwrap();
    copy_shipped_policy(policy.path());
    let gw = airflow_gateway(&issuer, &upstream, policy.path(), more).await;
    World {
        issuer,
        upstream,
        policy,
        gw,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_claim_grants_its_role_at_request_time_and_both_answers_are_audited() {
    let World {
        issuer,
        upstream,
        policy: _policy,
        gw,
    } = shipped_policy_world(Config::new()).await;

    let deployer = token(&issuer, "alice", &["data-eng"]);
    let (status, _) = call(
        &gw,
        http::Method::POST,
        "/api/v1/dags/etl_daily/dagRuns",
        &deployer,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.last().target, "/api/v1/dags/etl_daily/dagRuns");

    // The same person without the group: 403 with the request id, nothing forwarded.
    let plain = token(&issuer, "alice", &[]);
    let (status, body) = call(&gw, http::Method::POST, "/api/v1/dags/etl_daily/dagRuns", &plain).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "forbidden");
    assert!(body["request_id"].is_string());
    assert!(
        body.get("missing_permission").is_none(),
        "not shown unless the operator allows it"
    );
    // A deployer may not delete.
    let (status, _) = call(&gw, http::Method::DELETE, "/api/v1/dags/etl_daily", &deployer).await;
    assert_eq!(status, 403);
    assert_eq!(upstream.requests().len(), 1);

    let events = gw.audit_events(3).await;
    let allowed = &events[0];
    assert_eq!(allowed["portcullis.decision"], "allow");
    assert_eq!(allowed["portcullis.reason"], "authorized");
    assert_eq!(allowed["portcullis.policy.domain"], "airflow");
    assert_eq!(allowed["portcullis.policy.object"], "dag:etl_daily");
    assert_eq!(allowed["portcullis.policy.action"], "trigger");
    assert_eq!(allowed["portcullis.policy.rule"], "policy.csv:29");
    assert_eq!(allowed["cicd.pipeline.name"], "etl_daily");
    let version = allowed["portcullis.policy.version"].as_str().unwrap();
    assert!(version.starts_with("sha256:"), "{version}");
    let denied = &events[1];
    assert_eq!(denied["portcullis.decision"], "deny");
    assert_eq!(denied["portcullis.reason"], "forbidden");
    assert_eq!(denied["http.response.status_code"], 403);
    assert_eq!(denied["enduser.id"], "alice");
    assert_eq!(denied["portcullis.policy.object"], "dag:etl_daily");
    assert_eq!(denied["portcullis.policy.action"], "trigger");
    assert_eq!(denied["portcullis.policy.version"], version);
    assert!(denied.get("portcullis.policy.rule").is_none(), "no rule matched");
    assert_eq!(events[2]["portcullis.policy.action"], "delete");
    let acts = gw.acts(1).await;
    assert_eq!(acts[0]["portcullis.act"], "policy_reload");
    assert_eq!(acts[0]["portcullis.policy.result"], "loaded");
    assert_eq!(acts[0]["portcullis.policy.version"], version);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_look_like_roles_or_other_namespaces_grant_nothing() {
    let World {
        issuer,
        upstream,
        policy: _policy,
        gw,
    } = shipped_policy_world(Config::new()).await;
    for (sub, groups) in [
        ("role:admin", vec![]),
        ("group:platform-admins", vec![]),
        ("group:okta/platform-admins", vec![]),
        ("okta/root", vec![]),
        ("mallory", vec!["role:admin"]),
        ("mallory", vec!["group:platform-admins"]),
        ("mallory", vec!["okta/platform-admins"]),
    ] {
        let t = token(&issuer, sub, &groups);
        let (status, _) = call(&gw, http::Method::DELETE, "/api/v1/dags/etl_daily", &t).await;
        assert_eq!(status, 403, "{sub} {groups:?}");
    }
    // A DAG pattern does not reach into a path that only starts like one.
    let deployer = token(&issuer, "alice", &["data-eng"]);
    let (status, _) = call(
        &gw,
        http::Method::POST,
        "/api/v1/dags/etl_x/dagRuns/extra",
        &deployer,
    )
    .await;
    assert_eq!(status, 403);
    assert!(upstream.requests().is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_may_show_the_missing_permission_in_the_403() {
    // The upstream lives as long as the gateway: dropping it would stop it.
    let World {
        issuer,
        gw,
        upstream: _upstream,
        ..
    } = shipped_policy_world(Config::new().set("policy.show_missing_permission", true)).await;
    let t = token(&issuer, "alice", &["data-eng"]);
    let (status, body) = call(&gw, http::Method::POST, "/api/v1/dags/reporting/dagRuns", &t).await;
    assert_eq!(status, 403);
    assert_eq!(body["missing_permission"], "trigger on dag:reporting in airflow");

    // A browser gets a page; the permission comes from the path, so it is escaped there.
    let bearer = format!("Bearer {t}");
    let (status, html) = support::get(
        gw.http,
        "/api/v1/dags/%3Cscript%3Ex%3C%2Fscript%3E/dagRuns/extra",
        &[
            ("host", "airflow.test"),
            ("authorization", &bearer),
            ("accept", "text/html"),
        ],
    )
    .await;
    assert_eq!(
        status, 400,
        "an encoded slash is refused before the policy: {html}"
    );
    let (status, html) = support::get(
        gw.http,
        "/api/v1/dags/%3Cscript%3Ex/details",
        &[
            ("host", "airflow.test"),
            ("authorization", &bearer),
            ("accept", "text/html"),
        ],
    )
    .await;
    assert_eq!(status, 200, "data-eng reads every DAG: {html}");
    let outsider = token(&issuer, "mallory", &[]);
    let bearer = format!("Bearer {outsider}");
    let (status, html) = support::get(
        gw.http,
        "/api/v1/dags/%3Cscript%3Ex/details",
        &[
            ("host", "airflow.test"),
            ("authorization", &bearer),
            ("accept", "text/html"),
        ],
    )
    .await;
    assert_eq!(status, 403);
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("read on dag:&lt;script&gt;x in airflow"), "{html}");
    assert!(!html.contains("<script>"), "{html}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_on_reload_keeps_the_old_one_and_says_where() {
    let World {
        issuer,
        upstream: _upstream,
        policy: tmp,
        gw,
    } = shipped_policy_world(Config::new()).await;
    let deployer = token(&issuer, "alice", &["data-eng"]);
    assert_eq!(
        call(&gw, http::Method::POST, "/api/v1/dags/etl_a/dagRuns", &deployer)
            .await
            .0,
        200
    );

    let csv = tmp.path().join("policy.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    let bad_line = text.lines().count() + 1;
    text.push_str("p, role:viewer, airflow, regex:dag:(etl, read\n");
    std::fs::write(&csv, text).unwrap();

    let acts = gw.acts(2).await;
    assert_eq!(acts.len(), 2, "one load at start, one rejected reload: {acts:?}");
    let rejected = &acts[1];
    assert_eq!(rejected["portcullis.policy.result"], "rejected");
    let problems = rejected["portcullis.policy.problems"].to_string();
    assert!(
        problems.contains(&format!("policy.csv:{bad_line}: invalid regex")),
        "{problems}"
    );
    assert_eq!(
        rejected["portcullis.policy.in_force"],
        acts[0]["portcullis.policy.version"]
    );
    assert!(
        gw.metrics()
            .await
            .contains("portcullis_policy_last_reload_ok{policy=\"enforced\"} 0")
    );

    // The old policy still decides, and nothing panicked.
    assert_eq!(
        call(&gw, http::Method::POST, "/api/v1/dags/etl_b/dagRuns", &deployer)
            .await
            .0,
        200
    );
    let events = gw.audit_events(2).await;
    assert_eq!(
        events[1]["portcullis.policy.version"],
        acts[0]["portcullis.policy.version"]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_whose_decision_tables_fail_is_not_put_in_force() {
    let World {
        issuer,
        upstream: _upstream,
        policy: tmp,
        gw,
    } = shipped_policy_world(Config::new()).await;
    // Valid Casbin, but it takes trigger away from data-eng, which airflow.toml expects.
    let csv = tmp.path().join("policy.csv");
    let text = std::fs::read_to_string(&csv).unwrap().replace(
        "g, group:okta/data-eng, role:deployer, airflow",
        "g, group:okta/data-eng, role:viewer, airflow",
    );
    std::fs::write(&csv, text).unwrap();
    let acts = gw.acts(2).await;
    assert_eq!(acts[1]["portcullis.policy.result"], "rejected");
    let problems = acts[1]["portcullis.policy.problems"].to_string();
    assert!(
        problems.contains("tests/airflow.toml") && problems.contains("data-eng group triggers"),
        "{problems}"
    );
    let deployer = token(&issuer, "alice", &["data-eng"]);
    assert_eq!(
        call(&gw, http::Method::POST, "/api/v1/dags/etl_a/dagRuns", &deployer)
            .await
            .0,
        200
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_under_load_causes_no_5xx_and_no_allow_once_it_has_loaded() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let granted =
        "p, role:deployer, airflow, dag:etl_*, trigger\ng, group:okta/data-eng, role:deployer, airflow\n";
    write_policy(tmp.path(), granted);
    let gw = Arc::new(airflow_gateway(&issuer, &upstream, tmp.path(), Config::new()).await);
    let deployer = token(&issuer, "alice", &["data-eng"]);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (gw, stop, t) = (gw.clone(), stop.clone(), deployer.clone());
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // The same request again and again: a cached allow must not outlive the revoke.
                statuses.push(
                    call(&gw, http::Method::POST, "/api/v1/dags/etl_daily/dagRuns", &t)
                        .await
                        .0,
                );
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The revoke: the group no longer maps to the role.
    std::fs::write(
        tmp.path().join("policy.csv"),
        "p, role:deployer, airflow, dag:etl_*, trigger\ng, group:okta/someone-else, role:deployer, airflow\n",
    )
    .unwrap();
    let acts = gw.acts(2).await;
    assert_eq!(acts[1]["portcullis.policy.result"], "loaded", "{acts:?}");
    let revoked = acts[1]["portcullis.policy.version"].clone();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for c in clients {
        let seen = c.await.unwrap();
        // Each client is sequential: once it was refused, the new version decides all it sends.
        if let Some(first) = seen.iter().position(|s| *s == 403) {
            assert!(
                seen[first..].iter().all(|s| *s == 403),
                "an allow after a deny: {seen:?}"
            );
        }
        statuses.extend(seen);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "no 5xx: {statuses:?}"
    );
    assert!(statuses.contains(&200) && statuses.contains(&403));
    // Every decision made with the revoked version denied; every earlier one allowed.
    let events = gw.audit_events(statuses.len()).await;
    assert_eq!(events.len(), statuses.len());
    for e in &events {
        if e["portcullis.policy.version"] == revoked {
            assert_eq!(e["portcullis.decision"], "deny", "{e}");
        } else {
            assert_eq!(e["portcullis.decision"], "allow", "{e}");
        }
    }
    Arc::try_unwrap(gw).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_disagreements_are_recorded_and_never_enforced() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let enforced = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    write_policy(
        enforced.path(),
        "p, role:deployer, airflow, dag:*, trigger\ng, group:okta/data-eng, role:deployer, airflow\n",
    );
    // The candidate narrows trigger to etl_* DAGs.
    write_policy(
        shadow.path(),
        "p, role:deployer, airflow, dag:etl_*, trigger\ng, group:okta/data-eng, role:deployer, airflow\n",
    );
    let shadow_dir = Config::new().set("policy.shadow_dir", shadow.path());
    let gw = airflow_gateway(&issuer, &upstream, enforced.path(), shadow_dir).await;
    let t = token(&issuer, "alice", &["data-eng"]);
    assert_eq!(
        call(&gw, http::Method::POST, "/api/v1/dags/etl_a/dagRuns", &t)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&gw, http::Method::POST, "/api/v1/dags/reporting/dagRuns", &t)
            .await
            .0,
        200
    );
    let events = gw.audit_events(2).await;
    assert_eq!(events[0]["portcullis.policy.shadow_decision"], "allow");
    assert_eq!(events[1]["portcullis.decision"], "allow");
    assert_eq!(events[1]["portcullis.policy.shadow_decision"], "deny");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("portcullis_policy_shadow_disagreements_total{route=\"airflow\"} 1"),
        "{metrics}"
    );
    assert_eq!(upstream.requests().len(), 2);
    gw.stop().await;
}

#[test]
fn the_shipped_policy_passes_its_decision_tables() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let report = runtime.block_on(portcullis::authz::cli::test(Path::new("policies"), None));
    assert_eq!(report.code, 0, "{}", report.text);
    assert!(report.text.contains(" 0 failed"), "{}", report.text);
}

#[test]
fn the_policy_commands_test_explain_and_diff_a_change() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(support::binary())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(&["policy", "test"]);
    assert_eq!(code, 0, "{stdout}");

    let url = "https://airflow.example.com/api/v1/dags/etl_daily/dagRuns";
    let (code, stdout, _) = run(&[
        "policy",
        "explain",
        "--as",
        "user:okta/alice",
        "--groups",
        "data-eng",
        "--method",
        "POST",
        "--url",
        url,
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("decision: allow"), "{stdout}");
    assert!(
        stdout.contains("policy.csv:29  p, role:deployer, airflow, dag:etl_*, trigger"),
        "{stdout}"
    );
    assert!(
        stdout.contains("roles:    role:deployer role:operator role:viewer"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&[
        "policy",
        "explain",
        "--as",
        "user:okta/alice",
        "--groups",
        "sre",
        "--method",
        "POST",
        "--url",
        url,
    ]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("rule:     none") && stdout.contains("policy.csv:29"),
        "{stdout}"
    );

    // Through a configuration, the URL is routed as the proxy routes it: the public /health
    // route wins on its prefix, the protected route (its own domain name) takes the rest.
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("portcullis.toml");
    Config::new()
        .route(
            Route::public("health")
                .host("*.example.com")
                .set("path_prefix", "/health")
                .upstream("http://127.0.0.1:9"),
        )
        .route(
            Route::new("api")
                .host("*.example.com")
                .set("policy_domain", "airflow")
                .resources("airflow")
                .upstream("http://127.0.0.1:9"),
        )
        .write(&config);
    let config = config.display().to_string();
    let explain = |url: &str| {
        run(&[
            "policy",
            "explain",
            "--config",
            &config,
            "--as",
            "user:okta/alice",
            "--groups",
            "data-eng",
            "--method",
            "POST",
            "--url",
            url,
        ])
    };
    let (code, stdout, _) = explain(url);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("domain airflow, object dag:etl_daily, action trigger (template airflow)"),
        "{stdout}"
    );
    let (code, _, stderr) = explain("https://airflow.example.com/health/live");
    assert_eq!(code, 2);
    assert!(
        stderr.contains("route `health` serves this URL and is not protected"),
        "{stderr}"
    );

    let tmp = tempfile::tempdir().unwrap();
    copy_shipped_policy(tmp.path());
    let csv = tmp.path().join("policy.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(
        &csv,
        format!("{text}p, role:deployer, airflow, dag:etl_*, delete\n"),
    )
    .unwrap();
    let new = tmp.path().display().to_string();
    let (code, stdout, _) = run(&["policy", "diff", "policies", &new]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("deny -> allow  group:okta/data-eng  in airflow: delete dag:etl_x"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["policy", "diff", "policies", "policies"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("0 of "), "{stdout}");

    std::fs::write(&csv, format!("{text}p, role:x, airflow, regex:dag:(etl, read\n")).unwrap();
    let line = text.lines().count() + 1;
    let (code, _, stderr) = run(&["policy", "test", "--dir", &new]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("policy.csv:{line}: invalid regex")),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_an_invalid_regex_in_the_policy_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy");
    write_policy(
        &policy,
        "p, role:viewer, airflow, dag:*, read\np, role:viewer, airflow, regex:dag:[etl, read\n",
    );
    let config = tmp.path().join("portcullis.toml");
    Config::new()
        .policy_dir(&policy)
        .route(
            Route::new("airflow")
                .host("airflow.test")
                .resources("airflow")
                .upstream("http://127.0.0.1:9"),
        )
        .write(&config);
    let out = std::process::Command::new(support::binary())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("policy.csv:2: invalid regex"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_explain_judges_the_path_the_proxy_would_forward_and_refuses_what_it_would_refuse() {
    let World {
        issuer,
        upstream,
        policy: _policy,
        gw,
    } = shipped_policy_world(Config::new()).await;
    let explain = |url: &str| {
        let out = std::process::Command::new(support::binary())
            .args([
                "policy",
                "explain",
                "--as",
                "user:okta/alice",
                "--groups",
                "data-eng",
            ])
            .args(["--method", "POST", "--url", url])
            .output()
            .unwrap();
        let text = support::output_text(&out);
        (out.status.code().unwrap(), text)
    };
    let deployer = token(&issuer, "alice", &["data-eng"]);
    // Dot segments (plain or encoded) and doubled slashes: explain sees the canonical path, which
    // is also what the proxy decides on and forwards.
    for (path, canonical) in [
        (
            "/api/v1/dags/etl_prod/%2e%2e/etl_daily/dagRuns",
            "/api/v1/dags/etl_daily/dagRuns",
        ),
        (
            "/api/v1/dags/reporting/../etl_daily/dagRuns",
            "/api/v1/dags/etl_daily/dagRuns",
        ),
        (
            "/api/v1//dags/etl_daily/./dagRuns",
            "/api/v1/dags/etl_daily/dagRuns",
        ),
    ] {
        let (code, text) = explain(&format!("https://airflow.example.com{path}"));
        assert_eq!(code, 0, "{path}: {text}");
        assert!(
            text.contains("object dag:etl_daily, action trigger"),
            "{path}: {text}"
        );
        let (status, _) = call(&gw, http::Method::POST, path, &deployer).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(upstream.last().target, canonical);
    }
    // What the proxy refuses as ambiguous, explain refuses too, naming the 400.
    for path in [
        "/api/v1/dags/etl%2Fdaily/dagRuns",
        "/api/v1/dags/etl_daily;x=1/dagRuns",
        "/api/v1/dags/%252e%252e/dagRuns",
    ] {
        let (code, text) = explain(&format!("https://airflow.example.com{path}"));
        assert_eq!(code, 2, "{path}: {text}");
        assert!(text.contains("400 ambiguous_path"), "{path}: {text}");
        let (status, _) = call(&gw, http::Method::POST, path, &deployer).await;
        assert_eq!(status, 400, "{path}");
    }
    gw.stop().await;
}

/// `call` with a method, a raw body, and the caller's token (none: no Authorization).
async fn call_with(
    gw: &Gateway,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("host", "airflow.test"), ("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let response = support::send(
        gw.http,
        method,
        path,
        &headers,
        bytes::Bytes::from(body.to_string()),
    )
    .await;
    let status = response.status().as_u16();
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_call_naming_a_dag_the_caller_may_not_change_is_refused_whole_and_nothing_is_forwarded() {
    let World {
        issuer,
        upstream,
        policy: _policy,
        gw,
    } = shipped_policy_world(Config::new()).await;
    let dev = token(&issuer, "dana", &["dev-team"]);
    let bulk = "/api/v2/dags/etl_dev/dagRuns/r1/taskInstances";
    let cross = r#"{"actions": [{"action": "update", "entities": [
        {"task_id": "load", "new_state": "failed"},
        {"dag_id": "etl_prod", "dag_run_id": "B", "task_id": "load", "new_state": "failed"}]}]}"#;
    let (status, _) = call_with(&gw, http::Method::PATCH, bulk, Some(&dev), cross).await;
    assert_eq!(status, 403);
    // The same through the wildcard path, as a delete, and as a bulk run change.
    let variants = [
        (
            "/api/v2/dags/~/dagRuns/~/taskInstances",
            r#"{"actions": [{"action": "update", "entities": [{"dag_id": "etl_prod", "dag_run_id": "B", "task_id": "t"}]}]}"#,
        ),
        (
            bulk,
            r#"{"actions": [{"action": "delete", "entities": [{"dag_id": "etl_prod", "dag_run_id": "B", "task_id": "load"}]}]}"#,
        ),
        (
            "/api/v2/dags/etl_dev/dagRuns",
            r#"{"actions": [{"action": "update", "entities": [{"dag_id": "etl_prod", "dag_run_id": "B", "state": "failed"}]}]}"#,
        ),
        (
            "/api/v2/dags/~/clearDagRuns",
            r#"{"dry_run": false, "dag_runs": [{"dag_id": "etl_dev", "dag_run_id": "A"}, {"dag_id": "etl_prod", "dag_run_id": "B"}]}"#,
        ),
    ];
    for (path, body) in variants {
        let method = if path.ends_with("clearDagRuns") {
            http::Method::POST
        } else {
            http::Method::PATCH
        };
        let (status, _) = call_with(&gw, method, path, Some(&dev), body).await;
        assert_eq!(status, 403, "{path} {body}");
    }
    assert!(
        upstream.requests().is_empty(),
        "a refused bulk call reached the upstream"
    );

    // Only the team's own DAG: forwarded, with the body exactly as sent.
    let own = r#"{"actions":[{"action":"update","entities":[{"task_id":"load","new_state":"success"},{"dag_id":"etl_dev","dag_run_id":"r2","task_id":"x"}]}]}"#;
    let (status, _) = call_with(&gw, http::Method::PATCH, bulk, Some(&dev), own).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.last().body, own.as_bytes());

    let events = gw.audit_events(6).await;
    let refused = &events[0];
    assert_eq!(refused["portcullis.reason"], "forbidden");
    assert_eq!(refused["portcullis.policy.object"], "dag:etl_prod");
    assert_eq!(refused["portcullis.policy.action"], "set_state");
    assert_eq!(
        refused["portcullis.policy.decided"],
        json!([
            "set_state dag:etl_dev",
            "set_state dag:etl_dev",
            "set_state dag:etl_prod"
        ])
    );
    assert_eq!(events[2]["portcullis.policy.action"], "delete");
    let allowed = &events[5];
    assert_eq!(allowed["portcullis.decision"], "allow");
    assert_eq!(allowed["portcullis.policy.decided"].as_array().unwrap().len(), 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_policy_must_read_is_bounded_strict_json_or_refused() {
    let World {
        issuer,
        upstream,
        policy: _policy,
        gw,
    } = shipped_policy_world(Config::new()).await;
    let dev = token(&issuer, "dana", &["dev-team"]);
    let bulk = "/api/v2/dags/etl_dev/dagRuns/r1/taskInstances";
    let big = format!(
        r#"{{"actions": [{{"action": "update", "entities": [{{"task_id": "{}"}}]}}]}}"#,
        "x".repeat(1_100_000)
    );
    let cases = [
        (big.as_str(), 413, "payload_too_large"),
        ("not json", 400, "bad_request_body"),
        (
            r#"{"actions": [{"action": "update", "entities": [{"task_id": "t"}]}], "actions": [{"action": "update", "entities": [{"dag_id": "etl_prod", "task_id": "t"}]}]}"#,
            400,
            "bad_request_body",
        ),
        (
            r#"{"actions": [{"action": "update", "entities": [{"dag_id": "etl_dev", "dag_id": "etl_prod", "task_id": "t"}]}]}"#,
            400,
            "bad_request_body",
        ),
    ];
    for (body, status, reason) in cases {
        let (got, json) = call_with(&gw, http::Method::PATCH, bulk, Some(&dev), body).await;
        assert_eq!(got, status, "{}", &body[..body.len().min(80)]);
        assert_eq!(json["error"], reason);
    }
    assert!(upstream.requests().is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_response_keeps_only_what_the_caller_may_read() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::with(Arc::new(|seen: &support::Seen| {
        let body = if seen.target.starts_with("/ui/dags") || seen.target.starts_with("/api/v2/dags?") {
            r#"{"dags": [{"dag_id": "etl_dev"}, {"dag_id": "etl_prod"}, {"dag_id": "reporting_dev"}], "total_entries": 3}"#
        } else {
            r#"{"dag_runs": [{"dag_id": "etl_prod", "dag_run_id": "r"}, {"dag_id": "etl_dev", "dag_run_id": "s"}], "total_entries": 2}"#
        };
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)))
    }))
    .await;
    let policy = tempfile::tempdir().unwrap();
    copy_shipped_policy(policy.path());
    let gw = airflow_gateway(&issuer, &upstream, policy.path(), Config::new()).await;
    let dev = token(&issuer, "dana", &["dev-team"]);
    let viewer = token(&issuer, "eve", &["engineering"]);

    let (status, json) = call_with(&gw, http::Method::GET, "/ui/dags?limit=50", Some(&dev), "").await;
    assert_eq!(status, 200);
    assert_eq!(
        json,
        json!({"dags": [{"dag_id": "etl_dev"}, {"dag_id": "reporting_dev"}], "total_entries": 2})
    );
    let (_, json) = call_with(&gw, http::Method::GET, "/api/v2/dags?limit=50", Some(&viewer), "").await;
    assert_eq!(json["total_entries"], 3, "a viewer of every DAG sees them all");
    let (_, json) = call_with(
        &gw,
        http::Method::GET,
        "/api/v2/dags/~/dagRuns?limit=5",
        Some(&dev),
        "",
    )
    .await;
    assert_eq!(
        json,
        json!({"dag_runs": [{"dag_id": "etl_dev", "dag_run_id": "s"}], "total_entries": 1})
    );
    // Naming a DAG the caller may not read is refused outright.
    let (status, _) = call_with(
        &gw,
        http::Method::GET,
        "/ui/dags?dag_ids=etl_prod",
        Some(&dev),
        "",
    )
    .await;
    assert_eq!(status, 403);
    // No grant at all: no list.
    let nobody = token(&issuer, "mallory", &[]);
    let (status, _) = call_with(&gw, http::Method::GET, "/ui/dags", Some(&nobody), "").await;
    assert_eq!(status, 403);

    let events = gw.audit_events(5).await;
    assert_eq!(events[0]["portcullis.policy.object"], "dags");
    assert_eq!(events[0]["portcullis.policy.filtered"], 1);
    assert_eq!(events[1]["portcullis.policy.filtered"], 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_opens_what_the_api_leaves_open_and_closes_its_own_sign_in_to_everyone() {
    let World {
        issuer,
        upstream,
        policy: _policy,
        gw,
    } = shipped_policy_world(Config::new()).await;
    for path in ["/api/v2/version", "/api/v2/monitor/health", "/health"] {
        let (status, _) = call_with(&gw, http::Method::GET, path, None, "").await;
        assert_eq!(status, 200, "{path}");
    }
    // The UI's pages and static files: anyone signed in, without the policy.
    let nobody = token(&issuer, "mallory", &[]);
    for path in ["/", "/dags/etl_prod", "/static/assets/index.js"] {
        assert_eq!(
            call_with(&gw, http::Method::GET, path, Some(&nobody), "").await.0,
            200,
            "{path}"
        );
        assert_eq!(
            call_with(&gw, http::Method::GET, path, None, "").await.0,
            401,
            "{path}"
        );
    }
    let admin = token(&issuer, "root", &["platform-admins"]);
    for (method, path) in [
        (http::Method::POST, "/auth/token/cli"),
        (http::Method::POST, "/auth/token"),
        (http::Method::GET, "/api/v2/auth/login"),
        (http::Method::POST, "/execution/task-instances/x/run"),
    ] {
        let (status, _) = call_with(&gw, method, path, Some(&admin), "{}").await;
        assert_eq!(status, 403, "{path}");
    }
    let forwarded: Vec<String> = upstream.requests().iter().map(|s| s.target.clone()).collect();
    assert_eq!(forwarded.len(), 6);
    assert!(
        forwarded
            .iter()
            .all(|t| !t.contains("auth") && !t.contains("execution"))
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_request_acts_on_is_looked_up_on_the_upstream_and_decided_before_anything_is_forwarded() {
    let issuer = TestIssuer::start().await;
    // Airflow's answers: backfill 7 runs etl_daily, 8 runs billing_prod, 9 does not exist;
    // asset 3 is produced by etl_prod and starts etl_report and finance_close.
    let upstream = Recorder::with(Arc::new(|seen: &support::Seen| {
        let (status, body) = match (seen.method.as_str(), seen.target.as_str()) {
            ("GET", "/api/v2/backfills/7") => (200, r#"{"id": 7, "dag_id": "etl_daily"}"#),
            ("GET", "/api/v2/backfills/8") => (200, r#"{"id": 8, "dag_id": "billing_prod"}"#),
            ("GET", "/api/v2/backfills/10") => (200, r#"{"id": 10}"#),
            ("GET", "/api/v2/backfills/11") => (200, "<html>not json</html>"),
            ("GET", "/api/v2/assets/3") => (
                200,
                r#"{"id": 3, "producing_tasks": [{"dag_id": "etl_prod", "task_id": "t"}],
                    "scheduled_dags": [{"dag_id": "etl_report"}, {"dag_id": "finance_close"}]}"#,
            ),
            ("GET", _) => (404, r#"{"detail": "Not Found"}"#),
            _ => (200, "{}"),
        };
        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response
    }))
    .await;
    let policy = tempfile::tempdir().unwrap();
    copy_shipped_policy(policy.path());
    let gw = airflow_gateway(&issuer, &upstream, policy.path(), Config::new()).await;
    let deployer = token(&issuer, "carol", &["data-eng"]);
    let contractor = token(&issuer, "cole", &["data-eng", "contractors"]);
    let dev = token(&issuer, "dana", &["dev-team"]);
    // (request, body, caller, status, what reached the upstream)
    let cases: [(&str, &str, &str, u16, &[&str]); 8] = [
        // A backfill of a DAG the deployer may backfill: looked up, then forwarded.
        (
            "PUT /api/v2/backfills/7/pause",
            "",
            &deployer,
            200,
            &["GET /api/v2/backfills/7", "PUT /api/v2/backfills/7/pause"],
        ),
        // Of a DAG outside etl_*: looked up, refused, nothing else sent.
        (
            "PUT /api/v2/backfills/8/cancel",
            "",
            &deployer,
            403,
            &["GET /api/v2/backfills/8"],
        ),
        // No right on backfills at all: not even looked up.
        ("PUT /api/v2/backfills/7/pause", "", &dev, 403, &[]),
        // Answers that do not say which DAG: refused.
        (
            "PUT /api/v2/backfills/9/pause",
            "",
            &deployer,
            403,
            &["GET /api/v2/backfills/9"],
        ),
        (
            "PUT /api/v2/backfills/10/pause",
            "",
            &deployer,
            403,
            &["GET /api/v2/backfills/10"],
        ),
        (
            "PUT /api/v2/backfills/11/pause",
            "",
            &deployer,
            403,
            &["GET /api/v2/backfills/11"],
        ),
        // Materialising runs the producing DAG: a contractor may not start production runs.
        (
            "POST /api/v2/assets/3/materialize",
            "",
            &contractor,
            403,
            &["GET /api/v2/assets/3"],
        ),
        // An event starts every DAG scheduled on the asset; finance_close is not the deployer's.
        (
            "POST /api/v2/assets/events",
            r#"{"asset_id": 3}"#,
            &deployer,
            403,
            &["GET /api/v2/assets/3"],
        ),
    ];
    for (request, body, token, status, reached) in cases {
        let (method, path) = request.split_once(' ').unwrap();
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let before = upstream.requests().len();
        let (got, json) = call_with(&gw, method, path, Some(token), body).await;
        assert_eq!(got, status, "{request}: {json}");
        let seen: Vec<String> = upstream.requests()[before..]
            .iter()
            .map(|s| format!("{} {}", s.method, s.target))
            .collect();
        assert_eq!(seen, reached, "{request}");
    }
    // The lookup carries nothing of the client's: not its token, not its body.
    let lookup = &upstream.requests()[0];
    assert_eq!(lookup.header("authorization"), None);
    assert_eq!(lookup.body_len, 0);

    let events = gw.audit_events(8).await;
    assert_eq!(
        events[0]["portcullis.policy.decided"],
        json!(["pause backfill:7", "backfill dag:etl_daily"])
    );
    assert_eq!(events[1]["portcullis.policy.object"], "dag:billing_prod");
    assert_eq!(events[2]["portcullis.policy.object"], "backfill:7");
    for unresolved in &events[3..6] {
        assert_eq!(unresolved["portcullis.reason"], "object_unresolved");
        assert_eq!(unresolved["http.response.status_code"], 403);
    }
    assert_eq!(events[6]["portcullis.policy.object"], "dag:etl_prod");
    assert_eq!(events[6]["portcullis.policy.action"], "trigger");
    assert_eq!(events[7]["portcullis.policy.object"], "dag:finance_close");
    gw.stop().await;
}
