//! A real Apache Airflow 3 behind Portcullis, shared by every test of one test binary
//! (tests/airflow.rs): Airflow takes ~10 s to start and ~720 MiB, so it starts once, on first use.
//!
//! The world, started on a dedicated thread with its own multi-thread tokio runtime (a
//! `#[tokio::test]` runtime ends with its test; these servers must outlive every test):
//! - a [`TestIssuer`] as the identity provider `okta` (tokens: [`AirflowWorld::token`]);
//! - the proxy, in-process: `[tokens]` with `issuer = "http://<its http address>"` and a 0700
//!   `key_dir`, `[policy] dir` = a copy of `tests/fixtures/airflow-policy/`, and one protected route
//!   `airflow` for host [`HOST`] (`path_prefix = "/"`, `resources = "airflow"`,
//!   `policy_domain = "airflow"`, `identity_providers = ["okta"]`, [`assertion`] with
//!   `upstream_jwks` = Airflow's own public key, upstream = Airflow's api-server);
//! - Airflow's signing key, made before either starts, and its public JWKS written by
//!   `examples/airflow/public-jwks.py`, as the README has an operator do it;
//! - Airflow from `tests/peers/airflow/start.sh` (api-server, scheduler, dag-processor; SQLite,
//!   LocalExecutor) on a free 127.0.0.1 port, signing with that key and trusting the route's JWKS
//!   (`PORTCULLIS_JWKS_URL = <issuer>/.well-known/jwks/airflow.json`, `PORTCULLIS_ISSUER =
//!   <issuer>`, `PORTCULLIS_AUDIENCE = "airflow"`, `AIRFLOW_PEER_AUTH_MANAGER =` [`AUTH_MANAGER`]).
//!
//! Order: Airflow's port is picked first, the proxy starts pointing at it (and serves its JWKS),
//! then Airflow starts pointing at the proxy's JWKS. The world is ready once `GET /api/v2/dags`
//! through the proxy answers 200 for `okta/admin`.
//!
//! Reading Airflow's state as an admin, past the proxy: [`AirflowWorld::direct`] sends a token
//! Airflow issued itself (`POST /auth/token` as admin/admin, start.sh's passwords file; signed with
//! Airflow's own key, which the route's JWKS serves beside the proxy's).
//!
//! Shutdown: Rust runs no destructor for a static at exit, so Airflow's lifetime is tied to the
//! test binary's process instead: start.sh gets `AIRFLOW_PEER_PARENT_PID` = this process and
//! starts a watchdog (a shell loop in its own session) that runs stop.sh within ~0.5 s of this
//! process ending, however it ends (all tests done, a panic, SIGKILL), then removes the world's
//! temporary directory (`AIRFLOW_PEER_REMOVE_ON_EXIT`): SIGTERM to each process group, SIGKILL
//! after 2 s, so nothing is left 1–3 s after the binary ends. If the binary dies while start.sh
//! still runs, the watchdog kills start.sh and its children first.
//!
//! If the Airflow venv is missing every test using the world fails, naming `.ci/install-peers`.
//! The time to start is printed once to stderr (`cargo test --test airflow -- --nocapture`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::issuer::TestIssuer;
use super::{Config, Gateway, Reply, Route};

/// The host the proxy's Airflow route serves.
pub const HOST: &str = "airflow.test";
/// The assertion's `aud`, and the `jwt_audience` Airflow checks.
pub const AUDIENCE: &str = "airflow";
/// The DAGs in `tests/peers/airflow/dags/`, sorted.
pub const DAGS: [&str; 5] = ["approvals", "etl_daily", "etl_dev", "etl_prod", "reporting"];
/// The route's `[routes.assertion]` table: how the proxy's identity reaches Airflow. Stock
/// Airflow reads its caller's JWT from `Authorization: Bearer` and wants a `role`: the proxy
/// decided, so every caller it lets through is an Airflow admin (README, "In front of Airflow").
pub fn assertion() -> toml::Table {
    toml::toml! {
        audience = "airflow"
        header = "Authorization"
        claims = { role = "ADMIN" }
    }
}
/// start.sh's `AIRFLOW_PEER_AUTH_MANAGER`: `simple` is stock Airflow's SimpleAuthManager.
pub const AUTH_MANAGER: &str = "simple";
/// Airflow's own signing key (in the world's directory) and its kid.
const SIGNING_KEY: &str = "airflow-signing.pem";
const SIGNING_KID: &str = "airflow-own";

