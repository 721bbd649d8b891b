//! A real Luigi central scheduler (luigid) behind the proxy, one per test
//! (tests/support/luigi.rs; needs `.ci/install-peers`): real `luigi` workers and the visualiser's
//! API calls, decided by the `luigi` resource template and tests/fixtures/luigi-policy.
#![cfg(test)]

mod support;

use std::collections::BTreeSet;

use http::StatusCode;
use serde_json::{Value, json};
use support::luigi::LuigiWorld;

/// `(name, status)` of every task luigid knows.
async fn known_tasks(world: &LuigiWorld) -> BTreeSet<(String, String)> {
    world
        .tasks("")
        .await
        .values()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The scheduler methods called through the proxy, with the decision and action of each.
fn calls(events: &[Value]) -> BTreeSet<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["portcullis.route"] == "luigi")
        .map(|e| {
            (
                e["portcullis.policy.object"].as_str().unwrap_or("").to_string(),
                e["portcullis.policy.action"].as_str().unwrap_or("").to_string(),
                e["portcullis.decision"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_luigi_worker_with_a_bearer_token_runs_its_tasks_through_the_proxy_and_luigid_records_them_done() {
    let world = LuigiWorld::start().await;
    let bot = world.token("etl-bot", &[]);

    let run = world
        .run_worker(
            &["Report", "--day", "2024-01-01"],
            &world.scheduler_url_via_proxy(),
            Some(&bot),
        )
        .await;
    assert_eq!(run.code, Some(0), "{run:?}\n{}", world.luigid_log());

    // luigid itself, asked directly: both tasks done, with what the running task reported.
    let tasks = world.tasks("DONE").await;
    let mut names: Vec<&str> = tasks.values().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["Extract", "Report"], "{tasks:?}");
    let report = tasks.values().find(|t| t["name"] == "Report").unwrap();
    assert_eq!(report["params"], json!({"day": "2024-01-01"}));
    assert_eq!(report["status_message"], "reporting");
    assert_eq!(report["progress_percentage"], 50);

    // Every call the worker made went through the proxy as the bot, allowed as `work`.
    let events = world.audit_events(5).await;
    let seen = calls(&events);
    for method in ["add_task", "add_worker", "get_work", "set_task_status_message"] {
        assert!(
            seen.contains(&(format!("scheduler:{method}"), "work".into(), "allow".into())),
            "{method} not allowed as work: {seen:?}"
        );
    }
    assert!(
        seen.iter()
            .all(|(_, action, decision)| action == "work" && decision == "allow"),
        "{seen:?}"
    );
    assert!(events.iter().all(|e| e["enduser.id"] == "etl-bot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_luigi_worker_cannot_authenticate_so_luigid_never_hears_of_its_tasks() {
    let world = LuigiWorld::start().await;

    // Luigi's only credential: Basic from the URL's userinfo. The proxy takes bearer JWTs only.
    let url = format!("http://etl-bot:secret@{}/", world.gateway.http);
    let run = world
        .run_worker(&["Report", "--day", "2024-01-02"], &url, None)
        .await;
    // Its first RPC is refused, which the worker does not survive (unhandled RPCError).
    assert_eq!(run.code, Some(40), "{run:?}");
    assert!(run.stderr.contains("RPCError"), "{}", run.stderr);

    let events = world.audit_events(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["url.path"], "/api/add_task", "{event}");
    assert_eq!(event["portcullis.decision"], "deny");
    assert_eq!(event["portcullis.reason"], "no_credentials");
    assert_eq!(event["portcullis.auth.method"], "none");
    assert_eq!(event["http.response.status_code"], 401);
    assert!(event.get("portcullis.upstream.status_code").is_none(), "{event}");
    assert_eq!(known_tasks(&world).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_the_task_list_through_the_proxy_but_only_an_operator_may_mark_a_failed_task_done() {
    let world = LuigiWorld::start().await;
    let bot = world.token("etl-bot", &[]);
    let run = world
        .run_worker(&["Boom"], &world.scheduler_url_via_proxy(), Some(&bot))
        .await;
    assert_eq!(run.code, Some(30), "Boom should fail: {run:?}");
    assert_eq!(known_tasks(&world).await, pairs(&[("Boom", "FAILED")]));
    let boom = world.tasks("FAILED").await.keys().next().unwrap().clone();

    // The visualiser's call, as a viewer: the same list luigid has.
    let viewer = world.token("vera", &["viewers"]);
    let list = world
        .via_proxy(
            "task_list",
            &json!({"status": "FAILED", "upstream_status": ""}),
            &viewer,
        )
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(
        list.json["response"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [&boom]
    );
    let event = world.audit_event(&list.request_id).await;
    assert_eq!(
        event["portcullis.policy.object"], "scheduler:task_list",
        "{event}"
    );
    assert_eq!(event["portcullis.policy.action"], "read");
    assert_eq!(event["portcullis.upstream.status_code"], 200);

    // The worker's identity may work but not read the visualiser's list.
    let reply = world
        .via_proxy(
            "task_list",
            &json!({"status": "FAILED", "upstream_status": ""}),
            &bot,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);

    // The visualiser marks a task done with a GET too: the method name decides, not the verb.
    let refused = world
        .via_proxy("mark_as_done", &json!({"task_id": boom}), &viewer)
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    let event = world.audit_event(&refused.request_id).await;
    assert_eq!(event["portcullis.policy.action"], "operate", "{event}");
    assert!(event.get("portcullis.upstream.status_code").is_none(), "{event}");
    assert_eq!(known_tasks(&world).await, pairs(&[("Boom", "FAILED")]));

    let operator = world.token("otto", &["operators"]);
    let done = world
        .via_proxy("mark_as_done", &json!({"task_id": boom}), &operator)
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.json["response"]["status"], "DONE", "{}", done.text);
    assert_eq!(known_tasks(&world).await, pairs(&[("Boom", "DONE")]));
}
