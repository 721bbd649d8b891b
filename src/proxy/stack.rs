//! The one place the request path is composed, read top to bottom. [`Proxy::handle`] takes the
//! request id (from a trusted hop, or generated) and opens the exchange that records it; then
//! `phases` runs, each a method below:
//!
//! 1. `canonical_view`: one method, authority and path, or 400; an HTTP/2 head over the header
//!    limits is 431 (hyper refuses HTTP/1 ones while reading). `/.portcullis/…` is the proxy's
//!    own (`reserved`: sign-in, callback, sign-out; never forwarded), and so are the issuer's
//!    documents (`own_document`);
//! 2. `find_route`: host then path prefix, or 404 (nothing is forwarded); `preflight` answers a
//!    CORS preflight on a route with a CORS policy, before authentication;
//! 3. `authenticate` (all but public access): the authenticator chain against the route's
//!    providers, or 401/503 with the reason;
//! 4. `authorize` (protected access): the route's resource template names the objects and verb
//!    (reading the body, or looking the object up, when it must), and the policy in force answers
//!    in the route's domain (cached per policy version);
//! 5. `decide`: a `Permit`, or a reason; `refuse` turns the reason into 401, 403 or 500, or sends
//!    a page navigation that could sign in to sign in;
//! 6. `broker_credentials`: the identity assertion and the route's brokered token;
//! 7. `forward`: strip, then inject headers; stream to the upstream; filter a listed answer;
//!
//! and, whatever happened, `error::rescue` makes the error response and exactly one audit event
//! is emitted, its `failed` taken from the error's [`Fault`] (the client's, the upstream's, or
//! the proxy's own). Phases are plain async calls on one `RequestCtx` rather than tower layers,
//! because each needs what the previous ones learned and the audit event must see every exit.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::audit::{AccessEvent, AuditSink, PolicyFields, bounded};
use crate::authn::browser::{RESERVED, is_navigation};
use crate::authn::{Authn, Outcome};
use crate::authz::resources::{LookupPlan, Resource, ResponseFilter, RuleAccess};
use crate::authz::{self, Authz, Query};
use crate::body::ProxyBody;
use crate::canonical::Canonical;
use crate::config::Access;
use crate::decision::{Decision, Fault, PolicyAnswer, Reason, decide};
use crate::error::{Page, ProxyError, SignIn, Who, rescue, wants_html};
use crate::identity::{AuthMethod, Principal};
use crate::metrics::Metrics;
use crate::proxy::body::{ClientBody, Inbound};
use crate::proxy::context::{ConnInfo, RequestCtx};
use crate::proxy::cors;
use crate::proxy::exchange::{End, Ending, Exchange, Failure, Recorded, Seen};
use crate::proxy::forward::{self, forward};
use crate::proxy::routes::{Route, RouteTable};
use crate::proxy::trace::TraceCtx;
use crate::secret::Secret;
use crate::tokens::broker::Caller;

/// `/.portcullis/backchannel-logout`: where providers post logout tokens.
const BACKCHANNEL_LOGOUT: &str = "backchannel-logout";
/// The most a reserved endpoint reads of a request body (a logout token form).
const SMALL_BODY: u64 = 32 * 1024;

/// Route name → the upstream's own public keys (`[routes.assertion] upstream_jwks`), served in
/// the route's JWKS beside the proxy's.
pub type UpstreamKeys = HashMap<String, Arc<[serde_json::Value]>>;

pub struct Proxy {
    routes: RouteTable,
    authn: Arc<Authn>,
    /// Present when some route is `protected`.
    authz: Option<Arc<Authz>>,
    trusted_proxies: Vec<IpNet>,
    audit: Arc<dyn AuditSink>,
    metrics: Arc<Metrics>,
    /// `audit.header_attributes`: workflow attribute ← request header.
    header_attributes: Vec<(&'static str, http::HeaderName)>,
    /// Signs identity assertions (routes with `[routes.assertion]`).
    minter: Option<Arc<crate::tokens::Minter>>,
    /// `server.limits`, for HTTP/2 heads (hyper enforces them on HTTP/1 while reading).
    limits: crate::config::Limits,
    /// `server.strip_request_headers`, normalized.
    strip_extra: Vec<String>,
    /// The HTTPS listener's port, where a browser on plain HTTP is sent to sign in.
    https_port: Option<u16>,
    upstream_keys: UpstreamKeys,
}

impl Proxy {
    /// `config` supplies the trusted proxies and the audit's header attributes.
    pub fn new(
        routes: RouteTable,
        authn: Arc<Authn>,
        authz: Option<Arc<Authz>>,
        config: &crate::config::Config,
        audit: Arc<dyn AuditSink>,
        metrics: Arc<Metrics>,
        minter: Option<Arc<crate::tokens::Minter>>,
    ) -> Self {
        // Validation allows only the workflow attributes, so every name finds its static twin.
        let header_attributes = config
            .audit
            .header_attributes
            .iter()
            .filter_map(|(attribute, header)| {
                let key = crate::config::WORKFLOW_ATTRIBUTES
                    .iter()
                    .find(|a| **a == attribute.as_str())?;
                Some((*key, http::HeaderName::from_bytes(header.as_bytes()).ok()?))
            })
            .collect();
        Proxy {
            routes,
            authn,
            authz,
            trusted_proxies: config.server.trusted_proxies.clone(),
            audit,
            metrics,
            header_attributes,
            minter,
            limits: config.server.limits.clone(),
            strip_extra: forward::normalize_extra(&config.server.strip_request_headers),
            https_port: config
                .server
                .https
                .as_deref()
                .and_then(crate::config::socket_addr)
                .map(|a| a.port()),
            upstream_keys: HashMap::new(),
        }
    }

