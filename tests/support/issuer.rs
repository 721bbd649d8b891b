//! A small OpenID issuer the tests control: real discovery and JWKS over HTTP on loopback,
//! with ES256 keys the test holds, so it can mint tokens the real IdP never would (expired,
//! not yet valid, mistyped claims) and rotate or withdraw keys at will.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::config::Provider;
use super::serve::{Serve, Server, serve};

pub const AUDIENCE: &str = "portcullis-tests";

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

pub struct TestIssuer {
    pub issuer: String,
    keys: Arc<Mutex<Vec<SigningKey>>>,
    /// How many times the JWKS document was served.
    pub jwks_fetches: Arc<AtomicUsize>,
    /// Once set, every request (also on connections already open) gets 503.
    down: Arc<AtomicBool>,
    /// What the token endpoint answers next (a code exchange), as JSON.
    token_answer: Arc<Mutex<Value>>,
    server: Server,
}

fn new_key(kid: &str) -> SigningKey {
    let encoding = EncodingKey::from_ec_pem(super::pki::signing_key_pem().as_bytes()).unwrap();
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    SigningKey {
        kid: kid.to_string(),
        encoding,
        jwk,
    }
}

fn jwks_of(keys: &Mutex<Vec<SigningKey>>) -> Value {
    let keys: Vec<Value> = keys.lock().unwrap().iter().map(|k| k.jwk.clone()).collect();
    json!({ "keys": keys })
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl TestIssuer {
    pub async fn start() -> TestIssuer {
        let keys = Arc::new(Mutex::new(vec![new_key("k1")]));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let token_answer = Arc::new(Mutex::new(json!({"error": "invalid_grant"})));
        let issuer: Arc<Mutex<String>> = Arc::default();
        let (k, f, iss, d, t) = (
            keys.clone(),
            jwks_fetches.clone(),
            issuer.clone(),
            down.clone(),
            token_answer.clone(),
        );
        let server = serve(Serve::auto(), move |_, req| {
            let down = d.load(Ordering::SeqCst);
            let iss = iss.lock().unwrap().clone();
            let body = match req.uri().path() {
                _ if down => String::new(),
                // Enough of a provider for the browser path: it redirects to /authorize (the
                // test reads state and nonce from that URL) and exchanges the code at /token,
                // which answers what the test queued.
                "/.well-known/openid-configuration" => json!({
                    "issuer": iss,
                    "jwks_uri": format!("{iss}/jwks"),
                    "authorization_endpoint": format!("{iss}/authorize"),
                    "token_endpoint": format!("{iss}/token"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                })
                .to_string(),
                "/token" => t.lock().unwrap().to_string(),
                "/jwks" => {
                    f.fetch_add(1, Ordering::SeqCst);
                    jwks_of(&k).to_string()
                }
                _ => String::new(),
            };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            if down {
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            async move { response }
        })
        .await;
        let url = server.url();
        *issuer.lock().unwrap() = url.clone();
        TestIssuer {
            issuer: url,
            keys,
            jwks_fetches,
            down,
            token_answer,
            server,
        }
    }

    /// The key set as published at `/jwks`.
    pub fn jwks_json(&self) -> Value {
        jwks_of(&self.keys)
    }

    /// Publishes another signing key (rotation).
    pub fn add_key(&self, kid: &str) {
        self.keys.lock().unwrap().push(new_key(kid));
    }

    /// The token endpoint's next answer to a code exchange.
    pub fn answer_code_exchange(&self, answer: Value) {
        *self.token_answer.lock().unwrap() = answer;
    }

    /// The issuer is down: no new connections, and 503 on the ones already open.
    pub fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.server.stop_accepting();
    }

    /// Claims that pass every check, for `sub`.
    pub fn claims(&self, sub: &str) -> Value {
        let now = now();
        json!({"iss": self.issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now, "exp": now + 300,
               "jti": format!("jti-{sub}-{now}"), "groups": ["deployers"], "email": format!("{sub}@example.test"),
               "email_verified": true})
    }

    /// Signs `claims` with key `kid` (ES256); `tweak` may change the header first.
    pub fn sign_with(&self, kid: &str, claims: &Value, tweak: impl FnOnce(&mut Header)) -> String {
        let keys = self.keys.lock().unwrap();
        let key = keys.iter().find(|k| k.kid == kid).expect("no such key");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        tweak(&mut header);
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    /// Signs a header and payload given as JSON text exactly (key k1, ES256), for tokens no
    /// serializer would write: a member named twice, a `crit` list.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let keys = self.keys.lock().unwrap();
        let key = keys.iter().find(|k| k.kid == "k1").expect("no key k1");
        let message = format!("{}.{}", b64(header), b64(payload));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, Algorithm::ES256).unwrap();
        format!("{message}.{signature}")
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with("k1", claims, |_| {})
    }

    /// A token for `sub` that passes every check.
    pub fn token(&self, sub: &str) -> String {
        self.sign(&self.claims(sub))
    }

    /// An `[[identity_providers]]` entry named `name` for this issuer: its audience, ES256.
    pub fn provider(&self, name: &str) -> Provider {
        Provider::new(name, &self.issuer)
            .audiences([AUDIENCE])
            .set("algorithms", ["ES256"])
    }
}
