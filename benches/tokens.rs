//! Micro-benchmarks of ES256 bearer-token verification: where a cache miss spends its time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, KeyPair as _, UnparsedPublicKey};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};

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
    let parsed = unparsed.parse().unwrap();
    c.bench_function("ES256 signature: aws-lc-rs, key parsed once", |b| {
        b.iter(|| parsed.verify_sig(black_box(message.as_bytes()), &sig).unwrap())
    });
}

criterion_group!(benches, tokens);
criterion_main!(benches);
