//! `portcullis audit show`: audit records one line each, for a person reading along. A request's
//! line says when, allow or deny, the status, who (the caller as the policy names it), what
//! (method, host and path, and the policy's action and object) and why (the reason, the rule
//! that allowed, or the permission that was missing); an act of the proxy's own (a policy
//! reload, a key rotation) says what it was. The JSON line stays the record: this leaves out
//! most of it.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// How often `--follow` looks for more lines.
const POLL: Duration = Duration::from_millis(200);

/// Attributes an act's line leaves out: bookkeeping every record has, and what the line already
/// says (the decision, who) or nobody reads along (durations, ids).
const LEFT_OUT: [&str; 6] = [
    "portcullis.act",
    "portcullis.decision",
    "portcullis.outcome",
    "portcullis.request.id",
    "portcullis.session.id_hash",
    "portcullis.auth.method",
];
const LEFT_OUT_PREFIXES: [&str; 3] = [
    "portcullis.audit.",
    "portcullis.principal.",
    "portcullis.duration.",
];

fn left_out(key: &str) -> bool {
    LEFT_OUT.contains(&key) || LEFT_OUT_PREFIXES.iter().any(|p| key.starts_with(p))
}

fn str_of<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record.get(key).and_then(Value::as_str)
}

/// `HH:MM:SS` of an RFC 3339 time, or the text as it is.
fn clock(time: &str) -> &str {
    time.get(11..19).unwrap_or(time)
}

/// The caller as the policy names it (`user:okta/alice`, `ci:gitlab/project:42:branch:main`),
/// or `anonymous`.
fn who(record: &Value) -> String {
    let kind = match str_of(record, "portcullis.principal.kind") {
        Some("user") => "user",
        Some("service") => "svc",
        Some("ci_job") => "ci",
        _ => return "anonymous".into(),
    };
    match (
        str_of(record, "portcullis.principal.provider"),
        str_of(record, "enduser.id"),
    ) {
        (Some(provider), Some(id)) => format!("{kind}:{provider}/{id}"),
        (None, Some(id)) => format!("{kind}:{id}"),
        _ => "anonymous".into(),
    }
}

fn why(record: &Value) -> String {
    let reason = str_of(record, "portcullis.reason").unwrap_or("-");
    let action = str_of(record, "portcullis.policy.action");
    let object = str_of(record, "portcullis.policy.object");
    let domain = str_of(record, "portcullis.policy.domain");
    let mut why = match (reason, action, object) {
        ("authorized", Some(action), Some(object)) => {
            let rule = str_of(record, "portcullis.policy.rule").unwrap_or("a rule");
            format!("authorized: {action} on {object}, by {rule}")
        }
        ("forbidden", Some(action), Some(object)) => format!(
            "forbidden: no rule grants {action} on {object} in {}",
            domain.unwrap_or("-")
        ),
        ("claims_not_bound", ..) => match str_of(record, "portcullis.reason.claim") {
            Some(claim) => format!("claims_not_bound: {claim} has a value the provider does not accept"),
            None => reason.to_string(),
        },
        ("wrong_issuer", ..) => match str_of(record, "portcullis.token.issuer") {
            Some(issuer) => format!("wrong_issuer: the token's iss {issuer} is no provider of this route"),
            None => reason.to_string(),
        },
        _ => reason.to_string(),
    };
    if let Some(filtered) = record
        .get("portcullis.policy.filtered")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
    {
        why.push_str(&format!("; {filtered} list item(s) it may not read filtered out"));
    }
    let status = record.get("http.response.status_code").and_then(Value::as_u64);
    if reason == "no_credentials" && matches!(status, Some(302 | 303)) {
        why.push_str(": sent to sign in");
    }
    why
}

/// One record as one line.
pub fn line(record: &Value) -> String {
    let time = clock(str_of(record, "time").unwrap_or("-"));
    let decision = match str_of(record, "portcullis.decision") {
        Some("allow") => "ALLOW",
        Some("deny") => "DENY ",
        _ => "-    ",
    };
    // An act of the proxy's own, not during a request (a sign-in's act is its callback request).
    if let Some(act) = str_of(record, "portcullis.act")
        && record.get("http.request.method").is_none()
    {
        let details: Vec<String> = record
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("portcullis.") && !left_out(k))
            .map(|(k, v)| {
                let k = k.trim_start_matches("portcullis.");
                match v.as_str() {
                    Some(s) => format!("{k}={s}"),
                    None => format!("{k}={v}"),
                }
            })
            .collect();
        let who = match who(record).as_str() {
            "anonymous" => "portcullis".to_string(),
            caller => caller.to_string(),
        };
        return format!("{time}  {decision}  -    {who}  {act}  {}", details.join(" "));
    }
    let status = record
        .get("http.response.status_code")
        .and_then(Value::as_u64)
        .map_or_else(|| "-  ".to_string(), |s| s.to_string());
    let method = str_of(record, "http.request.method").unwrap_or("-");
    let host = str_of(record, "server.address").unwrap_or("");
    let path = str_of(record, "url.path").unwrap_or("");
    format!(
        "{time}  {decision}  {status}  {}  {method} {host}{path}  {}",
        who(record),
        why(record)
    )
}