    /// Routes' own JWKS: the proxy's keys and each upstream's, by route name.
    pub fn with_upstream_keys(mut self, keys: UpstreamKeys) -> Self {
        self.upstream_keys = keys;
        self
    }

    /// The port the HTTPS listener actually bound (the configured one may be 0).
    pub fn with_https_port(mut self, port: Option<u16>) -> Self {
        if port.is_some() {
            self.https_port = port;
        }
        self
    }

    pub fn authn(&self) -> &Authn {
        &self.authn
    }

    /// Each identity provider of this configuration, and whether it has its signing keys.
    pub fn key_states(&self) -> Vec<(String, bool)> {
        self.authn.key_states()
    }

    pub fn session_store_health(&self) -> crate::session::Health {
        self.authn.browser.store_health()
    }

    /// Whether this replica hears revocations, for `/readyz` (shared stores only).
    pub fn session_store_subscription(&self) -> Option<String> {
        self.authn.browser.store_subscription()
    }

    /// A shared store whose deny list this replica has never read: it cannot know what was
    /// revoked before it started, so it must not be sent traffic yet.
    pub fn deny_list_unknown(&self) -> bool {
        self.authn.browser.revocations().unknown()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Serves one request. Never fails: every error becomes a response here. The response's
    /// body writes the request's one audit record when the exchange ends (see `exchange`).
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Recorded> {
        let request_id = request_id(req.headers(), conn.trusted);
        let ctx = RequestCtx::new(request_id, conn, TraceCtx::join(req.headers()));
        let seen = Seen {
            method: method_name(req.method()),
            version: req.version(),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .map(|v| bounded(&String::from_utf8_lossy(v.as_bytes()), 256)),
            wants_html: wants_html(req.headers()),
            origin: req.headers().get(header::ORIGIN).cloned(),
            time: SystemTime::now(),
            workflow: self
                .header_attributes
                .iter()
                .filter_map(|(key, name)| {
                    let value = req.headers().get(name)?;
                    Some((*key, bounded(&String::from_utf8_lossy(value.as_bytes()), 256)))
                })
                .collect(),
        };
        // From here on, a request that is dropped (its client gone) is still recorded.
        let mut exchange = Exchange::new(self.clone(), ctx, seen);
        let Some(ctx) = exchange.ctx() else {
            return Response::new(Recorded::new(crate::body::full(Bytes::new()), exchange));
        };

        // Nothing is done that cannot be recorded (fail-closed audit, spool full).
        let outcome = if self.audit.admits() {
            self.phases(ctx, req).await
        } else {
            Err(ProxyError::deny(Reason::AuditUnavailable))
        };
        let wants_html = exchange.seen().is_some_and(|s| s.wants_html);
        let origin = exchange.seen().and_then(|s| s.origin.clone());
        let Some(ctx) = exchange.ctx() else {
            return Response::new(Recorded::new(crate::body::full(Bytes::new()), exchange));
        };
        let (mut response, failure) = match outcome {
            Ok(response) => (response, None),
            Err(error) => {
                if let ProxyError::Denied { reason, claim, .. } = &error {
                    ctx.decision = Some(Decision::Deny(*reason));
                    if claim.is_some() {
                        ctx.refused_claim.clone_from(claim);
                    }
                }
                if error.fault() == Fault::Upstream {
                    let label = ctx.route.as_ref().map_or("-", |r| r.label.as_str());
                    tracing::warn!(request_id = %ctx.request_id, route = %label, error = %error, "upstream failure");
                }
                let page = wants_html.then(|| self.error_page(ctx));
                (
                    rescue(&error, &ctx.request_id, page.as_ref()),
                    Some(Failure::of(&error)),
                )
            }
        };
        if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
            response.headers_mut().insert(forward::X_REQUEST_ID, id);
        }
        if let Some(cookie) = ctx.set_cookie.take().and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if let Some(cors) = ctx.route.as_ref().and_then(|r| r.config.cors.as_ref())
            && ctx.decision != Some(Decision::Allow(Reason::CorsPreflight))
        {
            cors::decorate(cors, origin.as_ref(), response.headers_mut());
        }
        // A body the proxy gave up reading leaves the connection's framing unknown: close it.
        if failure.is_some_and(|f| f.code == "bad_request_body" || f.code == "body_timeout") {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        exchange.answer(response.status().as_u16(), failure);
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, Recorded::new(body, exchange))
    }

    /// The phases, in order; each returns early with a response or an error.
    async fn phases(
        &self,
        ctx: &mut RequestCtx,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let canonical = self.canonical_view(ctx, &req)?;
        if canonical.path.starts_with(RESERVED) {
            return self.reserved(ctx, canonical, req).await;
        }
        if let Some(document) = self.issuer_document(&canonical) {
            return Ok(self.own_document(ctx, canonical, document));
        }
        let route = self.find_route(ctx, canonical)?;
        if let Some(response) = self.preflight(ctx, &route, &req)? {
            return Ok(response);
        }
        // What the request acts on, by the route's template: it may also open an operation of a
        // protected route (what the API leaves unauthenticated) or need the body to tell.
        let mut resource = self.resource(&route, ctx.canonical.as_ref());
        let access = effective_access(&route, resource.as_ref());
        let refused = match access {
            Access::Public => None,
            _ => self.authenticate(ctx, &route, req.headers()).await,
        };
        let mut req = req.map(Inbound::Stream);
        let answer = match (refused, resource.as_mut()) {
            (None, resource) if access == Access::Protected => {
                Some(self.authorize(ctx, &route, resource, &mut req).await?)
            }
            _ => None,
        };
        let permit = match self.decide(ctx, access, refused, answer) {
            Ok(permit) => permit,
            Err(reason) => return self.refuse(ctx, &route, reason, req.headers()).await,
        };
        let identity = self.broker_credentials(ctx, &route, req.headers()).await?;
        self.forward(permit, ctx, &route, req, identity, resource).await
    }

