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

/// The problem lines of a `check-config` report: `<key path>: <message>`, warnings marked; what
/// follows the indented list (the policy's own report) is not one of them.
fn problem_lines(report: &str) -> Vec<&str> {
    report
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.trim_start().starts_with("fix:"))
        .map(str::trim)
        .collect()
}

#[test]
fn check_config_reports_mistakes_of_every_kind_in_one_run_with_did_you_means_and_fixes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.toml");
    std::fs::write(
        &file,
        r#"
[server]
https = "127.0.0.1:8443"
trusted_proxies = ["10.0.0.0/8", "10.0.0.0/33"]
[server.tls]
crt = "tls/cert.pem"
key = "tls/key.pem"
[server.limits]
max_headers = "many"

[sessions]
idle_timeout = "0s"

[[identity_providers]]
name = "corp"
preset = "keycloack"
issuer = "https://sso.example.com/realms/corp"
audiences = ["portcullis"]
[identity_providers.browser]
client_id = "portcullis"
client_secret_env = "PORTCULLIS_TEST_NEVER_SET_7c1e"

[[routes]]
name = "app"
hosts = ["app.example.com"]
acess = "public"
[routes.upstream]
url = "http://127.0.0.1:8081"

[[routes]]
name = "app"
hosts = ["other.example.com"]
identity_providers = ["corp"]
timeout = 30
[routes.upstream]
url = "ftp://files"
"#,
    )
    .unwrap();
    let output = Command::new(support::binary())
        .args(["check-config", "--config"])
        .arg(&file)
        .env_remove("PORTCULLIS_TEST_NEVER_SET_7c1e")
        .output()
        .unwrap();
    let text = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{text}");
    // Each mistake once, at its key path, with no echo of the defaults that stood in for them.
    let found: Vec<&str> = problem_lines(&text)
        .into_iter()
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    let expected = [
        "server.trusted_proxies[1]",
        "server.tls.cert",
        "server.tls.crt",
        "server.limits.max_headers",
        "sessions.idle_timeout",
        "identity_providers[0].preset",
        "identity_providers[0].browser.client_secret_env",
        "routes[0].acess",
        "routes[1].name",
        "routes[1].timeout",
        "routes[1].upstream.url",
        "warning",
    ];
    let mut sorted_found = found.clone();
    sorted_found.sort_unstable();
    let mut sorted_expected = expected.to_vec();
    sorted_expected.sort_unstable();
    assert_eq!(sorted_found, sorted_expected, "{text}");
    assert!(text.contains("11 problem(s), 1 warning(s)"), "{text}");
    for (key, says) in [
        ("server.trusted_proxies[1]", "the prefix /33 is too long"),
        ("server.tls.cert", "is missing"),
        ("server.tls.crt", "unknown key"),
        ("server.limits.max_headers", "expected a nonzero usize"),
        ("sessions.idle_timeout", "must be positive"),
        ("identity_providers[0].preset", "unknown variant `keycloack`"),
        (
            "identity_providers[0].browser.client_secret_env",
            "PORTCULLIS_TEST_NEVER_SET_7c1e",
        ),
        ("routes[0].acess", "unknown key"),
        ("routes[1].name", "used twice"),
        ("routes[1].timeout", "expected a duration"),
        ("routes[1].upstream.url", "ftp://files"),
    ] {
        let line = problem_lines(&text)
            .into_iter()
            .find(|l| l.starts_with(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"));
        assert!(line.contains(says), "{key} should say {says:?}: {line}");
        assert!(line.contains("(line "), "{key} has no line: {line}");
    }
    for fix in [
        "fix: did you mean `access`?",
        "fix: did you mean `keycloak`?",
        "fix: did you mean `cert`?",
        "fix: write a network as address/prefix",
        "fix: write a whole number of at least 1",
        "fix: use a duration longer than zero",
        "fix: write a duration in quotes",
        "fix: add cert = ",
        "fix: export PORTCULLIS_TEST_NEVER_SET_7c1e",
    ] {
        assert!(text.contains(fix), "missing {fix:?} in:\n{text}");
    }
    assert_eq!(
        text.matches("\n      fix: ").count(),
        12,
        "every problem and warning has a fix:\n{text}"
    );
    assert!(
        text.contains(
            "warning: routes[0].identity_providers: the route is protected but names no identity provider"
        ),
        "{text}"
    );
}

#[test]
fn a_config_with_only_warnings_passes_check_config_and_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policies");
    std::fs::create_dir(&policy).unwrap();
    std::fs::copy("policies/model.conf", policy.join("model.conf")).unwrap();
    std::fs::write(
        policy.join("policy.csv"),
        "p, user:okta/nobody, app, **, GET, allow\n",
    )
    .unwrap();
    let file = dir.path().join("warn.toml");
    std::fs::write(
        &file,
        "[[routes]]\nname = \"app\"\nhosts = [\"app.example.com\"]\n[routes.upstream]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let output = Command::new(support::binary())
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("1 warning(s)"), "{stderr}");
    assert!(
        stderr.contains("warning: routes[0].identity_providers:") && stderr.contains("refused with 401"),
        "{stderr}"
    );
    // The policy's own: a line no configured provider can match, and no decision tables.
    assert!(
        stderr.contains("warning: policy.csv:1: the identity provider `okta` is not configured, so this line matches no caller (no [[identity_providers]] is configured)"),
        "{stderr}"
    );
    assert!(stderr.contains("has no decision tables"), "{stderr}");
    assert!(stdout.contains("ok (1 routes, 3 warning(s))"), "{stdout}");
}

