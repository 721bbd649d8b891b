//! A real Luigi central scheduler (luigid) behind Portcullis, one per test: luigid starts in
//! ~0.3 s and ~35 MB (tests/peers/luigi/start.sh), the proxy in-process on the test's runtime.
//!
//! The proxy has a [`TestIssuer`] as identity provider `okta`, `[policy] dir` = a copy of
//! `tests/fixtures/luigi-policy/`, and one protected route `luigi` (`resources = "luigi"`,
//! `policy_domain = "luigi"`, `identity_providers = ["okta"]`) for the hosts `luigi.test` and
//! `127.0.0.1`: a luigi worker names the scheduler by URL (`--scheduler-url
//! http://127.0.0.1:<proxy>/`) and so sends `Host: 127.0.0.1:<proxy>`.
//!
//! Workers and bearer tokens: Luigi 3.8.1's worker cannot send one (its RPC fetchers send only
//! `Authorization: Basic` from the URL's userinfo, which the proxy does not accept). The peer's
//! `portcullis_bearer.py`, imported by `portcullis_tasks.py`, adds `Authorization: Bearer
//! $LUIGI_SCHEDULER_BEARER` to every scheduler RPC; [`LuigiWorld::run_worker`] sets it.
//!
//! luigid is stopped (stop.sh) when the world is dropped, also when a test panics, and by
//! start.sh's watchdog (`LUIGI_PEER_PARENT_PID` = this process) if the test binary dies first.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::issuer::TestIssuer;
use super::{Config, Gateway, Reply, Route};

/// The host the proxy's Luigi route serves besides `127.0.0.1` (the visualiser's, say).
pub const HOST: &str = "luigi.test";

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/luigi");
const POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/luigi-policy");

pub struct LuigiWorld {
    pub issuer: TestIssuer,
    pub gateway: Gateway,
    /// luigid, straight.
    pub luigid: SocketAddr,
    home: tempfile::TempDir,
}

