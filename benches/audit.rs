//! Micro-benchmarks of one audit record's cost off the request path: the typed event made into
//! its span, sealed (sequence number, SHA-256 chain) and written as its line (the exporter's
//! path), or written straight into its line (the JSON-lines sink's); and the replay side,
//! a spooled line read back into a span; and the export side without the network, a batch of
//! sealed spans turned into OTLP protobuf the way opentelemetry-otlp does it. The network is in
//! the load run (benches/load-audit.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::audit::record::{Sealer, parse_line};
use portcullis::audit::{AccessEvent, Event, PolicyFields, TraceIds};
use portcullis::identity::{AuthMethod, Principal, PrincipalKind};

// The binary's allocator, so allocation-heavy code costs here what it costs in the proxy.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A protected request with a principal and a policy answer: the largest common record.
fn event() -> Event {
    AccessEvent {
        time: SystemTime::now(),
        trace: TraceIds::fresh(),
        act: None,
        request_id: "3f2c1a9e-7b4d-4c1e-9a55-0c7d2b8e6f10".into(),
        decision: "allow",
        reason: "authorized",
        reason_claim: None,
        token_issuer: None,
        principal_kind: "ci_job",
        auth_method: "bearer",
        principal: Some(Arc::new(Principal {
            kind: PrincipalKind::CiJob,
            subject: "project_path:group/infra:ref_type:branch:ref:main".into(),
            issuer: "https://gitlab.example.com".into(),
            provider: "gitlab".into(),
            email: None,
            name: None,
            groups: vec!["group/infra".into(), "deployers".into()],
            auth_method: AuthMethod::Bearer,
            client_id: None,
            token_id: Some("b3a1c2d4".into()),
            session_id_hash: None,
        })),
        authn_us: Some(4),
        route: Some(Arc::new("airflow-api".into())),
        method: Cow::Borrowed("POST"),
        scheme: "https",
        path: Some("/api/v1/dags/etl_daily/dagRuns".into()),
        server_address: Some("airflow.example.com".into()),
        server_port: 443,
        client_address: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        protocol_version: "1.1",
        user_agent: Some("python-requests/2.31.0".into()),
        status: 200,
        error_type: None,
        failed: false,
        outcome: "completed",
        upstream_status: Some(200),
        request_bytes: 0,
        response_bytes: 11,
        upstream_ms: Some(3.25),
        total: Duration::from_micros(3400),
        policy: Some(PolicyFields {
            domain: "airflow".into(),
            object: "dag:etl_daily".into(),
            action: "trigger".into(),
            rule: Some("policy.csv:18".into()),
            version: Arc::from("sha256:0123456789abcdef"),
            shadow: None,
            authz_us: 1,
            pipeline: Some("etl_daily".into()),
            run: None,
            task: None,
            task_run: None,
            decided: Vec::new(),
            filtered: None,
        }),
        workflow: Vec::new(),
    }
    .into()
}

fn audit(c: &mut Criterion) {
    let mut sealer = Sealer::new("7d0b3f1e-2a4c-4e8b-9f10-a1b2c3d4e5f6");
    c.bench_function("audit record: event to span, sealed, line written", |b| {
        b.iter_batched(
            event,
            |e| black_box(sealer.seal(e.into_span())),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function(
        "audit record: event written straight into its sealed line (JSON-lines sink)",
        |b| {
            b.iter_batched(
                event,
                |e| black_box(sealer.seal_event(e)),
                criterion::BatchSize::SmallInput,
            )
        },
    );
    let (span, written) = sealer.seal(event().into_span());
    println!(
        "one sealed record: {} bytes, {} attributes",
        written.len(),
        span.attributes.len()
    );
    c.bench_function("audit replay: spooled line read back into a span", |b| {
        b.iter(|| parse_line(black_box(&written)).unwrap())
    });
}

/// The export thread's work per span, batch by batch (1,024 spans, the default batch size).
fn export(c: &mut Criterion) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use prost::Message as _;
    const BATCH: usize = 1024;
    let mut sealer = Sealer::new("7d0b3f1e-2a4c-4e8b-9f10-a1b2c3d4e5f6");
    let batch: Vec<_> = (0..BATCH).map(|_| sealer.seal(event().into_span()).0).collect();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("portcullis")
        .build();
    let resource = ResourceAttributesWithSchema::from(&resource);
    let encode = |spans| {
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &resource),
        };
        request.encode_to_vec()
    };
    println!("one batch: {} bytes of protobuf", encode(batch.clone()).len());
    let mut group = c.benchmark_group("audit export, per batch of 1024");
    group.bench_function("clone (the gRPC exporter clones its batch per attempt)", |b| {
        b.iter(|| black_box(batch.clone()))
    });
    group.bench_function("spans to OTLP protobuf (transform and encode)", |b| {
        b.iter_batched(|| batch.clone(), encode, criterion::BatchSize::LargeInput)
    });
    group.finish();
}

criterion_group!(benches, audit, export);
criterion_main!(benches);
