//! Configuration as operators meet it: the shipped examples load, and `check-config` reports
//! every problem at once with its key path and a fix.
#![cfg(test)]

mod support;

use std::process::Command;

/// Runs `portcullis <command> --config FILE` on `text` written to a file; whether it succeeded,
/// and its stderr.
fn run_on(command: &str, text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, text).unwrap();
    let output = Command::new(support::binary())
        .args([command, "--config"])
        .arg(&file)
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8(output.stderr).unwrap())
}

#[test]
fn every_example_config_loads_and_validates() {
    let mut checked = 0;
    let top = std::fs::read_dir("examples").unwrap();
    let providers = std::fs::read_dir("examples/identity-providers").unwrap();
    let audit = std::fs::read_dir("examples/audit").unwrap();
    for entry in top.chain(providers).chain(audit) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(problems) = portcullis::app::load_config(&path) {
                panic!("{}: {problems:#?}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 9,
        "expected the quickstart, reference, identity-provider and audit examples"
    );
}

#[test]
fn the_benchmark_configs_load_and_validate() {
    for path in [
        "benches/load/portcullis.toml",
        "benches/load/bearer/portcullis.toml",
        "benches/load/audit-otlp-grpc.toml",
        "benches/load/audit-otlp-http.toml",
        "benches/load/tokens/portcullis.toml",
        "benches/load/tokens/portcullis-assertion.toml",
    ] {
        if let Err(problems) = portcullis::app::load_config(std::path::Path::new(path)) {
            panic!("{path}: {problems:#?}");
        }
    }
}

#[test]
fn check_config_reports_several_problems_at_once_each_with_its_key_path_and_exits_non_zero() {
    let (ok, text) = run_on(
        "check-config",
        r#"
[server]
http = "localhost"
https = "127.0.0.1:8443"
[server.limits]
max_header_bytes = 100

[[routes]]
name = "airflow"
hosts = ["airflow.example.com"]
path_prefix = "api"
[routes.upstream]
url = "http://airflow:8080/base"

[[routes]]
name = "airflow"
hosts = ["*bad"]
[routes.upstream]
url = "http://tekton:9097"
client_cert = "c.pem"
"#,
    );
    assert!(!ok);
    for path in [
        "server.http:",
        "server.tls:",
        "server.limits.max_header_bytes:",
        "routes[0].path_prefix:",
        "routes[0].upstream.url:",
        "routes[1].name:",
        "routes[1].hosts[0]:",
        "routes[1].upstream.client_cert:",
    ] {
        assert!(text.contains(path), "missing {path} in:\n{text}");
    }
    assert!(text.contains("fix:"), "{text}");
    assert!(text.contains("9 problem(s)"), "{text}");
}

#[test]
fn check_config_names_every_unknown_key() {
    let (ok, text) = run_on(
        "check-config",
        "[server]\nhttps_port = 1\n[[routes]]\nname = \"a\"\nupstream_url = \"x\"\n",
    );
    assert!(!ok);
    assert!(text.contains("server.https_port: unknown key"), "{text}");
    assert!(text.contains("routes[0].upstream_url: unknown key"), "{text}");
}

#[test]
fn serve_refuses_a_bad_config_without_starting() {
    let (ok, text) = run_on("serve", "[[routes]]\nname = \"x\"\n");
    assert!(!ok);
    assert!(text.contains("routes[0].hosts"));
}

#[test]
fn version_prints_the_crate_version_and_the_commit_it_was_built_from() {
    let output = Command::new(support::binary()).arg("--version").output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_string(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        );
    assert_eq!(
        printed.trim(),
        format!("portcullis {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}