/// Prints every record of `path` (`-`: standard input) as a line to `out`; with `follow`, keeps
/// waiting for more at the end of the file. A line that is not JSON is printed as it is.
pub fn show(path: &Path, follow: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let mut reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(path)?))
    };
    let mut pending = String::new();
    loop {
        let read = reader.read_line(&mut pending)?;
        if read == 0 || !pending.ends_with('\n') {
            // The end for now: a writer may be in the middle of a line.
            if !follow {
                break;
            }
            std::thread::sleep(POLL);
            continue;
        }
        let text = pending.trim_end();
        if !text.is_empty() {
            let shown = match serde_json::from_str::<Value>(text) {
                Ok(record) => line(&record),
                Err(_) => text.to_string(),
            };
            // A reader that went away (`| head`) ends the command quietly.
            if writeln!(out, "{shown}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
        pending.clear();
    }
    if !pending.trim().is_empty() {
        let _ = writeln!(out, "{}", pending.trim_end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_allowed_request_names_the_caller_the_operation_and_the_rule() {
        let record = json!({
            "time": "2026-12-05T03:15:02.983183Z",
            "portcullis.decision": "allow",
            "portcullis.reason": "authorized",
            "portcullis.principal.kind": "ci_job",
            "portcullis.principal.provider": "gitlab",
            "enduser.id": "project:42:branch:main",
            "http.request.method": "POST",
            "server.address": "localhost",
            "url.path": "/api/v2/dags/etl_daily/dagRuns",
            "http.response.status_code": 200,
            "portcullis.policy.domain": "airflow",
            "portcullis.policy.object": "dag:etl_daily",
            "portcullis.policy.action": "trigger",
            "portcullis.policy.rule": "policy.csv:9",
        });
        assert_eq!(
            line(&record),
            "03:15:02  ALLOW  200  ci:gitlab/project:42:branch:main  POST localhost/api/v2/dags/etl_daily/dagRuns  \
             authorized: trigger on dag:etl_daily, by policy.csv:9"
        );
    }

    #[test]
    fn a_refusal_says_what_was_missing_and_an_unknown_caller_is_anonymous() {
        let forbidden = json!({
            "time": "2026-12-05T03:15:03Z",
            "portcullis.decision": "deny",
            "portcullis.reason": "forbidden",
            "portcullis.principal.kind": "user",
            "portcullis.principal.provider": "demo",
            "enduser.id": "alice",
            "http.request.method": "POST",
            "server.address": "localhost",
            "url.path": "/api/v2/dags/etl_daily/dagRuns",
            "http.response.status_code": 403,
            "portcullis.policy.domain": "airflow",
            "portcullis.policy.object": "dag:etl_daily",
            "portcullis.policy.action": "trigger",
        });
        assert!(
            line(&forbidden).ends_with(
                "DENY   403  user:demo/alice  POST localhost/api/v2/dags/etl_daily/dagRuns  \
                 forbidden: no rule grants trigger on dag:etl_daily in airflow"
            ),
            "{}",
            line(&forbidden)
        );
        let untrusted = json!({
            "time": "2026-12-05T03:15:04Z",
            "portcullis.decision": "deny",
            "portcullis.reason": "wrong_issuer",
            "portcullis.principal.kind": "anonymous",
            "http.request.method": "GET",
            "server.address": "localhost",
            "url.path": "/api/v2/dags",
            "http.response.status_code": 401,
        });
        assert_eq!(
            line(&untrusted),
            "03:15:04  DENY   401  anonymous  GET localhost/api/v2/dags  wrong_issuer"
        );
        let mut named = untrusted.clone();
        named["portcullis.token.issuer"] = json!("https://gitlab.example.com/");
        assert_eq!(
            line(&named),
            "03:15:04  DENY   401  anonymous  GET localhost/api/v2/dags  \
             wrong_issuer: the token's iss https://gitlab.example.com/ is no provider of this route"
        );
    }

    #[test]
    fn an_act_of_the_proxy_lists_its_own_attributes_without_the_bookkeeping() {
        let record = json!({
            "time": "2026-12-05T03:15:02.747728Z",
            "portcullis.audit.seq": 1,
            "portcullis.audit.chain": "853f",
            "portcullis.act": "policy_reload",
            "portcullis.decision": "allow",
            "portcullis.policy.result": "loaded",
            "portcullis.policy.version": "sha256:764147ea3f334591",
        });
        assert_eq!(
            line(&record),
            "03:15:02  ALLOW  -    portcullis  policy_reload  policy.result=loaded policy.version=sha256:764147ea3f334591"
        );
    }

    #[test]
    fn show_prints_one_line_per_record_and_passes_other_text_through() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        std::fs::write(
            &file,
            "{\"time\":\"2026-12-05T03:15:04Z\",\"portcullis.decision\":\"deny\",\"portcullis.reason\":\"no_credentials\",\
             \"http.request.method\":\"GET\",\"server.address\":\"h\",\"url.path\":\"/\",\"http.response.status_code\":401}\n\
             not json\n",
        )
        .unwrap();
        let mut out = Vec::new();
        show(&file, false, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "03:15:04  DENY   401  anonymous  GET h/  no_credentials\nnot json\n"
        );
    }
}
