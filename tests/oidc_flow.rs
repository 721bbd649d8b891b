//! The browser path's first steps against a real OpenID Provider: discovery through our own
//! HTTP client, and an authorization request (PKCE S256, state, nonce) that the provider accepts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;

use portcullis::authn::http::IdpClient;
use portcullis::authn::oidc::{discover, start_login};
use portcullis::session::Secret;
use support::idp::Idp;

const CALLBACK: &str = "http://127.0.0.1:8080/.portcullis/callback";

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_starts_with_pkce_state_and_nonce_and_the_provider_accepts_it() {
    let idp = Idp::start_with(&["--redirect", CALLBACK]).await;
    let http = IdpClient::new(None, &Arc::new(rustls::crypto::aws_lc_rs::default_provider())).unwrap();
    let metadata = discover(&idp.issuer, &http).await.unwrap();
    let scopes = vec!["email".to_string(), "profile".to_string()];
    let secret = Secret::new("web-secret");

    let first = start_login(&metadata, "web", Some(&secret), CALLBACK, &scopes).unwrap();
    let second = start_login(&metadata, "web", Some(&secret), CALLBACK, &scopes).unwrap();
    let endpoint = idp.endpoint("authorization_endpoint").await;
    assert!(
        first.authorize_url.starts_with(&endpoint),
        "{}",
        first.authorize_url
    );
    assert_eq!(
        query_param(&first.authorize_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&first.authorize_url, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        query_param(&first.authorize_url, "client_id").as_deref(),
        Some("web")
    );
    assert_eq!(
        query_param(&first.authorize_url, "state").as_deref(),
        Some(first.state.as_str())
    );
    assert!(query_param(&first.authorize_url, "nonce").is_some());
    assert!(
        !first.authorize_url.contains(first.pkce_verifier.expose()),
        "the verifier never leaves the server"
    );
    assert_ne!(first.state, second.state);
    assert_ne!(first.nonce, second.nonce);
    assert_ne!(first.pkce_verifier, second.pkce_verifier);

    // The provider takes the request to its sign-in interaction, not to an error.
    let request = http::Request::get(&first.authorize_url).body(Vec::new()).unwrap();
    let response = http.send(request).await.unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.contains("/interaction/"), "{location}");

    // Without PKCE the same provider refuses: the challenge above is what made it acceptable.
    let without_pkce = first
        .authorize_url
        .split('&')
        .filter(|p| !p.starts_with("code_challenge"))
        .collect::<Vec<_>>()
        .join("&");
    let response = http
        .send(http::Request::get(&without_pkce).body(Vec::new()).unwrap())
        .await
        .unwrap();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(location.contains("error="), "{} {location}", response.status());
}