#[test]
fn secrets_the_config_names_must_exist_unless_checked_offline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.toml");
    std::fs::write(
        &file,
        r#"
[[identity_providers]]
name = "okta"
issuer = "https://example.okta.com"
audiences = ["api"]
[identity_providers.browser]
client_id = "portcullis"
client_secret_file = "secrets/okta"

[[routes]]
name = "app"
hosts = ["app.example.com"]
access = "authenticated"
identity_providers = ["okta"]
[routes.upstream]
url = "http://127.0.0.1:9"
[routes.upstream_credentials]
issuer = "https://example.okta.com"
client_id = "broker"
client_secret_env = "PORTCULLIS_TEST_NEVER_SET_52ab"
"#,
    )
    .unwrap();
    let check = |offline: bool| {
        let mut cmd = Command::new(support::binary());
        cmd.args(["check-config", "--config"])
            .arg(&file)
            .env_remove("PORTCULLIS_TEST_NEVER_SET_52ab");
        if offline {
            cmd.arg("--offline");
        }
        let output = cmd.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, text) = check(false);
    assert!(!ok, "{text}");
    assert!(text.contains("2 problem(s)"), "{text}");
    // The file is looked for beside the config, and the message names where.
    let expected = dir.path().join("secrets/okta");
    assert!(
        text.contains(&format!(
            "identity_providers[0].browser.client_secret_file: cannot read {}",
            expected.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "routes[0].upstream_credentials.client_secret_env: names PORTCULLIS_TEST_NEVER_SET_52ab, which is not set"
        ),
        "{text}"
    );
    let (ok, text) = check(true);
    assert!(ok, "{text}");
}

