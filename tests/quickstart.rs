//! The README's first command, run as a newcomer would (with the test build of the binary).
#![cfg(test)]

mod support;

use std::process::Command;

#[test]
fn the_quickstart_forwards_the_public_route_and_refuses_the_protected_one() {
    let output = Command::new("examples/quickstart.sh")
        .arg("--check")
        .env("PORTCULLIS", support::binary())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("statuses: public=200 protected=401 unknown=404"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"path\": \"/public/hello\""),
        "the demo upstream echoed the forwarded path: {stderr}"
    );
    // The audit trail: one JSON line per request on the proxy's stdout.
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| e["portcullis.reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["public_route", "no_credentials", "route_not_found"],
        "{stdout}"
    );
}
