//! Micro-benchmarks of ES256 bearer-token verification: where a cache miss spends its time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, KeyPair as _, UnparsedPublicKey};
#[path = "common/mod.rs"]
mod common;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};

// The binary's allocator, so allocation-heavy code costs here what it costs in the proxy.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn tokens(c: &mut Criterion) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
    )
    .unwrap();
    let public = pair.public_key().as_ref().to_vec();
    let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
    let decoding = DecodingKey::from_ec_der(&public);
    let now = 4_000_000_000u64 - 1000;
    let claims = json!({"iss": "https://idp.example", "aud": "api", "sub": "svc", "exp": now + 300,
                        "iat": now - 10, "nbf": now - 10, "jti": "abc", "groups": ["a", "b"]});
    let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &encoding).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&["https://idp.example"]);
    validation.set_audience(&["api"]);

    c.bench_function("ES256 token: jsonwebtoken decode (verify + claims)", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<Map<String, Value>>(black_box(&token), &decoding, &validation).unwrap()
        })
    });
    let (message, signature) = token.rsplit_once('.').unwrap();
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap();
    let unparsed = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public.clone());
    c.bench_function("ES256 signature: aws-lc-rs, key parsed per call", |b| {
        b.iter(|| unparsed.verify(black_box(message.as_bytes()), &sig).unwrap())
    });
    let rng = aws_lc_rs::rand::SystemRandom::new();
    c.bench_function(
        "ES256 sign: aws-lc-rs, key parsed per call (what jsonwebtoken encode does)",
        |b| {
            b.iter(|| {
                aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                )
                .unwrap()
                .sign(&rng, black_box(message.as_bytes()))
                .unwrap()
            })
        },
    );
    c.bench_function("ES256 sign: aws-lc-rs, key parsed once", |b| {
        b.iter(|| pair.sign(&rng, black_box(message.as_bytes())).unwrap())
    });
    let parsed = unparsed.parse().unwrap();
    c.bench_function("ES256 signature: aws-lc-rs, key parsed once", |b| {
        b.iter(|| parsed.verify_sig(black_box(message.as_bytes()), &sig).unwrap())
    });
}

/// An audit sink that keeps nothing: the bench measures minting, not the trail.
struct Discard;

impl portcullis::audit::AuditSink for Discard {
    fn emit(&self, _: portcullis::audit::Event) {}
    fn flush(&self) {}
}

fn principal(subject: String) -> portcullis::identity::Principal {
    portcullis::identity::Principal {
        kind: portcullis::config::PrincipalKind::User,
        subject,
        issuer: "https://idp.example".into(),
        provider: "okta".into(),
        email: Some("alice@example.com".into()),
        name: Some("Alice".into()),
        groups: vec!["data-eng".into(), "sre".into()],
        auth_method: portcullis::identity::AuthMethod::Bearer,
        client_id: None,
        token_id: None,
        session_id_hash: None,
    }
}

/// Identity assertions: a mint (claims, ES256 signature, cache insert) and a cached answer.
fn assertions(c: &mut Criterion) {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = portcullis::config::Tokens::default();
    let minter = portcullis::tokens::Minter::open(
        &config,
        "https://portcullis.example.com",
        dir.path(),
        Arc::new(Discard),
    )
    .unwrap();
    let audience: Arc<str> = Arc::from("https://airflow.example.com");
    let route = Arc::new("airflow".to_string());
    let lifetime = Duration::from_secs(60);
    let mut n = 0u64;
    c.bench_function("assertion: mint (new caller, ES256)", |b| {
        b.iter(|| {
            n += 1;
            minter
                .mint(
                    &principal(format!("user-{n}")),
                    &audience,
                    lifetime,
                    &route,
                    &Default::default(),
                )
                .unwrap()
        })
    });
    // `cargo test --all-targets` runs benches once as a smoke test: no timed loops there.
    if std::env::args().any(|a| a == "--bench") {
        let samples = (0..5000)
            .map(|i| {
                let who = principal(format!("p99-{i}"));
                let t = std::time::Instant::now();
                minter
                    .mint(&who, &audience, lifetime, &route, &Default::default())
                    .unwrap();
                t.elapsed()
            })
            .collect();
        common::percentiles("assertion mint (new caller, ES256)", samples);
    }
    let known = principal("alice".into());
    minter
        .mint(&known, &audience, lifetime, &route, &Default::default())
        .unwrap();
    c.bench_function("assertion: cached (same caller and route)", |b| {
        b.iter(|| {
            minter
                .mint(
                    black_box(&known),
                    &audience,
                    lifetime,
                    &route,
                    &Default::default(),
                )
                .unwrap()
        })
    });
}

criterion_group!(benches, tokens, assertions);
criterion_main!(benches);
