//! Sealed records: the one form an audit event takes once it leaves the request path.
//!
//! The [`Sealer`] gives every event the instance's next sequence number and a hash-chain value,
//! and the result is an OpenTelemetry span (what the exporter sends) with one JSON line as its
//! written form (what the spool and the JSON-lines sink store). The line is written once, while
//! sealing (the chain is a hash of it), and `portcullis audit verify` checks it byte for byte:
//!
//! ```text
//! {"portcullis.audit.chain":"<64 hex>",<body…>}
//! chain(n) = hex(SHA-256(chain(n-1) ‖ "{" <body…> "}")),  chain(0) = 64 zeros
//! ```
//!
//! This file is on every request's path and written for speed (the line is written straight into
//! one buffer, with no JSON tree in between): `cargo bench --bench audit` ("audit record: event to span,
//! sealed, line written") guards it; compare before and after any change here.
//!
//! Untrusted input: [`parse_line`] reads spool files, which a disk fault can damage; a line that
//! does not parse is an error, never a panic.

use std::borrow::Cow;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::Text;

/// Attribute names the sealer adds.
pub const SEQ: &str = "portcullis.audit.seq";
pub const CHAIN: &str = "portcullis.audit.chain";
/// The chain value before an instance's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const PREFIX: &[u8] = b"{\"portcullis.audit.chain\":\"";

/// The instrumentation scope every audit span carries.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("portcullis.audit")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// What a span says besides its attributes.
#[derive(Debug, Clone)]
pub struct SpanMeta {
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub trace: super::TraceIds,
    pub start: SystemTime,
    pub end: SystemTime,
    /// The proxy itself failed (a 5xx it caused): the span's status is Error with this code.
    pub error: Option<&'static str>,
}

impl SpanMeta {
    pub fn into_span(self, attributes: Vec<KeyValue>) -> SpanData {
        let trace = self.trace;
        SpanData {
            span_context: SpanContext::new(
                trace.trace_id,
                trace.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: trace.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: trace.parent.is_some(),
            span_kind: self.kind,
            name: self.name,
            // The written form keeps microseconds; a replayed span must equal the live one.
            start_time: micros(self.start),
            end_time: micros(self.end.max(self.start)),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match self.error {
                Some(code) => Status::error(code),
                None => Status::Unset,
            },
            instrumentation_scope: scope(),
        }
    }
}

fn micros(t: SystemTime) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::from_micros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

/// Numbers the records of one instance and chains them.
#[derive(Debug)]
pub struct Sealer {
    instance: String,
    seq: u64,
    chain: String,
    /// The last line's length: the next line's buffer is allocated once, at about its size.
    line_hint: usize,
    clock: Clock,
}

impl Sealer {
    pub fn new(instance: &str) -> Self {
        Sealer {
            instance: instance.to_string(),
            seq: 0,
            chain: GENESIS.to_string(),
            line_hint: 1024,
            clock: Clock::default(),
        }
    }

    /// The sequence number of the last record sealed.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Gives `span` the next sequence number and its chain value, and writes its line (with the
    /// newline). The body is written once, straight into the line, and hashed where it lies:
    ///
    /// ```text
    /// {"portcullis.audit.chain":"<64 placeholder>"{<body…>}   hash "{" <body…> "}"
    /// {"portcullis.audit.chain":"<chain>",<body…>}\n          then fill in the chain, "{" → ","
    /// ```
    pub fn seal(&mut self, mut span: SpanData) -> (SpanData, Vec<u8>) {
        self.seq += 1;
        let seq = super::saturating_i64(self.seq);
        span.attributes.insert(0, KeyValue::new(SEQ, seq));
        let line = self.line(|out, instance, clock| {
            write_head(out, instance, clock, &Head::of_span(&span));
            for kv in &span.attributes {
                out.push(b',');
                member(out, kv.key.as_str());
                json_value(out, &kv.value);
            }
        });
        span.attributes
            .push(KeyValue::new(CHAIN, Value::String(self.chain.clone().text())));
        (span, line)
    }

