//! The per-request context: everything the phases learn about one request, in one place.
//!
//! It is passed explicitly through the phases in `stack.rs` (not hidden in extensions), and the
//! audit event is made from it once, at the end, whatever the outcome.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::PolicyFields;
use crate::canonical::Canonical;
use crate::decision::Decision;
use crate::identity::Principal;
use crate::proxy::routes::Route;
use crate::proxy::trace::TraceCtx;

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// The peer is in `server.trusted_proxies`: its forwarding headers and request id are believed.
    pub trusted: bool,
    /// The peer's address as the forwarding headers spell it (`X-Forwarded-For`, and the node of
    /// `Forwarded`: an IPv6 address bracketed and quoted), written once per connection.
    pub peer_for: String,
    pub peer_node: String,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr, tls: bool, trusted: bool) -> Self {
        let ip = peer.ip();
        let node = if ip.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.to_string()
        };
        ConnInfo {
            peer,
            local,
            tls,
            trusted,
            peer_for: ip.to_string(),
            peer_node: node,
        }
    }
}

#[derive(Debug)]
pub struct RequestCtx {
    pub request_id: String,
    pub conn: Arc<ConnInfo>,
    pub started: Instant,
    pub canonical: Option<Canonical>,
    pub route: Option<Arc<Route>>,
    pub decision: Option<Decision>,
    /// The claim a `claims_not_bound` refusal names.
    pub refused_claim: Option<Arc<str>>,
    /// Whom a credential refused after it verified (`revoked`) named: recorded, never acted as.
    pub refused_principal: Option<Arc<Principal>>,
    /// The issuer a `wrong_issuer` token named (unverified): recorded, bounded.
    pub refused_issuer: Option<Arc<str>>,
    /// Who is calling, once a protected route's authenticators vouched for them.
    pub principal: Option<Arc<Principal>>,
    pub authn_duration: Option<Duration>,
    /// Time from sending upstream to the upstream's response head.
    pub upstream_duration: Option<Duration>,
    /// The upstream's status, once its response head arrived.
    pub upstream_status: Option<u16>,
    /// What the request body did on its way upstream (bytes, and whose fault a failure was).
    pub tally: Option<Arc<crate::proxy::body::Tally>>,
    /// What the policy was asked and answered (protected routes).
    pub policy: Option<PolicyFields>,
    /// The trace the access span joins, and what the upstream is told of it.
    pub trace: TraceCtx,
    /// Requests to the proxy's own endpoints: `sign_in`, `login` or `logout`.
    pub act: Option<&'static str>,
    /// A session cookie the response must set (the session moved to a new id).
    pub set_cookie: Option<String>,
    /// The browser session that authenticated the caller (its access token is what token
    /// exchange sends on the caller's behalf).
    pub session: Option<Arc<crate::session::Session>>,
}

impl RequestCtx {
    pub fn new(request_id: String, conn: Arc<ConnInfo>, trace: TraceCtx) -> Self {
        RequestCtx {
            request_id,
            conn,
            started: Instant::now(),
            canonical: None,
            route: None,
            decision: None,
            refused_claim: None,
            refused_principal: None,
            refused_issuer: None,
            principal: None,
            authn_duration: None,
            upstream_duration: None,
            upstream_status: None,
            tally: None,
            policy: None,
            trace,
            act: None,
            set_cookie: None,
            session: None,
        }
    }
}
