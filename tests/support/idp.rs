//! A real OpenID Provider for story tests: panva's `oidc-provider` run by Node from
//! `tests/peers/oidc/provider.mjs` (installed by `.ci/install-peers`), on 127.0.0.1 and a free
//! port. Its clients, resources and claims are described at the top of that script.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::{Config, Provider, Route};

/// The audience of access tokens when no resource is requested.
pub const API_AUDIENCE: &str = "https://api.portcullis.test";
/// A second resource the provider knows, for wrong-audience tokens.
pub const OTHER_AUDIENCE: &str = "https://other.portcullis.test";

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/oidc/provider.mjs");
const MODULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/oidc/node_modules/oidc-provider"
);
// Generous: several providers start at once when story tests run in parallel on two cores.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: u32 = 2;

/// Why a start attempt failed: the provider printed nothing in time, or it exited.
enum Started {
    Hung(String),
    Failed(String),
}

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
        // It starts in well under a second, yet has been seen to print nothing for a whole
        // minute (cause not found), so a start that hangs is tried again once, and said so.
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(extra_args).await {
                Ok(idp) => return idp,
                Err(Started::Hung(why)) if attempt < START_ATTEMPTS => {
                    eprintln!("the OpenID Provider hung at start; starting it again: {why}");
                }
                Err(Started::Hung(why) | Started::Failed(why)) => {
                    panic!("the OpenID Provider did not start: {why}")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    async fn try_start(extra_args: &[&str]) -> Result<Idp, Started> {
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
                let hung = failed.is_err();
                let _ = child.kill();
                let status = child.wait();
                // Let the stderr reader reach the end of the pipe.
                std::thread::sleep(Duration::from_millis(100));
                let text = stderr.lock().unwrap().clone();
                return Err(if hung {
                    Started::Hung(format!(
                        "no READY line within {START_TIMEOUT:?} ({status:?})\n--- stderr ---\n{text}"
                    ))
                } else {
                    Started::Failed(format!(
                        "it exited before it was ready ({status:?})\n--- stderr ---\n{text}"
                    ))
                });
            }
        };
        eprintln!("oidc provider {issuer} ready in {:?}", started.elapsed());
        Ok(Idp {
            issuer,
            child,
            stderr,
        })
    }

    /// This provider as `[[identity_providers]]` entry `name`, for access tokens of the API.
    pub fn provider(&self, name: &str) -> Provider {
        Provider::new(name, &self.issuer).audiences([API_AUDIENCE])
    }

    /// This provider as `name` with browser sign-in through the `web` client, its secret written
    /// to `secret_file`.
    pub fn browser_provider(&self, name: &str, secret_file: &std::path::Path) -> Provider {
        std::fs::write(secret_file, "web-secret\n").unwrap();
        self.provider(name)
            .set("browser.client_id", "web")
            .set("browser.client_secret_file", secret_file)
    }

    /// Config for this provider as `oidc` with browser sign-in (see [`Idp::browser_provider`]),
    /// and `route` accepting it (an `authenticated` route: any signed-in caller; policy has its
    /// own tests).
    pub fn browser_config(&self, secret_file: &std::path::Path, route: Route) -> Config {
        Config::new()
            .provider(self.browser_provider("oidc", secret_file))
            .route(route.providers(["oidc"]))
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

    /// Drives the provider's development sign-in (login form, then consent) over plain HTTP with a
    /// cookie jar, the way a browser would, starting from an authorization URL. Returns the final
    /// redirect to the client's redirect_uri (e.g.
    /// `"http://127.0.0.1:8080/.portcullis/callback?code=...&state=...&iss=..."`), which is NOT
    /// followed. Any password is accepted; `login` becomes the `sub` of the ID token.
    ///
    /// Redirects (301/302/303) within the provider's origin are followed with GET; the first
    /// `Location` outside it is the answer (an error redirect to the client is returned too). The
    /// jar keeps one value per cookie name (the provider scopes `_interaction` and
    /// `_interaction_resume` to per-interaction paths, and all of them are sent back every time).
    /// Panics, with the status and body, on anything else.
    pub async fn sign_in_without_browser(&self, authorize_url: &str, login: &str) -> String {
        self.sign_in_keeping_cookies(authorize_url, login).await.0
    }

    /// [`Idp::sign_in_without_browser`], also returning the provider's cookies (its session), for
    /// a logout at the provider afterwards ([`Idp::log_out_at_provider`]).
    pub async fn sign_in_keeping_cookies(
        &self,
        authorize_url: &str,
        login: &str,
    ) -> (String, Vec<(String, String)>) {
        const MAX_STEPS: usize = 20;
        let origin = self.issuer.trim_end_matches('/').to_string();
        assert!(
            within_origin(&origin, authorize_url),
            "the authorization URL {authorize_url} is not on the provider {origin}"
        );
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut jar: Vec<(String, String)> = Vec::new();
        let mut next: (http::Method, String, Option<String>) =
            (http::Method::GET, authorize_url.to_string(), None);
        let mut trail: Vec<String> = Vec::new();
        for _ in 0..MAX_STEPS {
            let (method, url, form) = next;
            trail.push(format!("{method} {url}"));
            let mut req = Request::builder()
                .method(method.clone())
                .uri(url.as_str())
                .header("accept", "text/html");
            if !jar.is_empty() {
                let cookie = jar
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                req = req.header("cookie", cookie);
            }
            let body = match form {
                Some(form) => {
                    req = req.header("content-type", "application/x-www-form-urlencoded");
                    Bytes::from(form)
                }
                None => Bytes::new(),
            };
            let req = req
                .body(Full::new(body))
                .unwrap_or_else(|e| panic!("{method} {url}: cannot build the request: {e}"));
            let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                .await
                .unwrap_or_else(|_| panic!("{method} {url}: no answer within 10 s"))
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = response.status();
            for set_cookie in response.headers().get_all("set-cookie") {
                store_cookie(&mut jar, set_cookie.to_str().unwrap_or_default());
            }
            let location = response
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_string());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            let fail = |why: &str| -> ! {
                panic!(
                    "sign-in: {why}\n{method} {url} answered {status}\nsteps so far:\n  {}\n--- body ---\n{text}",
                    trail.join("\n  ")
                )
            };

            if matches!(
                status,
                StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER
            ) {
                let Some(location) = location else {
                    fail("a redirect without Location")
                };
                let target = if location.starts_with('/') {
                    format!("{origin}{location}")
                } else if location.starts_with("http://") || location.starts_with("https://") {
                    location
                } else {
                    fail(&format!(
                        "a relative Location the helper cannot resolve: {location}"
                    ))
                };
                if !within_origin(&origin, &target) {
                    return (target, jar);
                }
                next = (http::Method::GET, target, None);
                continue;
            }
            if status != StatusCode::OK {
                fail("an unexpected status");
            }
            let Some(page) = parse_form(&text) else {
                fail("a page without a POST form")
            };
            let prompt = page
                .fields
                .iter()
                .find(|(k, _)| k == "prompt")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let mut fields: Vec<(String, String)> = page.fields.clone();
            match prompt.as_str() {
                "login" => {
                    fields.retain(|(k, _)| k != "login" && k != "password");
                    fields.push(("login".to_string(), login.to_string()));
                    fields.push(("password".to_string(), "any-password".to_string()));
                }
                "consent" => {}
                other => fail(&format!("an unknown prompt {other:?}")),
            }
            let action = if page.action.starts_with('/') {
                format!("{origin}{}", page.action)
            } else if page.action.is_empty() {
                url.clone()
            } else {
                page.action.clone()
            };
            if !within_origin(&origin, &action) {
                fail(&format!("a form posting outside the provider: {action}"));
            }
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            next = (http::Method::POST, action, Some(form_encode(&pairs)));
        }
        panic!(
            "sign-in: no redirect out of the provider after {MAX_STEPS} steps:\n  {}",
            trail.join("\n  ")
        );
    }
}

