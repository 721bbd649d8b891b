//! The README's first command, run as a newcomer would (with the test build of the binary):
//! `examples/quickstart.sh --check` verifies its own answers (a CI job's token allowed and
//! refused, `policy explain` saying why, a service's list filtered, an untrusted issuer refused)
//! and keeps serving while a real browser (Debian's chromium) signs in through
//! `portcullis demo idp` as alice and as bob.
#![cfg(test)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::browser::{browse, step, steps};
use support::collector::Collector;

/// Four loopback ports nothing listens on (the proxy, the upstream, the admin listener, the
/// identity provider), so the run never meets another one on the quickstart's own.
fn free_ports() -> String {
    let listeners: Vec<std::net::TcpListener> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The script, running: its output so far, collected by a reader thread.
struct Quickstart {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    ports: Vec<u16>,
    /// Holds the run directory (the script makes it under TMPDIR), removed with it.
    _tmp: tempfile::TempDir,
}

impl Quickstart {
    fn start(args: &[&str]) -> Quickstart {
        let ports = free_ports();
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new("examples/quickstart.sh")
            .args(args)
            .env("PORTCULLIS", support::binary())
            .env("QUICKSTART_PORTS", &ports)
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Quickstart {
            child,
            stdout,
            stderr,
            ports: ports.split(' ').map(|p| p.parse().unwrap()).collect(),
            _tmp: tmp,
        }
    }

    fn output(&self) -> String {
        format!(
            "{}\n--- stderr ---\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits (up to two minutes: the checks run on a debug build, on busy cores) for a line of
    /// stdout that starts with `prefix`, and returns it.
    async fn wait_for_line(&mut self, prefix: &str) -> String {
        for _ in 0..1200 {
            let found = self
                .stdout
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.starts_with(prefix))
                .map(str::to_string);
            if let Some(line) = found {
                return line;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "the quickstart ended ({status}) before printing {prefix:?}:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no line starting {prefix:?} within two minutes:\n{}",
            self.output()
        );
    }

    /// Closes its standard input (which ends `--hold`) and waits for it to stop.
    async fn finish(&mut self) -> String {
        drop(self.child.stdin.take());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads reach the end of the pipes.
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert!(
                    status.success(),
                    "the quickstart failed ({status}):\n{}",
                    self.output()
                );
                return self.stdout.lock().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        panic!("the quickstart did not stop within 30 s:\n{}", self.output());
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        // A failed test must not leave the script (and its three servers) running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The records of a JSON-lines audit file.
fn records(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn record_of<'a>(records: &'a [Value], user: &str, method: &str, path: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["enduser.id"] == user && r["http.request.method"] == method && r["url.path"] == path)
        .unwrap_or_else(|| panic!("no record of {user}'s {method} {path} in {records:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_shows_a_ci_job_allowed_and_refused_with_the_reason_an_untrusted_issuer_and_people_signing_in()
 {
    let mut run = Quickstart::start(&["--check", "--hold"]);
    run.wait_for_line("quickstart: ok").await;
    let stdout = run.stdout.lock().unwrap().clone();

    // The script's own answers, each with its readable audit line.
    assert!(
        stdout.contains("statuses: ci=200 ci_other_dag=403 explain=1 service=200 untrusted=401"),
        "{stdout}"
    );
    for line in [
        "  audit: ", // the prefix of every decision the script prints
        "ALLOW  200  ci:gitlab/project:42:branch:main  POST localhost/api/v2/dags/etl_daily/dagRuns  authorized: trigger on dag:etl_daily, by policy.csv:",
        "DENY   403  ci:gitlab/project:42:branch:main  POST localhost/api/v2/dags/ml_training/dagRuns  forbidden: no rule grants trigger on dag:ml_training in airflow",
        "\"missing_permission\":\"trigger on dag:ml_training in airflow\"",
        "decision: deny",
        "ALLOW  200  svc:demo/reporting-bot  GET localhost/api/v2/dags  authorized: list on dags",
        "DENY   401  anonymous  GET localhost/api/v2/dags  wrong_issuer",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let app = format!("http://localhost:{}", run.ports[0]);
    assert!(stdout.contains(&format!("open {app}/")), "{stdout}");
    let audit = run
        .wait_for_line("The full audit records (JSON, one per line): ")
        .await
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();

    // A person signs in at the URL it printed: alice views the DAGs and may not trigger one.
    let alice = browse(vec![
        "--url".into(),
        format!("{app}/"),
        "--login".into(),
        "alice".into(),
        "--fetch".into(),
        format!("GET {app}/api/v2/dags"),
        "--fetch".into(),
        format!("POST {app}/api/v2/dags/etl_daily/dagRuns"),
    ])
    .await;
    let landed = step(&alice, "landed");
    assert_eq!(landed["url"], format!("{app}/").as_str());
    assert_eq!(landed["status"], 200);
    assert!(
        landed["body"].as_str().unwrap().contains("Demo Airflow"),
        "{landed}"
    );
    let [list, trigger] = steps(&alice, "fetch")[..] else {
        panic!("{alice:#?}")
    };
    assert_eq!(list["status"], 200, "{list}");
    let dags: Value = serde_json::from_str(list["body"].as_str().unwrap()).unwrap();
    assert_eq!(dags["total_entries"], 3, "a viewer sees every DAG: {dags}");
    assert_eq!(trigger["status"], 403, "{trigger}");
    let refusal: Value = serde_json::from_str(trigger["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        refusal["missing_permission"],
        "trigger on dag:etl_daily in airflow"
    );

    // bob may trigger.
    let bob = browse(vec![
        "--url".into(),
        format!("{app}/"),
        "--login".into(),
        "bob".into(),
        "--fetch".into(),
        format!("POST {app}/api/v2/dags/ml_training/dagRuns"),
    ])
    .await;
    let run_started = step(&bob, "fetch");
    assert_eq!(run_started["status"], 200, "{run_started}");
    let dag_run: Value = serde_json::from_str(run_started["body"].as_str().unwrap()).unwrap();
    assert_eq!(dag_run["dag_id"], "ml_training");
    assert_eq!(dag_run["state"], "queued");

    // The audit trail has each person's sign-in and decisions, by name and provider.
    let stdout = run.finish().await;
    let trail = records(&audit);
    for user in ["alice", "bob"] {
        let signed_in = record_of(&trail, user, "GET", "/.portcullis/callback");
        assert_eq!(signed_in["portcullis.reason"], "signed_in");
        assert_eq!(signed_in["portcullis.principal.provider"], "demo");
        assert_eq!(signed_in["user.email"], format!("{user}@example.com").as_str());
    }
    let refused = record_of(&trail, "alice", "POST", "/api/v2/dags/etl_daily/dagRuns");
    assert_eq!(refused["portcullis.reason"], "forbidden");
    assert_eq!(
        refused["portcullis.principal.groups"],
        serde_json::json!(["viewers"])
    );
    let allowed = record_of(&trail, "bob", "POST", "/api/v2/dags/ml_training/dagRuns");
    assert_eq!(allowed["portcullis.reason"], "authorized");
    assert_eq!(allowed["portcullis.auth.method"], "session");

    // And `portcullis audit show` reads them as one line each.
    let shown = Command::new(support::binary())
        .args(["audit", "show", &audit])
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(
        shown.contains(
            "DENY   403  user:demo/alice  POST localhost/api/v2/dags/etl_daily/dagRuns  forbidden: no rule grants trigger on dag:etl_daily in airflow"
        ),
        "{shown}\n--- the quickstart's output ---\n{stdout}"
    );
    assert!(
        shown.contains(
            "ALLOW  200  user:demo/bob  POST localhost/api/v2/dags/ml_training/dagRuns  authorized"
        ),
        "{shown}"
    );
    // The untrusted token's line says which issuer it came from.
    assert!(shown.contains("wrong_issuer: the token's iss http"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_otlp_the_quickstart_sends_its_audit_records_to_the_collector_instead_of_a_file() {
    let collector = Collector::start().await;
    let endpoint = collector.grpc_endpoint();
    let mut run = Quickstart::start(&["--check", "--otlp", &endpoint]);
    let stdout = run.finish().await;
    assert!(stdout.contains("quickstart: ok"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "The audit records go to the collector at {endpoint} (OTLP)."
        )),
        "{stdout}"
    );
    assert!(
        !stdout.contains("  audit: "),
        "no record is printed from a file: {stdout}"
    );
    let access = |spans: &[support::otlp::ReceivedSpan]| {
        let mut access: Vec<support::otlp::ReceivedSpan> =
            spans.iter().filter(|s| s.name == "access").cloned().collect();
        access.sort_by_key(|s| {
            s.attr("portcullis.audit.seq")
                .and_then(support::otlp::Attr::as_i64)
        });
        access
    };
    let spans = collector
        .receiver
        .wait_until(Duration::from_secs(30), |spans| access(spans).len() >= 4)
        .await
        .unwrap_or_else(|spans| {
            panic!(
                "{} access records reached the collector: {stdout}",
                access(&spans).len()
            )
        });
    let reasons: Vec<String> = access(&spans)
        .iter()
        .filter_map(|s| s.str_attr("portcullis.reason").map(str::to_string))
        .collect();
    assert_eq!(
        reasons,
        ["authorized", "forbidden", "authorized", "wrong_issuer"],
        "{stdout}"
    );
}

#[test]
fn the_demo_identity_provider_refuses_to_listen_beyond_loopback_or_to_send_browsers_elsewhere() {
    let refused = |args: &[&str]| {
        let out = Command::new(support::binary())
            .args(["demo", "idp"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let wide = refused(&["--listen", "0.0.0.0:0"]);
    assert!(
        wide.contains("refusing to listen on 0.0.0.0:0") && wide.contains("loopback"),
        "{wide}"
    );
    let elsewhere = refused(&[
        "--listen",
        "127.0.0.1:0",
        "--redirect-uri",
        "https://evil.example/.portcullis/callback",
    ]);
    assert!(elsewhere.contains("loopback host"), "{elsewhere}");
}
