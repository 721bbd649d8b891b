//! A real OpenTelemetry collector for story tests: `rotel-agent` from PyPI `rotel` (pinned in
//! `tests/peers/collector/requirements.txt`, installed by `.ci/install-peers` into
//! `tests/peers/collector/.venv`), on 127.0.0.1 and two free ports (OTLP/gRPC and OTLP/HTTP).
//!
//! rotel has no file exporter: it runs with `--exporter blackhole --debug-log traces
//! --debug-log-verbosity detailed`, which prints every span it receives to stdout in the Go
//! collector's "debug exporter" text format. A reader thread parses that text into
//! [`ReceivedSpan`]s. Limits of that format, all of which this parser lives with:
//! - string values are printed raw: a value with a newline continues on the next line (the parser
//!   joins such lines back), and a value containing a newline followed by `     -> ` is misread;
//! - a string inside an array or map that itself contains `), ` or `)` is split at the first
//!   place where the rest still parses;
//! - span flags, dropped counts and schema URLs are not printed at all.
//!
//! A block (one export request) is one `write()`; the span still being parsed is shown by
//! [`Collector::spans`] only once stdout has been quiet for [`SETTLE`], so a snapshot never shows a
//! span whose attributes are still arriving (unless rotel stalls mid-write for that long).
//!
//! [`TlsFront`] puts Debian's nginx in front of the collector: TLS (HTTP/2 and HTTP/1.1) on a free
//! loopback port, gRPC passed through to rotel's gRPC port, `/v1/traces` and
//! `/traces/otlp/v0.9` to its HTTP port, and a JSON access log with the `lightstep-access-token`
//! request header of each request.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

const VENV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/collector/.venv");
/// Overrides where `rotel-agent` is looked for.
pub const AGENT_ENV: &str = "PORTCULLIS_ROTEL_AGENT";
/// Overrides the nginx binary (default `/usr/sbin/nginx`, else `nginx` on PATH).
pub const NGINX_ENV: &str = "PORTCULLIS_NGINX";
// Generous: on two loaded cores several peers start at once. rotel itself starts in ~10 ms.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long stdout must be quiet before the last span of a block counts as complete.
pub const SETTLE: Duration = Duration::from_millis(100);
/// rotel prints this log line after both listeners are bound.
const READY_MSG: &str = "Starting Rotel.";

// ---------------------------------------------------------------------------------------------
// What was received
// ---------------------------------------------------------------------------------------------

/// One span as the collector printed it. Attribute values are JSON: `Str` → string, `Int` →
/// integer number, `Double` → float number (`Double(2)` is `2.0`, so `json!(2.0)` matches and
/// `json!(2)` does not; NaN and ±inf become the strings `"NaN"`, `"inf"`, `"-inf"`), `Bool` → bool,
/// `Slice` → array, `Map` → object, `Bytes` → `{"bytes": [1, 2, 3]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub name: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// None for a root span.
    pub parent_span_id: Option<String>,
    /// Without the `SPAN_KIND_` prefix: `SERVER`, `CLIENT`, `INTERNAL`, `PRODUCER`, `CONSUMER`,
    /// `UNSPECIFIED`.
    pub kind: String,
    /// Without the `STATUS_CODE_` prefix: `UNSET`, `OK`, `ERROR` (`UNSET` when none was sent).
    pub status: String,
    pub status_message: String,
    /// Empty when none was sent.
    pub trace_state: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: BTreeMap<String, Value>,
    /// The attributes of the resource the span came with.
    pub resource: BTreeMap<String, Value>,
    pub scope_name: String,
    pub scope_version: String,
    pub events: Vec<ReceivedEvent>,
    pub links: Vec<ReceivedLink>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReceivedEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReceivedLink {
    pub trace_id: String,
    pub span_id: String,
    pub trace_state: String,
    pub attributes: BTreeMap<String, Value>,
}