impl Idp {
    /// Logs out at the provider as the browser whose provider cookies are `jar` would: its
    /// end_session endpoint (for client `web`), then the confirmation form it shows. With
    /// --backchannel-logout, the provider posts the logout token before it answers. Returns
    /// the confirmation's status.
    pub async fn log_out_at_provider(&self, jar: &[(String, String)]) -> StatusCode {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let end_session = self.endpoint("end_session_endpoint").await;
        let req = Request::get(format!("{end_session}?client_id=web"))
            .header("accept", "text/html")
            .header("cookie", &cookie)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(req).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, StatusCode::OK, "end_session: {text}");
        let form = parse_form(&text).unwrap_or_else(|| panic!("no logout form: {text}"));
        let mut fields: Vec<(&str, &str)> = form
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        fields.push(("logout", "yes"));
        let origin = self.issuer.trim_end_matches('/');
        let action = if form.action.starts_with('/') {
            format!("{origin}{}", form.action)
        } else {
            form.action.clone()
        };
        let req = Request::post(action)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", &cookie)
            .body(Full::new(Bytes::from(form_encode(&fields))))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .expect("the logout confirmation answers within 10 s")
            .unwrap();
        response.status()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an upstream checks: the token's signature against `keys` (by its `kid`), its issuer and
/// audience, and `iss`, `aud`, `sub`, `exp` present, with no leeway (an expired token at the
/// upstream is a failure of the proxy's refresh). The claims when it holds.
pub fn verify_jwt(
    token: &str,
    keys: &jsonwebtoken::jwk::JwkSet,
    issuer: &str,
    audience: &str,
) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.ok_or(jsonwebtoken::errors::ErrorKind::InvalidToken)?;
    let jwk = keys
        .find(&kid)
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["iss", "aud", "sub", "exp"]);
    validation.leeway = 0;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk)?;
    Ok(jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)?.claims)
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