    /// The line [`seal`](Self::seal) writes for `event.into_span()`, byte for byte, written
    /// straight from the event: for the JSON-lines sink, which exports no span.
    pub fn seal_event(&mut self, event: super::Event) -> Vec<u8> {
        self.seq += 1;
        let seq = self.seq;
        let meta = event.meta();
        self.line(|out, instance, clock| {
            write_head(out, instance, clock, &Head::of_meta(&meta));
            let mut attributes = JsonAttrs(out);
            super::Attributes::int(&mut attributes, SEQ, seq);
            event.attributes(&mut attributes);
        })
    }

    /// Writes one record's line (with the newline) and moves the chain on. The body is written
    /// once, straight into the line, by `body` (all but its braces), and hashed where it lies:
    ///
    /// ```text
    /// {"portcullis.audit.chain":"<64 placeholder>"{<body…>}   hash "{" <body…> "}"
    /// {"portcullis.audit.chain":"<chain>",<body…>}\n          then fill in the chain, "{" → ","
    /// ```
    fn line(&mut self, body: impl FnOnce(&mut Vec<u8>, &str, &mut Clock)) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.line_hint + 64);
        line.extend_from_slice(PREFIX);
        let chain_at = line.len();
        line.extend_from_slice(self.chain.as_bytes());
        line.push(b'"');
        let body_at = line.len();
        line.push(b'{');
        body(&mut line, &self.instance, &mut self.clock);
        line.push(b'}');
        self.chain = next_chain(&self.chain, line.get(body_at..).unwrap_or_default());
        // `"` then `{`: the chain value's closing quote and the body's opening brace.
        if let Some([chain @ .., _quote, open]) = line.get_mut(chain_at..=body_at) {
            chain.copy_from_slice(self.chain.as_bytes());
            *open = b',';
        }
        line.push(b'\n');
        self.line_hint = line.len();
        line
    }
}

/// The chain value that follows `previous` for a record whose hashed bytes are `body`.
pub fn next_chain(previous: &str, body: &[u8]) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(previous.as_bytes());
    context.update(body);
    crate::hex::encode(context.finish().as_ref())
}

/// What a record says before its attributes, from a span or straight from an event.
struct Head<'a> {
    name: &'a str,
    kind: &'a SpanKind,
    start: SystemTime,
    end: SystemTime,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    error: Option<&'a str>,
}

impl<'a> Head<'a> {
    fn of_span(span: &'a SpanData) -> Self {
        Head {
            name: &span.name,
            kind: &span.span_kind,
            start: span.start_time,
            end: span.end_time,
            trace_id: span.span_context.trace_id(),
            span_id: span.span_context.span_id(),
            parent: Some(span.parent_span_id),
            error: match &span.status {
                Status::Error { description } => Some(description),
                _ => None,
            },
        }
    }

    /// As [`SpanMeta::into_span`] would make it.
    fn of_meta(meta: &'a SpanMeta) -> Self {
        Head {
            name: &meta.name,
            kind: &meta.kind,
            start: meta.start,
            end: meta.end.max(meta.start),
            trace_id: meta.trace.trace_id,
            span_id: meta.trace.span_id,
            parent: meta.trace.parent,
            error: meta.error,
        }
    }
}

/// `"service.instance.id":…,"name":…,…` up to the attributes.
fn write_head(out: &mut Vec<u8>, instance: &str, clock: &mut Clock, head: &Head) {
    member(out, "service.instance.id");
    json_str(out, instance);
    out.push(b',');
    member(out, "name");
    json_str(out, head.name);
    out.push(b',');
    member(out, "kind");
    json_str(out, kind_name(head.kind));
    out.push(b',');
    member(out, "time");
    clock.write(out, head.start);
    out.push(b',');
    member(out, "end_time");
    clock.write(out, head.end);
    out.push(b',');
    member(out, "trace_id");
    json_hex(out, &head.trace_id.to_bytes());
    out.push(b',');
    member(out, "span_id");
    json_hex(out, &head.span_id.to_bytes());
    if let Some(parent) = head.parent.filter(|p| *p != SpanId::INVALID) {
        out.push(b',');
        member(out, "parent_span_id");
        json_hex(out, &parent.to_bytes());
    }
    if let Some(description) = head.error {
        out.push(b',');
        member(out, "status.error");
        json_str(out, description);
    }
}

