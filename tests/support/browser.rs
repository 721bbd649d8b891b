//! A real browser for story tests: Debian's chromium driven by playwright-core through
//! `tests/peers/browser/signin.mjs` (installed by `.ci/install-peers`). The script's arguments
//! and the JSON line each step prints are described at its top.
use std::process::{Command, Stdio};

use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/browser/signin.mjs");
const MODULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/browser/node_modules/playwright-core"
);

/// Runs the browser script and returns its JSON lines, or panics with its error and stderr.
pub async fn browse(args: Vec<String>) -> Vec<Value> {
    assert!(
        std::path::Path::new(MODULES).is_dir() && std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium or playwright-core is missing: run .ci/install-peers"
    );
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("node")
            .arg(SCRIPT)
            .args(&args)
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node runs");
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
