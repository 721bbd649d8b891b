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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    route: RouteLabel,
    reason: &'static str,
}

/// An identity provider by its configured name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderResultLabels {
    provider: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResultLabels {
    route: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// The commit the binary was built from, or "unknown" (see build.rs).
pub const COMMIT: &str = env!("PORTCULLIS_COMMIT");

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
    denials: Family<DenialLabels, Counter>,
    key_fetches: Family<ProviderResultLabels, Counter>,
    keys_updated: Family<ProviderLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    broker_refreshes: Family<RouteResultLabels, Counter>,
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
        let denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "denials",
            "Denied requests by route and reason (the audit record's portcullis.reason)",
            denials.clone(),
        );
        let key_fetches = Family::<ProviderResultLabels, Counter>::default();
        registry.register(
            "idp_key_fetches",
            "Discovery and JWKS fetches of identity providers' signing keys, by provider and result (ok, error)",
            key_fetches.clone(),
        );
        let keys_updated = Family::<ProviderLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "idp_keys_updated_timestamp_seconds",
            "When each identity provider's signing keys were last fetched successfully (Unix time; the age is time() minus this)",
            keys_updated.clone(),
        );
        let broker_refreshes = Family::<RouteResultLabels, Counter>::default();
        registry.register(
            "broker_token_fetches",
            "Brokered upstream tokens fetched from token endpoints, by route and result (ok, error)",
            broker_refreshes.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the labels say which build is running",
            build.clone(),
        );
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: COMMIT,
            })
            .set(1);
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
            "audit_queued",
            "Audit records sealed and waiting in memory for the exporter",
            audit.queued.clone(),
        );
        registry.register(
            "audit_export_duration_seconds",
            "Time of each OTLP export request, successful or not",
            audit.export_seconds.clone(),
        );
        registry.register(
            "audit_spool_full",
            "1 while the audit spool is full (fail_closed: requests are refused; fail_open: records are dropped)",
            audit.spool_full.clone(),
        );
        // Known label values start at zero, so a dashboard or an alert sees the series before
        // the first event rather than "no data".
        for result in ["ok", "error"] {
            let _ = tls_reloads.get_or_create(&ResultLabels { result });
        }
        for result in ["ok", "refused", "unreachable"] {
            let _ = session_refreshes.get_or_create(&ResultLabels { result });
        }
        for result in ["cache", "evaluated"] {
            let _ = policy_decisions.get_or_create(&ResultLabels { result });
        }
        Metrics {
            audit,
            registry,
            policy_reloads,
            policy_in_force,
            policy_decisions,
            policy_shadow_disagreements,
            denials,
            key_fetches,
            keys_updated,
            broker_refreshes,
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

    /// A route's series that count failures, at zero from the start: its upstream errors, its
    /// brokered token fetches when it has a broker, its shadow disagreements when it is protected.
    pub fn route_known(&self, route: &RouteLabel, brokered: bool, protected: bool) {
        for kind in ["upstream_unavailable", "upstream_timeout"] {
            let _ = self.upstream_errors.get_or_create(&UpstreamErrorLabels {
                route: route.clone(),
                kind,
            });
        }
        if brokered {
            for result in ["ok", "error"] {
                let _ = self.broker_refreshes.get_or_create(&RouteResultLabels {
                    route: Arc::from(route.as_str()),
                    result,
                });
            }
        }
        if protected {
            let _ = self
                .policy_shadow_disagreements
                .get_or_create(&RouteLabels { route: route.clone() });
        }
    }

    pub fn denial(&self, route: &RouteLabel, reason: &'static str) {
        let labels = DenialLabels {
            route: route.clone(),
            reason,
        };
        self.denials.get_or_create(&labels).inc();
    }

    /// A fetch of a provider's discovery document and keys: `ok` also stamps the key set's age.
    pub fn key_fetch(&self, provider: &Arc<str>, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        let labels = ProviderResultLabels {
            provider: provider.clone(),
            result,
        };
        self.key_fetches.get_or_create(&labels).inc();
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.keys_updated
                .get_or_create(&ProviderLabels {
                    provider: provider.clone(),
                })
                .set(now);
        }
    }

    pub fn broker_fetch(&self, route: &Arc<str>, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        let labels = RouteResultLabels {
            route: route.clone(),
            result,
        };
        self.broker_refreshes.get_or_create(&labels).inc();
    }

    /// The registry's metrics, then the process's own (`process_*`, read from `/proc`), which
    /// every Prometheus dashboard expects under those standard names.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        let process = crate::metrics::process::encode();
        match out.rfind("# EOF") {
            Some(end) => out.insert_str(end, &process),
            None => out.push_str(&process),
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
#[derive(Debug, Clone)]
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
    /// Records waiting in memory for the exporter.
    pub queued: Gauge,
    /// Time of each export request.
    pub export_seconds: Histogram,
    /// 1 while the spool is full.
    pub spool_full: Gauge,
}

impl Default for AuditStats {
    fn default() -> Self {
        AuditStats {
            exported: Counter::default(),
            spooled: Counter::default(),
            replayed: Counter::default(),
            dropped: Counter::default(),
            export_failures: Counter::default(),
            spool_bytes: Gauge::default(),
            queued: Gauge::default(),
            export_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            spool_full: Gauge::default(),
        }
    }
}

/// The process's own metrics under their standard names, read from `/proc/self` (Linux); on a
/// system without it they are left out rather than reported as zero.
mod process {
    use std::fmt::Write as _;

    /// Clock ticks per second of `/proc/<pid>/stat` times: 100 on every Linux architecture
    /// Portcullis builds for (USER_HZ is fixed by the kernel ABI, whatever CONFIG_HZ is).
    const TICKS_PER_SECOND: f64 = 100.0;
    const PAGE_SIZE: u64 = 4096;

    pub fn encode() -> String {
        let mut out = String::new();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            let seconds = (user + system) as f64 / TICKS_PER_SECOND;
            metric(
                &mut out,
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time",
                seconds,
            );
        }
        if let Some(pages) = field(24) {
            let bytes = (pages * PAGE_SIZE) as f64;
            metric(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory",
                bytes,
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let open = fds.count() as f64;
            metric(
                &mut out,
                "process_open_fds",
                "gauge",
                "Open file descriptors",
                open,
            );
        }
        if let Some(max) = max_fds() {
            metric(
                &mut out,
                "process_max_fds",
                "gauge",
                "Limit of open file descriptors",
                max,
            );
        }
        out
    }

    fn max_fds() -> Option<f64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }

    fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
        let family = name.strip_suffix("_total").unwrap_or(name);
        let _ = write!(
            out,
            "# HELP {family} {help}.\n# TYPE {family} {kind}\n{name} {value}\n"
        );
    }
}
