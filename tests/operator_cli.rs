//! What operators' tools read from the binary: its log lines (JSON one object per line, or text
//! without colour codes when stderr is not a terminal), `keys` tables and `--json`, and `probe`
//! saying why a health check failed.
#![cfg(test)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `serve` on `log` (the `[log]` table's lines, or nothing), with one public route to a
/// closed port; asks it once through that route (a 502 and its warning) and returns every line
/// it wrote to stderr (a pipe, not a terminal) by then.
fn serve_and_collect_stderr(log: &str, listening: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(
        &file,
        format!(
            "{log}\n[server]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [audit]\npath = \"audit.jsonl\"\n\
             [[routes]]\nname = \"open\"\nhosts = [\"open.test\"]\naccess = \"public\"\n\
             [routes.upstream]\nurl = \"http://127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    let mut child = Killed(
        Command::new(support::binary())
            .args(["serve", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut http = None;
    let mut warned = false;
    while !warned {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no listening line and warning in time: {lines:#?}"));
        if http.is_none() {
            http = listening(&line);
            if let Some(addr) = &http {
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: open.test\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).unwrap();
                assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
            }
        }
        warned = line.contains("upstream failure");
        lines.push(line);
    }
    lines
}

#[test]
fn json_logs_are_one_object_per_line_with_level_target_and_message() {
    let lines = serve_and_collect_stderr("[log]\nformat = \"json\"", |line| {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        (json["message"] == "listening" && json["listener"] == "http")
            .then(|| json["addr"].as_str().map(String::from))
            .flatten()
    });
    assert!(lines.len() >= 3, "{lines:#?}");
    for line in &lines {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["level", "target", "message", "timestamp"] {
            assert!(json[field].is_string(), "no {field} in {line}");
        }
    }
    let warning: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["message"], "upstream failure");
    assert_eq!(warning["route"], "open");
}

#[test]
fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let lines = serve_and_collect_stderr("", |line| {
        let rest = line.split("listener=\"http\" addr=").nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    });
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("listening")),
        "{lines:#?}"
    );
    for line in &lines {
        assert!(!line.contains('\x1b'), "an escape code in {line:?}");
    }
}

#[test]
fn an_unknown_log_format_is_named_with_its_key_and_the_closest_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, "[log]\nformat = \"jsn\"\n").unwrap();
    let out = Command::new(support::binary())
        .args(["check-config", "--offline", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = support::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("log.format: "), "{text}");
    assert!(text.contains("did you mean `json`?"), "{text}");
}

fn keys(dir: &std::path::Path, args: &[&str]) -> Output {
    let out = Command::new(support::binary())
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(dir.join("portcullis.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::output_text(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The table's rows (after the header), each split into its six columns.
fn rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines().skip_while(|l| !l.starts_with("KID "));
    let header = lines.next().unwrap_or_else(|| panic!("no header: {table}"));
    let columns: Vec<&str> = header
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        columns,
        ["KID", "ALGORITHM", "CREATED", "SIGNS FROM", "RETIRE AT", "STATE"],
        "{table}"
    );
    let state_at = header.find("STATE").unwrap();
    lines
        .filter(|l| !l.starts_with('('))
        .map(|l| {
            assert!(l[..state_at].ends_with("  "), "columns not aligned: {table}");
            l.split_whitespace().map(String::from).collect()
        })
        .collect()
}

#[test]
fn keys_commands_print_a_table_for_people_and_json_for_scripts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[tokens]\nissuer = \"https://portcullis.test\"\nkey_dir = \"keys\"\nalgorithm = \"EdDSA\"\n\
         [[routes]]\nname = \"open\"\nhosts = [\"open.test\"]\naccess = \"public\"\n\
         [routes.upstream]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();

    let empty = stdout(&keys(dir.path(), &["list"]));
    assert!(rows(&empty).is_empty(), "{empty}");
    assert!(empty.contains("no keys yet"), "{empty}");

    let first = stdout(&keys(dir.path(), &["rotate"]));
    assert!(first.starts_with("rotated: "), "{first}");
    let listed = rows(&first);
    assert_eq!(listed.len(), 1, "{first}");
    let kid = listed[0][0].clone();
    assert_eq!(listed[0][1], "EdDSA");
    assert_eq!(listed[0][5], "active");
    assert!(
        listed[0][2].ends_with('Z') && listed[0][3].ends_with('Z'),
        "{first}"
    );

    let second: serde_json::Value =
        serde_json::from_slice(&keys(dir.path(), &["rotate", "--json"]).stdout).unwrap();
    assert_eq!(second["changes"][0]["change"], "rotated");
    assert_eq!(second["changes"][0]["retired"], kid.as_str());
    let keys_now = second["keys"].as_array().unwrap();
    assert_eq!(keys_now.len(), 2, "{second:#}");
    let old = keys_now.iter().find(|k| k["kid"] == kid.as_str()).unwrap();
    assert_eq!(old["state"], "retired");
    assert_eq!(old["algorithm"], "EdDSA");
    assert!(old["retire_at"].as_str().unwrap().ends_with('Z'));
    let new = keys_now.iter().find(|k| k["kid"] != kid.as_str()).unwrap();
    assert_eq!(new["state"], "active");
    assert_eq!(second["changes"][0]["active"], new["kid"]);

    let revoked: serde_json::Value =
        serde_json::from_slice(&keys(dir.path(), &["revoke", "--json", &kid]).stdout).unwrap();
    assert_eq!(
        revoked["changes"],
        serde_json::json!([{ "change": "revoked", "kid": kid }])
    );
    assert_eq!(revoked["keys"].as_array().unwrap().len(), 1);
    let table = stdout(&keys(dir.path(), &["list"]));
    let listed = rows(&table);
    assert_eq!(listed.len(), 1, "{table}");
    assert_eq!(listed[0][0], new["kid"].as_str().unwrap());
    assert!(!table.contains(&kid), "{table}");
}

/// `portcullis probe URL`: its exit status and what it said on stderr.
fn probe(url: &str) -> (bool, String) {
    let out = Command::new(support::binary())
        .args(["probe", url])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server that answers every connection with `answer` (raw bytes), or holds it open
/// without a word when `answer` is empty.
fn fixed_server(answer: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            if answer.is_empty() {
                held.push(stream);
            } else {
                let _ = stream.write_all(answer);
            }
        }
    });
    addr
}

#[test]
fn probe_says_why_a_health_check_failed_and_exits_non_zero() {
    let ok = fixed_server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    assert_eq!(probe(&format!("http://{ok}/healthz")), (true, String::new()));

    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (passed, said) = probe(&format!("http://{closed}/healthz"));
    assert!(!passed);
    assert!(said.contains("connection refused"), "{said}");

    let unavailable =
        fixed_server(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let (passed, said) = probe(&format!("http://{unavailable}/readyz"));
    assert!(!passed);
    assert!(said.contains("503 Service Unavailable"), "{said}");

    let (passed, said) = probe(&format!("https://{ok}/healthz"));
    assert!(!passed);
    assert!(said.contains("TLS error"), "{said}");

    let silent = fixed_server(b"");
    let started = Instant::now();
    let (passed, said) = probe(&format!("http://{silent}/healthz"));
    assert!(!passed);
    assert!(said.contains("timeout"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let (passed, said) = probe("ftp://example.test/");
    assert!(!passed);
    assert!(said.contains("not an http:// or https:// URL"), "{said}");
}
