//! An OTLP trace receiver in the test process, standing in for an OpenTelemetry collector:
//! OTLP/gRPC (`TraceService/Export`, length-prefixed protobuf over HTTP/2, answered with
//! `grpc-status: 0`) and OTLP/HTTP (protobuf `POST /v1/traces`), plain or gzip, in clear text or
//! over TLS. It
//! decodes each `ExportTraceServiceRequest` with `opentelemetry-proto` and keeps every span with
//! its attributes as typed values, and the headers each export came with. It can be stopped (the
//! port refuses, open connections drop, as a collector that died) and started again on the same
//! ports.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
pub use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message as _;
use serde::Serialize;

use super::serve::{Protocol, Serve, Server, serve};

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const HTTP_PATH: &str = "/v1/traces";

/// An attribute value as OTLP typed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Attr {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Array(Vec<Attr>),
    Map(BTreeMap<String, Attr>),
    Bytes(Vec<u8>),
    Empty,
}

impl Attr {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Attr::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Attr::Int(n) => Some(*n),
            _ => None,
        }
    }

    fn of(value: Option<&AnyValue>) -> Attr {
        match value.and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => Attr::Str(s.clone()),
            Some(any_value::Value::IntValue(n)) => Attr::Int(*n),
            Some(any_value::Value::DoubleValue(x)) => Attr::Double(*x),
            Some(any_value::Value::BoolValue(b)) => Attr::Bool(*b),
            Some(any_value::Value::ArrayValue(a)) => {
                Attr::Array(a.values.iter().map(|v| Attr::of(Some(v))).collect())
            }
            Some(any_value::Value::KvlistValue(kv)) => Attr::Map(attributes(&kv.values)),
            Some(any_value::Value::BytesValue(b)) => Attr::Bytes(b.clone()),
            Some(any_value::Value::StringValueStrindex(_)) | None => Attr::Empty,
        }
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Attr> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), Attr::of(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One span as it was exported.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub name: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// None for a root span.
    pub parent_span_id: Option<String>,
    pub kind: SpanKind,
    pub status: SpanStatus,
    pub status_message: String,
    pub trace_state: String,
    pub attributes: BTreeMap<String, Attr>,
    /// The attributes of the resource the span came with.
    pub resource: BTreeMap<String, Attr>,
    pub scope_name: String,
    pub scope_version: String,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&Attr> {
        self.attributes.get(key)
    }

    /// A string attribute, or None when absent or not a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Attr::as_str)
    }

    pub fn resource_attr(&self, key: &str) -> Option<&Attr> {
        self.resource.get(key)
    }
}

fn spans_of(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            let (scope_name, scope_version) = ss
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for span in &ss.spans {
                let status = span.status.clone().unwrap_or_default();
                out.push(ReceivedSpan {
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    kind: span.kind(),
                    status: status.code(),
                    status_message: status.message,
                    trace_state: span.trace_state.clone(),
                    attributes: attributes(&span.attributes),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                });
            }
        }
    }
    out
}

/// One export request as it arrived.
#[derive(Debug, Clone)]
pub struct Export {
    /// `grpc` or `http`.
    pub transport: &'static str,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub spans: usize,
}

impl Export {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct State {
    spans: Vec<ReceivedSpan>,
    exports: Vec<Export>,
}

type Body = BoxBody<Bytes, Infallible>;

/// A running receiver. Spans received survive [`Receiver::stop`] and [`Receiver::restart`].
pub struct Receiver {
    state: Arc<Mutex<State>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    grpc: Server,
    http: Server,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::bind(None, None).await
    }

