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
//! Untrusted input: [`parse_line`] reads spool files, which a disk fault can damage; a line that
//! does not parse is an error, never a panic.

use std::borrow::Cow;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::Text as _;

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
}

impl Sealer {
    pub fn new(instance: &str) -> Self {
        Sealer {
            instance: instance.to_string(),
            seq: 0,
            chain: GENESIS.to_string(),
            line_hint: 1024,
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
        let seq = i64::try_from(self.seq).unwrap_or(i64::MAX);
        span.attributes.insert(0, KeyValue::new(SEQ, seq));
        let mut line = Vec::with_capacity(self.line_hint + 64);
        line.extend_from_slice(PREFIX);
        let chain_at = line.len();
        line.extend_from_slice(self.chain.as_bytes());
        line.push(b'"');
        let body_at = line.len();
        write_body(&span, &self.instance, &mut line);
        self.chain = next_chain(&self.chain, line.get(body_at..).unwrap_or_default());
        // `"` then `{`: the chain value's closing quote and the body's opening brace.
        if let Some([chain @ .., _quote, open]) = line.get_mut(chain_at..=body_at) {
            chain.copy_from_slice(self.chain.as_bytes());
            *open = b',';
        }
        line.push(b'\n');
        self.line_hint = line.len();
        span.attributes
            .push(KeyValue::new(CHAIN, Value::String(self.chain.clone().text())));
        (span, line)
    }
}

/// The chain value that follows `previous` for a record whose hashed bytes are `body`.
pub fn next_chain(previous: &str, body: &[u8]) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(previous.as_bytes());
    context.update(body);
    crate::hex::encode(context.finish().as_ref())
}

/// The record without its chain member: `{"service.instance.id":…,"name":…,…attributes}`.
fn write_body(span: &SpanData, instance: &str, out: &mut Vec<u8>) {
    out.push(b'{');
    member(out, "service.instance.id");
    json_str(out, instance);
    out.push(b',');
    member(out, "name");
    json_str(out, &span.name);
    out.push(b',');
    member(out, "kind");
    json_str(out, kind_name(&span.span_kind));
    out.push(b',');
    member(out, "time");
    json_time(out, span.start_time);
    out.push(b',');
    member(out, "end_time");
    json_time(out, span.end_time);
    out.push(b',');
    member(out, "trace_id");
    json_hex(out, &span.span_context.trace_id().to_bytes());
    out.push(b',');
    member(out, "span_id");
    json_hex(out, &span.span_context.span_id().to_bytes());
    if span.parent_span_id != SpanId::INVALID {
        out.push(b',');
        member(out, "parent_span_id");
        json_hex(out, &span.parent_span_id.to_bytes());
    }
    if let Status::Error { description } = &span.status {
        out.push(b',');
        member(out, "status.error");
        json_str(out, description);
    }
    for kv in &span.attributes {
        out.push(b',');
        member(out, kv.key.as_str());
        json_value(out, &kv.value);
    }
    out.push(b'}');
}

fn json_time(out: &mut Vec<u8>, t: SystemTime) {
    out.push(b'"');
    let _ = write!(out, "{}", humantime::format_rfc3339_micros(t));
    out.push(b'"');
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
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::I64(i) => {
            let _ = write!(out, "{i}");
        }
        Value::F64(f) => {
            let _ = serde_json::to_writer(&mut *out, f);
        }
        Value::String(s) => json_str(out, s.as_str()),
        Value::Array(Array::String(items)) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, item.as_str());
            }
            out.push(b']');
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

    proptest::proptest! {
        #[test]
        fn strings_are_written_exactly_as_serde_json_writes_them(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let mut ours = Vec::new();
            json_str(&mut ours, &s);
            proptest::prop_assert_eq!(ours, serde_json::to_vec(&s).unwrap());
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
