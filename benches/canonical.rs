//! Micro-benchmarks of the per-request work that is ours (not hyper's): building the canonical
//! view, encoding it for the wire, finding the route, and the headers the upstream is sent.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Uri, Version, header};
use portcullis::canonical::{Canonical, canonical_path};
use portcullis::proxy::forward::Upstream;
use portcullis::proxy::routes::{Route, RouteTable};

// The binary's allocator, so allocation-heavy code costs here what it costs in the proxy.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn canonical(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::HOST,
        "airflow.example.com"
            .parse()
            .unwrap_or(http::HeaderValue::from_static("x")),
    );
    let plain: Uri = "/api/v1/dags/etl_daily/dagRuns?limit=100"
        .parse()
        .unwrap_or_default();
    let messy: Uri = "//api/./v1/dags/%65tl_daily/../etl_daily/dagRuns/%E2%82%AC?limit=100"
        .parse()
        .unwrap_or_default();
    c.bench_function("canonical view, clean path", |b| {
        b.iter(|| Canonical::build(&Method::GET, black_box(&plain), Version::HTTP_11, &headers, false))
    });
    c.bench_function("canonical view, dot segments and escapes", |b| {
        b.iter(|| Canonical::build(&Method::GET, black_box(&messy), Version::HTTP_11, &headers, false))
    });
    c.bench_function("canonical path only, refused (encoded slash)", |b| {
        b.iter(|| canonical_path(black_box("/api/v1/dags/a%2Fb/dagRuns")))
    });
    if let Ok(view) = Canonical::build(&Method::GET, &messy, Version::HTTP_11, &headers, false) {
        c.bench_function("wire path and query", |b| {
            b.iter(|| black_box(&view).wire_path_and_query())
        });
    }
}

fn routing(c: &mut Criterion) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut routes = Vec::new();
    for i in 0..50 {
        let config = portcullis::config::Route {
            name: format!("r{i}"),
            hosts: vec![format!("svc{i}.example.com"), format!("*.team{i}.example.com")],
            path_prefix: format!("/api/v{}", i % 5),
            upstream: portcullis::config::Upstream {
                url: "http://127.0.0.1:1".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let Ok(upstream) = Upstream::build(&config.upstream, &provider) else {
            return;
        };
        routes.push(Arc::new(Route::new(config, upstream, Vec::new(), None)));
    }
    let table = RouteTable::new(routes);
    c.bench_function("route lookup, exact host of 50", |b| {
        b.iter(|| {
            table
                .find(black_box("svc42.example.com"), black_box("/api/v2/dags"))
                .is_some()
        })
    });
    c.bench_function("route lookup, wildcard host of 50", |b| {
        b.iter(|| {
            table
                .find(black_box("ci.team42.example.com"), black_box("/api/v2/dags"))
                .is_some()
        })
    });
}

/// Strip, then inject, for a browser-like request (ten headers, one of them a spoofed identity
/// header) from an untrusted peer.
fn outbound(c: &mut Criterion) {
    use portcullis::proxy::context::{ConnInfo, RequestCtx};
    use portcullis::proxy::trace::TraceCtx;
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "airflow.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0"),
        ("accept", "application/json"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x_portcullis_user", "admin"),
        ("cookie", "theme=dark"),
        ("x-requested-with", "XMLHttpRequest"),
    ] {
        headers.append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    let addr = |s: &str| {
        s.parse()
            .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let conn = Arc::new(ConnInfo::new(
        addr("192.0.2.7:41000"),
        addr("127.0.0.1:8443"),
        true,
        false,
    ));
    let uri: Uri = "/api/v1/dags/etl_daily/dagRuns?limit=100"
        .parse()
        .unwrap_or_default();
    let mut ctx = RequestCtx::new(
        "4b1b0e4e-2b8f-4c57-9a43-3f0e1f8a5d11".into(),
        conn,
        TraceCtx::join(&HeaderMap::new()),
    );
    ctx.canonical = Canonical::build(&Method::GET, &uri, Version::HTTP_11, &headers, true).ok();
    c.bench_function("outbound headers: strip then inject, 10 inbound headers", |b| {
        b.iter_batched(
            || headers.clone(),
            |h| portcullis::proxy::forward::outbound_headers(h, &ctx, &[]),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, canonical, routing, outbound);
criterion_main!(benches);
