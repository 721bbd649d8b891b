//! A real OpenTelemetry collector between the proxy and the test: `rotel-agent` from PyPI `rotel`
//! (pinned in `tests/peers/collector/requirements.txt`, installed by `.ci/install-peers` into
//! `tests/peers/collector/.venv`), on 127.0.0.1 and two free ports (OTLP/gRPC and OTLP/HTTP). It
//! exports everything it receives over OTLP/gRPC (gzip: this rotel compresses whatever it is told)
//! to an in-process [`Receiver`], where the test reads the spans as typed values.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::otlp::Receiver;

const VENV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/collector/.venv");
/// Overrides where `rotel-agent` is looked for.
pub const AGENT_ENV: &str = "PORTCULLIS_ROTEL_AGENT";
// Generous: on two loaded cores several peers start at once. rotel itself starts in ~10 ms.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// rotel prints this log line after both listeners are bound.
const READY_MSG: &str = "Starting Rotel.";

/// A running `rotel-agent` forwarding to its [`Receiver`]. Dropping it kills the process.
pub struct Collector {
    pub receiver: Receiver,
    grpc_port: u16,
    _dir: tempfile::TempDir,
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Collector {
    pub async fn start() -> Collector {
        let receiver = Receiver::start().await;
        let agent = agent_path();
        let mut last_failure = String::new();
        // A free port can be taken by someone else between our probe and rotel's bind: retry.
        for _ in 0..5 {
            let (grpc_port, http_port) = (super::free_addr().port(), super::free_addr().port());
            let dir = tempfile::tempdir().unwrap();
            let mut cmd = Command::new(&agent);
            cmd.args(["--log-format", "json", "start"])
                .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
                .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
                .args(["--exporter", "otlp", "--otlp-exporter-protocol", "grpc"])
                .args(["--otlp-exporter-endpoint", &receiver.grpc_endpoint()])
                .arg("--pid-file")
                .arg(dir.path().join("rotel-agent.pid"))
                .arg("--log-file")
                .arg(dir.path().join("rotel-agent.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // Every option also reads a ROTEL_* variable: none from this environment may leak in.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("ROTEL_") {
                    cmd.env_remove(key);
                }
            }
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {} (run .ci/install-peers): {e}", agent.display()));
            let output = Arc::new(Mutex::new(String::new()));
            for pipe in [
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                Box::new(child.stderr.take().unwrap()),
            ] {
                let sink = output.clone();
                std::thread::spawn(move || drain(pipe, &sink));
            }
            let started = Instant::now();
            let why = loop {
                if output.lock().unwrap().contains(READY_MSG) {
                    eprintln!("collector grpc={grpc_port} ready in {:?}", started.elapsed());
                    return Collector {
                        receiver,
                        grpc_port,
                        _dir: dir,
                        child,
                        output,
                    };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    break format!("it exited before it was ready ({status})");
                }
                if started.elapsed() > START_TIMEOUT {
                    break format!("no \"{READY_MSG}\" line within {START_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            let text = format!(
                "rotel-agent did not start: {why}\n--- output ---\n{}",
                output.lock().unwrap()
            );
            if !text.contains("Address already in use") {
                panic!("{text}");
            }
            last_failure = text;
        }
        panic!("rotel-agent could not bind free ports five times:\n{last_failure}");
    }

    /// `http://127.0.0.1:PORT`, the collector's OTLP/gRPC receiver.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// What rotel wrote (its JSON log lines), for failure messages.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(mut pipe: impl Read, sink: &Mutex<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Where `rotel-agent` is: `$PORTCULLIS_ROTEL_AGENT`, else inside the venv's site-packages
/// (`tests/peers/collector/.venv/lib/python3.*/site-packages/rotel/rotel-agent`: the wheel ships
/// it there, not in `bin/`).
pub fn agent_path() -> PathBuf {
    if let Some(path) = std::env::var_os(AGENT_ENV) {
        return PathBuf::from(path);
    }
    let lib = Path::new(VENV).join("lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("site-packages/rotel/rotel-agent"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "rotel-agent is not installed under {}: run .ci/install-peers (a venv with \
             tests/peers/collector/requirements.txt), or set {AGENT_ENV}",
            lib.display()
        )
    })
}