/// Makes Airflow's signing key in `dir` the way the README has an operator make it (an Ed25519
/// PEM), and its public JWKS with `examples/airflow/public-jwks.py`; returns the JWKS's path.
fn airflow_signing_key(dir: &Path) -> PathBuf {
    let python = Path::new(PEER).join(".venv/bin/python");
    let pem = dir.join(SIGNING_KEY);
    let made = Command::new(&python)
        .args([
            "-c",
            "import sys\n\
             from cryptography.hazmat.primitives import serialization as s\n\
             from cryptography.hazmat.primitives.asymmetric import ed25519\n\
             k = ed25519.Ed25519PrivateKey.generate()\n\
             open(sys.argv[1], 'wb').write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let jwks = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/airflow/public-jwks.py"
        ))
        .arg(&pem)
        .arg(SIGNING_KID)
        .output()
        .unwrap();
    assert!(jwks.status.success(), "{}", String::from_utf8_lossy(&jwks.stderr));
    let path = dir.join("airflow-jwks.json");
    std::fs::write(&path, &jwks.stdout).unwrap();
    path
}

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/airflow");
const POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/airflow-policy");
/// Where the migrated empty DB that start.sh copies instead of migrating (−3 s) is kept.
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");
/// start.sh's own deadline; generous, CI may run other test binaries' peers meanwhile.
const START_TIMEOUT_S: u32 = 180;

/// A real Airflow behind the proxy; see the module documentation.
pub struct AirflowWorld {
    pub issuer: TestIssuer,
    pub gateway: Gateway,
    airflow: SocketAddr,
    airflow_home: PathBuf,
    admin_token: String,
    /// From the first use to Airflow answering through the proxy.
    pub startup: Duration,
    /// Of which start.sh (migrate or copy the DB, start, DAGs parsed).
    pub start_sh: Duration,
    /// Owns the proxy's and the issuer's tasks; never dropped (statics are not).
    _runtime: tokio::runtime::Runtime,
}

static WORLD: OnceLock<Result<AirflowWorld, String>> = OnceLock::new();