/// Attributes written into the line as they are named, with the writers `json_value` uses for
/// the span's values.
struct JsonAttrs<'a>(&'a mut Vec<u8>);

impl JsonAttrs<'_> {
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        self.0.push(b',');
        member(self.0, key);
        self.0
    }
}

impl super::Attributes for JsonAttrs<'_> {
    fn str(&mut self, key: &'static str, value: impl Text) {
        json_str(self.key(key), value.view());
    }
    fn int(&mut self, key: &'static str, value: u64) {
        json_int(self.key(key), super::saturating_i64(value));
    }
    fn float(&mut self, key: &'static str, value: f64) {
        json_f64(self.key(key), value);
    }
    fn flag(&mut self, key: &'static str, value: bool) {
        json_bool(self.key(key), value);
    }
    fn strings<T: Text>(&mut self, key: &'static str, values: impl Iterator<Item = T>) {
        json_list(self.key(key), values, |out, item| json_str(out, item.view()));
    }
}

/// RFC 3339 timestamps with microseconds, as humantime writes them. Records arrive in time
/// order, so the date and time of day are formatted once a second and reused.
#[derive(Debug, Default)]
struct Clock {
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    text: Vec<u8>,
}

impl Clock {
    fn write(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            self.text.clear();
            let whole = UNIX_EPOCH + Duration::from_secs(second);
            let _ = write!(self.text, "{}", humantime::format_rfc3339_seconds(whole));
            self.text.pop(); // the `Z`
            self.second = Some(second);
        }
        out.push(b'"');
        out.extend_from_slice(&self.text);
        let micros = since.subsec_micros();
        out.push(b'.');
        for divisor in [100_000, 10_000, 1_000, 100, 10, 1] {
            // A digit: `micros / divisor % 10` is below 10.
            out.push(b'0' + (micros / divisor % 10) as u8);
        }
        out.extend_from_slice(b"Z\"");
    }
}

fn json_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    crate::hex::push(out, bytes);
    out.push(b'"');
}

fn member(out: &mut Vec<u8>, key: &str) {
    json_str(out, key);
    out.push(b':');
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Most values need no escaping: copy them. The rest go through serde_json, whose escaping
    // (control characters, `"` and `\\` only) is the one the fast path checks for, so both
    // write the same bytes and the chain does not depend on which one ran.
    // (Checked without an early exit, which the compiler turns into wide compares.)
    let needs_escape = s
        .bytes()
        .fold(false, |seen, b| seen | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escape {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a &str into a Vec cannot fail; escaping keeps control characters off the line.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn json_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => json_bool(out, *b),
        Value::I64(i) => json_int(out, *i),
        Value::F64(f) => json_f64(out, *f),
        Value::String(s) => json_str(out, s.as_str()),
        Value::Array(Array::String(items)) => {
            json_list(out, items.iter(), |out, item| json_str(out, item.as_str()));
        }
        Value::Array(Array::I64(items)) => {
            let _ = serde_json::to_writer(&mut *out, items);
        }
        Value::Array(Array::F64(items)) => {
            let _ = serde_json::to_writer(&mut *out, items);
        }
        Value::Array(Array::Bool(items)) => {
            let _ = serde_json::to_writer(&mut *out, items);
        }
        other => json_str(out, &other.to_string()),
    }
}

// Writing into a Vec cannot fail.
fn json_int(out: &mut Vec<u8>, i: i64) {
    let _ = serde_json::to_writer(out, &i);
}

fn json_f64(out: &mut Vec<u8>, f: f64) {
    let _ = serde_json::to_writer(out, &f);
}

fn json_list<T>(out: &mut Vec<u8>, items: impl Iterator<Item = T>, mut each: impl FnMut(&mut Vec<u8>, T)) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
    out.push(b']');
}