#[test]
fn the_check_config_example_in_the_configuration_docs_is_what_check_config_prints() {
    let docs = std::fs::read_to_string("docs/configuration.md").unwrap();
    let section = &docs[docs.find("## Checking a file").unwrap()..];
    let block = |fence: &str| {
        let start = section.find(fence).unwrap() + fence.len();
        section[start..start + section[start..].find("```").unwrap()].to_string()
    };
    let (config, printed) = (block("```toml\n"), block("```text\n"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("portcullis.toml"), config).unwrap();
    let output = Command::new(support::binary())
        .args(["check-config", "--config", "portcullis.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(String::from_utf8(output.stderr).unwrap(), printed);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET; the status code, or 0 when nothing answers.
fn http_get(addr: &str, host: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut answer).is_err() {
        return 0;
    }
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn relative_paths_are_found_beside_the_config_file_whatever_the_working_directory() {
    let etc = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let policy = etc.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::copy("policies/model.conf", policy.join("model.conf")).unwrap();
    std::fs::write(
        policy.join("policy.csv"),
        "p, user:okta/nobody, app, **, GET, allow\n",
    )
    .unwrap();
    let (http, admin) = (free_port(), free_port());
    let file = etc.path().join("portcullis.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nhttp = \"127.0.0.1:{http}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [audit]\npath = \"audit.jsonl\"\n[policy]\ndir = \"policy\"\n\
             [[routes]]\nname = \"open\"\nhosts = [\"open.test\"]\naccess = \"public\"\n\
             [routes.upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [[routes]]\nname = \"app\"\nhosts = [\"app.test\"]\n[routes.upstream]\nurl = \"http://127.0.0.1:9\"\n"
        ),
    )
    .unwrap();

    // check-config reads and tests the policy in etc/policy, not in the working directory.
    let output = Command::new(support::binary())
        .args(["check-config", "--config"])
        .arg(&file)
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // serve loads the same policy and writes its audit trail beside the config.
    let proxy = Killed(
        Command::new(support::binary())
            .args(["serve", "--config"])
            .arg(&file)
            .current_dir(elsewhere.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let admin = format!("127.0.0.1:{admin}");
    let ready = (0..400).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(25));
        http_get(&admin, "localhost", "/readyz") == 200
    });
    assert!(ready, "the proxy never became ready");
    // The upstream is closed: 502 shows the request went through the proxy's whole path.
    assert_eq!(http_get(&format!("127.0.0.1:{http}"), "open.test", "/"), 502);
    let audit = etc.path().join("audit.jsonl");
    let written = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(25));
        std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("\"open\""))
    });
    assert!(written, "no audit record in {}", audit.display());
    assert!(!elsewhere.path().join("audit.jsonl").exists());
    drop(proxy);
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

#[test]
fn a_policy_line_naming_a_provider_the_config_does_not_have_is_a_warning_with_a_did_you_mean() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(policy.join("tests")).unwrap();
    std::fs::copy("policies/model.conf", policy.join("model.conf")).unwrap();
    std::fs::write(
        policy.join("policy.csv"),
        "p, group:okta/sre, app, **, GET, allow\n\
         p, group:okat/sre, app, **, POST, allow\n\
         g, user:gitlab/42, role:viewer, *\n",
    )
    .unwrap();
    std::fs::write(
        policy.join("tests/app.toml"),
        "[hosts]\n\"app.test\" = { domain = \"app\" }\n\
         [[case]]\nname = \"an SRE reads\"\nprincipal = \"user:okta/alice\"\ngroups = [\"sre\"]\n\
         method = \"GET\"\nurl = \"http://app.test/x\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(
        &file,
        "[policy]\ndir = \"policy\"\n\
         [[identity_providers]]\nname = \"okta\"\nissuer = \"https://example.okta.com\"\n\
         audiences = [\"api://app\"]\njwks_uri = \"https://example.okta.com/keys\"\n\
         [[routes]]\nname = \"app\"\nhosts = [\"app.test\"]\nidentity_providers = [\"okta\"]\n\
         [routes.upstream]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let output = support::run(&["check-config", "--offline", "--config", support::arg(&file)]);
    let said = support::output_text(&output);
    // It loads (one policy may serve deployments with other providers), and says which lines
    // can match no caller.
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("warning: policy.csv:2: the identity provider `okat` is not configured, so this line matches no caller (did you mean `okta`?)"),
        "{said}"
    );
    assert!(
        said.contains("warning: policy.csv:3: the identity provider `gitlab` is not configured, so this line matches no caller (the configured ones: okta)"),
        "{said}"
    );
    assert!(!said.contains("policy.csv:1:"), "{said}");
    assert!(said.contains("2 warning(s)"), "{said}");
}
