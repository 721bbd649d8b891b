//! Typed audit events and where they go.
//!
//! One [`AccessEvent`] per request, allowed or denied, emitted once by the decision point in
//! `proxy::stack`, and one event per act of the proxy's own (a policy reload, a session refresh).
//! Each event becomes one OpenTelemetry span: [`Event::into_span`] is the one place attribute
//! names are written (docs/audit.md is their reference). Secrets are never fields: no token,
//! cookie, authorization header or query string can be put into an event.
//!
//! Events are sealed (sequence number and hash chain, [`record`]) off the request path and then
//! delivered: to a JSON-lines file ([`JsonlSink`]) or over OTLP with a disk spool ([`pipeline`]).

pub mod otlp;
pub mod pipeline;
pub mod readable;
pub mod record;
mod sink;
pub mod spool;
pub mod verify;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData};

use crate::identity::Principal;

pub use crate::metrics::AuditStats;
pub use record::SpanMeta;
pub use sink::{Intake, JsonlSink};

/// Anything that takes audit events.
pub trait AuditSink: Send + Sync + 'static {
    fn emit(&self, event: Event);
    /// Returns once everything emitted before the call is exported or safely on disk.
    fn flush(&self);
    /// False while the sink cannot take more records and the operator chose to fail closed:
    /// new requests are then refused with `audit_unavailable`.
    fn admits(&self) -> bool {
        true
    }
}

/// A sink that drops every event: for unit tests whose subject is not the audit trail.
#[cfg(test)]
pub(crate) struct Discard;

#[cfg(test)]
impl AuditSink for Discard {
    fn emit(&self, _: Event) {}
    fn flush(&self) {}
}

/// Version of the attribute set; bumped when a field changes meaning.
pub const SCHEMA_VERSION: i64 = 3;

/// A span's place in a trace: its own id, and the caller's span when a `traceparent` came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
}

impl TraceIds {
    /// The root of a new trace.
    pub fn fresh() -> Self {
        let ids = RandomIdGenerator::default();
        TraceIds {
            trace_id: ids.new_trace_id(),
            span_id: ids.new_span_id(),
            parent: None,
        }
    }

    /// A new span inside the caller's trace.
    pub fn child_of(trace_id: TraceId, parent: SpanId) -> Self {
        TraceIds {
            trace_id,
            span_id: RandomIdGenerator::default().new_span_id(),
            parent: Some(parent),
        }
    }
}

/// The request an act happened during: its span is the act's parent.
#[derive(Debug, Clone, Copy)]
pub struct During<'a> {
    pub request_id: &'a str,
    pub trace: &'a TraceIds,
}

/// Every kind of audit event.
#[derive(Debug, Clone)]
pub enum Event {
    Access(Box<AccessEvent>),
    Policy(PolicyEvent),
    Session(Box<SessionEvent>),
    Token(Box<TokenEvent>),
    Revocation(Box<RevocationEvent>),
}

impl From<RevocationEvent> for Event {
    fn from(e: RevocationEvent) -> Self {
        Event::Revocation(Box::new(e))
    }
}

