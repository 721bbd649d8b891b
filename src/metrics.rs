//! Prometheus metrics. Label values are route names and closed sets, never request data.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A route's name as a metric label; shared, so labelling a request allocates nothing.
pub type RouteLabel = Arc<String>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteLabel,
    decision: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    route: RouteLabel,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    open_connections: Gauge,
    tls_reloads: Family<ResultLabels, Counter>,
    session_refreshes: Family<ResultLabels, Counter>,
    policy_reloads: Family<PolicyReloadLabels, Counter>,
    policy_in_force: Family<PolicyLabels, Gauge>,
    policy_decisions: Family<ResultLabels, Counter>,
    policy_shadow_disagreements: Family<RouteLabels, Counter>,
    audit: AuditStats,
    no_route: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyReloadLabels {
    policy: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by route, decision and status",
            requests.clone(),
        );
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by route",
            duration.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by route and kind",
            upstream_errors.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Downstream connections open now",
            open_connections.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Certificate reloads by result",
            tls_reloads.clone(),
        );
        let session_refreshes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "session_refreshes",
            "Browser-session token refreshes by result (ok, refused, unreachable)",
            session_refreshes.clone(),
        );
        let policy_reloads = Family::<PolicyReloadLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy loads and reloads by policy (enforced, shadow) and result (ok, rejected)",
            policy_reloads.clone(),
        );
        let policy_in_force = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "policy_last_reload_ok",
            "1 when the last reload of the policy went into force, 0 when it was rejected and the previous version stays",
            policy_in_force.clone(),
        );
        let policy_decisions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Policy decisions by where they came from (cache, evaluated)",
            policy_decisions.clone(),
        );
        let policy_shadow_disagreements = Family::<RouteLabels, Counter>::default();
        registry.register(
            "policy_shadow_disagreements",
            "Requests the shadow policy decided differently from the enforced one, by route",
            policy_shadow_disagreements.clone(),
        );
        let records = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "audit_records",
            "Audit records by outcome: exported (from memory), spooled (written to disk), replayed (exported from disk), dropped (lost: counted, never silent)",
            records.clone(),
        );
        let outcome = |outcome| records.get_or_create(&OutcomeLabels { outcome }).clone();
        let audit = AuditStats {
            exported: outcome("exported"),
            spooled: outcome("spooled"),
            replayed: outcome("replayed"),
            dropped: outcome("dropped"),
            ..Default::default()
        };
        registry.register(
            "audit_export_failures",
            "OTLP export requests that failed (their records went to the spool)",
            audit.export_failures.clone(),
        );
        registry.register(
            "audit_spool_bytes",
            "Bytes of audit records waiting on disk",
            audit.spool_bytes.clone(),
        );
        registry.register(
            "audit_spool_full",
            "1 while the audit spool is full (fail_closed: requests are refused; fail_open: records are dropped)",
            audit.spool_full.clone(),
        );
        Metrics {
            audit,
            registry,
            policy_reloads,
            policy_in_force,
            policy_decisions,
            policy_shadow_disagreements,
            session_refreshes,
            requests,
            duration,
            upstream_errors,
            open_connections,
            tls_reloads,
            no_route: Arc::new(String::new()),
        }
    }

    /// The audit pipeline's counters (registered here, counted there).
    pub fn audit_stats(&self) -> AuditStats {
        self.audit.clone()
    }

    /// The label of requests that matched no route.
    pub fn no_route(&self) -> RouteLabel {
        self.no_route.clone()
    }

    pub fn request(&self, route: &RouteLabel, decision: &'static str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            route: route.clone(),
            decision,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&RouteLabels { route: route.clone() })
            .observe(seconds);
    }

    pub fn upstream_error(&self, route: &RouteLabel, kind: &'static str) {
        let labels = UpstreamErrorLabels {
            route: route.clone(),
            kind,
        };
        self.upstream_errors.get_or_create(&labels).inc();
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    pub fn tls_reload(&self, result: &'static str) {
        self.tls_reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn session_refresh(&self, result: &'static str) {
        self.session_refreshes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn policy_reload(&self, policy: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.policy_reloads
            .get_or_create(&PolicyReloadLabels { policy, result })
            .inc();
        self.policy_in_force
            .get_or_create(&PolicyLabels { policy })
            .set(i64::from(ok));
    }

    pub fn policy_decision(&self, cached: bool) {
        let result = if cached { "cache" } else { "evaluated" };
        self.policy_decisions
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn policy_shadow_disagreement(&self, route: &RouteLabel) {
        self.policy_shadow_disagreements
            .get_or_create(&RouteLabels { route: route.clone() })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The audit pipeline's counters, registered in `/metrics` with the rest.
#[derive(Debug, Clone, Default)]
pub struct AuditStats {
    /// Records the collector accepted from memory.
    pub exported: Counter,
    /// Records written to the spool.
    pub spooled: Counter,
    /// Records the collector accepted from the spool.
    pub replayed: Counter,
    /// Records lost: the spool was full in fail-open mode (or for refusals beyond the
    /// fail-closed reserve), the disk failed, or a spooled line was damaged.
    pub dropped: Counter,
    /// Export requests that failed.
    pub export_failures: Counter,
    pub spool_bytes: Gauge,
    /// 1 while the spool is full.
    pub spool_full: Gauge,
}