    /// The one view of what the request is for, or 400; an HTTP/2 head over the header limits
    /// is 431 (hyper refuses HTTP/1 ones while reading).
    fn canonical_view(&self, ctx: &RequestCtx, req: &Request<Incoming>) -> Result<Canonical, ProxyError> {
        if req.version() == Version::HTTP_2 && http2_head_over(&self.limits, req) {
            return Err(ProxyError::deny(Reason::HeadersTooLarge));
        }
        Canonical::build(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            ctx.conn.tls,
        )
    }

    /// The proxy's own issuer documents (JWKS, discovery), answered without a route.
    fn own_document(
        &self,
        ctx: &mut RequestCtx,
        canonical: Canonical,
        document: String,
    ) -> Response<ProxyBody> {
        ctx.canonical = Some(canonical);
        ctx.decision = Some(Decision::Allow(Reason::IssuerMetadata));
        let mut response = Response::new(crate::body::full(document));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// Host, then path prefix; no route is 404 and nothing is forwarded.
    fn find_route(&self, ctx: &mut RequestCtx, canonical: Canonical) -> Result<Arc<Route>, ProxyError> {
        let route = self.routes.find(&canonical.host, &canonical.path).cloned();
        ctx.canonical = Some(canonical);
        let route = route.ok_or_else(|| ProxyError::deny(Reason::RouteNotFound))?;
        ctx.route = Some(route.clone());
        Ok(route)
    }

    /// A CORS preflight on a route with a CORS policy, answered before authentication.
    fn preflight(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        req: &Request<Incoming>,
    ) -> Result<Option<Response<ProxyBody>>, ProxyError> {
        let Some(policy) = &route.config.cors else {
            return Ok(None);
        };
        if !cors::is_preflight(req.method(), req.headers()) {
            return Ok(None);
        }
        let response = cors::preflight(policy, req.headers())?;
        ctx.decision = Some(Decision::Allow(Reason::CorsPreflight));
        Ok(Some(response))
    }

    /// The policy's answer for an authenticated caller on a protected route: the body read first
    /// when the template needs it, then every object the request names, then what a lookup finds.
    /// No principal or no resource is `Failed`: fail closed.
    async fn authorize(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        resource: Option<&mut Resource>,
        req: &mut Request<Inbound>,
    ) -> Result<PolicyAnswer, ProxyError> {
        let (Some(principal), Some(resource)) = (ctx.principal.clone(), resource) else {
            return Ok(PolicyAnswer::Failed);
        };
        if let Some(plan) = resource.body.take() {
            let body = std::mem::replace(req.body_mut(), Inbound::Read(Bytes::new()));
            let (bytes, json) = self.read_body(ctx, route, body).await?;
            plan.apply(resource, &json);
            *req.body_mut() = Inbound::Read(bytes);
        }
        let answer = self.ask_policy(ctx, route, &principal, resource).await;
        match resource.lookup.take() {
            Some(plan) if answer == PolicyAnswer::Allow => {
                self.look_up(ctx, route, &principal, resource, &plan, req.headers())
                    .await
            }
            _ => Ok(answer),
        }
    }

    /// The decision point: a `Permit`, or the reason for the denial. Records the decision.
    fn decide(
        &self,
        ctx: &mut RequestCtx,
        access: Access,
        refused: Option<Reason>,
        answer: Option<PolicyAnswer>,
    ) -> Result<crate::decision::Permit, Reason> {
        let (decision, permit) = match refused {
            Some(reason) => (Decision::Deny(reason), None),
            None => decide(access, ctx.principal.as_deref(), answer),
        };
        ctx.decision = Some(decision);
        permit.ok_or(decision.reason())
    }

    /// Forwards with the permit and, when the template filters the answer, removes what the
    /// caller may not see.
    async fn forward(
        &self,
        permit: crate::decision::Permit,
        ctx: &mut RequestCtx,
        route: &Route,
        mut req: Request<Inbound>,
        identity: Vec<(HeaderName, HeaderValue)>,
        resource: Option<Resource>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let filter = resource.and_then(|r| r.filter);
        if filter.is_some() {
            // A response the proxy must read is asked for uncompressed.
            req.headers_mut().remove(header::ACCEPT_ENCODING);
        }
        let idle = self.limits.idle_timeout.get();
        let response = forward(permit, ctx, route, req, identity, &self.strip_extra, idle).await?;
        match filter {
            Some(filter) => self.filter_response(ctx, route, &filter, response).await,
            None => Ok(response),
        }
    }

    /// What the upstream is told: the identity (the assertion, identity headers) and the route's
    /// brokered credential, if it has one.
    async fn broker_credentials(
        &self,
        ctx: &RequestCtx,
        route: &Route,
        headers: &http::HeaderMap,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ProxyError> {
        let mut identity = self.identity(ctx, route)?;
        let Some(broker) = &route.credentials else {
            return Ok(identity);
        };
        let principal = ctx.principal.as_deref();
        // The caller's own token, for token exchange: the bearer token the bearer path
        // verified, or the session's access token.
        let own = match principal.map(|p| p.auth_method) {
            Some(AuthMethod::Bearer) => crate::authn::bearer::presented(headers),
            Some(AuthMethod::Session) => ctx
                .session
                .as_ref()
                .and_then(|s| s.access_token.as_ref())
                .map(Secret::expose),
            None => None,
        };
        let caller = Caller {
            principal,
            token: own,
        };
        let token = broker.token(caller).await.map_err(|e| {
            tracing::error!(request_id = %ctx.request_id, route = %route.label, error = %e, "no brokered upstream credential; refused");
            ProxyError::deny(Reason::UpstreamCredentialUnavailable)
        })?;
        let value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ProxyError::deny(Reason::UpstreamCredentialUnavailable))?;
        // Replaces the client's Authorization, on the upstream side only.
        identity.push((header::AUTHORIZATION, value));
        Ok(identity)
    }

    /// What the request acts on, read from the upstream when the request does not name it (a
    /// backfill's DAG, the DAGs that produce an asset), then every question asked again with it.
    /// Asked only once the policy allowed what the request itself names, so a caller with no
    /// right to that cannot make the proxy read anything. An answer that does not say is
    /// `Unresolved`: refused.
    async fn look_up(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        principal: &Principal,
        resource: &mut Resource,
        plan: &LookupPlan,
        headers: &http::HeaderMap,
    ) -> Result<PolicyAnswer, ProxyError> {
        let (Some(path), Some(canonical)) = (plan.path.as_deref(), ctx.canonical.clone()) else {
            return Ok(PolicyAnswer::Unresolved);
        };
        let identity = self.broker_credentials(ctx, route, headers).await?;
        let limit = usize::try_from(route.config.filter_response_bytes).unwrap_or(usize::MAX);
        let Some(answer) = forward::look_up(route, &canonical, path, identity, limit).await? else {
            return Ok(PolicyAnswer::Unresolved);
        };
        if !plan.apply(resource, &answer) {
            return Ok(PolicyAnswer::Unresolved);
        }
        Ok(self.ask_policy(ctx, route, principal, resource).await)
    }

    /// `/.well-known/jwks.json` and `/.well-known/openid-configuration` on the issuer's own host,
    /// so upstreams verify assertions with any OIDC library pointed at `tokens.issuer`.
    fn issuer_document(&self, canonical: &Canonical) -> Option<String> {
        let minter = self.minter.as_ref()?;
        if !canonical.path.starts_with("/.well-known/") || canonical.method != Method::GET {
            return None;
        }
        let issuer: http::Uri = minter.issuer().parse().ok()?;
        let host = issuer.host()?;
        let port = issuer.port_u16();
        let same = host.eq_ignore_ascii_case(&canonical.host) && (port.is_none() || port == canonical.port);
        if !same {
            return None;
        }
        if let Some(name) = canonical
            .path
            .strip_prefix("/.well-known/jwks/")
            .and_then(|rest| rest.strip_suffix(".json"))
        {
            return self
                .upstream_keys
                .get(name)
                .map(|keys| route_jwks(&minter.jwks(), keys).to_string());
        }
        minter.document(&canonical.path)
    }

    /// The identity the upstream is told: the signed assertion and, if the route asks, plain
    /// identity headers. Added by the forwarder after it stripped whatever the client sent.
    fn identity(
        &self,
        ctx: &RequestCtx,
        route: &Route,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ProxyError> {
        let (Some((audience, header)), Some(config), Some(principal)) =
            (&route.assertion, &route.config.assertion, &ctx.principal)
        else {
            return Ok(Vec::new());
        };
        let failed = |e: &dyn std::fmt::Display| {
            tracing::error!(request_id = %ctx.request_id, error = %e, "identity assertion not minted; refused");
            ProxyError::deny(Reason::AssertionFailed)
        };
        let minter = self.minter.as_ref().ok_or_else(|| failed(&"no signing keys"))?;
        let minted = minter
            .mint(principal, audience, config.lifetime, &route.label, &config.claims)
            .map_err(|e| failed(&e))?;
        let mut out = Vec::with_capacity(4);
        let value = if *header == header::AUTHORIZATION {
            HeaderValue::from_str(&format!("Bearer {}", minted.token))
        } else {
            HeaderValue::from_str(&minted.token)
        };
        out.push((header.clone(), value.map_err(|e| failed(&e))?));
        if config.identity_headers {
            let plain = [
                (
                    "x-portcullis-user",
                    Some(format!("{}/{}", principal.provider, principal.subject)),
                ),
                ("x-portcullis-email", principal.email.clone()),
                ("x-portcullis-groups", Some(groups_header(&principal.groups))),
            ];
            for (name, value) in plain {
                // A value that is not a valid header (a newline in a claim) is left out, never sent raw.
                if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    out.push((HeaderName::from_static(name), v));
                }
            }
        }
        Ok(out)
    }

    /// The route's template's reading of the request (protected routes with a template, or a
    /// policy and no template: path and method).
    fn resource(&self, route: &Route, canonical: Option<&Canonical>) -> Option<Resource> {
        let (target, canonical) = (route.policy.as_ref()?, canonical?);
        (route.config.access == Access::Protected).then(|| {
            target.resource(
                canonical.method.as_str(),
                &canonical.path,
                canonical.query.as_deref(),
            )
        })
    }

    /// Runs the authenticator chain against the route's providers; the principal goes into the
    /// context, a refusal is returned.
    async fn authenticate(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        headers: &http::HeaderMap,
    ) -> Option<Reason> {
        let started = Instant::now();
        let during = crate::audit::During {
            request_id: &ctx.request_id,
            trace: &ctx.trace.ids,
        };
        let secure = sessions_secure(&ctx.conn, ctx.canonical.as_ref(), headers);
        let outcome = self
            .authn
            .authenticate(headers, &route.providers, during, secure)
            .await;
        ctx.authn_duration = Some(started.elapsed());
        match outcome {
            Outcome::Authenticated(principal) => ctx.principal = Some(principal),
            Outcome::Session { session, moved } => {
                ctx.principal = Some(session.principal.clone());
                ctx.set_cookie = moved;
                ctx.session = Some(session);
            }
            Outcome::NotMine => {}
            Outcome::Rejected(refusal) => {
                ctx.refused_claim = refusal.claim;
                ctx.refused_principal = refusal.named;
                ctx.refused_issuer = refusal.issuer;
                return Some(refusal.reason);
            }
        }
        None
    }

    /// Reads a body the policy needs (up to the route's `inspect_body_bytes`): strict JSON (no
    /// member named twice, which parsers would read two ways), or nothing. The bytes go upstream
    /// as they came.
    async fn read_body(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        body: Inbound,
    ) -> Result<(Bytes, serde_json::Value), ProxyError> {
        let bytes = self
            .collect_body(ctx, body, route.config.inspect_body_bytes)
            .await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok((bytes, serde_json::Value::Null));
        }
        let malformed = || {
            ProxyError::denied(
                Reason::BadRequestBody,
                "the request body must be JSON that names each member once",
            )
        };
        crate::json::unique_members(&bytes).map_err(|_| malformed())?;
        let json = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        Ok((bytes, json))
    }

