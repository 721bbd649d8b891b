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

/// Every kind of audit event, one JSON object per line.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Event {
    Access(Box<AccessEvent>),
    Policy(PolicyEvent),
}

impl From<AccessEvent> for Event {
    fn from(e: AccessEvent) -> Self {
        Event::Access(Box::new(e))
    }
}

impl From<PolicyEvent> for Event {
    fn from(e: PolicyEvent) -> Self {
        Event::Policy(e)
    }
}

/// The proxy's own act of loading a policy: a new version went into force, or was rejected
/// and the previous one stays.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyEvent {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    #[serde(rename = "portcullis.audit.schema")]
    pub schema: u32,
    /// `policy_reload`
    #[serde(rename = "portcullis.act")]
    pub act: &'static str,
    /// `enforced` or `shadow`.
    #[serde(rename = "portcullis.policy.kind")]
    pub kind: &'static str,
    /// `loaded` or `rejected`.
    #[serde(rename = "portcullis.policy.result")]
    pub result: &'static str,
    /// The version that went into force (loaded) or was refused (absent: it did not parse).
    #[serde(rename = "portcullis.policy.version", skip_serializing_if = "Option::is_none")]
    pub version: Option<Arc<str>>,
    /// The version in force after the act.
    #[serde(
        rename = "portcullis.policy.in_force",
        skip_serializing_if = "Option::is_none"
    )]
    pub in_force: Option<Arc<str>>,
    /// Why a policy was rejected: `file:line: problem`, one entry each.
    #[serde(rename = "portcullis.policy.problems", skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

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
    /// Who, when a protected route authenticated the caller.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalFields>,
    #[serde(
        rename = "portcullis.duration.authn_us",
        skip_serializing_if = "Option::is_none"
    )]
    pub authn_us: Option<u64>,
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
    /// What the policy was asked and answered, on protected routes.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyFields>,
}

/// The policy question and answer, and the workflow the resource template recognised.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyFields {
    #[serde(rename = "portcullis.policy.domain")]
    pub domain: String,
    #[serde(rename = "portcullis.policy.object")]
    pub object: String,
    #[serde(rename = "portcullis.policy.action")]
    pub action: String,
    /// `file:line` of the rule that decided; absent when no rule matched.
    #[serde(rename = "portcullis.policy.rule", skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(rename = "portcullis.policy.version")]
    pub version: Arc<str>,
    #[serde(
        rename = "portcullis.policy.shadow_decision",
        skip_serializing_if = "Option::is_none"
    )]
    pub shadow: Option<&'static str>,
    #[serde(rename = "portcullis.duration.authz_us")]
    pub authz_us: u64,
    #[serde(rename = "cicd.pipeline.name", skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    #[serde(rename = "cicd.pipeline.run.id", skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(rename = "cicd.pipeline.task.name", skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(rename = "cicd.pipeline.task.run.id", skip_serializing_if = "Option::is_none")]
    pub task_run: Option<String>,
}

/// The principal's attributes. Built from `authn::Principal`; never a token or session id.
#[derive(Debug, Clone, Serialize)]
pub struct PrincipalFields {
    #[serde(rename = "enduser.id")]
    pub subject: String,
    #[serde(rename = "portcullis.principal.issuer")]
    pub issuer: String,
    #[serde(rename = "portcullis.principal.provider")]
    pub provider: String,
    #[serde(rename = "user.email", skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(rename = "portcullis.principal.groups")]
    pub groups: Vec<String>,
    #[serde(rename = "portcullis.client.id", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(rename = "portcullis.token.id", skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(
        rename = "portcullis.session.id_hash",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_id_hash: Option<String>,
}

impl From<&crate::authn::Principal> for PrincipalFields {
    fn from(p: &crate::authn::Principal) -> Self {
        PrincipalFields {
            subject: p.subject.clone(),
            issuer: p.issuer.clone(),
            provider: p.provider.clone(),
            email: p.email.clone(),
            groups: p.groups.clone(),
            client_id: p.client_id.clone(),
            token_id: p.token_id.clone(),
            session_id_hash: p.session_id_hash.clone(),
        }
    }
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