/// Whether `url` is on `origin` (`http://host:port`, no trailing slash).
fn within_origin(origin: &str, url: &str) -> bool {
    url.strip_prefix(origin)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
}

/// Records one `Set-Cookie` in a jar keyed by name only (paths and expiry dates are ignored, but
/// a cookie cleared with an empty value or a past expiry is dropped).
fn store_cookie(jar: &mut Vec<(String, String)>, set_cookie: &str) {
    let mut parts = set_cookie.split(';');
    let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
        return;
    };
    let (name, value) = (name.trim().to_string(), value.trim().to_string());
    let cleared = value.is_empty()
        || parts.any(|attr| {
            let attr = attr.trim().to_ascii_lowercase();
            attr == "max-age=0" || (attr.starts_with("expires=") && attr.contains("1970"))
        });
    jar.retain(|(k, _)| *k != name);
    if !cleared {
        jar.push((name, value));
    }
}

/// The first `<form method="post">` of a page: its action and its `<input>` fields with a name
/// (values as written, HTML entities decoded).
struct HtmlForm {
    action: String,
    fields: Vec<(String, String)>,
}

fn parse_form(html: &str) -> Option<HtmlForm> {
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("<form") {
        let start = from + at;
        let tag_end = start + lower[start..].find('>')?;
        let tag = &html[start..=tag_end];
        let end = lower[tag_end..]
            .find("</form")
            .map_or(html.len(), |e| tag_end + e);
        from = tag_end;
        if !html_attr(tag, "method").is_some_and(|m| m.eq_ignore_ascii_case("post")) {
            continue;
        }
        let inner = &html[tag_end..end];
        let inner_lower = &lower[tag_end..end];
        let mut fields = Vec::new();
        let mut pos = 0;
        while let Some(i) = inner_lower[pos..].find("<input") {
            let s = pos + i;
            let e = s + inner_lower[s..].find('>').unwrap_or(inner.len() - s - 1);
            let input = &inner[s..=e];
            if let Some(name) = html_attr(input, "name") {
                fields.push((name, html_attr(input, "value").unwrap_or_default()));
            }
            pos = e;
        }
        return Some(HtmlForm {
            action: html_attr(tag, "action").unwrap_or_default(),
            fields,
        });
    }
    None
}

/// The value of `name="..."` (or single-quoted) in one tag, entity-decoded.
fn html_attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before_ok = at > 0 && lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - rest.len() + 1;
        let value = tag[value_start..].trim_start();
        let quote = value.chars().next()?;
        let raw = if quote == '"' || quote == '\'' {
            let body = &value[1..];
            &body[..body.find(quote)?]
        } else {
            value
                .split(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
                .next()?
        };
        return Some(
            raw.replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        );
    }
    None
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

/// The development certificate for `localhost` (certs/dev) that the tests' browsers accept.
pub const LOCALHOST_CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/dev/localhost.crt");
pub const LOCALHOST_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/dev/localhost.key");

/// A gateway pre-bound on HTTPS for `localhost`, its origin, and the real provider started with
/// that origin's callback and post-logout redirect registered: where a browser test signs in.
pub async fn https_for_browsers() -> (super::Prebound, String, Idp) {
    let prebound = super::Gateway::prebind(
        Config::new()
            .server("https", "127.0.0.1:0")
            .set("server.tls.cert", LOCALHOST_CERT)
            .set("server.tls.key", LOCALHOST_KEY),
    )
    .await;
    let origin = format!("https://localhost:{}", prebound.https.unwrap().port());
    let idp = Idp::start_with(&[
        "--redirect",
        &format!("{origin}/.portcullis/callback"),
        "--post-logout-redirect",
        &format!("{origin}/.portcullis/signed_out"),
    ])
    .await;
    (prebound, origin, idp)
}