fn json_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn kind_name(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

/// Why a written line could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("not a sealed record (no leading portcullis.audit.chain member)")]
    Unsealed,
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("{0} is missing or mistyped")]
    Field(&'static str),
}

/// A written line taken apart: its chain value, the bytes that were hashed, and what they say.
#[derive(Debug)]
pub struct Line<'a> {
    pub chain: &'a str,
    /// `{` + the body, exactly as hashed.
    pub body: Cow<'a, [u8]>,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Line<'_> {
    pub fn seq(&self) -> Option<u64> {
        self.fields.get(SEQ).and_then(serde_json::Value::as_u64)
    }
    pub fn instance(&self) -> Option<&str> {
        self.fields
            .get("service.instance.id")
            .and_then(serde_json::Value::as_str)
    }
}

pub fn split_line(line: &[u8]) -> Result<Line<'_>, LineError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let rest = line.strip_prefix(PREFIX).ok_or(LineError::Unsealed)?;
    let (chain, rest) = (rest.get(..64), rest.get(64..));
    let (Some(chain), Some(rest)) = (chain, rest) else {
        return Err(LineError::Unsealed);
    };
    let chain = std::str::from_utf8(chain).map_err(|_| LineError::Unsealed)?;
    let rest = rest.strip_prefix(b"\",").ok_or(LineError::Unsealed)?;
    let mut body = Vec::with_capacity(rest.len() + 1);
    body.push(b'{');
    body.extend_from_slice(rest);
    let fields = serde_json::from_slice(&body).map_err(|e| LineError::Json(e.to_string()))?;
    Ok(Line {
        chain,
        body: Cow::Owned(body),
        fields,
    })
}

/// Reads a spooled line back into the span it was written from, with its instance id.
pub fn parse_line(line: &[u8]) -> Result<(String, SpanData), LineError> {
    let Line {
        chain, mut fields, ..
    } = split_line(line)?;
    let mut take_str = |key: &'static str| match fields.remove(key) {
        Some(serde_json::Value::String(s)) => Ok(s),
        _ => Err(LineError::Field(key)),
    };
    let instance = take_str("service.instance.id")?;
    let name = take_str("name")?;
    let kind = match take_str("kind")?.as_str() {
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        _ => SpanKind::Internal,
    };
    let time = |s: String, key| humantime::parse_rfc3339(&s).map_err(|_| LineError::Field(key));
    let start = time(take_str("time")?, "time")?;
    let end = time(take_str("end_time")?, "end_time")?;
    let trace_id = TraceId::from_hex(&take_str("trace_id")?).map_err(|_| LineError::Field("trace_id"))?;
    let span_id = SpanId::from_hex(&take_str("span_id")?).map_err(|_| LineError::Field("span_id"))?;
    let parent = match fields.remove("parent_span_id") {
        Some(serde_json::Value::String(s)) => {
            Some(SpanId::from_hex(&s).map_err(|_| LineError::Field("parent_span_id"))?)
        }
        _ => None,
    };
    let error = match fields.remove("status.error") {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    let mut attributes: Vec<KeyValue> = fields
        .into_iter()
        .filter_map(|(k, v)| Some(KeyValue::new(k, attribute(v)?)))
        .collect();
    attributes.push(KeyValue::new(CHAIN, chain.to_string()));
    let meta = SpanMeta {
        name: Cow::Owned(name),
        kind,
        trace: super::TraceIds {
            trace_id,
            span_id,
            parent,
        },
        start,
        end,
        error: None,
    };
    let mut span = meta.into_span(attributes);
    if let Some(description) = error {
        span.status = Status::error(description);
    }
    Ok((instance, span))
}