impl ReceivedSpan {
    fn new(resource: &BTreeMap<String, Value>, scope: &(String, String)) -> ReceivedSpan {
        ReceivedSpan {
            name: String::new(),
            trace_id: String::new(),
            span_id: String::new(),
            parent_span_id: None,
            kind: String::new(),
            status: "UNSET".to_string(),
            status_message: String::new(),
            trace_state: String::new(),
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            attributes: BTreeMap::new(),
            resource: resource.clone(),
            scope_name: scope.0.clone(),
            scope_version: scope.1.clone(),
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// A string attribute, or None when absent or not a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    pub fn resource_attr(&self, key: &str) -> Option<&Value> {
        self.resource.get(key)
    }
}

// ---------------------------------------------------------------------------------------------
// The collector process
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct State {
    done: Vec<ReceivedSpan>,
    /// The span still being parsed (the last one seen), if any.
    current: Option<ReceivedSpan>,
    last_bytes: Option<Instant>,
    /// rotel's own log lines (JSON, one per line), across restarts.
    logs: Vec<String>,
    /// Lines the parser did not understand.
    unparsed: Vec<String>,
    stderr: String,
    /// Bumped by each process's reader when it sees [`READY_MSG`].
    ready_count: usize,
}

impl State {
    fn settled_current(&self) -> Option<&ReceivedSpan> {
        self.current
            .as_ref()
            .filter(|_| self.last_bytes.is_none_or(|t| t.elapsed() >= SETTLE))
    }

    fn count(&self) -> usize {
        self.done.len() + usize::from(self.settled_current().is_some())
    }

    fn snapshot(&self) -> Vec<ReceivedSpan> {
        let mut spans = self.done.clone();
        spans.extend(self.settled_current().cloned());
        spans
    }
}

/// A running `rotel-agent`. Dropping it kills the process (SIGKILL). Spans received survive
/// [`Collector::stop`], [`Collector::kill`] and [`Collector::restart`].
pub struct Collector {
    grpc_port: u16,
    http_port: u16,
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    state: Arc<Mutex<State>>,
    readers: Vec<JoinHandle<()>>,
}

impl Collector {
    pub async fn start() -> Collector {
        Self::start_with(&[]).await
    }

    /// Starts with extra arguments for `rotel-agent start`, e.g.
    /// `["--otlp-grpc-max-recv-msg-size-mib", "16"]`.
    pub async fn start_with(extra_args: &[&str]) -> Collector {
        let agent = agent_path();
        let mut last_failure = String::new();
        // A free port can be taken by someone else between our probe and rotel's bind: retry.
        for _ in 0..5 {
            let mut collector = Collector {
                grpc_port: free_port(),
                http_port: free_port(),
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                dir: tempfile::tempdir().unwrap(),
                child: None,
                state: Arc::new(Mutex::new(State::default())),
                readers: Vec::new(),
            };
            match collector.spawn(&agent).await {
                Ok(()) => return collector,
                Err(Failure::AddressInUse(text)) => last_failure = text,
                Err(Failure::Other(text)) => panic!("{text}"),
            }
        }
        panic!("rotel-agent could not bind free ports five times:\n{last_failure}");
    }

    /// `http://127.0.0.1:PORT`, the OTLP/gRPC receiver.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:PORT/v1/traces`, the OTLP/HTTP receiver (protobuf or JSON).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.http_port)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.grpc_port))
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Every span received so far (all runs), in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state.lock().unwrap().snapshot()
    }

