//! The audit trail as an auditor relies on it: one span per action at the collector (a real
//! OpenTelemetry collector, rotel, for the load test; an in-process OTLP receiver that decodes
//! what it gets for the rest), nothing lost while the collector is down, a spool that survives
//! SIGTERM and verifies, the operator's fail-closed or fail-open choice, the Lightstep preset over
//! TLS, and no secret in any attribute.
#![cfg(test)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::collector::Collector;
use support::issuer::TestIssuer;
use support::otlp::{Attr, ReceivedSpan, Receiver, SpanKind, SpanStatus};
use support::pki::Ca;
use support::{Binary, Config, Gateway, Recorder, Route, get};
use tokio::net::TcpStream;

/// What a client saw for one request: its id (from `X-Request-Id`) and status.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    status: u16,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Public,
    Token,
    NoToken,
    BadToken,
    UnknownHost,
    Ambiguous,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Public,
        Kind::Token,
        Kind::NoToken,
        Kind::BadToken,
        Kind::UnknownHost,
        Kind::Ambiguous,
    ];

    /// (decision, reason, route, status) the trail must show.
    fn expected(self) -> (&'static str, &'static str, Option<&'static str>, u16) {
        match self {
            Kind::Public => ("allow", "public_route", Some("app"), 200),
            Kind::Token => ("allow", "authenticated", Some("api"), 200),
            Kind::NoToken => ("deny", "no_credentials", Some("api"), 401),
            Kind::BadToken => ("deny", "bad_signature", Some("api"), 401),
            Kind::UnknownHost => ("deny", "route_not_found", None, 404),
            Kind::Ambiguous => ("deny", "ambiguous_path", None, 400),
        }
    }
}

const SECRET_QUERY: &str = "access_token=query-secret-8d1f";
const COOKIE: &str = "session=cookie-secret-77aa";

/// A public route `app` and an authenticated route `api`, both in front of `upstream`.
fn routes(upstream: &Recorder, issuer: &TestIssuer) -> Config {
    Config::new()
        .provider(issuer.provider("test"))
        .route(Route::public("app").host("app.test").upstream(upstream))
        .route(
            Route::authenticated("api")
                .host("api.test")
                .providers(["test"])
                .upstream(upstream),
        )
}

/// One keep-alive connection sending `n` requests of the mix, `offset` choosing where to start.
async fn client(addr: SocketAddr, token: String, n: usize, offset: usize) -> Vec<Sent> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let kind = Kind::ALL[(i + offset) % Kind::ALL.len()];
        let (host, path) = match kind {
            Kind::Public => ("app.test", format!("/items/{i}?{SECRET_QUERY}")),
            Kind::Token | Kind::NoToken | Kind::BadToken => ("api.test", format!("/jobs/{i}")),
            Kind::UnknownHost => ("nowhere.test", "/".to_string()),
            Kind::Ambiguous => ("app.test", "/a%2Fb".to_string()),
        };
        let mut req = Request::get(path).header("host", host).header("cookie", COOKIE);
        match kind {
            Kind::Token => req = req.header("authorization", format!("Bearer {token}")),
            Kind::BadToken => {
                let mut bad = token.clone();
                bad.truncate(bad.len() - 4);
                bad.push_str("AAAA");
                req = req.header("authorization", format!("Bearer {bad}"));
            }
            _ => {}
        }
        sender.ready().await.unwrap();
        let response = sender
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let id = response
            .headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let _ = response.into_body().collect().await;
        sent.push(Sent { id, status, kind });
    }
    sent
}

async fn load(addr: SocketAddr, token: &str, total: usize, connections: usize) -> Vec<Sent> {
    let per = total / connections;
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(client(addr, token.to_string(), per, c)))
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The access spans by request id.
fn by_request(spans: &[ReceivedSpan]) -> HashMap<String, Vec<&ReceivedSpan>> {
    let mut map: HashMap<String, Vec<&ReceivedSpan>> = HashMap::new();
    for s in spans.iter().filter(|s| s.attr("http.request.method").is_some()) {
        let id = s
            .str_attr("portcullis.request.id")
            .unwrap_or_else(|| panic!("an access span without a request id: {s:?}"))
            .to_string();
        map.entry(id).or_default().push(s);
    }
    map
}

