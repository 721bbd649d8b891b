//! A real OpenID Provider for story tests: panva's `oidc-provider` run by Node from
//! `tests/peers/oidc/provider.mjs` (installed by `.ci/install-peers`), on 127.0.0.1 and a free
//! port. Its clients, resources and claims are described at the top of that script.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The audience of access tokens when no resource is requested.
pub const API_AUDIENCE: &str = "https://api.portcullis.test";
/// A second resource the provider knows, for wrong-audience tokens.
pub const OTHER_AUDIENCE: &str = "https://other.portcullis.test";

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/oidc/provider.mjs");
const MODULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/oidc/node_modules/oidc-provider"
);
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running provider. Dropping it kills the process. The process also exits by itself when
/// this test process dies (its stdin, held open here, closes).
pub struct Idp {
    /// `http://127.0.0.1:PORT`, exactly as it appears in `iss` claims.
    pub issuer: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Idp {
    pub async fn start() -> Idp {
        Self::start_with(&[]).await
    }

    /// Starts the provider with extra arguments for the script, e.g.
    /// `["--redirect", "http://127.0.0.1:8080/.portcullis/callback"]`.
    pub async fn start_with(extra_args: &[&str]) -> Idp {
        assert!(
            std::path::Path::new(MODULES).is_dir(),
            "oidc-provider is not installed: run .ci/install-peers (npm ci in tests/peers/oidc)"
        );
        let mut child = Command::new("node")
            .arg(SCRIPT)
            .args(["--port", "0", "--exit-with-stdin"])
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (run .ci/install-peers): {e}"));

        // Both pipes are drained for the provider's whole life so it never blocks on a write.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
        let out_pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("READY ")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(issuer.trim().to_string());
                }
            }
        });

        let started = Instant::now();
        let outcome = tokio::time::timeout(START_TIMEOUT, ready_rx).await;
        let issuer = match outcome {
            Ok(Ok(issuer)) => issuer,
            failed => {
                let why = if failed.is_err() {
                    format!("no READY line within {START_TIMEOUT:?}")
                } else {
                    "it exited before it was ready".to_string()
                };
                let _ = child.kill();
                let status = child.wait();
                // Let the stderr reader reach the end of the pipe.
                std::thread::sleep(Duration::from_millis(100));
                let text = stderr.lock().unwrap().clone();
                panic!("the OpenID Provider did not start: {why} ({status:?})\n--- stderr ---\n{text}");
            }
        };
        eprintln!("oidc provider {issuer} ready in {:?}", started.elapsed());
        Idp {
            issuer,
            child,
            stderr,
        }
    }

    /// What the provider wrote to stderr so far (warnings, server errors).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub async fn discovery(&self) -> serde_json::Value {
        let (status, body) = get_json(&self.discovery_url()).await;
        assert_eq!(status, StatusCode::OK, "discovery: {body}");
        body
    }

    /// One endpoint URL from discovery, e.g. `"token_endpoint"` or `"jwks_uri"`.
    pub async fn endpoint(&self, name: &str) -> String {
        let discovery = self.discovery().await;
        discovery[name]
            .as_str()
            .unwrap_or_else(|| panic!("discovery has no {name}: {discovery}"))
            .to_string()
    }

    pub async fn jwks(&self) -> serde_json::Value {
        let (status, body) = get_json(&self.endpoint("jwks_uri").await).await;
        assert_eq!(status, StatusCode::OK, "jwks: {body}");
        body
    }

    /// POSTs `form` to the token endpoint; returns the status and the JSON answer, error or not.
    pub async fn token_request(&self, form: &[(&str, &str)]) -> (StatusCode, serde_json::Value) {
        post_form(&self.endpoint("token_endpoint").await, form).await
    }

    /// A client_credentials access token (a JWT) for `client_id`, authenticated with
    /// client_secret_post. `resource` None gives audience [`API_AUDIENCE`].
    pub async fn client_credentials_token(
        &self,
        client_id: &str,
        secret: &str,
        resource: Option<&str>,
    ) -> String {
        self.client_credentials_token_scoped(client_id, secret, resource, None)
            .await
    }

    /// Same, also requesting `scope` (e.g. `"read write"`); without it the token has no `scope`.
    pub async fn client_credentials_token_scoped(
        &self,
        client_id: &str,
        secret: &str,
        resource: Option<&str>,
        scope: Option<&str>,
    ) -> String {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
        ];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let (status, body) = self.token_request(&form).await;
        assert_eq!(status, StatusCode::OK, "token request for {client_id}: {body}");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_string()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JWT's header and payload as JSON, without checking its signature.
pub fn decode_jwt_unverified(token: &str) -> (serde_json::Value, serde_json::Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let decode = |part: &str| -> serde_json::Value {
        let bytes = base64url_decode(part).unwrap_or_else(|| panic!("bad base64url: {part}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {part}"))
    };
    (decode(parts[0]), decode(parts[1]))
}

/// Unpadded base64url (RFC 4648 section 5) to bytes; None on a character outside the alphabet.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// `application/x-www-form-urlencoded` encoding of `form`.
pub fn form_encode(form: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    form.iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn request_json(req: Request<Full<Bytes>>) -> (StatusCode, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = req.uri().clone();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("{uri}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{uri}: {e}"));
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{uri}: {status} answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, json)
}

/// GET `url` (plain http) and parse the body as JSON.
pub async fn get_json(url: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::get(url)
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    request_json(req).await
}

/// POST `form` to `url` (plain http) and parse the answer as JSON.
pub async fn post_form(url: &str, form: &[(&str, &str)]) -> (StatusCode, serde_json::Value) {
    let req = Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(form_encode(form))))
        .unwrap();
    request_json(req).await
}