    /// Spans received so far with this name.
    pub fn spans_named(&self, name: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|s| s.name == name).collect()
    }

    /// Waits until at least `n` spans have arrived, or panics after `timeout` with what did.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.count();
            if count >= n {
                return self.spans();
            }
            if Instant::now() >= deadline {
                panic!(
                    "the collector received {count} spans within {timeout:?}, wanted {n}\n{}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many spans [`Collector::spans`] would return now (without copying them).
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().count()
    }

    /// Waits until `done(spans)` holds; Err with the last snapshot after `timeout`. Copies every
    /// span on each poll: for thousands of spans use [`Collector::wait_for`].
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= deadline {
                return Err(spans);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Forgets the spans received so far.
    pub fn clear(&self) {
        let mut state = self.state.lock().unwrap();
        state.done.clear();
        state.current = None;
    }

    /// rotel's own log lines so far (JSON objects: `msg`, `level`, `error`, …), e.g. a
    /// "Failed to decode OTLP HTTP/JSON request.".
    pub fn logs(&self) -> Vec<String> {
        self.state.lock().unwrap().logs.clone()
    }

    /// Waits until a log line containing `needle` has arrived; returns it, or panics after
    /// `timeout` with the log so far.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no collector log line with {needle:?} within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lines of the debug output the parser did not understand (should stay empty).
    pub fn unparsed(&self) -> Vec<String> {
        self.state.lock().unwrap().unparsed.clone()
    }

    pub fn stderr(&self) -> String {
        self.state.lock().unwrap().stderr.clone()
    }

    /// Graceful stop (SIGTERM, then SIGKILL after 15 s): rotel prints everything it has
    /// acknowledged before it exits. Received spans are kept.
    pub async fn stop(&mut self) {
        if let Some(child) = &self.child {
            signal(child.id(), "TERM");
        }
        self.reap(STOP_TIMEOUT).await;
    }

    /// Abrupt stop (SIGKILL), as a crash. Spans acknowledged in the last few milliseconds may
    /// never have been printed, so they are missing here although the sender saw success.
    pub async fn kill(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
        }
        self.reap(STOP_TIMEOUT).await;
    }

    /// Stops (gracefully) if running and starts again on the same ports.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        let agent = agent_path();
        // Our own previous process held the ports; a stranger may take one while it is free.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn(&agent).await {
                Ok(()) => return,
                Err(Failure::AddressInUse(text)) if Instant::now() < deadline => {
                    eprintln!("collector restart: port busy, retrying\n{text}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(Failure::AddressInUse(text) | Failure::Other(text)) => panic!("{text}"),
            }
        }
    }

    fn command(&self, agent: &Path) -> Command {
        let mut cmd = Command::new(agent);
        cmd.args(["--log-format", "json", "start"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{}", self.grpc_port)])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--exporter", "blackhole"])
            .args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .arg("--pid-file")
            .arg(self.dir.path().join("rotel-agent.pid"))
            .arg("--log-file")
            .arg(self.dir.path().join("rotel-agent.log"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Every option also reads a ROTEL_* variable: none from this environment may leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ROTEL_") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    async fn spawn(&mut self, agent: &Path) -> Result<(), Failure> {
        let mut child = self
            .command(agent)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} (run .ci/install-peers): {e}", agent.display()));
        let ready_before = self.state.lock().unwrap().ready_count;
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let state = self.state.clone();
        self.readers
            .push(std::thread::spawn(move || read_stdout(out, &state)));
        let state = self.state.clone();
        self.readers.push(std::thread::spawn(move || {
            let mut err = err;
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                state
                    .lock()
                    .unwrap()
                    .stderr
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }));
        self.child = Some(child);

        let started = Instant::now();
        let why = loop {
            if self.state.lock().unwrap().ready_count > ready_before {
                // The line comes after both binds; check anyway, cheaply.
                if port_open(self.grpc_port) && port_open(self.http_port) {
                    eprintln!(
                        "collector grpc={} http={} ready in {:?}",
                        self.grpc_port,
                        self.http_port,
                        started.elapsed()
                    );
                    return Ok(());
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                break format!("it exited before it was ready ({status})");
            }
            if started.elapsed() > START_TIMEOUT {
                break format!("no \"{READY_MSG}\" line within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.kill().await;
        let stderr = self.stderr();
        let text = format!(
            "rotel-agent did not start: {why}\n--- stderr ---\n{stderr}\n--- log ---\n{}",
            self.logs().join("\n")
        );
        if stderr.contains("Address already in use") {
            Err(Failure::AddressInUse(text))
        } else {
            Err(Failure::Other(text))
        }
    }

    /// Waits for the process to exit (SIGKILL after `timeout`) and for its readers to finish.
    async fn reap(&mut self, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                eprintln!("collector: no exit within {timeout:?}, killing it");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for reader in std::mem::take(&mut self.readers) {
            while !reader.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = reader.join();
        }
    }

    fn diagnostics(&self) -> String {
        let state = self.state.lock().unwrap();
        let names: Vec<&str> = state.done.iter().map(|s| s.name.as_str()).take(50).collect();
        format!(
            "--- names (first 50) ---\n{names:?}\n--- rotel log ---\n{}\n--- unparsed ---\n{}\n--- stderr ---\n{}",
            state.logs.join("\n"),
            state.unparsed.join("\n"),
            state.stderr
        )
    }

    /// POSTs an OTLP/JSON `ExportTraceServiceRequest` to the HTTP receiver; returns the status
    /// and the body. Handy for checking the collector itself.
    pub async fn post_otlp_json(&self, request: &Value) -> (u16, String) {
        use http_body_util::{BodyExt, Full};
        let stream = tokio::net::TcpStream::connect(self.http_addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("/v1/traces")
            .header("host", format!("127.0.0.1:{}", self.http_port))
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(request.to_string())))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

enum Failure {
    AddressInUse(String),
    Other(String),
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2)).is_ok()
}

/// `kill -SIG pid` through the shell's builtin (std can only SIGKILL).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -{sig} {pid}")])
        .stdin(Stdio::null())
        .status();
}

fn read_stdout(mut out: impl Read, state: &Mutex<State>) {
    let mut parser = Parser::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        partial.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = partial[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&partial[start..start + pos]).into_owned();
            parser.line(&line);
            start += pos + 1;
        }
        partial.drain(..start);
        let mut state = state.lock().unwrap();
        state.last_bytes = Some(Instant::now());
        parser.publish(&mut state);
    }
    if !partial.is_empty() {
        parser.line(&String::from_utf8_lossy(&partial));
    }
    parser.finish();
    let mut state = state.lock().unwrap();
    state.last_bytes = None;
    parser.publish(&mut state);
}

