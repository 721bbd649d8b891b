//! Typed audit events and where they go.
//!
//! One [`AccessEvent`] per request, allowed or denied, emitted once by the decision point in
//! `proxy::stack`. Field names follow the audit span schema (docs/audit.md), so the OTLP exporter
//! that arrives later maps them one to one. Secrets are never fields: no token, cookie,
//! authorization header or query string can be put into an event.

mod sink;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

pub use sink::{AuditSink, JsonlSink};

/// Version of the attribute set; bumped when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// The record of one access decision.
#[derive(Debug, Clone, Serialize)]
pub struct AccessEvent {
    /// When the request arrived; written as RFC 3339 UTC (formatted by the writer, off the request path).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    #[serde(rename = "portcullis.audit.schema")]
    pub schema: u32,
    #[serde(rename = "portcullis.request.id")]
    pub request_id: String,
    #[serde(rename = "portcullis.decision")]
    pub decision: &'static str,
    #[serde(rename = "portcullis.reason")]
    pub reason: &'static str,
    #[serde(rename = "portcullis.principal.kind")]
    pub principal_kind: &'static str,
    #[serde(rename = "portcullis.auth.method")]
    pub auth_method: &'static str,
    #[serde(rename = "portcullis.route", skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<String>>,
    #[serde(rename = "http.request.method")]
    pub method: Cow<'static, str>,
    #[serde(rename = "url.scheme")]
    pub scheme: &'static str,
    /// The canonical path; absent when the request was refused before one could be built.
    #[serde(rename = "url.path", skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(rename = "server.address", skip_serializing_if = "Option::is_none")]
    pub server_address: Option<String>,
    #[serde(rename = "server.port")]
    pub server_port: u16,
    #[serde(rename = "client.address")]
    pub client_address: IpAddr,
    #[serde(rename = "network.protocol.version")]
    pub protocol_version: &'static str,
    #[serde(rename = "user_agent.original", skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(rename = "http.response.status_code")]
    pub status: u16,
    /// Why the proxy could not complete an allowed request (upstream_unavailable, …).
    #[serde(rename = "error.type", skip_serializing_if = "Option::is_none")]
    pub error_type: Option<&'static str>,
    #[serde(
        rename = "portcullis.duration.upstream_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_ms: Option<f64>,
    #[serde(rename = "portcullis.duration.total_us")]
    pub total_us: u64,
}

fn rfc3339<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

/// User agents are client-controlled: cap the length so one request cannot bloat the trail.
/// JSON encoding escapes control characters, so a value cannot forge a line of its own.
pub fn bounded(value: &str, max: usize) -> String {
    match value.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", value.get(..i).unwrap_or("")),
        None => value.to_string(),
    }
}
