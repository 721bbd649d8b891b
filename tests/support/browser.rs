//! A real browser for story tests: Debian's chromium driven by playwright-core through
//! `tests/peers/browser/signin.mjs` (a sign-in journey) and `pages.mjs` (reading pages and
//! following their links), installed by `.ci/install-peers`. Each script's arguments and the
//! JSON line each step prints are described at its top.
use std::process::{Command, Stdio};

use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/browser/signin.mjs");
const PAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/browser/pages.mjs");
const MODULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/browser/node_modules/playwright-core"
);

/// Runs the sign-in script and returns its JSON lines, or panics with its error and stderr.
pub async fn browse(args: Vec<String>) -> Vec<Value> {
    run(SCRIPT, args).await
}

/// Runs `pages.mjs` (`--login NAME`, then `--open URL`, `--post URL` and `--click TEXT` steps)
/// and returns one JSON line per step, or panics with its error and stderr.
pub async fn pages(args: Vec<String>) -> Vec<Value> {
    run(PAGES, args).await
}

/// The link of `page` (a `pages.mjs` line) whose text is `text`: its absolute URL.
pub fn link<'a>(page: &'a Value, text: &str) -> Option<&'a str> {
    page["links"]
        .as_array()?
        .iter()
        .find(|l| l["text"] == text)
        .and_then(|l| l["href"].as_str())
}

/// A browser script under node, its pipes open; it stops when its stdin closes.
fn node(script: &str, args: &[String]) -> std::process::Child {
    assert!(
        std::path::Path::new(MODULES).is_dir() && std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium or playwright-core is missing: run .ci/install-peers"
    );
    Command::new("node")
        .arg(script)
        .args(args)
        .arg("--exit-with-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs")
}

async fn run(script: &'static str, args: Vec<String>) -> Vec<Value> {
    tokio::task::spawn_blocking(move || {
        let mut child = node(script, &args);
        // Held open for the run: the script stops when its stdin closes (so it never outlives
        // this test), and wait_with_output would close it. Both output pipes are drained
        // together, so a chatty stderr cannot block the browser.
        let stdin = child.stdin.take();
        let output = child.wait_with_output().unwrap();
        drop(stdin);
        let status = output.status;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert!(
            status.success(),
            "the browser run failed ({status}):\n{stdout}\n--- stderr ---\n{stderr}"
        );
        lines
    })
    .await
    .unwrap()
}

/// The first line of the step `name` (`landed`, `fetch`, `signed_out`, `after`).
pub fn step<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["step"] == name)
        .unwrap_or_else(|| panic!("no {name} step in {lines:#?}"))
}

/// Every line of the step `name`, in order.
pub fn steps<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["step"] == name).collect()
}

/// A cookie of the page's host, by name.
pub fn cookie<'a>(page: &'a Value, name: &str) -> Option<&'a Value> {
    page["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

/// A browser run read step by step as it happens, for a test that acts between steps (checks
/// every replica the moment sign-out is over) while the browser goes on.
pub struct LiveRun {
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
    child: Option<std::process::Child>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl LiveRun {
    pub fn start(args: Vec<String>) -> LiveRun {
        use std::io::{BufRead as _, Read as _};
        let mut child = node(SCRIPT, &args);
        let (send, lines) = tokio::sync::mpsc::unbounded_channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or_else(
                    |e| serde_json::json!({"step": "unparsed", "line": line, "error": e.to_string()}),
                );
                if send.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (sink, mut err) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        LiveRun {
            lines,
            seen: Vec::new(),
            child: Some(child),
            stderr,
        }
    }

    /// The next line of step `name` (earlier lines of other steps are kept for [`LiveRun::finish`]);
    /// panics on the script's error line or its end.
    pub async fn step(&mut self, name: &str) -> Value {
        loop {
            let Some(line) = self.lines.recv().await else {
                panic!(
                    "the browser ended before step {name}: {:#?}\n--- stderr ---\n{}",
                    self.seen,
                    self.stderr.lock().unwrap()
                );
            };
            self.seen.push(line.clone());
            assert!(
                line["step"] != "error" && line["step"] != "unparsed",
                "the browser run failed: {line:#}\n--- stderr ---\n{}",
                self.stderr.lock().unwrap()
            );
            if line["step"] == name {
                return line;
            }
        }
    }

    /// Lets a run started with `--wait-before-sign-out` go on to its sign-out (one line on its
    /// stdin).
    pub fn proceed(&mut self) {
        use std::io::Write as _;
        let stdin = self.child.as_mut().and_then(|c| c.stdin.as_mut());
        let stdin = stdin.expect("the browser run is going on");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the run to end successfully; every line it printed.
    pub async fn finish(mut self) -> Vec<Value> {
        let mut child = self.child.take().unwrap();
        let status = tokio::task::spawn_blocking(move || {
            // Closing stdin is fine now: the script has printed its last step or will shortly.
            let stdin = child.stdin.take();
            let status = child.wait().unwrap();
            drop(stdin);
            status
        })
        .await
        .unwrap();
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        assert!(
            status.success(),
            "the browser run failed ({status}): {:#?}\n--- stderr ---\n{}",
            self.seen,
            self.stderr.lock().unwrap()
        );
        std::mem::take(&mut self.seen)
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