// ---------------------------------------------------------------------------------------------
// The debug exporter's text format
// ---------------------------------------------------------------------------------------------
//
// One block per export request, written with one write():
//
//   ResourceSpans #0
//   Resource SchemaURL:
//   Resource attributes:                  (absent when the resource has none)
//        -> service.name: Str(portcullis)
//   ScopeSpans #0
//   ScopeSpans SchemaURL:
//   InstrumentationScope NAME VERSION     (absent when no scope was sent)
//   Span #0
//       Trace ID       : 32 hex
//       Parent ID      : 16 hex, or empty
//       ID             : 16 hex
//       Name           : access
//       Kind           : SPAN_KIND_SERVER
//       TraceState     : a=b              (only when non-empty)
//   Start time: 1796150852567359403
//   End time: 1796150852567417362
//       Status code    : STATUS_CODE_ERROR  (these two absent when no status was sent)
//       Status message : boom
//   Attributes:                           (absent when none)
//        -> http.response.status_code: Int(200)
//   Events:
//   SpanEvent #0
//        -> Name: evt
//        -> Timestamp: 1796150863907408147
//        -> DroppedAttributesCount: 0
//        -> Attributes::
//             -> e: Str(v)
//   Links:
//   SpanLink #0
//        -> Trace ID: 32 hex
//        -> ID: 16 hex
//        -> TraceState:
//        -> DroppedAttributesCount: 0
//        -> Attributes::
//             -> l: Int(1)
//
// Values: Str(raw text), Int(42), Double(3.25), Bool(true), Slice(Str(a), Int(1)),
// Map(k:Int(1), j:Str(s)), Bytes([1, 2, 3]). With --log-format json, rotel's own log lines are
// JSON objects starting with {"v":0, on the same stdout.

#[derive(Clone, Copy, PartialEq)]
enum Section {
    None,
    Resource,
    Span,
    Event,
    Link,
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Resource,
    Span,
    Event,
    Link,
}

/// The last free-text field seen, which a line that is not part of the format continues.
enum Open {
    None,
    Name,
    StatusMessage,
    Attr {
        target: Target,
        key: String,
        raw: String,
    },
}

struct Parser {
    resource: BTreeMap<String, Value>,
    scope: (String, String),
    current: Option<ReceivedSpan>,
    section: Section,
    open: Open,
    done: Vec<ReceivedSpan>,
    logs: Vec<String>,
    unparsed: Vec<String>,
    ready: usize,
}

impl Default for Parser {
    fn default() -> Parser {
        Parser {
            resource: BTreeMap::new(),
            scope: (String::new(), String::new()),
            current: None,
            section: Section::None,
            open: Open::None,
            done: Vec::new(),
            logs: Vec::new(),
            unparsed: Vec::new(),
            ready: 0,
        }
    }
}

const TAGS: [&str; 7] = ["Str(", "Int(", "Double(", "Bool(", "Slice(", "Map(", "Bytes("];

impl Parser {
    /// Moves what is complete into `state`, and shows the span in progress as `current`.
    fn publish(&mut self, state: &mut State) {
        state.done.append(&mut self.done);
        state.logs.append(&mut self.logs);
        state.unparsed.append(&mut self.unparsed);
        state.ready_count += std::mem::take(&mut self.ready);
        state.current = self.current.clone().map(|mut span| {
            if let Open::Attr { target, key, raw } = &self.open {
                insert_attr(&mut span, &mut self.resource.clone(), *target, key, raw);
            }
            span
        });
    }

    fn finish(&mut self) {
        self.close_open();
        if let Some(span) = self.current.take() {
            self.done.push(span);
        }
    }