impl AirflowWorld {
    /// The world of this test binary, started on first use (by whichever test comes first; the
    /// others wait). Panics with the reason when it could not start, in every test that asks.
    pub async fn shared() -> &'static AirflowWorld {
        match tokio::task::spawn_blocking(Self::get_or_start).await.unwrap() {
            Ok(world) => world,
            Err(why) => panic!("the Airflow world did not start: {why}"),
        }
    }

    /// [`Self::shared`] for code outside a tokio runtime.
    pub fn shared_blocking() -> &'static AirflowWorld {
        match Self::get_or_start() {
            Ok(world) => world,
            Err(why) => panic!("the Airflow world did not start: {why}"),
        }
    }

    fn get_or_start() -> Result<&'static AirflowWorld, &'static str> {
        WORLD
            .get_or_init(|| {
                let started = Instant::now();
                // A thread of its own: a runtime cannot be started, or block, inside a test's runtime.
                std::thread::Builder::new()
                    .name("airflow-world".into())
                    .spawn(move || Self::start(Path::new(POLICY), started))
                    .unwrap()
                    .join()
                    .unwrap_or_else(|panic| {
                        Err(format!(
                            "starting the Airflow world panicked: {}",
                            panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        ))
                    })
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// Starts a world with the policy in `policy_dir` (model.conf, policy.csv); blocking, and not
    /// from inside a tokio runtime.
    pub fn start(policy_dir: &Path, started: Instant) -> Result<AirflowWorld, String> {
        let venv_airflow = Path::new(PEER).join(".venv/bin/airflow");
        if !is_executable(&venv_airflow) {
            return Err(format!(
                "the Airflow test peer is not installed: {} is missing. Run .ci/install-peers \
                 (CI runs it before the tests; it builds tests/peers/airflow/.venv from \
                 requirements.txt in about 40 s)",
                venv_airflow.display()
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("airflow-world-rt")
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;

        // 1. Airflow's port; 2. the proxy in front of it; 3. Airflow trusting the proxy's keys.
        let airflow = super::free_addr();
        let (issuer, gateway, issuer_url) = runtime.block_on(async {
            let issuer = TestIssuer::start().await;
            let prebound = Gateway::prebind(Config::new()).await;
            let root = prebound.dir.path().to_path_buf();
            let issuer_url = format!("http://{}", prebound.http);
            let keys = root.join("keys");
            std::fs::create_dir(&keys).unwrap();
            std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
            let policy = root.join("policy");
            std::fs::create_dir(&policy).unwrap();
            let upstream_jwks = airflow_signing_key(&root);
            for file in ["model.conf", "policy.csv"] {
                std::fs::copy(policy_dir.join(file), policy.join(file))
                    .unwrap_or_else(|e| panic!("{}: {e}", policy_dir.join(file).display()));
            }
            let config = Config::new()
                .provider(issuer.provider("okta"))
                .tokens(&issuer_url, &keys)
                .policy_dir(&policy)
                .route(
                    Route::protected("airflow")
                        .hosts([HOST, "127.0.0.1"])
                        .set("path_prefix", "/")
                        .providers(["okta"])
                        .set("policy_domain", "airflow")
                        .resources("airflow")
                        .upstream(airflow)
                        .set("assertion", assertion())
                        .set("assertion.upstream_jwks", &upstream_jwks),
                );
            let gateway = prebound.start(config).await;
            gateway.wait_ready().await;
            (issuer, gateway, issuer_url)
        });
        let root = gateway.dir.path().to_path_buf();
        let airflow_home = root.join("airflow");

        let t_start_sh = Instant::now();
        let out = Command::new(Path::new(PEER).join("start.sh"))
            .env("AIRFLOW_HOME", &airflow_home)
            .env("AIRFLOW_PEER_PORT", airflow.port().to_string())
            .env(
                "PORTCULLIS_JWKS_URL",
                format!("{issuer_url}/.well-known/jwks/airflow.json"),
            )
            .env("AIRFLOW_PEER_SIGNING_KEY", root.join(SIGNING_KEY))
            .env("AIRFLOW_PEER_SIGNING_KID", SIGNING_KID)
            .env("PORTCULLIS_ISSUER", &issuer_url)
            .env("PORTCULLIS_AUDIENCE", AUDIENCE)
            .env("AIRFLOW_PEER_AUTH_MANAGER", AUTH_MANAGER)
            .env("AIRFLOW_PEER_TIMEOUT", START_TIMEOUT_S.to_string())
            .env("AIRFLOW_PEER_DB_TEMPLATE", db_template())
            .env("AIRFLOW_PEER_PARENT_PID", std::process::id().to_string())
            .env("AIRFLOW_PEER_REMOVE_ON_EXIT", &root)
            // Airflow's JWKS client (httpx) honours proxy variables; everything here is loopback.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("start.sh: {e}"))?;
        let start_sh = t_start_sh.elapsed();
        if !out.status.success() {
            return Err(format!(
                "tests/peers/airflow/start.sh failed ({}):\n{}\n{}",
                out.status,
                super::output_text(&out),
                log_tails(&airflow_home)
            ));
        }

        let admin_token = runtime.block_on(async {
            let reply = send(
                airflow,
                &format!("127.0.0.1:{}", airflow.port()),
                Method::POST,
                "/auth/token",
                &[("content-type", "application/json")],
                Some(json!({"username": "admin", "password": "admin"})),
            )
            .await;
            match reply.json["access_token"].as_str() {
                Some(token) if reply.status.is_success() => Ok(token.to_string()),
                _ => Err(format!(
                    "Airflow's POST /auth/token as admin: {} {}",
                    reply.status, reply.text
                )),
            }
        })?;

        let world = AirflowWorld {
            issuer,
            gateway,
            airflow,
            airflow_home,
            admin_token,
            startup: Duration::ZERO,
            start_sh,
            _runtime: runtime,
        };
        // Ready = Airflow answers through the proxy (it fetches the proxy's keys on this first call).
        let admin = world.token("admin", &[]);
        let ready = world._runtime.block_on(async {
            let mut last = None;
            for _ in 0..150 {
                let reply = world.via_proxy(Method::GET, "/api/v2/dags", &admin, None).await;
                if reply.status == StatusCode::OK {
                    return Ok(());
                }
                last = Some(reply);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(format!(
                "Airflow never answered GET /api/v2/dags through the proxy: {last:?}"
            ))
        });
        if let Err(why) = ready {
            return Err(format!("{why}\n{}", log_tails(&world.airflow_home)));
        }
        let world = AirflowWorld {
            startup: started.elapsed(),
            ..world
        };
        eprintln!(
            "airflow world: ready through the proxy {:.1}s after first use (start.sh {:.1}s); \
             proxy http://{}, Airflow http://{}, AIRFLOW_HOME {}",
            world.startup.as_secs_f64(),
            world.start_sh.as_secs_f64(),
            world.gateway.http,
            world.airflow,
            world.airflow_home.display()
        );
        Ok(world)
    }

    /// The proxy's HTTP listener (send `Host: airflow.test`).
    pub fn http(&self) -> SocketAddr {
        self.gateway.http
    }

    /// The proxy's issuer URL (`[tokens] issuer`, the assertions' `iss`).
    pub fn assertion_issuer(&self) -> String {
        format!("http://{}", self.gateway.http)
    }

    /// A bearer token from the `okta` issuer for `sub` with exactly `groups`; the policy sees
    /// `user:okta/<sub>` and `group:okta/<group>`.
    pub fn token(&self, sub: &str, groups: &[&str]) -> String {
        let mut claims = self.issuer.claims(sub);
        claims["groups"] = json!(groups);
        self.issuer.sign(&claims)
    }

    /// Airflow's api-server, straight (no proxy).
    pub fn airflow_direct_url(&self) -> String {
        format!("http://{}", self.airflow)
    }

    pub fn airflow_addr(&self) -> SocketAddr {
        self.airflow
    }

    /// Airflow's own admin token (from its `/auth/token`), for [`Self::direct`].
    pub fn airflow_admin_token(&self) -> &str {
        &self.admin_token
    }

    /// `$AIRFLOW_HOME`: `env.sh` (for `airflow` CLI commands), `*.log`, `airflow.db`.
    pub fn airflow_home(&self) -> &Path {
        &self.airflow_home
    }

    /// `method path` through the proxy as `Host: airflow.test` with `Authorization: Bearer
    /// <token>` (none when `token` is empty), `body` as JSON.
    pub async fn via_proxy(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
        let bearer = format!("Bearer {token}");
        let mut headers = vec![("content-type", "application/json")];
        if !token.is_empty() {
            headers.push(("authorization", bearer.as_str()));
        }
        send(self.gateway.http, HOST, method, path, &headers, body).await
    }

    /// `method path` straight to Airflow as its admin (Airflow's own token), `body` as JSON.
    pub async fn direct(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let bearer = format!("Bearer {}", self.admin_token);
        let host = format!("127.0.0.1:{}", self.airflow.port());
        send(
            self.airflow,
            &host,
            method,
            path,
            &[("content-type", "application/json"), ("authorization", &bearer)],
            body,
        )
        .await
    }

    /// Access records written so far by the proxy (every test's: filter), waiting briefly for
    /// `at_least` of them.
    pub async fn audit_events(&self, at_least: usize) -> Vec<Value> {
        self.gateway.audit_events(at_least).await
    }

    /// The access record of the request with this `X-Request-Id`, waiting up to 5 s for it.
    pub async fn audit_event(&self, request_id: &str) -> Value {
        self.gateway.audit_event(request_id).await
    }

    /// The last lines of each component's log, for failure messages.
    pub fn log_tails(&self) -> String {
        log_tails(&self.airflow_home)
    }
}

/// One request over a fresh HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    host: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    // Airflow on SQLite answers 500 "Database error" (503 "Database is locked" for a backfill)
    // when the scheduler holds the database lock past SQLite's busy timeout (tests run side by
    // side); the transaction was rolled back, so the same request is sent again. Production
    // deployments use PostgreSQL or MySQL.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let reply = Reply::read(super::send(addr, method.clone(), path, &all, body.clone()).await).await;
        let status = reply.status;
        let locked = (status == http::StatusCode::INTERNAL_SERVER_ERROR
            && reply.text.contains("Database error"))
            || (status == http::StatusCode::SERVICE_UNAVAILABLE && reply.text.contains("Database is locked"));
        if locked && attempt < 6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        return reply;
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A migrated empty airflow.db for the installed Airflow (named after requirements.txt's
/// content, so a new lock never reuses an old schema); start.sh writes it on first use.
fn db_template() -> PathBuf {
    let lock = std::fs::read(Path::new(PEER).join("requirements.txt")).unwrap_or_default();
    // FNV-1a: stable across runs and toolchains.
    let hash = lock.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    PathBuf::from(TARGET_TMP).join(format!("airflow-peer-db-{hash:016x}.sqlite"))
}

fn log_tails(home: &Path) -> String {
    let mut out = String::new();
    for name in [
        "migrate",
        "jwks-merge",
        "api-server",
        "scheduler",
        "dag-processor",
        "triggerer",
    ] {
        let path = home.join(format!("{name}.log"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!(
                "--- {} (last {} lines)\n{}\n",
                path.display(),
                tail.len(),
                tail.join("\n")
            ));
        }
    }
    out
}