/// What a `luigi` worker process did.
#[derive(Debug)]
pub struct WorkerRun {
    /// The exit code, with the worker's `[retcode]` set so that it tells: 0 all done, 30 a task
    /// failed, 35 a scheduling error, 40 an unhandled exception, 25 not run.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl LuigiWorld {
    pub async fn start() -> LuigiWorld {
        let luigid = Path::new(PEER).join(".venv/bin/luigid");
        assert!(
            std::fs::metadata(&luigid).is_ok_and(|m| m.permissions().mode() & 0o111 != 0),
            "the Luigi test peer is not installed: {} is missing. Run .ci/install-peers (CI runs \
             it before the tests; it builds tests/peers/luigi/.venv from requirements.txt in a few \
             seconds)",
            luigid.display()
        );
        let home = tempfile::tempdir().unwrap();
        let port = super::free_addr();
        let luigi_home = home.path().join("luigid");
        let out = tokio::task::spawn_blocking({
            let luigi_home = luigi_home.clone();
            move || {
                Command::new(Path::new(PEER).join("start.sh"))
                    .env("LUIGI_HOME", &luigi_home)
                    .env("LUIGI_PEER_PORT", port.port().to_string())
                    .env("LUIGI_PEER_PARENT_PID", std::process::id().to_string())
                    .stdin(Stdio::null())
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        if !out.status.success() {
            let log = std::fs::read_to_string(luigi_home.join("luigid.log")).unwrap_or_default();
            stop(&luigi_home);
            panic!(
                "tests/peers/luigi/start.sh failed ({}):\n{}\nluigid.log:\n{log}",
                out.status,
                super::output_text(&out),
            );
        }

        let issuer = TestIssuer::start().await;
        let policy = home.path().join("policy");
        std::fs::create_dir(&policy).unwrap();
        for file in ["model.conf", "policy.csv"] {
            std::fs::copy(Path::new(POLICY).join(file), policy.join(file)).unwrap();
        }
        let config = Config::new()
            .provider(issuer.provider("okta"))
            .policy_dir(&policy)
            .route(
                Route::protected("luigi")
                    .hosts([HOST, "127.0.0.1"])
                    .providers(["okta"])
                    .set("policy_domain", "luigi")
                    .resources("luigi")
                    .upstream(port),
            );
        let gateway = Gateway::start(config).await;
        gateway.wait_ready().await;
        LuigiWorld {
            issuer,
            gateway,
            luigid: port,
            home,
        }
    }

    /// A bearer token from the `okta` issuer for `sub` with exactly `groups`.
    pub fn token(&self, sub: &str, groups: &[&str]) -> String {
        let mut claims = self.issuer.claims(sub);
        claims["groups"] = json!(groups);
        self.issuer.sign(&claims)
    }

    /// The scheduler URL a worker uses to go through the proxy.
    pub fn scheduler_url_via_proxy(&self) -> String {
        format!("http://{}/", self.gateway.http)
    }

    /// Runs `luigi --module portcullis_tasks <task_args> --scheduler-url <url> --workers 1` to
    /// the end, with `LUIGI_SCHEDULER_BEARER = bearer` when given; task outputs go to a fresh
    /// directory. RPC failures are not retried (`rpc-retry-attempts = 1`).
    pub async fn run_worker(
        &self,
        task_args: &[&str],
        scheduler_url: &str,
        bearer: Option<&str>,
    ) -> WorkerRun {
        let out_dir = tempfile::tempdir_in(self.home.path()).unwrap();
        let config = out_dir.path().join("worker.cfg");
        std::fs::write(
            &config,
            "[core]\nrpc-retry-attempts = 1\nrpc-retry-wait = 0\nrpc-connect-timeout = 10\n\
             [worker]\nkeep_alive = false\n\
             [retcode]\nalready_running = 10\nmissing_data = 20\nnot_run = 25\ntask_failed = 30\n\
             scheduling_error = 35\nunhandled_exception = 40\n",
        )
        .unwrap();
        let mut command = Command::new(Path::new(PEER).join(".venv/bin/luigi"));
        command
            .args(["--module", "portcullis_tasks"])
            .args(task_args)
            .args(["--scheduler-url", scheduler_url, "--workers", "1"])
            .env("PYTHONPATH", PEER)
            .env("LUIGI_CONFIG_PATH", &config)
            .env("LUIGI_OUT", out_dir.path())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env_remove("LUIGI_SCHEDULER_BEARER")
            .stdin(Stdio::null());
        if let Some(token) = bearer {
            command.env("LUIGI_SCHEDULER_BEARER", token);
        }
        let out = tokio::task::spawn_blocking(move || {
            let out = command.output().unwrap();
            drop(out_dir);
            out
        })
        .await
        .unwrap();
        WorkerRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `GET /api/<method>?data=<json>` (the visualiser's way) through the proxy as
    /// `Host: luigi.test`, with `Authorization: Bearer <token>` unless `token` is empty.
    pub async fn via_proxy(&self, method: &str, data: &Value, token: &str) -> Reply {
        let bearer = format!("Bearer {token}");
        let mut headers = vec![("host", HOST)];
        if !token.is_empty() {
            headers.push(("authorization", bearer.as_str()));
        }
        get(self.gateway.http, &api_target(method, data), &headers).await
    }

    /// `GET /api/<method>?data=<json>` straight to luigid: what the scheduler knows.
    pub async fn direct(&self, method: &str, data: &Value) -> Reply {
        let host = self.luigid.to_string();
        get(self.luigid, &api_target(method, data), &[("host", host.as_str())]).await
    }

    /// luigid's tasks with `status` (`DONE`, `FAILED`, `PENDING`, …; "" for any), keyed by task
    /// id, each with `name`, `params`, `status`, … (its `task_list`).
    pub async fn tasks(&self, status: &str) -> serde_json::Map<String, Value> {
        let reply = self
            .direct("task_list", &json!({"status": status, "upstream_status": ""}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply.json["response"].as_object().cloned().unwrap_or_default()
    }

    /// Access records written so far, waiting briefly for `at_least`.
    pub async fn audit_events(&self, at_least: usize) -> Vec<Value> {
        self.gateway.audit_events(at_least).await
    }

    /// The access record of the request with this `X-Request-Id`, waiting up to 5 s for it.
    pub async fn audit_event(&self, request_id: &str) -> Value {
        self.gateway.audit_event(request_id).await
    }

    /// luigid's log so far.
    pub fn luigid_log(&self) -> String {
        std::fs::read_to_string(self.luigi_home().join("luigid.log")).unwrap_or_default()
    }

    fn luigi_home(&self) -> PathBuf {
        self.home.path().join("luigid")
    }
}

impl Drop for LuigiWorld {
    fn drop(&mut self) {
        stop(&self.luigi_home());
    }
}

fn stop(luigi_home: &Path) {
    let _ = Command::new(Path::new(PEER).join("stop.sh"))
        .arg(luigi_home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
}

/// `/api/<method>?data=<percent-encoded JSON>`.
pub fn api_target(method: &str, data: &Value) -> String {
    let mut encoded = String::new();
    for b in data.to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("/api/{method}?data={encoded}")
}

async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    Reply::read(super::send(addr, Method::GET, target, headers, bytes::Bytes::new()).await).await
}