    fn line(&mut self, line: &str) {
        if line.starts_with("{\"v\":") {
            if line.contains(READY_MSG) {
                self.ready += 1;
            }
            self.logs.push(line.to_string());
            return;
        }
        if !is_structural(line) {
            match &mut self.open {
                Open::Attr { raw, .. } => {
                    raw.push('\n');
                    raw.push_str(line);
                }
                Open::Name => {
                    if let Some(span) = &mut self.current {
                        span.name.push('\n');
                        span.name.push_str(line);
                    }
                }
                Open::StatusMessage => {
                    if let Some(span) = &mut self.current {
                        span.status_message.push('\n');
                        span.status_message.push_str(line);
                    }
                }
                Open::None => {
                    if !line.trim().is_empty() {
                        self.unparsed.push(line.to_string());
                    }
                }
            }
            return;
        }
        self.close_open();

        if line.starts_with("ResourceSpans #") {
            self.end_span();
            self.resource.clear();
            self.scope = (String::new(), String::new());
            self.section = Section::Resource;
        } else if line.starts_with("Resource SchemaURL:") || line.starts_with("ScopeSpans SchemaURL:") {
        } else if line.starts_with("Resource attributes:") {
            self.section = Section::Resource;
        } else if line.starts_with("ScopeSpans #") {
            self.end_span();
            self.scope = (String::new(), String::new());
            self.section = Section::None;
        } else if let Some(rest) = line.strip_prefix("InstrumentationScope ") {
            self.scope = match rest.rsplit_once(' ') {
                Some((name, version)) => (name.to_string(), version.to_string()),
                None => (rest.to_string(), String::new()),
            };
        } else if line.starts_with("Span #") {
            self.end_span();
            self.current = Some(ReceivedSpan::new(&self.resource, &self.scope));
            self.section = Section::Span;
        } else if line.starts_with("Attributes:") {
            self.section = Section::Span;
        } else if line.starts_with("Events:") || line.starts_with("Links:") {
        } else if line.starts_with("SpanEvent #") {
            if let Some(span) = &mut self.current {
                span.events.push(ReceivedEvent::default());
            }
            self.section = Section::Event;
        } else if line.starts_with("SpanLink #") {
            if let Some(span) = &mut self.current {
                span.links.push(ReceivedLink::default());
            }
            self.section = Section::Link;
        } else if let Some(rest) = line.strip_prefix("          -> ") {
            let target = match self.section {
                Section::Link => Target::Link,
                _ => Target::Event,
            };
            self.open_attr(target, rest);
        } else if let Some(rest) = line.strip_prefix("     -> ") {
            match self.section {
                Section::Resource => self.open_attr(Target::Resource, rest),
                Section::Span => self.open_attr(Target::Span, rest),
                Section::Event => self.event_field(rest),
                Section::Link => self.link_field(rest),
                Section::None => self.unparsed.push(line.to_string()),
            }
        } else if let Some(span) = &mut self.current {
            let (key, value) = line.split_once(':').unwrap();
            let value = value.strip_prefix(' ').unwrap_or(value);
            match key.trim() {
                "Trace ID" => span.trace_id = value.to_string(),
                "Parent ID" => {
                    span.parent_span_id = (!value.is_empty()).then(|| value.to_string());
                }
                "ID" => span.span_id = value.to_string(),
                "Name" => {
                    span.name = value.to_string();
                    self.open = Open::Name;
                }
                "Kind" => span.kind = value.trim_start_matches("SPAN_KIND_").to_string(),
                "TraceState" => span.trace_state = value.to_string(),
                "Start time" => span.start_time_unix_nano = value.trim().parse().unwrap_or(0),
                "End time" => span.end_time_unix_nano = value.trim().parse().unwrap_or(0),
                "Status code" => {
                    span.status = value.trim_start_matches("STATUS_CODE_").to_string();
                }
                "Status message" => {
                    span.status_message = value.to_string();
                    self.open = Open::StatusMessage;
                }
                _ => self.unparsed.push(line.to_string()),
            }
        } else {
            self.unparsed.push(line.to_string());
        }
    }

    fn end_span(&mut self) {
        if let Some(span) = self.current.take() {
            self.done.push(span);
        }
    }

    fn open_attr(&mut self, target: Target, rest: &str) {
        let (key, raw) = split_key_value(rest, ": ");
        self.open = Open::Attr {
            target,
            key: key.to_string(),
            raw: raw.to_string(),
        };
    }