impl From<TokenEvent> for Event {
    fn from(e: TokenEvent) -> Self {
        Event::Token(Box::new(e))
    }
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

impl From<SessionEvent> for Event {
    fn from(e: SessionEvent) -> Self {
        Event::Session(Box::new(e))
    }
}

/// Where an event's attributes go: the span's attribute list ([`Attrs`], for the exporter), or
/// the record's line itself (`record::Sealer::seal_event`, for the JSON-lines sink, which needs
/// no span). Each event names its attributes once, in its `attributes`, for both.
trait Attributes {
    fn str(&mut self, key: &'static str, value: impl Text);
    fn int(&mut self, key: &'static str, value: u64);
    fn float(&mut self, key: &'static str, value: f64);
    fn flag(&mut self, key: &'static str, value: bool);
    fn strings<T: Text>(&mut self, key: &'static str, values: impl Iterator<Item = T>);
    fn opt(&mut self, key: &'static str, value: Option<impl Text>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }
    /// What the record of one of the proxy's own acts opens with.
    fn act(&mut self, act: &'static str, decision: &'static str) {
        self.int("portcullis.audit.schema", SCHEMA_VERSION.unsigned_abs());
        self.str("portcullis.act", act);
        self.str("portcullis.decision", decision);
    }
}

/// A span's attributes under construction: names are static, so building one allocates only
/// values.
struct Attrs(Vec<KeyValue>);

impl Attributes for Attrs {
    fn str(&mut self, key: &'static str, value: impl Text) {
        self.0.push(KeyValue::new(key, Value::String(value.text())));
    }
    fn int(&mut self, key: &'static str, value: u64) {
        self.0.push(KeyValue::new(key, saturating_i64(value)));
    }
    fn float(&mut self, key: &'static str, value: f64) {
        self.0.push(KeyValue::new(key, value));
    }
    fn flag(&mut self, key: &'static str, value: bool) {
        self.0.push(KeyValue::new(key, value));
    }
    fn strings<T: Text>(&mut self, key: &'static str, values: impl Iterator<Item = T>) {
        let values = values.map(Text::text).collect();
        self.0
            .push(KeyValue::new(key, Value::Array(Array::String(values))));
    }
}

/// OpenTelemetry integers are signed.
fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Attribute text: read in place when written into a line, and turned into a value that clones
/// without copying for a span (opentelemetry-otlp's gRPC exporter clones every batch it sends:
/// 1.3 µs a record with owned strings, `cargo bench --bench audit`).
pub(crate) trait Text {
    fn view(&self) -> &str;
    fn text(self) -> StringValue;
}

impl Text for &'static str {
    fn view(&self) -> &str {
        self
    }
    fn text(self) -> StringValue {
        StringValue::from(self)
    }
}

impl Text for String {
    fn view(&self) -> &str {
        self
    }
    fn text(self) -> StringValue {
        StringValue::from(Arc::<str>::from(self))
    }
}

impl Text for Cow<'static, str> {
    fn view(&self) -> &str {
        self
    }
    fn text(self) -> StringValue {
        match self {
            Cow::Borrowed(s) => s.text(),
            Cow::Owned(s) => s.text(),
        }
    }
}

impl Text for Arc<str> {
    fn view(&self) -> &str {
        self
    }
    fn text(self) -> StringValue {
        StringValue::from(self)
    }
}

/// Text borrowed from what the request shares (its principal, its route): copied only when a
/// span is built.
impl Text for &String {
    fn view(&self) -> &str {
        self
    }
    fn text(self) -> StringValue {
        StringValue::from(Arc::<str>::from(self.as_str()))
    }
}

impl Event {
    /// A request refused with `audit_unavailable`.
    pub fn is_audit_refusal(&self) -> bool {
        matches!(self, Event::Access(e) if e.reason == "audit_unavailable")
    }

    /// The event as the span it is exported as (not yet sealed).
    pub fn into_span(self) -> SpanData {
        let meta = self.meta();
        let mut a = Attrs(Vec::with_capacity(40));
        self.attributes(&mut a);
        meta.into_span(a.0)
    }

    /// What the span says besides its attributes. Acts outside a request start a trace of their
    /// own here, so this is asked once per record.
    fn meta(&self) -> SpanMeta {
        match self {
            Event::Access(e) => e.meta(),
            Event::Policy(e) => act_meta("portcullis.policy_reload", e.time, TraceIds::fresh()),
            // Inside the request's trace, under its access span.
            Event::Session(e) => act_meta(
                "portcullis.session_refresh",
                e.time,
                TraceIds::child_of(e.parent.trace_id, e.parent.span_id),
            ),
            Event::Token(e) => act_meta(e.span_name(), e.time, TraceIds::fresh()),
            Event::Revocation(e) => act_meta("portcullis.revocation", e.time, TraceIds::fresh()),
        }
    }

    fn attributes(self, a: &mut impl Attributes) {
        match self {
            Event::Access(e) => e.attributes(a),
            Event::Policy(e) => e.attributes(a),
            Event::Session(e) => e.attributes(a),
            Event::Token(e) => e.attributes(a),
            Event::Revocation(e) => e.attributes(a),
        }
    }
}

/// The proxy's own act of loading a policy: a new version went into force, or was rejected
/// and the previous one stays.
#[derive(Debug, Clone)]
pub struct PolicyEvent {
    pub time: SystemTime,
    /// `enforced` or `shadow`.
    pub kind: &'static str,
    /// `loaded` or `rejected`.
    pub result: &'static str,
    /// The version that went into force (loaded) or was refused (absent: it did not parse).
    pub version: Option<Arc<str>>,
    /// The version in force after the act.
    pub in_force: Option<Arc<str>>,
    /// Why a policy was rejected: `file:line: problem`, one entry each.
    pub problems: Vec<String>,
}

impl PolicyEvent {
    fn attributes(self, a: &mut impl Attributes) {
        a.act("policy_reload", "allow");
        a.str("portcullis.policy.kind", self.kind);
        a.str("portcullis.policy.result", self.result);
        a.opt("portcullis.policy.version", self.version);
        a.opt("portcullis.policy.in_force", self.in_force);
        if !self.problems.is_empty() {
            a.strings("portcullis.policy.problems", self.problems.into_iter());
        }
    }
}

/// A browser session's tokens refreshed at the identity provider, or the refresh refused.
#[derive(Debug, Clone)]
pub struct SessionEvent {
    pub time: SystemTime,
    /// The request whose authentication refreshed the session.
    pub request_id: String,
    pub parent: TraceIds,
    /// The principal's groups changed, so the session moved to a new id.
    pub rotated: bool,
    /// `ok`, `refused` (the session ends) or `unreachable` (kept while its token is valid).
    pub result: &'static str,
    pub principal: Arc<Principal>,
    pub kind: &'static str,
}

impl SessionEvent {
    fn attributes(self, a: &mut impl Attributes) {
        let decision = if self.result == "refused" { "deny" } else { "allow" };
        a.act("session_refresh", decision);
        a.str("portcullis.session.refresh", self.result);
        if self.rotated {
            a.flag("portcullis.session.rotated", true);
        }
        a.str("portcullis.principal.kind", self.kind);
        a.str("portcullis.auth.method", "session");
        a.str("portcullis.request.id", self.request_id);
        write_principal(&self.principal, true, a);
    }
}

/// The proxy as an issuer: an identity assertion minted (once per caller, route and lifetime,
/// not per request), a signing key rotated, a retired key removed. Never the token or a key.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub time: SystemTime,
    /// `assertion_minted`, `key_rotation`, `key_removed`, `key_revoked` or `credential_brokered`.
    pub act: &'static str,
    /// The signing key (minted), the new active key (rotation), the key removed.
    pub kid: String,
    /// Rotation: the key that retired.
    pub retired_kid: Option<String>,
    pub jti: Option<String>,
    pub route: Option<Arc<String>>,
    pub audience: Option<String>,
    pub expires: Option<SystemTime>,
    pub principal: Option<Arc<Principal>>,
    /// A brokered credential: the client the proxy obtained it as.
    pub client_id: Option<String>,
    /// A brokered credential: `client_credentials` or `token_exchange`.
    pub grant: Option<&'static str>,
}

impl TokenEvent {
    fn span_name(&self) -> &'static str {
        match self.act {
            "assertion_minted" => "portcullis.assertion_minted",
            "credential_brokered" => "portcullis.credential_brokered",
            "key_removed" => "portcullis.key_removed",
            "key_revoked" => "portcullis.key_revoked",
            _ => "portcullis.key_rotation",
        }
    }

    fn attributes(self, a: &mut impl Attributes) {
        a.act(self.act, "allow");
        if !self.kid.is_empty() {
            a.str("portcullis.token.kid", self.kid);
        }
        a.opt("portcullis.token.retired_kid", self.retired_kid);
        a.opt("portcullis.token.id", self.jti);
        a.opt("portcullis.route", self.route.as_deref());
        a.opt("portcullis.token.audience", self.audience);
        if let Some(expires) = self.expires {
            a.str(
                "portcullis.token.expires",
                humantime::format_rfc3339_seconds(expires).to_string(),
            );
        }
        if let Some(p) = &self.principal {
            // On a brokered credential `portcullis.client.id` names the proxy's client, once.
            write_principal(p, self.client_id.is_none(), a);
        }
        a.opt("portcullis.client.id", self.client_id);
        if let Some(grant) = self.grant {
            a.str("portcullis.token.grant", grant);
        }
    }
}

/// A deny entry came into force in this replica's copy of the list (`portcullis revoke`, a
/// back-channel logout; made here or on another replica): each replica records what it now
/// refuses, once.
#[derive(Debug, Clone)]
pub struct RevocationEvent {
    pub time: SystemTime,
    /// `subject`, `sessions_of`, `sid` or `all_sessions`.
    pub scope: &'static str,
    /// The provider that vouched for the name; `None` for `all_sessions`.
    pub provider: Option<String>,
    /// The revoked subject (`subject`, `sessions_of`).
    pub subject: Option<String>,
    /// A digest of the provider session id (`sid`): enough to match the provider's own log.
    pub sid_hash: Option<String>,
    /// Sessions begun and tokens issued before this are refused...
    pub before: SystemTime,
    /// ...until this, when nothing it refuses could be valid anyway.
    pub expires: SystemTime,
}

impl RevocationEvent {
    fn attributes(self, a: &mut impl Attributes) {
        a.act("revocation", "allow");
        a.str("portcullis.revocation.scope", self.scope);
        a.opt("portcullis.principal.provider", self.provider);
        a.opt("enduser.id", self.subject);
        a.opt("portcullis.revocation.sid_hash", self.sid_hash);
        a.str(
            "portcullis.revocation.before",
            humantime::format_rfc3339_millis(self.before).to_string(),
        );
        a.str(
            "portcullis.revocation.expires",
            humantime::format_rfc3339_seconds(self.expires).to_string(),
        );
    }
}

fn act_meta(name: &'static str, time: SystemTime, trace: TraceIds) -> SpanMeta {
    SpanMeta {
        name: Cow::Borrowed(name),
        kind: SpanKind::Internal,
        trace,
        start: time,
        end: time,
        error: None,
    }
}

/// The record of one access decision.
#[derive(Debug, Clone)]
pub struct AccessEvent {
    /// When the request arrived.
    pub time: SystemTime,
    pub trace: TraceIds,
    /// Requests to the proxy's own endpoints are acts: `sign_in`, `login`, `logout`.
    pub act: Option<&'static str>,
    pub request_id: String,
    pub decision: &'static str,
    pub reason: &'static str,
    /// For `claims_not_bound`: the claim (its name; never its value).
    pub reason_claim: Option<Arc<str>>,
    /// For `wrong_issuer`: the issuer the token named (untrusted: bounded when written).
    pub token_issuer: Option<Arc<str>>,
    pub principal_kind: &'static str,
    pub auth_method: &'static str,
    /// Who, when a protected route authenticated the caller.
    pub principal: Option<Arc<Principal>>,
    pub authn_us: Option<u64>,
    pub route: Option<Arc<String>>,
    pub method: Cow<'static, str>,
    pub scheme: &'static str,
    /// The canonical path; absent when the request was refused before one could be built.
    pub path: Option<String>,
    pub server_address: Option<String>,
    pub server_port: u16,
    pub client_address: IpAddr,
    pub protocol_version: &'static str,
    pub user_agent: Option<String>,
    pub status: u16,
    /// Why the proxy could not complete an allowed request (upstream_unavailable, …).
    pub error_type: Option<&'static str>,
    /// The proxy itself failed (a 5xx it made): the span's status is Error.
    pub failed: bool,
    /// How the exchange ended: `completed`, `client_closed` or `upstream_aborted`.
    pub outcome: &'static str,
    /// The upstream's status, when its response head arrived (also when the client had left).
    pub upstream_status: Option<u16>,
    /// Request body bytes received from the client, response body bytes handed to it.
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream_ms: Option<f64>,
    pub total: Duration,
    /// What the policy was asked and answered, on protected routes.
    pub policy: Option<PolicyFields>,
    /// Workflow attributes from configured request headers (`audit.header_attributes`); the
    /// resource template's values win over these.
    pub workflow: Vec<(&'static str, String)>,
}

impl AccessEvent {
    fn meta(&self) -> SpanMeta {
        let name = match self.act {
            Some("sign_in") => "portcullis.sign_in",
            Some("login") => "portcullis.login",
            Some("logout") => "portcullis.logout",
            _ => "access",
        };
        SpanMeta {
            name: Cow::Borrowed(name),
            kind: SpanKind::Server,
            trace: self.trace,
            start: self.time,
            end: self.time + self.total,
            error: self.failed.then(|| self.error_type.unwrap_or(self.reason)),
        }
    }

    fn attributes(self, a: &mut impl Attributes) {
        a.int("portcullis.audit.schema", SCHEMA_VERSION.unsigned_abs());
        if let Some(act) = self.act {
            a.str("portcullis.act", act);
        }
        a.str("portcullis.request.id", self.request_id);
        a.str("portcullis.decision", self.decision);
        a.str("portcullis.reason", self.reason);
        a.opt("portcullis.reason.claim", self.reason_claim);
        if let Some(issuer) = self.token_issuer {
            a.str("portcullis.token.issuer", bounded(&issuer, MAX_CLAIM_CHARS));
        }
        a.str("portcullis.principal.kind", self.principal_kind);
        a.str("portcullis.auth.method", self.auth_method);
        if let Some(p) = &self.principal {
            write_principal(p, true, a);
        }
        if let Some(us) = self.authn_us {
            a.int("portcullis.duration.authn_us", us);
        }
        a.opt("portcullis.route", self.route.as_deref());
        a.str("http.request.method", self.method);
        a.str("url.scheme", self.scheme);
        if let Some(path) = self.path {
            a.str("url.path", path);
        }
        a.opt("server.address", self.server_address);
        a.int("server.port", u64::from(self.server_port));
        a.str("client.address", self.client_address.to_string());
        a.str("network.protocol.version", self.protocol_version);
        a.opt("user_agent.original", self.user_agent);
        a.int("http.response.status_code", u64::from(self.status));
        a.opt("error.type", self.error_type);
        a.str("portcullis.outcome", self.outcome);
        if let Some(status) = self.upstream_status {
            a.int("portcullis.upstream.status_code", u64::from(status));
        }
        a.int("http.request.body.size", self.request_bytes);
        a.int("http.response.body.size", self.response_bytes);
        if let Some(ms) = self.upstream_ms {
            a.float("portcullis.duration.upstream_ms", ms);
        }
        let total_us = u64::try_from(self.total.as_micros()).unwrap_or(u64::MAX);
        a.int("portcullis.duration.total_us", total_us);
        let mut templated: Vec<&'static str> = Vec::new();
        if let Some(p) = self.policy {
            a.str("portcullis.policy.domain", p.domain);
            a.str("portcullis.policy.object", p.object);
            a.str("portcullis.policy.action", p.action);
            a.opt("portcullis.policy.rule", p.rule);
            a.str("portcullis.policy.version", p.version);
            a.opt("portcullis.policy.shadow_decision", p.shadow);
            a.int("portcullis.duration.authz_us", p.authz_us);
            if !p.decided.is_empty() {
                a.strings("portcullis.policy.decided", p.decided.into_iter());
            }
            if let Some(filtered) = p.filtered {
                a.int("portcullis.policy.filtered", filtered);
            }
            for (key, value) in [
                ("cicd.pipeline.name", p.pipeline),
                ("cicd.pipeline.run.id", p.run),
                ("cicd.pipeline.task.name", p.task),
                ("cicd.pipeline.task.run.id", p.task_run),
            ] {
                if let Some(v) = value {
                    templated.push(key);
                    a.str(key, v);
                }
            }
        }
        for (key, value) in self.workflow {
            if !templated.contains(&key) {
                a.str(key, value);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct PolicyFields {
    pub domain: Arc<str>,
    pub object: String,
    pub action: String,
    /// `file:line` of the rule that decided; absent when no rule matched.
    pub rule: Option<String>,
    pub version: Arc<str>,
    pub shadow: Option<&'static str>,
    pub authz_us: u64,
    pub pipeline: Option<String>,
    pub run: Option<String>,
    pub task: Option<String>,
    pub task_run: Option<String>,
    /// Every `action object` asked when the request named more than one (a bulk body, a list
    /// of ids), in order, up to the one that decided.
    pub decided: Vec<String>,
    /// Items a response filter removed.
    pub filtered: Option<u64>,
}

/// Who, in a record: the request's own principal, read where it is (never a token, and the
/// session id only as its hash). `client_id: false` leaves `portcullis.client.id` to the event
/// (a brokered credential names the proxy's own client there).
fn write_principal(p: &Principal, client_id: bool, a: &mut impl Attributes) {
    claim(a, "enduser.id", &p.subject);
    a.str("portcullis.principal.issuer", &p.issuer);
    a.str("portcullis.principal.provider", &p.provider);
    if let Some(email) = &p.email {
        claim(a, "user.email", email);
    }
    let groups = p.groups.get(..MAX_GROUPS).unwrap_or(&p.groups);
    if groups.len() < p.groups.len() || groups.iter().any(|g| needs_bounding(g)) {
        let mut kept: Vec<String> = groups.iter().map(|g| bounded(g, MAX_CLAIM_CHARS)).collect();
        if groups.len() < p.groups.len() {
            kept.push(format!("… {} more", p.groups.len() - groups.len()));
        }
        a.strings("portcullis.principal.groups", kept.into_iter());
    } else {
        a.strings("portcullis.principal.groups", groups.iter());
    }
    if client_id && let Some(client) = &p.client_id {
        claim(a, "portcullis.client.id", client);
    }
    if let Some(jti) = &p.token_id {
        claim(a, "portcullis.token.id", jti);
    }
    a.opt("portcullis.session.id_hash", p.session_id_hash.as_ref());
}

/// The longest claim value a record keeps, in characters, and the most groups it lists.
pub const MAX_CLAIM_CHARS: usize = 256;
const MAX_GROUPS: usize = 256;

/// A value from a token (the provider's text, which an attacker controlling an account's
/// profile may have chosen): written as it is when short and free of control characters,
/// else capped and escaped like every other client-controlled text.
fn claim(a: &mut impl Attributes, key: &'static str, value: &String) {
    if needs_bounding(value) {
        a.str(key, bounded(value, MAX_CLAIM_CHARS));
    } else {
        a.str(key, value);
    }
}

fn needs_bounding(value: &str) -> bool {
    value.len() > MAX_CLAIM_CHARS || value.chars().any(char::is_control)
}

pub fn bounded(value: &str, max: usize) -> String {
    let cut = value.char_indices().nth(max).map(|(i, _)| i);
    let kept = cut.map_or(value, |i| value.get(..i).unwrap_or(""));
    let mut out = if kept.chars().any(char::is_control) {
        kept.chars()
            .fold(String::with_capacity(kept.len() + 8), |mut s, c| {
                if c.is_control() {
                    s.push_str(&c.escape_unicode().to_string());
                } else {
                    s.push(c);
                }
                s
            })
    } else {
        kept.to_string()
    };
    if cut.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_is_capped_and_control_characters_are_escaped() {
        assert_eq!(bounded("curl/8.0", 256), "curl/8.0");
        assert_eq!(bounded("abcdef", 3), "abc…");
        assert_eq!(bounded("a\nb\tc", 256), "a\\u{a}b\\u{9}c");
    }

    #[test]
    fn claims_in_a_record_are_capped_and_their_control_characters_escaped() {
        let mut principal = std::sync::Arc::new(crate::identity::Principal::example());
        let p = Arc::make_mut(&mut principal);
        p.subject = "alice\r\n\u{1b}[31mroot".into();
        p.email = Some("x".repeat(300));
        p.groups = (0..300).map(|i| format!("g{i}")).collect();
        p.groups[0] = "dev\nadmins".into();
        let mut attributes = Attrs(Vec::new());
        write_principal(p, true, &mut attributes);
        let get = |key: &str| {
            attributes
                .0
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.clone())
                .unwrap()
        };
        assert_eq!(get("enduser.id").as_str(), "alice\\u{d}\\u{a}\\u{1b}[31mroot");
        let email = get("user.email").as_str().into_owned();
        assert_eq!(email.chars().count(), MAX_CLAIM_CHARS + 1);
        assert!(email.ends_with('…'));
        let Value::Array(Array::String(groups)) = get("portcullis.principal.groups") else {
            panic!("groups are a list")
        };
        assert_eq!(groups.len(), MAX_GROUPS + 1);
        assert_eq!(groups[0].as_str(), "dev\\u{a}admins");
        assert_eq!(groups[MAX_GROUPS].as_str(), "… 44 more");
    }
}
