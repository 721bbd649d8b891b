//! Micro-benchmarks of the per-request work that is ours (not hyper's): building the canonical
//! view, encoding it for the wire, and finding the route.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Uri, Version, header};
use portcullis::proxy::canonical::{Canonical, canonical_path};
use portcullis::proxy::forward::Upstream;
use portcullis::proxy::routes::{Route, RouteTable};

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

criterion_group!(benches, canonical, routing);
criterion_main!(benches);