    /// A receiver behind TLS with this server config (its certificate must name 127.0.0.1).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Receiver {
        Self::bind(Some(tls), None).await
    }

    async fn bind(tls: Option<Arc<rustls::ServerConfig>>, at: Option<(SocketAddr, SocketAddr)>) -> Receiver {
        let state: Arc<Mutex<State>> = Arc::default();
        let (grpc, http) = Self::listen(&state, &tls, at).await;
        Receiver {
            state,
            tls,
            grpc,
            http,
        }
    }

    async fn listen(
        state: &Arc<Mutex<State>>,
        tls: &Option<Arc<rustls::ServerConfig>>,
        at: Option<(SocketAddr, SocketAddr)>,
    ) -> (Server, Server) {
        let how = |protocol: Protocol, addr: Option<SocketAddr>| {
            let mut how = Serve::protocol(protocol);
            if let Some(tls) = tls {
                how = how.tls(tls.clone());
            }
            if let Some(addr) = addr {
                how = how.at(addr);
            }
            how
        };
        let s = state.clone();
        let grpc = serve(how(Protocol::Http2, at.map(|a| a.0)), move |_, req| {
            receive(s.clone(), req, "grpc")
        })
        .await;
        let s = state.clone();
        let http = serve(how(Protocol::Auto, at.map(|a| a.1)), move |_, req| {
            receive(s.clone(), req, "http")
        })
        .await;
        (grpc, http)
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), the OTLP/gRPC receiver.
    pub fn grpc_endpoint(&self) -> String {
        self.grpc.url()
    }

    /// `http://127.0.0.1:PORT/v1/traces` (`https://` with TLS), the OTLP/HTTP receiver.
    pub fn http_endpoint(&self) -> String {
        format!("{}{HTTP_PATH}", self.http.url())
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.addr
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state.lock().unwrap().spans.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().spans.len()
    }

    /// Every export request so far, in arrival order.
    pub fn exports(&self) -> Vec<Export> {
        self.state.lock().unwrap().exports.clone()
    }

    /// Waits until at least `n` spans have arrived, or panics after `timeout` with what did.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        match self.wait_until(timeout, |spans| spans.len() >= n).await {
            Ok(spans) => spans,
            Err(spans) => {
                let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).take(50).collect();
                panic!(
                    "the receiver got {} spans within {timeout:?}, wanted {n}; names (first 50): {names:?}",
                    spans.len()
                )
            }
        }
    }

    /// Waits until `done(spans)` holds; Err with the last snapshot after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.state.lock().unwrap();
                if done(&state.spans) {
                    return Ok(state.spans.clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(self.spans());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The receiver is gone: its ports refuse and the connections open to it drop.
    pub fn stop(&self) {
        self.grpc.stop();
        self.http.stop();
    }

    /// Stops if running and listens again on the same ports (retrying while one is still taken).
    pub async fn restart(&mut self) {
        self.stop();
        let at = (self.grpc.addr, self.http.addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let free = |a: SocketAddr| std::net::TcpListener::bind(a).is_ok();
            if free(at.0) && free(at.1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (self.grpc, self.http) = Self::listen(&self.state, &self.tls, Some(at)).await;
    }
}

async fn receive(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
    transport: &'static str,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return status_only(StatusCode::BAD_REQUEST);
    };
    let gzip = |name: &str| parts.headers.get(name).is_some_and(|v| v == "gzip");
    let decode = |message: &[u8], gzipped: bool| -> Result<ExportTraceServiceRequest, String> {
        let message = if gzipped {
            gunzip(message)?
        } else {
            message.to_vec()
        };
        ExportTraceServiceRequest::decode(message.as_slice()).map_err(|e| e.to_string())
    };
    let decoded = match (transport, parts.uri.path()) {
        ("grpc", GRPC_PATH) => grpc_messages(&body).and_then(|messages| {
            messages
                .iter()
                .map(|(compressed, m)| decode(m, *compressed && gzip("grpc-encoding")))
                .collect::<Result<Vec<_>, _>>()
        }),
        ("http", HTTP_PATH) => decode(&body, gzip("content-encoding")).map(|r| vec![r]),
        _ => return status_only(StatusCode::NOT_FOUND),
    };
    let requests = match decoded {
        Ok(requests) => requests,
        Err(why) if transport == "grpc" => return grpc_answer(3, &why),
        Err(_) => return status_only(StatusCode::BAD_REQUEST),
    };
    let spans: Vec<ReceivedSpan> = requests.iter().flat_map(spans_of).collect();
    {
        let mut state = state.lock().unwrap();
        state.exports.push(Export {
            transport,
            version: parts.version,
            headers: parts.headers,
            spans: spans.len(),
        });
        state.spans.extend(spans);
    }
    if transport == "grpc" {
        grpc_answer(0, "")
    } else {
        Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(ExportTraceServiceResponse::default().encode_to_vec())).boxed())
            .unwrap()
    }
}

fn status_only(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("not gzip: {e}"))?;
    Ok(out)
}

/// The messages of a gRPC request body: each a compressed flag, a big-endian length and the
/// message; returned as (compressed, message).
fn grpc_messages(mut body: &[u8]) -> Result<Vec<(bool, Vec<u8>)>, String> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        let (header, rest) = body.split_first_chunk::<5>().ok_or("a truncated frame header")?;
        let [flag, a, b, c, d] = *header;
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        let message = rest.get(..len).ok_or("a truncated message")?;
        messages.push((flag == 1, message.to_vec()));
        body = &rest[len..];
    }
    Ok(messages)
}

/// A gRPC answer: on status 0 one empty `ExportTraceServiceResponse`; then the status trailers.
fn grpc_answer(status: u8, message: &str) -> Response<Body> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = Vec::new();
    if status == 0 {
        let reply = ExportTraceServiceResponse::default().encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(reply.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&reply);
        frames.push(Ok(Frame::data(Bytes::from(framed))));
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(u16::from(status)));
    if !message.is_empty() {
        trailers.insert(
            "grpc-message",
            HeaderValue::from_str(&message.replace(|c: char| !c.is_ascii_graphic(), "_")).unwrap(),
        );
    }
    frames.push(Ok(Frame::trailers(trailers)));
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap()
}