    /// A whole request body of at most `limit` bytes, each read within the idle timeout; its
    /// size is counted for the record.
    async fn collect_body(
        &self,
        ctx: &mut RequestCtx,
        body: Inbound,
        limit: u64,
    ) -> Result<Bytes, ProxyError> {
        use http_body_util::BodyExt as _;
        let (body, tally) = ClientBody::new(body, limit, self.limits.idle_timeout.get());
        ctx.tally = Some(tally);
        match body.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(fault) => Err(forward::client_fault(fault)),
        }
    }

    /// One question to the policy in force, counted in the metrics (cache hits, shadow
    /// disagreements).
    async fn ask(
        &self,
        authz: &Authz,
        route: &Route,
        target: &authz::Target,
        subjects: &[String],
        object: String,
        action: String,
    ) -> (Query, authz::Checked) {
        let query = Query {
            subjects: subjects.to_vec(),
            domain: target.domain.clone(),
            object,
            action,
        };
        let checked = authz.check(&query).await;
        self.metrics.policy_decision(checked.cached);
        if checked.disagrees() {
            self.metrics.policy_shadow_disagreement(&route.label);
        }
        (query, checked)
    }

    /// Asks the policy in force about every object the request names, in order, until one is
    /// refused; records the questions and the deciding answer for the audit.
    async fn ask_policy(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        principal: &Principal,
        resource: &Resource,
    ) -> PolicyAnswer {
        let (Some(authz), Some(target)) = (&self.authz, &route.policy) else {
            return PolicyAnswer::Failed;
        };
        let subjects = authz::subjects(principal);
        let mut asked = Vec::with_capacity(1 + resource.also.len());
        asked.push((resource.object.clone(), resource.action.clone()));
        asked.extend(resource.also.iter().cloned());
        let many = asked.len() > 1;
        let mut decided = Vec::new();
        let mut last = None;
        for (object, action) in asked {
            let (query, checked) = self.ask(authz, route, target, &subjects, object, action).await;
            let answer = match &checked.verdict {
                Ok(v) if v.allowed && !resource.refused => PolicyAnswer::Allow,
                Ok(_) => PolicyAnswer::Deny,
                Err(e) => {
                    tracing::error!(request_id = %ctx.request_id, error = %e, "policy evaluation failed; denied");
                    PolicyAnswer::Failed
                }
            };
            if many {
                decided.push(bounded(&format!("{} {}", query.action, query.object), 256));
            }
            last = Some((query, checked, answer));
            if answer != PolicyAnswer::Allow {
                break;
            }
        }
        let Some((query, checked, answer)) = last else {
            return PolicyAnswer::Failed;
        };
        let shadow = checked.shadow.map(|s| if s { "allow" } else { "deny" });
        let workflow = &resource.workflow;
        let text = |v: &Option<String>| v.as_deref().map(|v| bounded(v, 256));
        ctx.policy = Some(PolicyFields {
            domain: query.domain,
            object: bounded(&query.object, 256),
            action: bounded(&query.action, 64),
            rule: checked
                .verdict
                .as_ref()
                .ok()
                .filter(|_| !resource.refused)
                .and_then(|v| v.rule.as_ref())
                .map(|r| r.origin.to_string()),
            version: checked.version,
            shadow,
            authz_us: u64::try_from(checked.duration.as_micros()).unwrap_or(u64::MAX),
            pipeline: text(&workflow.pipeline),
            run: text(&workflow.run),
            task: text(&workflow.task),
            task_run: text(&workflow.task_run),
            decided,
            filtered: None,
        });
        answer
    }