fn assert_matches(sent: &[Sent], spans: &HashMap<String, Vec<&ReceivedSpan>>, token: &str) {
    for s in sent {
        let (decision, reason, route, status) = s.kind.expected();
        assert_eq!(s.status, status, "{s:?}");
        let found = spans
            .get(&s.id)
            .unwrap_or_else(|| panic!("no span for request {} ({:?})", s.id, s.kind));
        let span = found[0];
        assert_eq!(span.name, "access");
        assert_eq!(span.str_attr("portcullis.decision"), Some(decision), "{s:?}");
        assert_eq!(span.str_attr("portcullis.reason"), Some(reason), "{s:?}");
        assert_eq!(span.str_attr("portcullis.route"), route, "{s:?}");
        assert_eq!(
            span.attr("http.response.status_code").and_then(Attr::as_i64),
            Some(i64::from(status))
        );
        let principal = span.str_attr("enduser.id");
        if s.kind == Kind::Token {
            assert_eq!(principal, Some("svc-ci"), "{s:?}");
            assert_eq!(span.str_attr("portcullis.principal.kind"), Some("user"));
        } else {
            assert_eq!(principal, None, "{s:?}");
            assert_eq!(span.str_attr("portcullis.principal.kind"), Some("anonymous"));
        }
    }
    // No attribute anywhere carries the token, the cookie or the query string.
    for span in spans.values().flatten() {
        let text = serde_json::to_string(&span.attributes).unwrap();
        for secret in [
            &token[token.len() - 40..],
            "cookie-secret-77aa",
            "query-secret-8d1f",
        ] {
            assert!(!text.contains(secret), "a span carries a secret: {text}");
        }
    }
}