fn attribute(v: serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::I64(i),
            None => Value::F64(n.as_f64()?),
        },
        J::String(s) => Value::String(s.text()),
        J::Array(items) => {
            let strings: Vec<StringValue> = items
                .into_iter()
                .map(|i| match i {
                    J::String(s) => s.text(),
                    other => other.to_string().text(),
                })
                .collect();
            Value::Array(Array::String(strings))
        }
        J::Null | J::Object(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn span(n: u64) -> SpanData {
        let meta = SpanMeta {
            name: "access".into(),
            kind: SpanKind::Server,
            trace: super::super::TraceIds::fresh(),
            start: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            end: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_223_456_789),
            error: n.is_multiple_of(2).then_some("upstream_timeout"),
        };
        meta.into_span(vec![
            KeyValue::new("portcullis.reason", "forbidden"),
            KeyValue::new("http.response.status_code", 403_i64),
            KeyValue::new("portcullis.duration.upstream_ms", 1.5),
            KeyValue::new("portcullis.audit.fake", true),
            KeyValue::new(
                "portcullis.principal.groups",
                Value::Array(Array::String(vec!["a\"b".into(), "line\nbreak".into()])),
            ),
        ])
    }

    #[test]
    fn a_sealed_line_reads_back_as_the_same_span_and_chains_to_the_previous_one() {
        let mut sealer = Sealer::new("inst-1");
        let (_, first_line) = sealer.seal(span(1));
        let (second, out) = sealer.seal(span(2));
        assert_eq!(
            out.iter().filter(|b| **b == b'\n').count(),
            1,
            "one line, even with a newline in a value"
        );

        let one = split_line(&first_line).unwrap();
        assert_eq!(one.seq(), Some(1));
        assert_eq!(one.chain, next_chain(GENESIS, &one.body));
        let two = split_line(&out).unwrap();
        assert_eq!(two.seq(), Some(2));
        assert_eq!(two.chain, next_chain(one.chain, &two.body));

        let (instance, back) = parse_line(&out).unwrap();
        assert_eq!(instance, "inst-1");
        assert_eq!(back.span_context, second.span_context);
        assert_eq!(back.start_time, second.start_time);
        assert_eq!(back.end_time, second.end_time);
        assert_eq!(back.status, second.status);
        let mut expected = second.attributes.clone();
        let mut got = back.attributes.clone();
        expected.sort_by(|a, b| a.key.cmp(&b.key));
        got.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(got, expected);
    }

    /// Every kind of event, with the fields that are written only when present.
    fn events() -> Vec<super::super::Event> {
        use std::net::{IpAddr, Ipv4Addr};
        use std::sync::Arc;

        use super::super::*;
        let principal = std::sync::Arc::new(crate::identity::Principal::example());
        let time = SystemTime::now();
        let traced = TraceIds::child_of(TraceId::from(7u128), SpanId::from(9u64));
        let access = |principal: Option<Arc<crate::identity::Principal>>, failed: bool| AccessEvent {
            time,
            trace: traced,
            act: failed.then_some("login"),
            request_id: "r-1".into(),
            decision: "allow",
            reason: "authorized",
            reason_claim: None,
            token_issuer: Some(Arc::from("https://evil.example/\u{1b}[31m")),
            principal_kind: "user",
            auth_method: "bearer",
            principal,
            authn_us: Some(4),
            route: Some(Arc::new("airflow".into())),
            method: Cow::Borrowed("POST"),
            scheme: "https",
            path: Some("/api/v1/dags/etl \"daily\"/dagRuns".into()),
            server_address: Some("airflow.example.com".into()),
            server_port: 443,
            client_address: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            protocol_version: "1.1",
            user_agent: Some("tab\there".into()),
            status: if failed { 502 } else { 200 },
            error_type: failed.then_some("upstream_unreachable"),
            failed,
            outcome: "completed",
            upstream_status: Some(200),
            request_bytes: 0,
            response_bytes: 11,
            upstream_ms: Some(if failed { f64::NAN } else { 3.25 }),
            total: Duration::from_micros(3400),
            policy: Some(PolicyFields {
                domain: "airflow".into(),
                object: "dag:etl".into(),
                action: "trigger".into(),
                rule: Some("policy.csv:18".into()),
                version: Arc::from("sha256:0123"),
                shadow: Some("deny"),
                authz_us: 1,
                pipeline: Some("etl".into()),
                run: None,
                task: None,
                task_run: None,
                decided: Vec::new(),
                filtered: None,
            }),
            workflow: vec![("cicd.pipeline.name", "ignored".into()), ("x.y", "z".into())],
        };
        vec![
            access(Some(principal.clone()), false).into(),
            access(None, true).into(),
            PolicyEvent {
                time,
                kind: "enforced",
                result: "rejected",
                version: None,
                in_force: Some(Arc::from("sha256:1")),
                problems: vec!["policy.csv:3: bad".into()],
            }
            .into(),
            SessionEvent {
                time,
                request_id: "r-2".into(),
                parent: traced,
                rotated: true,
                result: "ok",
                principal: principal.clone(),
                kind: "user",
            }
            .into(),
            TokenEvent {
                time,
                act: "credential_brokered",
                kid: String::new(),
                retired_kid: None,
                jti: Some("j".into()),
                route: Some(Arc::new("tekton".into())),
                audience: Some("https://tekton".into()),
                expires: Some(time),
                principal: Some(principal),
                client_id: Some("portcullis".into()),
                grant: Some("token_exchange"),
            }
            .into(),
            RevocationEvent {
                time,
                scope: "subject",
                provider: Some("gitlab".into()),
                subject: Some("project:42:branch:main".into()),
                sid_hash: None,
                before: time,
                expires: time + Duration::from_secs(3600),
            }
            .into(),
        ]
    }

    #[test]
    fn a_record_written_straight_from_its_event_is_the_line_its_span_is_sealed_as() {
        let (mut via_span, mut direct) = (Sealer::new("inst-1"), Sealer::new("inst-1"));
        for event in events() {
            // Access records carry their trace ids; acts outside a request draw fresh ones (so
            // the two sealers' chains part after the first act: each must follow its own lines).
            let carries_ids = matches!(event, super::super::Event::Access(_));
            let previous = direct.chain.clone();
            let (span, from_span) = via_span.seal(event.clone().into_span());
            let written = direct.seal_event(event);
            let got = split_line(&written).unwrap();
            assert_eq!(
                got.chain,
                next_chain(&previous, &got.body),
                "{} chains on",
                span.name
            );

            let ids = |key: &str| got.fields[key].as_str().unwrap().to_string();
            let span_id = crate::hex::encode(&span.span_context.span_id().to_bytes());
            let trace_id = crate::hex::encode(&span.span_context.trace_id().to_bytes());
            if carries_ids {
                assert_eq!(
                    (ids("span_id"), ids("trace_id")),
                    (span_id.clone(), trace_id.clone())
                );
            }
            let expected = String::from_utf8(from_span)
                .unwrap()
                .replace(&span_id, &ids("span_id"))
                .replace(&trace_id, &ids("trace_id"));
            let want = split_line(expected.as_bytes()).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got.body),
                String::from_utf8_lossy(&want.body),
                "{}",
                span.name
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn strings_are_written_exactly_as_serde_json_writes_them(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let mut ours = Vec::new();
            json_str(&mut ours, &s);
            proptest::prop_assert_eq!(ours, serde_json::to_vec(&s).unwrap());
        }

        #[test]
        fn timestamps_are_written_exactly_as_humantime_writes_them(
            micros in proptest::collection::vec(0u64..253_402_300_799_999_999, 1..8),
            step in 0u64..3_000_000,
        ) {
            // Some times share a second with the one before (the cached part is reused).
            let mut clock = Clock::default();
            for m in micros.into_iter().flat_map(|m| [m, m.saturating_add(step)]) {
                let t = UNIX_EPOCH + Duration::from_micros(m);
                let mut ours = Vec::new();
                clock.write(&mut ours, t);
                let expected = format!("\"{}\"", humantime::format_rfc3339_micros(t));
                proptest::prop_assert_eq!(String::from_utf8(ours).unwrap(), expected);
            }
        }
    }

    #[test]
    fn lines_that_are_not_sealed_records_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"{}",
            b"{\"portcullis.audit.chain\":\"abc\",",
            b"{\"portcullis.audit.chain\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"x\":",
            "{\"portcullis.audit.chain\":\"ééééééééééééééééééééééééééééééééé\",}".as_bytes(),
        ] {
            assert!(parse_line(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