    /// Removes from a JSON list response the items the caller may not see (the template's
    /// `filter`), and lowers its total. A response that cannot be read whole (over the route's
    /// `filter_response_bytes`, or not JSON) is not passed on: fail closed.
    async fn filter_response(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        filter: &ResponseFilter,
        response: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        use http_body_util::BodyExt as _;
        if !response.status().is_success() {
            return Ok(response);
        }
        let (Some(authz), Some(target), Some(principal)) =
            (&self.authz, &route.policy, ctx.principal.clone())
        else {
            return Err(ProxyError::deny(Reason::PolicyError));
        };
        let unfilterable =
            |why: &str| ProxyError::UpstreamUnavailable(format!("the response could not be filtered: {why}"));
        let (mut parts, body) = response.into_parts();
        let limit = usize::try_from(route.config.filter_response_bytes).unwrap_or(usize::MAX);
        let bytes = http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| unfilterable(&e.to_string()))?
            .to_bytes();
        let mut doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| unfilterable("not JSON"))?;
        let subjects = authz::subjects(&principal);
        let mut keep = Vec::new();
        for (object, action) in filter.questions(&doc, target.any()) {
            let (_, checked) = self.ask(authz, route, target, &subjects, object, action).await;
            keep.push(checked.verdict.is_ok_and(|v| v.allowed));
        }
        let removed = filter.retain(&mut doc, &keep);
        if let Some(policy) = ctx.policy.as_mut() {
            policy.filtered = Some(u64::try_from(removed).unwrap_or(u64::MAX));
        }
        let body = serde_json::to_vec(&doc).map_err(|e| unfilterable(&e.to_string()))?;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_ENCODING);
        Ok(Response::from_parts(parts, crate::body::full(body)))
    }

    /// A denial. A person's browser without a usable session is sent to sign in rather than
    /// shown 401; an API call (a token, XHR, no HTML wanted) always gets the status.
    async fn refuse(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        reason: Reason,
        headers: &http::HeaderMap,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if reason == Reason::Forbidden {
            return Err(ProxyError::forbidden(self.missing_permission(ctx)));
        }
        let denied = ProxyError::deny(reason);
        let (Reason::NoCredentials | Reason::SessionExpired | Reason::Revoked, Some(canonical)) =
            (reason, &ctx.canonical)
        else {
            return Err(denied);
        };
        // An API call never gets a sign-in page: decide that before looking up providers.
        if !is_navigation(&canonical.method, headers) {
            return Err(denied);
        }
        let browser = &self.authn.browser;
        let options = browser.sign_in_options(&route.providers);
        if options.is_empty() {
            return Err(denied);
        }
        if !sessions_secure(&ctx.conn, Some(canonical), headers) {
            let canonical = canonical.clone();
            return self.to_https(ctx, &canonical);
        }
        browser
            .sign_in_redirect(canonical, headers, ctx.conn.trusted, &options)
            .await
    }

    /// The permission a forbidden caller lacks, when the operator allows telling them.
    fn missing_permission(&self, ctx: &RequestCtx) -> Option<String> {
        let show = self
            .authz
            .as_ref()
            .is_some_and(|a| a.settings.show_missing_permission);
        let policy = ctx.policy.as_ref().filter(|_| show)?;
        Some(format!(
            "{} on {} in {}",
            policy.action, policy.object, policy.domain
        ))
    }

    /// What a browser's error page may say: what was refused (method and path), who asked, and
    /// whether a browser can sign in on the route, with the link back to where it was going.
    fn error_page(&self, ctx: &RequestCtx) -> Page {
        let canonical = ctx.canonical.as_ref();
        let options = ctx
            .route
            .as_ref()
            .map(|r| self.authn.browser.sign_in_options(&r.providers));
        let sign_in = match (&options, canonical) {
            (Some(options), Some(_)) if options.is_empty() => SignIn::Unavailable,
            (Some(_), Some(c)) => {
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("rd", &c.wire_path_and_query())
                    .finish();
                SignIn::At(format!("{RESERVED}sign_in?{query}"))
            }
            _ => SignIn::Unknown,
        };
        let caller = ctx.principal.as_ref().map(|p| {
            let provider = options
                .iter()
                .flatten()
                .find(|c| c.provider.config.name == p.provider)
                .map_or_else(|| p.provider.clone(), |c| c.display_name.clone());
            let name = p
                .name
                .clone()
                .or_else(|| p.email.clone())
                .unwrap_or_else(|| p.subject.clone());
            Who {
                email: p.email.clone().filter(|e| *e != name),
                name,
                provider,
                session: p.auth_method == AuthMethod::Session,
            }
        });
        Page {
            refused: canonical.map(|c| (c.method.as_str().to_string(), c.path.clone())),
            caller,
            sign_in,
        }
    }

    /// `/.portcullis/…` on a host this proxy serves.
    async fn reserved(
        &self,
        ctx: &mut RequestCtx,
        canonical: Canonical,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let not_found = || ProxyError::deny(Reason::RouteNotFound);
        let canonical = ctx.canonical.insert(canonical);
        ctx.act = match canonical.path.strip_prefix(RESERVED) {
            Some("sign_in") => Some("sign_in"),
            Some("callback") => Some("login"),
            Some("sign_out" | "signed_out") => Some("logout"),
            Some(BACKCHANNEL_LOGOUT) => Some("backchannel_logout"),
            _ => None,
        };
        if !self.routes.serves_host(&canonical.host) {
            return Err(not_found());
        }
        let headers = req.headers();
        if !sessions_secure(&ctx.conn, Some(canonical), headers) {
            let canonical = canonical.clone();
            return self.to_https(ctx, &canonical);
        }
        let Some(canonical) = ctx.canonical.as_ref() else {
            return Err(not_found());
        };
        let browser = &self.authn.browser;
        if canonical.path.strip_prefix(RESERVED) == Some(BACKCHANNEL_LOGOUT) {
            if canonical.method != Method::POST {
                return Err(not_found());
            }
            // A provider's server posts a small form: read it whole, within limits.
            let body = self
                .collect_body(ctx, Inbound::Stream(req.into_body()), SMALL_BODY)
                .await?;
            let served = browser.backchannel_logout(&body).await;
            return Ok(self.served(ctx, served));
        }
        let host = canonical.host.clone();
        let options = |path: &str| {
            self.routes
                .find(&host, path)
                .map(|r| browser.sign_in_options(&r.providers))
                .unwrap_or_default()
        };
        let served = browser
            .endpoint(canonical, headers, ctx.conn.trusted, options)
            .await?;
        Ok(self.served(ctx, served))
    }

    /// Records what a reserved endpoint did: allowed, or refused with its reason and claim.
    fn served(&self, ctx: &mut RequestCtx, served: crate::authn::browser::Served) -> Response<ProxyBody> {
        ctx.decision = Some(if served.reason.status().is_success() {
            Decision::Allow(served.reason)
        } else {
            Decision::Deny(served.reason)
        });
        ctx.principal = served.principal;
        ctx.refused_claim = served.claim;
        served.response
    }

    /// A browser flow reached over plain HTTP: session cookies never cross the wire in clear, so
    /// a page navigation is sent to the same URL over HTTPS when the proxy listens for it, and
    /// anything else is refused with a page that says why.
    fn to_https(
        &self,
        ctx: &mut RequestCtx,
        canonical: &Canonical,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        ctx.decision = Some(Decision::Deny(Reason::InsecureTransport));
        let Some(port) = self
            .https_port
            .filter(|_| canonical.method == Method::GET || canonical.method == Method::HEAD)
        else {
            return Err(ProxyError::deny(Reason::InsecureTransport));
        };
        let authority = if port == 443 {
            canonical.host.clone()
        } else {
            format!("{}:{port}", canonical.host)
        };
        let location = format!("https://{authority}{}", canonical.wire_path_and_query());
        let mut response = Response::new(crate::body::full(Bytes::new()));
        *response.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).map_err(|_| ProxyError::deny(Reason::InsecureTransport))?,
        );
        Ok(response)
    }

    /// A request head hyper refused while reading it (it answered 400, 414 or 431 itself), or
    /// one the client began and did not finish within `header_read_timeout` (`partial`; hyper
    /// closes the connection without an answer): still an action, recorded through the same
    /// exit, with what is known of it. A keep-alive connection that merely stayed quiet is not.
    pub fn refused_unread(&self, conn: Arc<ConnInfo>, error: &hyper::Error, partial: bool) {
        // hyper's kinds are private; its text tells a too-long URI (414) from too-large headers.
        let reason = if error.is_timeout() {
            if !partial {
                return;
            }
            Reason::HeaderTimeout
        } else if error.is_parse_too_large() && error.to_string().contains("URI too long") {
            Reason::UriTooLong
        } else if error.is_parse_too_large() {
            Reason::HeadersTooLarge
        } else if error.is_parse() {
            Reason::MalformedRequest
        } else {
            return;
        };
        let mut ctx = RequestCtx::new(
            uuid::Uuid::new_v4().to_string(),
            conn,
            TraceCtx::join(&http::HeaderMap::new()),
        );
        ctx.decision = Some(Decision::Deny(reason));
        let seen = Seen {
            method: Cow::Borrowed("_OTHER"),
            version: Version::HTTP_11,
            user_agent: None,
            wants_html: false,
            origin: None,
            time: SystemTime::now(),
            workflow: Vec::new(),
        };
        let end = End {
            status: reason.status().as_u16(),
            failure: None,
            outcome: if reason == Reason::HeaderTimeout {
                Ending::ClientClosed
            } else {
                Ending::Completed
            },
            upstream_status: None,
            request_bytes: 0,
            response_bytes: 0,
        };
        self.record(ctx, seen, end);
    }

    /// The decision point's single exit: one audit event and the request metrics, when the
    /// exchange is over (or, for a head hyper refused, at once).
    pub(crate) fn record(&self, ctx: RequestCtx, seen: Seen, end: End) {
        // A request whose client left before any decision: recorded as ended by the client.
        let decision = ctx
            .decision
            .unwrap_or(Decision::Deny(if end.outcome == Ending::ClientClosed {
                Reason::ClientClosed
            } else {
                Reason::MalformedRequest
            }));
        let elapsed = ctx.started.elapsed();
        let label = ctx
            .route
            .as_ref()
            .map_or_else(|| self.metrics.no_route(), |r| r.label.clone());
        if let Some(failure) = end.failure.filter(|f| f.fault == Fault::Upstream) {
            self.metrics.upstream_error(&label, failure.code);
        }
        self.metrics
            .request(&label, decision.as_str(), end.status, elapsed.as_secs_f64());
        if let Decision::Deny(reason) = decision {
            self.metrics.denial(&label, reason.as_str());
        }
        let (path, host, port) = match ctx.canonical {
            Some(c) => (Some(c.path), Some(c.host), c.port),
            None => (None, None, None),
        };
        let error_type = end.failure.filter(|f| !f.denial).map(|f| f.code);
        // A revoked credential's record still says whom it named.
        let recorded = ctx.principal.clone().or(ctx.refused_principal);
        self.audit.emit(
            AccessEvent {
                time: seen.time,
                trace: ctx.trace.ids,
                act: ctx.act,
                request_id: ctx.request_id,
                decision: decision.as_str(),
                reason: decision.reason().as_str(),
                reason_claim: ctx.refused_claim,
                token_issuer: ctx.refused_issuer,
                principal_kind: recorded.as_ref().map_or("anonymous", |p| p.kind.as_str()),
                auth_method: recorded.as_ref().map_or("none", |p| p.auth_method.as_str()),
                principal: recorded,
                authn_us: ctx
                    .authn_duration
                    .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                route: ctx.route.map(|r| r.label.clone()),
                method: seen.method,
                scheme: if ctx.conn.tls { "https" } else { "http" },
                path,
                server_address: host,
                server_port: port.unwrap_or(ctx.conn.local.port()),
                client_address: ctx.conn.peer.ip(),
                protocol_version: version_str(seen.version),
                user_agent: seen.user_agent,
                status: end.status,
                // The upstream's own 5xx passed on is its answer, not a failure of this request.
                failed: end.failure.is_some_and(|f| f.fault != Fault::Downstream),
                error_type,
                outcome: end.outcome.as_str(),
                upstream_status: end.upstream_status,
                request_bytes: end.request_bytes,
                response_bytes: end.response_bytes,
                policy: ctx.policy,
                upstream_ms: ctx.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
                total: elapsed,
                workflow: seen.workflow,
            }
            .into(),
        );
    }
}

