//! Configuration as operators meet it: the shipped examples load, and `check-config` reports
//! every problem at once with its key path and a fix.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::Command;

#[test]
fn every_example_config_loads_and_validates() {
    let mut checked = 0;
    let top = std::fs::read_dir("examples").unwrap();
    let providers = std::fs::read_dir("examples/identity-providers").unwrap();
    let audit = std::fs::read_dir("examples/audit").unwrap();
    let quickstart = std::fs::read_dir("examples/quickstart").unwrap();
    for entry in top.chain(providers).chain(audit).chain(quickstart) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(problems) = portcullis::app::load_config(&path) {
                panic!("{}: {problems:#?}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "expected the minimal, quickstart, reference, identity-provider and audit examples"
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
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
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
    )
    .unwrap();
    let output = Command::new(support::binary())
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8(output.stderr).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(
        &file,
        "[server]\nhttps_port = 1\n[[routes]]\nname = \"a\"\nupstream_url = \"x\"\n",
    )
    .unwrap();
    let output = Command::new(support::binary())
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("server.https_port: unknown key"), "{text}");
    assert!(text.contains("routes[0].upstream_url: unknown key"), "{text}");
}

#[test]
fn serve_refuses_a_bad_config_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[[routes]]\nname = \"x\"\n").unwrap();
    let output = Command::new(support::binary())
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("routes[0].hosts"));
}

#[test]
fn version_prints_the_crate_version() {
    let output = Command::new(support::binary()).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
}
