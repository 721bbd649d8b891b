//! `portcullis demo upstream`: the quickstart's upstream, playing a small Airflow. It answers the
//! part of Airflow's REST API the quickstart uses (three DAGs, their runs, a trigger) and a page
//! that calls it from the browser; anything else is echoed back as JSON describing what reached
//! it, so a newcomer can see exactly what the proxy forwarded. It checks nobody: deciding who may
//! do what is the proxy's job.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{Received, html};
use portcullis::body::ProxyBody;

struct Dag {
    id: &'static str,
    description: &'static str,
    tags: &'static [&'static str],
}

const DAGS: [Dag; 3] = [
    Dag {
        id: "etl_daily",
        description: "Loads yesterday's orders into the warehouse",
        tags: &["etl"],
    },
    Dag {
        id: "etl_hourly",
        description: "Refreshes the stock levels every hour",
        tags: &["etl"],
    },
    Dag {
        id: "ml_training",
        description: "Retrains the recommendation model",
        tags: &["ml"],
    },
];

#[derive(Default)]
struct Runs {
    /// (dag id, run as Airflow answers it), oldest first.
    runs: Mutex<Vec<(&'static str, Value)>>,
}

pub async fn serve(listener: TcpListener) {
    super::serve(listener, Arc::new(Runs::default()), handle).await;
}

fn dag_json(dag: &Dag) -> Value {
    json!({
        "dag_id": dag.id,
        "description": dag.description,
        "tags": dag.tags.iter().map(|t| json!({"name": t})).collect::<Vec<_>>(),
    })
}

fn not_found(what: &str) -> Response<ProxyBody> {
    super::json(
        StatusCode::NOT_FOUND,
        &json!({"title": "Not found", "status": 404, "detail": what}),
    )
}

async fn handle(runs: Arc<Runs>, req: Received) -> Response<ProxyBody> {
    let path = req.parts.uri.path().to_string();
    let method = req.parts.method.clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => html(StatusCode::OK, PAGE.to_string()),
        (&Method::GET, ["api", "v2", "monitor", "health"]) => {
            super::json(StatusCode::OK, &json!({"metadatabase": {"status": "healthy"}}))
        }
        (&Method::GET, ["api", "v2", "dags"]) => {
            let dags: Vec<Value> = DAGS.iter().map(dag_json).collect();
            super::json(
                StatusCode::OK,
                &json!({"dags": dags, "total_entries": DAGS.len()}),
            )
        }
        (_, ["api", "v2", "dags", id, rest @ ..]) => {
            let Some(dag) = DAGS.iter().find(|d| d.id == *id) else {
                return not_found(&format!("The DAG with dag_id: `{id}` was not found"));
            };
            match (&method, rest) {
                (&Method::GET, []) => super::json(StatusCode::OK, &dag_json(dag)),
                (&Method::GET, ["dagRuns"]) => {
                    let runs = runs.runs.lock().unwrap_or_else(PoisonError::into_inner);
                    let mine: Vec<&Value> = runs
                        .iter()
                        .filter(|(d, _)| *d == dag.id)
                        .map(|(_, r)| r)
                        .collect();
                    super::json(
                        StatusCode::OK,
                        &json!({"dag_runs": mine, "total_entries": mine.len()}),
                    )
                }
                (&Method::POST, ["dagRuns"]) => {
                    let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
                    let run = json!({
                        "dag_run_id": format!("manual__{now}"),
                        "dag_id": dag.id,
                        "logical_date": now,
                        "queued_at": now,
                        "run_type": "manual",
                        "state": "queued",
                        "triggered_by": "rest_api",
                    });
                    runs.runs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((dag.id, run.clone()));
                    super::json(StatusCode::OK, &run)
                }
                _ => not_found(&format!("{method} {path} is not part of this demo")),
            }
        }
        _ => echo(&req),
    }
}

fn echo(req: &Received) -> Response<ProxyBody> {
    let headers: serde_json::Map<String, Value> = req
        .parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    super::pretty_json(
        StatusCode::OK,
        &json!({
            "service": "portcullis demo upstream",
            "method": req.parts.method.as_str(),
            "path": req.parts.uri.path(),
            "query": req.parts.uri.query(),
            "body_bytes": req.body.len(),
            "headers": headers,
        }),
    )
}

/// The page a person lands on after signing in. Its calls go through the proxy too, with the
/// session cookie, so the DAG list is the one the policy lets this person read, and a trigger
/// is decided like any other request.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Demo Airflow behind Portcullis</title>
<style>body{font-family:sans-serif;max-width:46em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
#answer{white-space:pre-wrap;background:#f3f3f3;padding:.6em}</style></head>
<body>
<h1>Demo Airflow</h1>
<p>You are signed in: this page came to you through Portcullis. The calls it makes below go
through Portcullis too, and its policy decides each one (the terminal running the quickstart
prints every decision).</p>
<table><thead><tr><th>DAG</th><th>description</th><th></th></tr></thead><tbody id="dags">
<tr><td colspan="3">loading the DAGs you may see…</td></tr></tbody></table>
<h2>Last answer</h2>
<div id="answer">(trigger a DAG to see Portcullis's answer)</div>
<p><a href="/.portcullis/sign_out">Sign out</a></p>
<script>
const answer = document.getElementById('answer');
async function show(response) {
  answer.textContent = response.status + ' ' + response.statusText + '\n' + await response.text();
}
async function trigger(id) {
  await show(await fetch('/api/v2/dags/' + encodeURIComponent(id) + '/dagRuns', {
    method: 'POST', headers: {'content-type': 'application/json'}, body: '{}',
  }));
}
async function load() {
  const response = await fetch('/api/v2/dags');
  const body = document.getElementById('dags');
  body.textContent = '';
  if (!response.ok) { await show(response); return; }
  const list = await response.json();
  for (const dag of list.dags) {
    const row = body.insertRow();
    row.insertCell().textContent = dag.dag_id;
    row.insertCell().textContent = dag.description;
    const button = document.createElement('button');
    button.textContent = 'Trigger';
    button.onclick = () => trigger(dag.dag_id);
    row.insertCell().appendChild(button);
  }
  if (list.dags.length === 0) body.insertRow().insertCell().textContent = 'The policy lets you see no DAG.';
}
load();
</script>
</body></html>
"#;