/// The access a request gets: the route's, unless its template opens the operation (what the
/// API itself leaves unauthenticated or open to any signed-in caller).
fn effective_access(route: &Route, resource: Option<&Resource>) -> Access {
    match resource.map(|r| r.access) {
        Some(RuleAccess::Public) => Access::Public,
        Some(RuleAccess::Authenticated) => Access::Authenticated,
        _ => route.config.access,
    }
}

/// Whether session cookies may be set or read on this request: it came over TLS, from a trusted
/// proxy that says the client used HTTPS, or for a loopback host (`localhost`, `*.localhost`,
/// `127.0.0.0/8`, `[::1]`), which browsers treat as a secure context: for development.
fn sessions_secure(conn: &ConnInfo, canonical: Option<&Canonical>, headers: &http::HeaderMap) -> bool {
    if conn.tls {
        return true;
    }
    let forwarded_https = conn.trusted
        && headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    forwarded_https || canonical.is_some_and(|c| loopback_host(&c.host))
}

fn loopback_host(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `X-Portcullis-Groups`: each group percent-encoded (every byte but letters, digits and
/// `-._~:/@!$&'()*+;=`), joined by commas, so a group named `dev,admins` (LDAP DNs hold commas)
/// can never read as two. Upstreams split on `,` and percent-decode each item.
pub fn groups_header(groups: &[String]) -> String {
    const KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b':')
        .remove(b'/')
        .remove(b'@')
        .remove(b'!')
        .remove(b'$')
        .remove(b'&')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')')
        .remove(b'*')
        .remove(b'+')
        .remove(b';')
        .remove(b'=');
    let encoded: Vec<String> = groups
        .iter()
        .map(|g| percent_encoding::utf8_percent_encode(g, KEPT).to_string())
        .collect();
    encoded.join(",")
}