/// Every instance's sequence numbers, from 1 without a gap.
fn assert_gap_free(spans: &[ReceivedSpan]) {
    let mut seqs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for s in spans {
        let instance = s
            .resource_attr("service.instance.id")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        seqs.entry(instance)
            .or_default()
            .push(s.attr("portcullis.audit.seq").unwrap().as_i64().unwrap());
    }
    for (instance, mut seq) in seqs {
        seq.sort_unstable();
        seq.dedup();
        let expected: Vec<i64> = (1..=seq.len() as i64).collect();
        assert_eq!(seq, expected, "instance {instance} has gaps");
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

fn counter(text: &str, outcome: &str) -> f64 {
    let name = format!("portcullis_audit_records_total{{outcome=\"{outcome}\"}}");
    text.lines()
        .find(|l| l.starts_with(&name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The issuer, upstream and spool behind a [`mixed_gateway`], kept alive with it (never read).
#[allow(dead_code)]
struct Peers(TestIssuer, Recorder, tempfile::TempDir);

/// A proxy with the two routes of the mix, exporting over OTLP/gRPC to `endpoint`, and a
/// caller's token.
async fn mixed_gateway(endpoint: &str) -> (Gateway, String, Peers) {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let spool = tempfile::tempdir().unwrap();
    let gw = Gateway::start(routes(&upstream, &issuer).otlp(endpoint, spool.path())).await;
    gw.wait_ready().await;
    let token = issuer.token("svc-ci");
    (gw, token, Peers(issuer, upstream, spool))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_requests_yield_exactly_one_span_each_at_the_collector() {
    // The one story told through a real collector: rotel receives the spans and exports them on
    // to the receiver the test reads.
    let collector = Collector::start().await;
    let (gw, token, _peers) = mixed_gateway(&collector.grpc_endpoint()).await;

    let sent = load(gw.http, &token, 10_002, 6).await;
    assert_eq!(sent.len(), 10_002);
    let spans = collector
        .receiver
        .wait_for(sent.len(), Duration::from_secs(60))
        .await;
    let access: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attr("http.request.method").is_some())
        .cloned()
        .collect();
    assert_eq!(access.len(), sent.len(), "exactly one span per request");
    let map = by_request(&access);
    assert_eq!(map.len(), sent.len());
    assert!(map.values().all(|v| v.len() == 1), "a request has two spans");
    assert_matches(&sent, &map, &token);
    assert_gap_free(&spans);
    let span = &access[0];
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.scope_name, "portcullis.audit");
    for key in [
        "service.name",
        "service.version",
        "service.instance.id",
        "host.name",
    ] {
        assert!(span.resource_attr(key).is_some(), "resource lacks {key}");
    }
    let metrics = gw.metrics().await;
    assert_eq!(counter(&metrics, "dropped"), 0.0);
    assert!(counter(&metrics, "exported") >= sent.len() as f64);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_stopped_for_30_seconds_under_load_receives_every_span_after_it_restarts() {
    let mut collector = Receiver::start().await;
    let (gw, token, _peers) = mixed_gateway(&collector.grpc_endpoint()).await;

    // Load in rounds for ~40 s; the collector is away from 5 s to 35 s.
    let started = Instant::now();
    let addr = gw.http;
    let load_token = token.clone();
    let traffic = tokio::spawn(async move {
        let mut all = Vec::new();
        while started.elapsed() < Duration::from_secs(40) {
            all.extend(load(addr, &load_token, 300, 3).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        all
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Gone: the port refuses, and the connections open to it drop.
    collector.stop();
    let before = collector.count();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let metrics = gw.metrics().await;
    assert!(
        counter(&metrics, "spooled") > 0.0,
        "nothing went to the spool while the collector was down"
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    collector.restart().await;
    let sent = traffic.await.unwrap();
    assert!(sent.len() > 3_000, "only {} requests", sent.len());

    let spans = collector
        .wait_until(Duration::from_secs(90), |spans| {
            let ids = by_request(spans);
            sent.iter().all(|s| ids.contains_key(&s.id))
        })
        .await
        .unwrap_or_else(|spans| spans);
    // Spans received before the stop are in `collector` too: the restarted receiver keeps them.
    let map = by_request(&spans);
    let missing: Vec<&Sent> = sent.iter().filter(|s| !map.contains_key(&s.id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} requests have no span (received {before} before the stop)",
        missing.len(),
        sent.len()
    );
    assert_matches(&sent, &map, &token);
    // At least once: a copy may repeat only a batch that was in flight when the collector died,
    // and a copy is the same span (same span id).
    let duplicated: Vec<_> = map.values().filter(|v| v.len() > 1).collect();
    for copies in &duplicated {
        assert!(copies.iter().all(|c| c.span_id == copies[0].span_id));
    }
    assert!(duplicated.len() <= 2 * 1024, "{} duplicates", duplicated.len());
    assert_gap_free(&spans);
    let metrics = gw.metrics().await;
    assert!(counter(&metrics, "replayed") > 0.0);
    assert_eq!(counter(&metrics, "dropped"), 0.0);
    gw.stop().await;
}

async fn public_requests(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let response = support::send(addr, http::Method::GET, &format!("/r/{i}"), &[], Bytes::new()).await;
        assert_eq!(response.status(), StatusCode::OK);
        ids.push(response.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    ids
}

fn verify(path: &Path) -> (bool, String) {
    let out = Command::new(support::binary())
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_gone_sigterm_leaves_every_record_in_the_spool_which_verifies_and_replays_after_a_restart()
 {
    let upstream = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // Nothing listens on the collector's port yet.
    let mut collector = Receiver::start().await;
    collector.stop();
    let rest = support::public_route(&upstream)
        .otlp(&collector.grpc_endpoint(), &spool)
        .set("audit.otlp.timeout", "1s");
    let proxy = Binary::serve(dir.path(), &rest, &[]).await;
    let ids = public_requests(proxy.http, 300).await;
    proxy.sigterm().await;

    let (ok, report) = verify(&spool);
    assert!(ok, "{report}");
    assert!(report.contains("300 records"), "{report}");
    let text: String = support_read_spool(&spool);
    for id in &ids {
        assert!(text.contains(id.as_str()), "request {id} is not in the spool");
    }
    // A tampered spool does not verify.
    let segment = portcullis::audit::spool::Spool::segment_paths(&spool)
        .unwrap()
        .into_iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains("\"/r/7\""))
        .unwrap();
    let original = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(&segment, original.replacen("\"/r/7\"", "\"/r/8\"", 1)).unwrap();
    let (ok, report) = verify(&spool);
    assert!(!ok, "{report}");
    assert!(report.contains("BREAK"), "{report}");
    std::fs::write(&segment, original).unwrap();

    // The collector is back and the proxy restarts on the same spool: the old records go first.
    collector.restart().await;
    let proxy = Binary::serve(dir.path(), &rest, &[]).await;
    let later = public_requests(proxy.http, 5).await;
    let spans = collector.wait_for(305, Duration::from_secs(60)).await;
    let map = by_request(&spans);
    for id in ids.iter().chain(&later) {
        assert_eq!(map.get(id).map(Vec::len), Some(1), "request {id}");
    }
    let instances: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter_map(|s| s.resource_attr("service.instance.id").and_then(Attr::as_str))
        .collect();
    assert_eq!(instances.len(), 2, "each run exports under its own instance id");
    let first_run = map[&ids[0]][0].resource_attr("service.instance.id").cloned();
    let second_run = map[&later[0]][0].resource_attr("service.instance.id").cloned();
    assert_ne!(first_run, second_run);
    proxy.sigterm().await;
}

fn support_read_spool(dir: &Path) -> String {
    portcullis::audit::spool::Spool::segment_paths(dir)
        .unwrap()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

async fn fill_until_refused(addr: SocketAddr, max: usize) -> (usize, Option<(u16, String)>) {
    for i in 0..max {
        let (status, body) = get(addr, &format!("/fill/{i}"), &[("user-agent", &"x".repeat(200))]).await;
        if status != StatusCode::OK {
            return (i, Some((status.as_u16(), body)));
        }
    }
    (max, None)
}

/// A proxy with the smallest spool (1 MiB) whose collector is not there (yet).
async fn small_spool_and_no_collector(when_full: &str) -> (Recorder, Receiver, tempfile::TempDir, Gateway) {
    let upstream = Recorder::start().await;
    let collector = Receiver::start().await;
    collector.stop();
    let spool = tempfile::tempdir().unwrap();
    let config = support::public_route(&upstream)
        .otlp(&collector.grpc_endpoint(), spool.path())
        .set("audit.spool.max_bytes", 1_048_576)
        .set("audit.spool.when_full", when_full);
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    (upstream, collector, spool, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_audit_unavailable_when_the_spool_is_full_and_serves_again_once_it_drains() {
    let (upstream, mut collector, _spool, gw) = small_spool_and_no_collector("fail_closed").await;
    let (served, refused) = fill_until_refused(gw.http, 20_000).await;
    let (status, body) = refused.expect("the spool never filled");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("audit_unavailable"), "{body}");
    assert!(served > 500, "refused after only {served} requests");
    let forwarded = upstream.requests().len();
    assert_eq!(forwarded, served, "a refused request reached the upstream");
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "portcullis_audit_spool_full"), 1.0);

    collector.restart().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut refused: u32 = 1;
    loop {
        let (status, _) = get(gw.http, "/after", &[]).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        refused += 1;
        assert!(Instant::now() < deadline, "admission never reopened");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every served request's record arrives; only refusals beyond the reserve may be dropped,
    // and those are counted.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (spans, dropped) = loop {
        let dropped = counter(&gw.metrics().await, "dropped");
        let spans = collector.spans();
        if spans.len() as f64 + dropped >= (served + refused as usize + 1) as f64 || Instant::now() > deadline
        {
            break (spans, dropped);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        dropped <= f64::from(refused),
        "{dropped} records dropped, only {refused} refusals"
    );
    let served_records = spans
        .iter()
        .filter(|s| s.str_attr("portcullis.reason") == Some("public_route"))
        .count();
    assert_eq!(
        served_records,
        served + 1,
        "every served request (and the one after) has its span"
    );
    let refusals = spans
        .iter()
        .filter(|s| s.str_attr("portcullis.reason") == Some("audit_unavailable"))
        .count();
    assert!(refusals >= 1, "the refusal itself was not recorded");
    let refusal = spans
        .iter()
        .find(|s| s.str_attr("portcullis.reason") == Some("audit_unavailable"))
        .unwrap();
    assert_eq!(refusal.status, SpanStatus::Error);
    assert_eq!(
        refusal.attr("http.response.status_code").and_then(Attr::as_i64),
        Some(503)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_serves_on_and_counts_the_records_it_drops_when_the_spool_is_full() {
    let (upstream, _collector, _spool, gw) = small_spool_and_no_collector("fail_open").await;
    let (served, refused) = fill_until_refused(gw.http, 8_000).await;
    assert!(refused.is_none(), "fail_open refused a request: {refused:?}");
    assert_eq!(served, 8_000);
    // Every record is spooled or counted as dropped (the sealing thread writes every 20 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = gw.metrics().await;
        if counter(&metrics, "dropped") + counter(&metrics, "spooled") >= 8_000.0 || Instant::now() > deadline
        {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(metric(&metrics, "portcullis_audit_spool_full"), 1.0, "{metrics}");
    let dropped = counter(&metrics, "dropped");
    assert!(dropped > 0.0, "{metrics}");
    assert_eq!(dropped + counter(&metrics, "spooled"), 8_000.0, "{metrics}");
    assert_eq!(upstream.requests().len(), 8_000);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lightstep_preset_sends_its_access_token_over_tls() {
    let ca = Ca::new("portcullis collector test CA");
    let collector = Receiver::start_tls(ca.server(&["localhost", "127.0.0.1"]).server_config(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let upstream = Recorder::start().await;
    let rest = support::public_route(&upstream)
        .set("audit.environment", "staging")
        .set("audit.otlp.preset", "lightstep")
        .set("audit.otlp.endpoint", collector.grpc_endpoint())
        .set("audit.otlp.ca", ca.write(dir.path(), "ca.pem"))
        .set("audit.spool.dir", dir.path().join("spool"));
    let proxy = Binary::serve(dir.path(), &rest, &[("LS_ACCESS_TOKEN", "ls-token-5f2c9e")]).await;
    let ids = public_requests(proxy.http, 3).await;
    let spans = collector.wait_for(3, Duration::from_secs(30)).await;
    let map = by_request(&spans);
    assert!(ids.iter().all(|id| map.contains_key(id)));
    let span = map[&ids[0]][0];
    assert_eq!(
        span.resource_attr("deployment.environment.name")
            .and_then(Attr::as_str),
        Some("staging")
    );
    let tokens: Vec<String> = collector
        .exports()
        .iter()
        .map(|e| e.header("lightstep-access-token").unwrap_or_default().to_string())
        .collect();
    assert!(!tokens.is_empty(), "the collector saw no export");
    assert!(tokens.iter().all(|t| t == "ls-token-5f2c9e"), "{tokens:?}");
    // The token is a header, never an attribute.
    assert!(
        !serde_json::to_string(&span.attributes)
            .unwrap()
            .contains("ls-token-5f2c9e")
    );
    proxy.sigterm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_protobuf_delivers_the_same_spans() {
    let collector = Receiver::start().await;
    let upstream = Recorder::start().await;
    let spool = tempfile::tempdir().unwrap();
    let config = support::public_route(&upstream)
        .set("audit.otlp.protocol", "http_protobuf")
        .set("audit.otlp.endpoint", collector.http_endpoint())
        .set("audit.spool.dir", spool.path());
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    let (status, _) = get(gw.http, "/over-http", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let spans = collector.wait_for(1, Duration::from_secs(30)).await;
    let access: Vec<_> = spans.iter().filter(|s| s.name == "access").collect();
    assert_eq!(access.len(), 1);
    assert_eq!(access[0].str_attr("url.path"), Some("/over-http"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_joins_the_caller_s_trace_even_unsampled_and_the_upstream_gets_its_traceparent() {
    let collector = Receiver::start().await;
    let upstream = Recorder::start().await;
    let spool = tempfile::tempdir().unwrap();
    let config = support::public_route(&upstream)
        .otlp(&collector.grpc_endpoint(), spool.path())
        .set_path(
            &["audit", "header_attributes", "cicd.pipeline.run.id"],
            "X-Pipeline-Run",
        );
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let (status, _) = get(
        gw.http,
        "/traced",
        &[
            ("traceparent", caller),
            ("tracestate", "vendor=abc"),
            ("x-pipeline-run", "run-42\tx"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(gw.http, "/untraced", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let spans = collector.wait_for(2, Duration::from_secs(30)).await;
    let traced = spans
        .iter()
        .find(|s| s.str_attr("url.path") == Some("/traced"))
        .unwrap();
    assert_eq!(traced.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(traced.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(traced.str_attr("cicd.pipeline.run.id"), Some("run-42\\u{9}x"));
    let seen = upstream.requests();
    let to_upstream = seen.iter().find(|r| r.target == "/traced").unwrap();
    assert_eq!(
        to_upstream.header("traceparent").unwrap(),
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-00", traced.span_id)
    );
    assert_eq!(to_upstream.header("tracestate").as_deref(), Some("vendor=abc"));
    // Without a caller's trace, a new one starts and the upstream is told of it.
    let fresh = spans
        .iter()
        .find(|s| s.str_attr("url.path") == Some("/untraced"))
        .unwrap();
    assert!(fresh.parent_span_id.is_none());
    let to_upstream = seen.iter().find(|r| r.target == "/untraced").unwrap();
    assert_eq!(
        to_upstream.header("traceparent").unwrap(),
        format!("00-{}-{}-01", fresh.trace_id, fresh.span_id)
    );
    gw.stop().await;
}

/// A config that names an exporter without a spool, or an unknown preset, is refused with the
/// key path and a fix.
#[test]
fn an_exporter_without_a_spool_directory_is_refused_with_the_key_and_a_fix() {
    let problems = support::problems(
        Config::new()
            .set("audit.otlp.preset", "collector")
            .set_path(
                &["audit", "header_attributes", "cicd.pipeline.run.id"],
                "Authorization",
            )
            .set_path(&["audit", "header_attributes", "enduser.id"], "X-User")
            .route(Route::public("a").host("a.test").upstream("http://127.0.0.1:1")),
    );
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"audit.spool.dir"), "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.path.contains("cicd.pipeline.run.id") && p.message.contains("credential")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.path.contains("enduser.id") && p.message.contains("not a workflow attribute")),
        "{problems:?}"
    );
}