    fn close_open(&mut self) {
        if let Open::Attr { target, key, raw } = std::mem::replace(&mut self.open, Open::None) {
            match (target, &mut self.current) {
                (Target::Resource, _) => {
                    self.resource.insert(key, parse_value(&raw));
                }
                (_, Some(span)) => insert_attr(span, &mut self.resource, target, &key, &raw),
                (_, None) => self.unparsed.push(raw),
            }
        }
    }

    fn event_field(&mut self, rest: &str) {
        let Some(event) = self.current.as_mut().and_then(|s| s.events.last_mut()) else {
            return;
        };
        let (key, value) = rest.split_once(':').unwrap_or((rest, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match key {
            "Name" => event.name = value.to_string(),
            "Timestamp" => event.time_unix_nano = value.trim().parse().unwrap_or(0),
            "DroppedAttributesCount" | "Attributes" => {}
            _ => self.unparsed.push(rest.to_string()),
        }
    }

    fn link_field(&mut self, rest: &str) {
        let Some(link) = self.current.as_mut().and_then(|s| s.links.last_mut()) else {
            return;
        };
        let (key, value) = rest.split_once(':').unwrap_or((rest, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match key {
            "Trace ID" => link.trace_id = value.to_string(),
            "ID" => link.span_id = value.to_string(),
            "TraceState" => link.trace_state = value.to_string(),
            "DroppedAttributesCount" | "Attributes" => {}
            _ => self.unparsed.push(rest.to_string()),
        }
    }
}

fn insert_attr(
    span: &mut ReceivedSpan,
    resource: &mut BTreeMap<String, Value>,
    target: Target,
    key: &str,
    raw: &str,
) {
    let value = parse_value(raw);
    let key = key.to_string();
    match target {
        Target::Resource => {
            resource.insert(key, value);
        }
        Target::Span => {
            span.attributes.insert(key, value);
        }
        Target::Event => {
            if let Some(event) = span.events.last_mut() {
                event.attributes.insert(key, value);
            }
        }
        Target::Link => {
            if let Some(link) = span.links.last_mut() {
                link.attributes.insert(key, value);
            }
        }
    }
}

/// A line that belongs to the format (anything else continues the last free-text value).
fn is_structural(line: &str) -> bool {
    const PREFIXES: [&str; 26] = [
        "ResourceSpans #",
        "Resource SchemaURL:",
        "Resource attributes:",
        "ScopeSpans #",
        "ScopeSpans SchemaURL:",
        "InstrumentationScope ",
        "Span #",
        "    Trace ID       : ",
        "    Parent ID      : ",
        "    ID             : ",
        "    Name           : ",
        "    Kind           : ",
        "    TraceState     : ",
        "Start time: ",
        "End time: ",
        "    Status code    : ",
        "    Status message : ",
        "Attributes:",
        "Events:",
        "SpanEvent #",
        "Links:",
        "SpanLink #",
        "          -> ",
        "     -> ",
        "{\"v\":",
        "    TraceState     :",
    ];
    PREFIXES.iter().any(|p| line.starts_with(p))
        || line == "    Parent ID      :"
        || line == "    Status message :"
}

/// Splits `key<sep>Value` at the first `sep` that is followed by a value tag.
fn split_key_value<'a>(text: &'a str, sep: &str) -> (&'a str, &'a str) {
    let mut from = 0;
    while let Some(i) = text[from..].find(sep) {
        let at = from + i;
        let rest = &text[at + sep.len()..];
        if TAGS.iter().any(|t| rest.starts_with(t)) {
            return (&text[..at], rest);
        }
        from = at + sep.len();
    }
    text.split_once(sep).unwrap_or((text, ""))
}

/// Parses a whole debug-exporter text (e.g. a saved stdout) into spans.
pub fn parse_debug_output(text: &str) -> Vec<ReceivedSpan> {
    let mut parser = Parser::default();
    for line in text.lines() {
        parser.line(line);
    }
    parser.finish();
    parser.done
}

/// One printed value (the whole text after `key: `) as JSON; unknown shapes as the raw string.
pub fn parse_value(raw: &str) -> Value {
    parse_one(raw)
        .into_iter()
        .find(|(_, used)| *used == raw.len())
        .map(|(v, _)| v)
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

const MAX_CANDIDATES: usize = 64;

/// Every way `text` can start with one value: (value, bytes used), shortest first.
fn parse_one(text: &str) -> Vec<(Value, usize)> {
    let inner = |tag: &str| text.strip_prefix(tag);
    if let Some(body) = inner("Str(") {
        // The string ends at some `)`: every one is a candidate; the caller keeps those after
        // which the rest parses.
        return body
            .match_indices(')')
            .map(|(i, _)| (Value::String(body[..i].to_string()), 4 + i + 1))
            .take(MAX_CANDIDATES)
            .collect();
    }
    if let Some(body) = inner("Int(") {
        let Some(end) = body.find(')') else { return vec![] };
        return match body[..end].parse::<i64>() {
            Ok(n) => vec![(Value::from(n), 4 + end + 1)],
            Err(_) => vec![],
        };
    }
    if let Some(body) = inner("Double(") {
        let Some(end) = body.find(')') else { return vec![] };
        let text = &body[..end];
        let Ok(x) = text.parse::<f64>() else { return vec![] };
        let value = serde_json::Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_string()));
        return vec![(value, 7 + end + 1)];
    }
    if let Some(body) = inner("Bool(") {
        if body.starts_with("true)") {
            return vec![(Value::Bool(true), 10)];
        }
        if body.starts_with("false)") {
            return vec![(Value::Bool(false), 11)];
        }
        return vec![];
    }
    if let Some(body) = inner("Bytes([") {
        let Some(end) = body.find("])") else { return vec![] };
        let bytes: Vec<Value> = body[..end]
            .split(", ")
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<u8>().ok().map(Value::from))
            .collect();
        return vec![(serde_json::json!({ "bytes": bytes }), 7 + end + 2)];
    }
    if let Some(body) = inner("Slice(") {
        return parse_items(body, false)
            .into_iter()
            .map(|(items, used)| {
                let array = items.into_iter().map(|(_, v)| v).collect();
                (Value::Array(array), 6 + used)
            })
            .collect();
    }
    if let Some(body) = inner("Map(") {
        return parse_items(body, true)
            .into_iter()
            .map(|(items, used)| (Value::Object(items.into_iter().collect()), 4 + used))
            .collect();
    }
    vec![]
}

type Items = Vec<(String, Value)>;

/// Items up to and including the closing `)` of a Slice (`keyed` false) or a Map (`k:Value`).
fn parse_items(text: &str, keyed: bool) -> Vec<(Items, usize)> {
    if text.starts_with(')') {
        return vec![(Vec::new(), 1)];
    }
    let mut out = Vec::new();
    // The key of a map entry ends at a `:` followed by a value tag.
    let keys: Vec<(String, usize)> = if keyed {
        text.match_indices(':')
            .filter(|(i, _)| TAGS.iter().any(|t| text[i + 1..].starts_with(t)))
            .map(|(i, _)| (text[..i].to_string(), i + 1))
            .take(MAX_CANDIDATES)
            .collect()
    } else {
        vec![(String::new(), 0)]
    };
    for (key, skip) in keys {
        for (value, used) in parse_one(&text[skip..]) {
            let at = skip + used;
            let rest = &text[at..];
            if rest.starts_with(')') {
                out.push((vec![(key.clone(), value.clone())], at + 1));
            }
            if let Some(more) = rest.strip_prefix(", ") {
                for (mut items, n) in parse_items(more, keyed) {
                    items.insert(0, (key.clone(), value.clone()));
                    out.push((items, at + 2 + n));
                    if out.len() >= MAX_CANDIDATES {
                        return out;
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// TLS in front: nginx
// ---------------------------------------------------------------------------------------------

/// A CA and a server certificate for `localhost` and `127.0.0.1` (ECDSA P-256), made with rcgen.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestPki {
    pub fn localhost() -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "portcullis collector test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        // A string that parses as an IP address becomes an IP SAN.
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "localhost");
        leaf.use_authority_key_identifier_extension = true;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns the path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}

/// nginx terminating TLS on 127.0.0.1:PORT in front of a [`Collector`], one process
/// (`master_process off`, `daemon off`), everything under a temp dir. Dropping it kills nginx.
/// It keeps pointing at the collector's ports across [`Collector::restart`]; while the collector
/// is down, gRPC calls get UNAVAILABLE (HTTP 502) from nginx.
pub struct TlsFront {
    port: u16,
    dir: tempfile::TempDir,
    access_log: PathBuf,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

impl TlsFront {
    /// Starts nginx with this certificate chain and key (PEM) in front of `collector`.
    pub async fn start(collector: &Collector, cert_pem: &str, key_pem: &str) -> TlsFront {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            std::fs::write(dir.path().join("server.pem"), cert_pem).unwrap();
            std::fs::write(dir.path().join("server.key"), key_pem).unwrap();
            let access_log = dir.path().join("access.log");
            let conf = nginx_conf(dir.path(), port, collector.grpc_port, collector.http_port);
            std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
            let mut front = TlsFront {
                port,
                dir,
                access_log,
                child: None,
                stderr: Arc::new(Mutex::new(String::new())),
            };
            match front.spawn().await {
                Ok(()) => return front,
                Err(text) if text.contains("Address already in use") => last = text,
                Err(text) => panic!("{text}"),
            }
        }
        panic!("nginx could not bind a free port five times:\n{last}");
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let nginx = nginx_path();
        let dir = self.dir.path();
        let mut child = Command::new(&nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} (apt-get install nginx): {e}", nginx.display()));
        let mut err = child.stderr.take().unwrap();
        let sink = self.stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        self.child = Some(child);
        let started = Instant::now();
        let why = loop {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if let Some(status) = exited {
                break format!("it exited ({status})");
            }
            // nginx logs "bind() ... failed" and retries for 2.5 s before it gives up.
            if self.stderr().contains("[emerg]") {
                break "it reported an error".to_string();
            }
            if port_open(self.port) {
                eprintln!("tls front {} ready in {:?}", self.port, started.elapsed());
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                break format!("port {} not open within {START_TIMEOUT:?}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.kill();
        std::thread::sleep(Duration::from_millis(100));
        Err(format!(
            "nginx did not start: {why}\n--- stderr ---\n{}",
            self.stderr()
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `https://127.0.0.1:PORT`, for OTLP/gRPC (the certificate has an IP SAN for it).
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `https://localhost:PORT`. Note that localhost may resolve to ::1 first, where nothing
    /// listens: a client must fall back to 127.0.0.1.
    pub fn localhost_endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// `https://127.0.0.1:PORT/v1/traces`, OTLP/HTTP through the front
    /// (`/traces/otlp/v0.9` is passed to the same receiver).
    pub fn http_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/v1/traces", self.port)
    }

    /// One JSON object per finished request: `lightstep_access_token`, `method`, `uri`,
    /// `protocol` (`HTTP/2.0`), `status`, `content_type`, `grpc_status` (the `grpc-status`
    /// trailer, `""` for plain HTTP), `upstream_status`, `request_length`.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log ({e}): {l}")))
            .collect()
    }

    /// The `lightstep-access-token` header of each request, in order (`""` when absent).
    pub fn header_log(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| {
                r["lightstep_access_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// Waits until at least `n` requests are in the access log (nginx writes a line when a
    /// request finishes), or panics after `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the TLS front logged {} requests within {timeout:?}, wanted {n}: {requests:?}\n--- stderr ---\n{}",
                    requests.len(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What nginx wrote to its error log (stderr): TLS handshake failures, upstream errors.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.kill();
    }
}

fn nginx_path() -> PathBuf {
    if let Some(path) = std::env::var_os(NGINX_ENV) {
        return PathBuf::from(path);
    }
    let debian = Path::new("/usr/sbin/nginx");
    if debian.is_file() {
        debian.to_path_buf()
    } else {
        PathBuf::from("nginx")
    }
}

fn nginx_conf(dir: &Path, port: u16, grpc_port: u16, http_port: u16) -> String {
    let d = dir.display();
    // nginx 1.22 (Debian 12): `listen ... ssl http2` (the `http2 on` directive is 1.25.1+).
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format otlp escape=json '{{"lightstep_access_token":"$http_lightstep_access_token","method":"$request_method","uri":"$request_uri","protocol":"$server_protocol","status":"$status","content_type":"$content_type","grpc_status":"$sent_trailer_grpc_status","upstream_status":"$upstream_status","request_length":"$request_length"}}';
    access_log {d}/access.log otlp;
    # A long-lived exporter connection must not be closed after 1000 requests.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_max_body_size 64m;
    upstream rotel_grpc {{ server 127.0.0.1:{grpc_port}; }}
    upstream rotel_http {{ server 127.0.0.1:{http_port}; }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name localhost 127.0.0.1;
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            grpc_pass grpc://rotel_grpc;
        }}
        location = /v1/traces {{
            proxy_pass http://rotel_http;
        }}
        location = /traces/otlp/v0.9 {{
            proxy_pass http://rotel_http/v1/traces;
        }}
    }}
}}
"#
    )
}
