//! The README's "In front of Airflow" section, as written: its configuration loads, the proxy
//! decides as the text says, and the Airflow settings it gives agree with the proxy's. The same
//! route and assertion run in front of a real Airflow in tests/airflow.rs.
#![cfg(test)]

mod support;

use std::process::Command;

const README: &str = include_str!("../README.md");

/// The text of the README section under `heading`, up to the next `## `.
fn section(heading: &str) -> &'static str {
    let start = README
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading}"));
    let rest = &README[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The fenced blocks of one language in a section, in order.
fn blocks(text: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}\n");
    text.split(fence.as_str())
        .skip(1)
        .map(|b| b[..b.find("```").unwrap()].to_string())
        .collect()
}

/// `[section] key = value` lines of an INI block.
fn ini(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
        .to_string()
}

/// The README's Airflow configuration, with the files it names that must exist (Airflow's public
/// JWKS, the policy directory beside it) made, in a temporary directory.
struct Written {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    toml: toml::Value,
}

fn written() -> Written {
    let text = blocks(section("## In front of Airflow"), "toml")
        .into_iter()
        .next()
        .unwrap();
    let toml: toml::Value = toml::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("airflow-jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "yQaPxaNJChrfAqalU8bNjepvRzX3gf3QWWIsG--T_2E", "kid": "airflow-own", "alg": "EdDSA", "use": "sig"}]}"#,
    )
    .unwrap();
    // The policy beside the config, where its relative `dir` is looked for.
    let policy = toml["policy"]["dir"].as_str().unwrap();
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies"),
        dir.path().join(policy),
    )
    .unwrap();
    let named = toml["routes"][0]["assertion"]["upstream_jwks"].as_str().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, text.replace(named, jwks.to_str().unwrap())).unwrap();
    Written { dir, config, toml }
}

fn portcullis(args: &[&str]) -> (bool, String) {
    let out = Command::new(support::binary())
        .args(args)
        .env("OKTA_CLIENT_SECRET", "not-a-real-secret")
        .output()
        .unwrap();
    let text = support::output_text(&out);
    (out.status.success(), text)
}

#[test]
fn the_readme_s_airflow_configuration_loads_as_written() {
    let w = written();
    let (ok, text) = portcullis(&["check-config", "--config", w.config.to_str().unwrap()]);
    assert!(ok, "{text}");
    drop(w.dir);
}

#[test]
fn the_readme_s_airflow_route_decides_what_the_readme_says() {
    let w = written();
    let config = w.config.to_str().unwrap();
    // The explain command as the README prints it, and the answer its comment gives.
    let sh = blocks(section("## In front of Airflow"), "sh").join("\n");
    let explain = sh
        .split("portcullis ")
        .find(|c| c.starts_with("policy explain"))
        .unwrap();
    let said = explain[explain.find('#').unwrap() + 1..]
        .lines()
        .next()
        .unwrap()
        .trim();
    let url = explain
        .split_whitespace()
        .skip_while(|w| *w != "--url")
        .nth(1)
        .unwrap();
    assert!(
        explain.contains("--as user:okta/alice --groups data-eng"),
        "{explain}"
    );
    assert!(explain.contains("--method POST"), "{explain}");
    let (ok, text) = portcullis(&[
        "policy",
        "explain",
        "--config",
        config,
        "--as",
        "user:okta/alice",
        "--groups",
        "data-eng",
        "--method",
        "POST",
        "--url",
        url,
    ]);
    assert!(ok, "{text}");
    let (decision, rule) = said.split_once(", ").unwrap();
    assert!(text.contains(&format!("decision: {decision}")), "{said}: {text}");
    assert!(text.contains(&format!("rule:     {rule}")), "{said}: {text}");

    // What the prose promises: version and health open, Airflow's sign-in closed, delete refused.
    let ask = |method: &str, path: &str, who: &str, groups: &str| {
        let url = format!("https://airflow.example.com{path}");
        portcullis(&[
            "policy", "explain", "--config", config, "--as", who, "--groups", groups, "--method", method,
            "--url", &url,
        ])
    };
    for open in ["/api/v2/version", "/api/v2/monitor/health"] {
        let (ok, text) = ask("GET", open, "user:okta/nobody", "");
        assert!(ok && text.contains("decision: allow"), "{open}: {text}");
    }
    for closed in ["/auth/token", "/auth/token/cli", "/auth/login"] {
        let (_, text) = ask("POST", closed, "user:okta/root", "platform-admins");
        assert!(text.contains("decision: deny"), "{closed}: {text}");
    }
    let (_, text) = ask("DELETE", "/api/v2/dags/etl_daily", "user:okta/alice", "data-eng");
    assert!(text.contains("decision: deny"), "{text}");
    let (_, text) = ask(
        "POST",
        "/api/v2/dags/etl_daily/clearTaskInstances",
        "user:okta/sam",
        "sre",
    );
    assert!(text.contains("decision: allow"), "SRE may clear: {text}");
}

#[test]
fn the_readme_s_airflow_settings_agree_with_its_proxy_configuration_and_the_tested_world() {
    let w = written();
    let section = section("## In front of Airflow");
    let airflow = blocks(section, "ini").join("\n");
    let sh = blocks(section, "sh").join("\n");
    let issuer = w.toml["tokens"]["issuer"].as_str().unwrap();
    let route = &w.toml["routes"][0];
    let assertion = &route["assertion"];
    assert_eq!(
        ini(&airflow, "trusted_jwks_url"),
        format!(
            "{issuer}/.well-known/jwks/{}.json",
            route["name"].as_str().unwrap()
        )
    );
    assert_eq!(ini(&airflow, "jwt_issuer"), issuer);
    assert_eq!(
        ini(&airflow, "jwt_audience"),
        assertion["audience"].as_str().unwrap()
    );
    // The key Airflow signs with is the one whose public JWKS the route serves, under its kid.
    let key = ini(&airflow, "jwt_private_key_path");
    let kid = ini(&airflow, "jwt_kid");
    assert!(sh.contains(&format!("-out {key}")), "{sh}");
    assert!(
        sh.contains(&format!("public-jwks.py {key} {kid}"))
            && sh.contains(assertion["upstream_jwks"].as_str().unwrap()),
        "{sh}"
    );
    // The assertion the tests' real Airflow trusts is the README's.
    let world = support::airflow::assertion();
    for key in ["header", "claims"] {
        assert_eq!(world[key], assertion[key], "{key}");
    }
    assert_eq!(route["resources"].as_str(), Some("airflow"));
    assert_eq!(route["access"].as_str(), Some("protected"));
}
