//! A real Apache Airflow 3 behind the proxy (tests/support/airflow.rs: one Airflow for the whole
//! binary, started by the first test that asks; needs `.ci/install-peers`). Callers authenticate
//! at the proxy with their IdP's bearer token; the policy (tests/fixtures/airflow-policy) decides
//! with the `airflow` resource template; Airflow trusts the proxy's identity assertion.
#![cfg(test)]

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::airflow::{AirflowWorld, DAGS};

fn run_id(what: &str) -> String {
    format!("{what}_{}", uuid::Uuid::new_v4().simple())
}

fn dag_ids(listing: &Value) -> Vec<String> {
    let mut ids: Vec<String> = listing["dags"]
        .as_array()
        .unwrap_or_else(|| panic!("no dags in {listing}"))
        .iter()
        .map(|d| d["dag_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// What Airflow knows about a run, read as its admin past the proxy (404 when there is none).
async fn run_in_airflow(world: &AirflowWorld, dag: &str, run: &str) -> (StatusCode, Value) {
    let reply = world
        .direct(Method::GET, &format!("/api/v2/dags/{dag}/dagRuns/{run}"), None)
        .await;
    (reply.status, reply.json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_lists_the_five_test_dags_through_the_proxy() {
    let world = AirflowWorld::shared().await;
    let admin = world.token("admin", &[]);

    let reply = world.via_proxy(Method::GET, "/api/v2/dags", &admin, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(dag_ids(&reply.json), DAGS);
    assert_eq!(reply.json["total_entries"], 5);

    // The proxy decided by the policy, and Airflow itself answered.
    let event = world.audit_event(&reply.request_id).await;
    assert_eq!(event["portcullis.decision"], "allow", "{event}");
    assert_eq!(event["portcullis.reason"], "authorized");
    assert_eq!(event["portcullis.route"], "airflow");
    assert_eq!(event["portcullis.principal.provider"], "okta");
    assert_eq!(event["enduser.id"], "admin");
    assert_eq!(event["portcullis.policy.domain"], "airflow");
    // Decided by the admin's rule (whatever object and action the template names a listing).
    let rule = event["portcullis.policy.rule"].as_str().unwrap_or_default();
    assert!(rule.starts_with("policy.csv:"), "{event}");
    assert_eq!(event["portcullis.upstream.status_code"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_a_grant_is_refused_and_airflow_never_sees_the_request() {
    let world = AirflowWorld::shared().await;
    let mallory = world.token("mallory", &["contractors"]);

    let reply = world.via_proxy(Method::GET, "/api/v2/dags", &mallory, None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    assert!(!reply.text.contains("etl_dev"), "{}", reply.text);
    let event = world.audit_event(&reply.request_id).await;
    assert_eq!(event["portcullis.decision"], "deny", "{event}");
    assert_eq!(event["portcullis.reason"], "forbidden");
    assert_eq!(event["enduser.id"], "mallory");
    assert!(
        event.get("portcullis.upstream.status_code").is_none(),
        "the request was forwarded: {event}"
    );

    // A trigger is refused the same way, and Airflow has no such run afterwards.
    let run = run_id("mallory");
    let reply = world
        .via_proxy(
            Method::POST,
            "/api/v2/dags/etl_dev/dagRuns",
            &mallory,
            Some(json!({"dag_run_id": run, "logical_date": null})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let event = world.audit_event(&reply.request_id).await;
    assert_eq!(event["portcullis.policy.object"], "dag:etl_dev", "{event}");
    assert_eq!(event["portcullis.policy.action"], "trigger");
    assert!(event.get("portcullis.upstream.status_code").is_none(), "{event}");
    let (status, body) = run_in_airflow(world, "etl_dev", &run).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Without a token at all: 401, not forwarded either.
    let reply = world.via_proxy(Method::GET, "/api/v2/dags", "", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    let event = world.audit_event(&reply.request_id).await;
    assert_eq!(event["portcullis.reason"], "no_credentials", "{event}");
    assert!(event.get("portcullis.upstream.status_code").is_none(), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_triggers_a_dag_run_through_the_proxy_and_airflow_runs_it_as_that_admin() {
    let world = AirflowWorld::shared().await;
    let admin = world.token("admin", &[]);
    let run = run_id("smoke");

    let reply = world
        .via_proxy(
            Method::POST,
            "/api/v2/dags/etl_dev/dagRuns",
            &admin,
            Some(json!({"dag_run_id": run, "logical_date": null, "conf": {"from": "portcullis-test"}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["dag_run_id"], run.as_str());
    let event = world.audit_event(&reply.request_id).await;
    assert_eq!(event["portcullis.decision"], "allow", "{event}");
    assert_eq!(event["portcullis.policy.object"], "dag:etl_dev");
    assert_eq!(event["portcullis.policy.action"], "trigger");
    assert_eq!(event["cicd.pipeline.name"], "etl_dev");
    assert_eq!(event["portcullis.upstream.status_code"], 200);

    // Airflow, read directly as its admin: the run exists, with the caller's conf, and the
    // proxy's assertion named the caller (`<provider>/<subject>`) as the triggering user.
    let (status, found) = run_in_airflow(world, "etl_dev", &run).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["conf"], json!({"from": "portcullis-test"}));
    assert_eq!(found["triggering_user_name"], "okta/admin", "{found}");

    // And it runs to the end: the scheduler's tasks reach Airflow's execution API with Airflow's
    // own tokens, which it verifies beside the proxy's keys (start.sh's JWKS merge).
    let deadline = Instant::now() + Duration::from_secs(120);
    let state = loop {
        let (_, found) = run_in_airflow(world, "etl_dev", &run).await;
        let state = found["state"].as_str().unwrap_or_default().to_string();
        if state == "success" || state == "failed" || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(state, "success", "{}", world.log_tails());
    let tasks = world
        .direct(
            Method::GET,
            &format!("/api/v2/dags/etl_dev/dagRuns/{run}/taskInstances"),
            None,
        )
        .await;
    let mut states: Vec<(String, String)> = tasks.json["task_instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", tasks.text))
        .iter()
        .map(|t| {
            (
                t["task_id"].as_str().unwrap().into(),
                t["state"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("extract", "success"),
            ("load", "success"),
            ("transform", "success")
        ]
        .map(|(t, s)| (t.to_string(), s.to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_a_dag_but_cannot_trigger_it_and_no_run_appears() {
    let world = AirflowWorld::shared().await;
    let viewer = world.token("vera", &["viewers"]);

    let reply = world
        .via_proxy(Method::GET, "/api/v2/dags/etl_prod", &viewer, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["dag_id"], "etl_prod");
    let event = world.audit_event(&reply.request_id).await;
    assert_eq!(event["portcullis.policy.object"], "dag:etl_prod", "{event}");
    assert_eq!(event["portcullis.policy.action"], "read");
    assert_eq!(event["portcullis.principal.groups"], json!(["viewers"]));

    let run = run_id("viewer");
    let reply = world
        .via_proxy(
            Method::POST,
            "/api/v2/dags/etl_prod/dagRuns",
            &viewer,
            Some(json!({"dag_run_id": run, "logical_date": null})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let event = world.audit_event(&reply.request_id).await;
    assert_eq!(event["portcullis.decision"], "deny", "{event}");
    assert!(event.get("portcullis.upstream.status_code").is_none(), "{event}");
    let (status, body) = run_in_airflow(world, "etl_prod", &run).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// Triggers a run of `dag` as the admin (past the policy, straight at Airflow) and returns its id;
/// its task instances exist as soon as the call returns.
async fn admin_run(world: &AirflowWorld, dag: &str, what: &str) -> String {
    let run = run_id(what);
    let reply = world
        .direct(
            Method::POST,
            &format!("/api/v2/dags/{dag}/dagRuns"),
            Some(json!({"dag_run_id": run, "logical_date": null})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    run
}

/// A task instance as Airflow has it, read as its admin past the proxy.
async fn task_instance(world: &AirflowWorld, dag: &str, run: &str, task: &str) -> (StatusCode, Value) {
    let reply = world
        .direct(
            Method::GET,
            &format!("/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}"),
            None,
        )
        .await;
    (reply.status, reply.json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_call_through_one_dag_that_names_another_is_refused_and_airflow_keeps_the_other_unchanged() {
    let world = AirflowWorld::shared().await;
    let dev = world.token("dana", &["dev-team"]);
    let (a, b) = (
        admin_run(world, "etl_dev", "a").await,
        admin_run(world, "etl_prod", "b").await,
    );
    let bulk = format!("/api/v2/dags/etl_dev/dagRuns/{a}/taskInstances");
    let marker = "changed through etl_dev's URL";

    // An update whose second entity names etl_prod: refused whole, nothing reaches Airflow.
    let cross = json!({"actions": [{"action": "update", "update_mask": ["note"], "entities": [
        {"task_id": "load", "note": marker},
        {"dag_id": "etl_prod", "dag_run_id": b, "task_id": "load", "note": marker}]}]});
    let reply = world.via_proxy(Method::PATCH, &bulk, &dev, Some(cross)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let refused = world.audit_event(&reply.request_id).await;
    assert_eq!(refused["portcullis.policy.object"], "dag:etl_prod", "{refused}");
    assert_eq!(
        refused["portcullis.policy.decided"],
        json!([
            "set_state dag:etl_dev",
            "set_state dag:etl_dev",
            "set_state dag:etl_prod"
        ])
    );
    assert!(
        refused.get("portcullis.upstream.status_code").is_none(),
        "{refused}"
    );

    // A delete naming etl_prod's task instance: refused, and the task instance is still there.
    let delete = json!({"actions": [{"action": "delete", "entities": [
        {"dag_id": "etl_prod", "dag_run_id": b, "task_id": "load"}]}]});
    let reply = world.via_proxy(Method::PATCH, &bulk, &dev, Some(delete)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let (status, prod) = task_instance(world, "etl_prod", &b, "load").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the refused delete reached Airflow: {prod}"
    );
    assert_ne!(prod["note"], marker, "{prod}");
    // Neither of A's task instances was touched by the refused calls.
    let (_, dev_load) = task_instance(world, "etl_dev", &a, "load").await;
    assert_ne!(dev_load["note"], marker, "{dev_load}");

    // The same call naming only the team's DAG: forwarded, and Airflow applied it.
    let own = json!({"actions": [{"action": "update", "update_mask": ["note"], "entities": [
        {"task_id": "load", "note": marker},
        {"dag_id": "etl_dev", "dag_run_id": a, "task_id": "extract", "note": marker}]}]});
    let reply = world.via_proxy(Method::PATCH, &bulk, &dev, Some(own)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    for task in ["load", "extract"] {
        let (_, ti) = task_instance(world, "etl_dev", &a, task).await;
        assert_eq!(ti["note"], marker, "{task}: {ti}");
    }
    let (_, prod) = task_instance(world, "etl_prod", &b, "load").await;
    assert_ne!(prod["note"], marker, "{prod}");
    let allowed = world.audit_event(&reply.request_id).await;
    assert_eq!(allowed["portcullis.decision"], "allow", "{allowed}");
    assert_eq!(allowed["portcullis.upstream.status_code"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_viewer_s_lists_and_ui_calls_hold_only_etl_dev() {
    let world = AirflowWorld::shared().await;
    admin_run(world, "etl_prod", "seen").await;
    admin_run(world, "etl_dev", "seen").await;
    let viewer = world.token("dev", &["dev-viewers"]);

    let reply = world
        .via_proxy(Method::GET, "/api/v2/dags?limit=50", &viewer, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(dag_ids(&reply.json), ["etl_dev"]);
    assert_eq!(reply.json["total_entries"], 1);
    let event = world.audit_event(&reply.request_id).await;
    assert_eq!(event["portcullis.policy.filtered"], 4, "{event}");

    let reply = world
        .via_proxy(
            Method::GET,
            "/ui/dags?dag_runs_limit=14&limit=50&offset=0",
            &viewer,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(dag_ids(&reply.json), ["etl_dev"]);

    let reply = world
        .via_proxy(Method::GET, "/api/v2/dags/~/dagRuns?limit=100", &viewer, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let runs = reply.json["dag_runs"].as_array().unwrap();
    assert!(!runs.is_empty(), "{}", reply.text);
    assert!(runs.iter().all(|r| r["dag_id"] == "etl_dev"), "{}", reply.text);

    let reply = world
        .via_proxy(
            Method::GET,
            "/api/v2/dags/~/dagRuns/~/taskInstances?limit=100",
            &viewer,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let tis = reply.json["task_instances"].as_array().unwrap();
    assert!(tis.iter().all(|t| t["dag_id"] == "etl_dev"), "{}", reply.text);

    for (path, status) in [
        ("/ui/grid/runs/etl_dev?limit=10", StatusCode::OK),
        ("/ui/grid/structure/etl_dev", StatusCode::OK),
        ("/ui/structure/structure_data?dag_id=etl_dev", StatusCode::OK),
        ("/ui/grid/runs/etl_prod?limit=10", StatusCode::FORBIDDEN),
        (
            "/ui/structure/structure_data?dag_id=etl_prod",
            StatusCode::FORBIDDEN,
        ),
        ("/ui/dags?dag_ids=etl_prod", StatusCode::FORBIDDEN),
        ("/api/v2/dags/etl_prod", StatusCode::FORBIDDEN),
        ("/api/v2/dagSources/etl_prod", StatusCode::FORBIDDEN),
    ] {
        let reply = world.via_proxy(Method::GET, path, &viewer, None).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_loads_in_a_browser_and_a_dev_viewer_sees_only_etl_dev() {
    let world = AirflowWorld::shared().await;
    let viewer = world.token("dev", &["dev-viewers"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/browser/airflow-ui.mjs");
    let url = format!("http://127.0.0.1:{}/dags", world.http().port());
    let mut node = std::process::Command::new("node");
    node.args([
        script,
        "--url",
        &url,
        "--token",
        &viewer,
        "--wait-for",
        "etl_dev",
        "--timeout",
        "90",
    ]);
    let out = output(node).await;
    let line = String::from_utf8_lossy(&out.stdout);
    let page: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("{e}: {line}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{page}");
    assert_eq!(page["status"], 200, "{page}");
    let body = page["body"].as_str().unwrap();
    assert!(body.contains("etl_dev"), "{body}");
    for hidden in ["etl_prod", "reporting", "approvals", "etl_daily"] {
        assert!(!body.contains(hidden), "the UI shows {hidden}: {body}");
    }
    // Every call the page made either succeeded or was refused by the policy: nothing failed.
    let calls = page["calls"].as_array().unwrap();
    assert!(
        calls
            .iter()
            .any(|c| c["url"].as_str().unwrap().starts_with("/ui/dags")),
        "{page}"
    );
    let broken: Vec<&Value> = calls
        .iter()
        .filter(|c| !matches!(c["status"].as_u64(), Some(200..=299 | 403)))
        .collect();
    assert!(broken.is_empty(), "calls that failed: {broken:?}");
}

/// Runs a command to its end off the runtime's threads.
async fn output(mut command: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// Runs `code` with the Airflow peer's Python (which has apache-airflow-client and airflowctl).
async fn python(code: &str, env: &[(&str, &str)]) -> (bool, String) {
    let python = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/airflow/.venv/bin/python"
    );
    let mut command = std::process::Command::new(python);
    command.args(["-c", code]).envs(env.iter().copied());
    let out = output(command).await;
    let text = support::output_text(&out);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_s_own_clients_trigger_what_the_policy_allows_and_are_refused_the_rest() {
    let world = AirflowWorld::shared().await;
    let dev = world.token("dana", &["dev-team"]);
    let host = format!("http://127.0.0.1:{}", world.http().port());
    let (ok_run, refused_run) = (run_id("client"), run_id("client"));
    // apache-airflow-client, pointed at the proxy with the caller's bearer token.
    let code = r#"
import os, airflow_client.client as ac
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody
cfg = ac.Configuration(host=os.environ["HOST"], access_token=os.environ["TOKEN"])
with ac.ApiClient(cfg) as api:
    runs = DagRunApi(api)
    print("allowed", runs.trigger_dag_run("etl_dev", TriggerDAGRunPostBody(dag_run_id=os.environ["OK"], logical_date=None)).dag_run_id)
    try:
        runs.trigger_dag_run("etl_prod", TriggerDAGRunPostBody(dag_run_id=os.environ["REFUSED"], logical_date=None))
        print("refused: no")
    except ac.ApiException as e:
        print("refused", e.status)
"#;
    let (ok, text) = python(
        code,
        &[
            ("HOST", &host),
            ("TOKEN", &dev),
            ("OK", &ok_run),
            ("REFUSED", &refused_run),
        ],
    )
    .await;
    assert!(ok, "{text}");
    assert!(text.contains(&format!("allowed {ok_run}")), "{text}");
    assert!(text.contains("refused 403"), "{text}");
    assert_eq!(run_in_airflow(world, "etl_dev", &ok_run).await.0, StatusCode::OK);
    assert_eq!(
        run_in_airflow(world, "etl_prod", &refused_run).await.0,
        StatusCode::NOT_FOUND
    );

    // airflowctl, logged in with the caller's token (it never sees a password).
    let home = tempfile::tempdir().unwrap();
    let airflowctl = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/airflow/.venv/bin/airflowctl"
    );
    let ctl = |args: Vec<String>| {
        let home = home.path().to_path_buf();
        let dev = dev.clone();
        async move {
            let mut command = std::process::Command::new(airflowctl);
            command
                .args(&args)
                .env("AIRFLOW_HOME", &home)
                .env("AIRFLOW_CLI_TOKEN", &dev);
            let out = output(command).await;
            (out.status.success(), support::output_text(&out))
        }
    };
    let (ok, text) = ctl(vec![
        "auth".into(),
        "login".into(),
        "--api-url".into(),
        host.clone(),
        "--api-token".into(),
        dev.clone(),
        "--skip-keyring".into(),
    ])
    .await;
    assert!(ok, "{text}");
    let (ctl_ok, ctl_refused) = (run_id("ctl"), run_id("ctl"));
    let (ok, text) = ctl(vec![
        "dags".into(),
        "trigger".into(),
        "etl_dev".into(),
        "--dag-run-id".into(),
        ctl_ok.clone(),
    ])
    .await;
    assert!(ok, "{text}");
    let (_, text) = ctl(vec![
        "dags".into(),
        "trigger".into(),
        "etl_prod".into(),
        "--dag-run-id".into(),
        ctl_refused.clone(),
    ])
    .await;
    assert!(
        text.contains("403") || text.to_lowercase().contains("forbidden"),
        "{text}"
    );
    assert_eq!(run_in_airflow(world, "etl_dev", &ctl_ok).await.0, StatusCode::OK);
    assert_eq!(
        run_in_airflow(world, "etl_prod", &ctl_refused).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_s_version_and_health_answer_without_a_token_and_its_own_sign_in_is_closed() {
    let world = AirflowWorld::shared().await;
    for path in ["/api/v2/version", "/api/v2/monitor/health"] {
        let reply = world.via_proxy(Method::GET, path, "", None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        let event = world.audit_event(&reply.request_id).await;
        assert_eq!(event["portcullis.reason"], "public_route", "{event}");
    }
    let reply = world.via_proxy(Method::GET, "/api/v2/version", "", None).await;
    assert!(
        reply.json["version"].as_str().unwrap().starts_with("3."),
        "{}",
        reply.text
    );
    // Airflow's own password sign-in would mint tokens the proxy never vouched for.
    let admin = world.token("admin", &[]);
    let reply = world
        .via_proxy(
            Method::POST,
            "/auth/token/cli",
            &admin,
            Some(json!({"username": "admin", "password": "admin"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
}

/// A backfill as Airflow has it, read as its admin past the proxy.
async fn backfill_in_airflow(world: &AirflowWorld, id: u64) -> Value {
    let reply = world
        .direct(Method::GET, &format!("/api/v2/backfills/{id}"), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_is_managed_only_by_who_may_backfill_its_dag_which_the_proxy_looks_up() {
    let world = AirflowWorld::shared().await;
    let ops = world.token("olga", &["daily-ops"]);
    let dev = world.token("dana", &["dev-team"]);
    let backfill = |dag: &str| json!({"dag_id": dag, "from_date": "2024-01-01T00:00:00Z", "to_date": "2024-01-03T00:00:00Z", "max_active_runs": 1});

    // Creating one names its DAG in the body: the team that may backfill etl_dev may not
    // backfill etl_daily; its operators may.
    let reply = world
        .via_proxy(
            Method::POST,
            "/api/v2/backfills",
            &dev,
            Some(backfill("etl_daily")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let reply = world
        .via_proxy(
            Method::POST,
            "/api/v2/backfills",
            &ops,
            Some(backfill("etl_daily")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let id = reply.json["id"].as_u64().unwrap();

    // Pausing it by id: the request names only the backfill. The dev team's grant on backfills
    // meets etl_daily when the proxy looks the backfill up, and Airflow never sees the pause.
    let pause = format!("/api/v2/backfills/{id}/pause");
    let reply = world.via_proxy(Method::PUT, &pause, &dev, None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let refused = world.audit_event(&reply.request_id).await;
    assert_eq!(refused["portcullis.reason"], "forbidden", "{refused}");
    assert_eq!(
        refused["portcullis.policy.decided"],
        json!([format!("pause backfill:{id}"), "backfill dag:etl_daily"])
    );
    assert!(
        refused.get("portcullis.upstream.status_code").is_none(),
        "{refused}"
    );
    assert_eq!(backfill_in_airflow(world, id).await["is_paused"], false);

    // Its operators pause it, and Airflow did.
    let reply = world.via_proxy(Method::PUT, &pause, &ops, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(backfill_in_airflow(world, id).await["is_paused"], true);

    // A backfill Airflow does not have: nothing says which DAG, so refused.
    let reply = world
        .via_proxy(Method::PUT, "/api/v2/backfills/987654/pause", &ops, None)
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let unresolved = world.audit_event(&reply.request_id).await;
    assert_eq!(
        unresolved["portcullis.reason"], "object_unresolved",
        "{unresolved}"
    );

    let reply = world
        .via_proxy(Method::PUT, &format!("/api/v2/backfills/{id}/cancel"), &ops, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}
