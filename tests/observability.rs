//! What an operator watches: after a short mixed load, `/metrics` holds every metric the shipped
//! Grafana dashboard queries, denials are counted by reason, the identity provider's key fetches
//! and the process's own figures are there.
#![cfg(test)]

mod support;

use std::collections::BTreeSet;

use support::config::Provider;
use support::issuer::TestIssuer;
use support::{Config, Gateway, Recorder, Route, get, raw_get};

/// Every metric name a dashboard expression names, as its family (without `_total`, `_bucket`…).
fn queried_families(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut families = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
    {
        let expr = target["expr"].as_str().expect("expr");
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("portcullis_") || word.starts_with("process_") {
                let family = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(word);
                families.insert(family.to_string());
            }
        }
    }
    families
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists_after_a_short_mixed_load() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    // Four kinds of route: public, authenticated, protected by the shipped policy, and one whose
    // upstream gets a brokered token (never asked for here: its series start at zero).
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "broker-secret").unwrap();
    let policies = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let config = Config::new()
        .provider(issuer.provider("test"))
        .policy_dir(policies)
        .route(Route::public("app").host("app.test").upstream(&upstream))
        .route(
            Route::authenticated("api")
                .host("api.test")
                .providers(["test"])
                .upstream(&upstream),
        )
        .route(
            Route::protected("airflow")
                .host("airflow.test")
                .providers(["test"])
                .resources("airflow")
                .upstream(&upstream),
        )
        .route(
            Route::public("brokered")
                .host("brokered.test")
                .upstream(&upstream)
                .set("upstream_credentials.issuer", "http://127.0.0.1:9")
                .set("upstream_credentials.token_url", "http://127.0.0.1:9/token")
                .set("upstream_credentials.client_id", "portcullis")
                .set("upstream_credentials.client_secret_file", secret.path()),
        );
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;

    // Allowed (public and bearer), refused (no token, a bad token), and no route.
    assert_eq!(raw_get(gw.http, "app.test", "/").await.0, 200);
    let auth = format!("Bearer {}", issuer.token("ci-job"));
    let request =
        format!("GET /dags HTTP/1.1\r\nHost: api.test\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");
    assert_eq!(support::raw(gw.http, &request).await.0, 200);
    assert_eq!(raw_get(gw.http, "api.test", "/dags").await.0, 401);
    let bad = "GET /dags HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer not.a.token\r\nConnection: close\r\n\r\n";
    assert_eq!(support::raw(gw.http, bad).await.0, 401);
    assert_eq!(raw_get(gw.http, "nowhere.test", "/").await.0, 404);
    let dags = format!(
        "GET /api/v2/dags/etl_prod/dagRuns HTTP/1.1\r\nHost: airflow.test\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(support::raw(gw.http, &dags).await.0, 403, "a caller with no role");
    gw.audit_events(6).await;

    let metrics = gw.metrics().await;
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/observability/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let families = queried_families(&dashboard);
    assert!(families.len() > 15, "the dashboard queries only {families:?}");
    let missing: Vec<&String> = families
        .iter()
        .filter(|family| !metrics.contains(&format!("# TYPE {family} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics lacks:\n{metrics}"
    );

    // What the load did, counted as it happened.
    for line in [
        "portcullis_denials_total{route=\"api\",reason=\"no_credentials\"} 1",
        "portcullis_idp_key_fetches_total{provider=\"test\",result=\"ok\"}",
        "portcullis_idp_keys_updated_timestamp_seconds{provider=\"test\"}",
        "portcullis_build_info{version=\"",
        "process_cpu_seconds_total ",
        "process_open_fds ",
    ] {
        assert!(metrics.contains(line), "no {line:?} in:\n{metrics}");
    }
    let denied_for_the_bad_token = metrics
        .lines()
        .any(|l| l.starts_with("portcullis_denials_total{route=\"api\",reason=\"malformed\"} 1"));
    assert!(denied_for_the_bad_token, "{metrics}");
    gw.stop().await;
}

#[tokio::test]
async fn readyz_lists_an_identity_provider_without_keys_and_stays_ready() {
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = Recorder::start().await;
    let config = Config::new()
        .provider(Provider::new("down", &format!("http://{down}")).audiences(["api"]))
        .route(Route::public("app").host("app.test").upstream(&upstream));
    let gw = Gateway::start(config).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, body) = get(gw.admin, "/readyz", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(
        body.contains("identity provider down: no signing keys yet"),
        "{body}"
    );
    assert_eq!(
        raw_get(gw.http, "app.test", "/").await.0,
        200,
        "the public route serves"
    );
    gw.stop().await;
}