/// A route's JWKS: the proxy's keys, then the upstream's own (any whose `kid` is one of the
/// proxy's left out, so a file cannot shadow a signing key).
fn route_jwks(proxy: &serde_json::Value, upstream: &[serde_json::Value]) -> serde_json::Value {
    let mut keys: Vec<serde_json::Value> = proxy
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours: Vec<serde_json::Value> = keys.iter().filter_map(|k| k.get("kid").cloned()).collect();
    keys.extend(
        upstream
            .iter()
            .filter(|k| k.get("kid").is_none_or(|kid| !ours.contains(kid)))
            .cloned(),
    );
    serde_json::json!({ "keys": keys })
}

/// RFC 9113's measure of a header list: each field's name and value, plus this.
pub const H2_FIELD_OVERHEAD: usize = 32;

/// An HTTP/2 head over `max_headers` or `max_header_bytes`. The h2 codec only refuses a list
/// over its own, larger cap (`listener::http_builder`) and answers that 431 itself, unseen by the
/// stack; below it the refusal is made here, so it is audited like any other. The size is RFC
/// 9113's (pseudo-header fields included); cookie crumbs, which HTTP/2 clients send as separate
/// fields, count as the one `Cookie` header they are.
fn http2_head_over(limits: &crate::config::Limits, req: &Request<Incoming>) -> bool {
    let pseudo = [
        (":method".len(), req.method().as_str().len()),
        (":scheme".len(), req.uri().scheme_str().map_or(0, str::len)),
        (
            ":authority".len(),
            req.uri().authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path".len(),
            req.uri().path_and_query().map_or(0, |p| p.as_str().len()),
        ),
    ];
    let mut bytes: usize = pseudo.iter().map(|(n, v)| n + v + H2_FIELD_OVERHEAD).sum();
    let mut fields = 0;
    let mut cookie = false;
    for (name, value) in req.headers() {
        bytes += name.as_str().len() + value.len() + H2_FIELD_OVERHEAD;
        if name == header::COOKIE {
            if cookie {
                continue;
            }
            cookie = true;
        }
        fields += 1;
    }
    fields > limits.max_headers.get() || bytes > limits.max_header_bytes
}

/// Standard methods as static strings, so recording one allocates nothing.
fn method_name(method: &Method) -> Cow<'static, str> {
    match *method {
        Method::GET => Cow::Borrowed("GET"),
        Method::POST => Cow::Borrowed("POST"),
        Method::PUT => Cow::Borrowed("PUT"),
        Method::DELETE => Cow::Borrowed("DELETE"),
        Method::PATCH => Cow::Borrowed("PATCH"),
        Method::HEAD => Cow::Borrowed("HEAD"),
        Method::OPTIONS => Cow::Borrowed("OPTIONS"),
        _ => Cow::Owned(method.as_str().to_string()),
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A trusted hop's id is kept if it is a short visible token; anything else gets a fresh id so
/// that a client cannot inject text into logs through it.
fn request_id(headers: &http::HeaderMap, trusted: bool) -> String {
    if trusted
        && let Some(id) = headers.get(forward::X_REQUEST_ID).and_then(|v| v.to_str().ok())
        && !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return id.to_string();
    }
    uuid::Uuid::new_v4().to_string()
}
