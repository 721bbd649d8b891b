//! `portcullis demo idp`: a development OpenID Provider for the quickstart. FOR DEMOS ONLY:
//! anyone who reaches it signs in as any demo user and gets any token they ask for, which is why
//! it listens on loopback only and says so when it starts.
//!
//! One process speaks for three issuers, each with its own ES256 key made at start and never
//! written anywhere (a restart invalidates every token it gave out):
//!
//! | issuer | tokens |
//! |---|---|
//! | `http://ADDR` | people (authorization code with PKCE, behind a form listing [`USERS`]) and services (client credentials, [`SERVICES`]) |
//! | `http://ADDR/gitlab` | CI jobs: ID tokens shaped like GitLab CI's (`project_id`, `namespace_id`, `ref`, `ref_protected`, …) |
//! | `http://ADDR/untrusted` | the same tokens as the first, from an issuer no configuration should trust |
//!
//! Each issuer has `/.well-known/openid-configuration` and `/jwks` under its URL. The first one
//! also has `/authorize` (GET shows the form, POST picks a user), `/token` (`authorization_code`
//! with `code_verifier`, `refresh_token`, `client_credentials`), and a demo-only
//! `/demo/token?kind=user|service|ci|untrusted` that answers a bare token for scripts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, Response, StatusCode, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{Received, escape, html, param, see_other, text};
use portcullis::body::ProxyBody;

/// A demo person: who signs in, and the groups their tokens carry.
pub struct User {
    pub login: &'static str,
    pub name: &'static str,
    pub groups: &'static [&'static str],
}

/// The people the sign-in form offers. The quickstart's policy lets `viewers` view the DAGs and
/// `operators` also trigger them; carol is in no group, so she signs in and may do nothing.
pub const USERS: [User; 3] = [
    User {
        login: "alice",
        name: "Alice Demo",
        groups: &["viewers"],
    },
    User {
        login: "bob",
        name: "Bob Demo",
        groups: &["operators"],
    },
    User {
        login: "carol",
        name: "Carol Demo",
        groups: &[],
    },
];

/// A demo service client (client credentials).
pub struct Service {
    pub client_id: &'static str,
    pub secret: &'static str,
}

pub const SERVICES: [Service; 1] = [Service {
    client_id: "reporting-bot",
    secret: "reporting-bot-secret",
}];

/// The one web client: the proxy's browser sign-in (examples/quickstart/client-secret holds the
/// same secret).
pub const CLIENT_ID: &str = "portcullis";
pub const CLIENT_SECRET: &str = "quickstart-client-secret";

/// Where a browser may be sent back by default: the quickstart proxy's callback.
pub const DEFAULT_REDIRECT_URIS: [&str; 2] = [
    "http://localhost:8080/.portcullis/callback",
    "http://127.0.0.1:8080/.portcullis/callback",
];

/// The audience of access tokens and of CI job tokens unless a job asks for another.
pub const DEFAULT_AUDIENCE: &str = "api://airflow";

/// How long tokens live.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How long an authorization code may wait for its exchange.
const CODE_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "refusing to listen on {0}: the demo identity provider lets anyone sign in as anyone, so it listens on a loopback address only (127.0.0.1, ::1)"
    )]
    NotLoopback(String),
    #[error(
        "--redirect-uri {0:?}: give an http(s) URL on a loopback host (localhost, *.localhost, 127.0.0.1, [::1]) without a fragment"
    )]
    BadRedirect(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot make a signing key: {0}")]
    Key(String),
}

/// The address to listen on, if it is a loopback IP address and port.
pub fn loopback(listen: &str) -> Result<SocketAddr, StartError> {
    match listen.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => Ok(addr),
        _ => Err(StartError::NotLoopback(listen.to_string())),
    }
}

/// Whether a redirect URI may be registered: http(s), on a loopback host, no fragment.
fn loopback_redirect(uri: &str) -> bool {
    let Ok(parsed) = uri.parse::<http::Uri>() else {
        return false;
    };
    let scheme_ok = matches!(parsed.scheme_str(), Some("http" | "https"));
    let host = parsed.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host_ok = host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    scheme_ok && host_ok && !uri.contains('#')
}

pub struct Options {
    pub listen: SocketAddr,
    pub redirect_uris: Vec<String>,
    pub audience: String,
}

/// One issuer: its URL and key.
struct Issuer {
    url: String,
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

impl Issuer {
    fn new(url: String) -> Result<Issuer, StartError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = |e: aws_lc_rs::error::Unspecified| StartError::Key(e.to_string());
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(key)?;
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|e| StartError::Key(e.to_string()))?;
        // The public key is the uncompressed point 04 ‖ X ‖ Y.
        let point = pair.public_key().as_ref();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            return Err(StartError::Key("unexpected public key length".into()));
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, point);
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref().get(..12).unwrap_or_default());
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        Ok(Issuer {
            url,
            kid,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        })
    }

    /// Signs `claims` with this issuer's key; `typ` is `JWT` (ID tokens) or `at+jwt` (access tokens).
    fn sign(&self, typ: &str, claims: &Value) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.to_string());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| format!("cannot sign: {e}"))
    }
}

/// A code waiting for its exchange.
struct Code {
    user: &'static User,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    scope: String,
    expires: Instant,
}

struct Idp {
    base: String,
    people: Issuer,
    gitlab: Issuer,
    untrusted: Issuer,
    redirect_uris: Vec<String>,
    audience: String,
    codes: Mutex<HashMap<String, Code>>,
    /// Refresh token → whose, and the scope granted. Each is spent once: a refresh returns a new one.
    refresh_tokens: Mutex<HashMap<String, (&'static User, String)>>,
    /// Pipeline and job ids for CI tokens.
    serial: AtomicU64,
}

/// Binds, says loudly what this is, and serves until the process ends.
pub async fn run(options: Options) -> Result<(), StartError> {
    if !options.listen.ip().is_loopback() {
        return Err(StartError::NotLoopback(options.listen.to_string()));
    }
    if let Some(bad) = options.redirect_uris.iter().find(|u| !loopback_redirect(u)) {
        return Err(StartError::BadRedirect(bad.clone()));
    }
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: options.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: options.listen,
        source,
    })?;
    let idp = Idp::new(format!("http://{addr}"), options.redirect_uris, options.audience)?;
    eprintln!("{}", banner(&idp));
    super::serve(listener, Arc::new(idp), handle).await;
    Ok(())
}

fn banner(idp: &Idp) -> String {
    let rule = "#".repeat(78);
    format!(
        "{rule}\n\
         #  portcullis demo idp: a development OpenID Provider, FOR DEMOS ONLY.\n\
         #  Anyone who can reach it signs in as anyone and gets any token they ask for.\n\
         #  Never let a real deployment trust its issuers.\n\
         {rule}\n\
         people and services  {}\n\
         CI jobs (GitLab CI)  {}\n\
         untrusted            {}\n\
         users                {}\n",
        idp.people.url,
        idp.gitlab.url,
        idp.untrusted.url,
        USERS
            .iter()
            .map(|u| format!("{} ({})", u.login, groups_text(u)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn groups_text(user: &User) -> String {
    if user.groups.is_empty() {
        "no groups".into()
    } else {
        format!("groups: {}", user.groups.join(", "))
    }
}

async fn handle(idp: Arc<Idp>, req: Received) -> Response<ProxyBody> {
    let path = req.parts.uri.path().to_string();
    let method = req.parts.method.clone();
    tracing::debug!(%method, %path, "demo idp request");
    if method == Method::GET {
        for issuer in [&idp.people, &idp.gitlab, &idp.untrusted] {
            let prefix = issuer.url.strip_prefix(&idp.base).unwrap_or("");
            match path.strip_prefix(prefix) {
                Some("/.well-known/openid-configuration") => {
                    return super::pretty_json(StatusCode::OK, &idp.discovery(issuer));
                }
                Some("/jwks") => return super::pretty_json(StatusCode::OK, &json!({ "keys": [issuer.jwk] })),
                _ => {}
            }
        }
    }
    let params = req.params();
    match (method, path.as_str()) {
        (Method::GET, "/") => html(StatusCode::OK, idp.home()),
        (Method::GET, "/authorize") => match idp.authorization(&params) {
            Ok(request) => html(StatusCode::OK, idp.sign_in_form(&request)),
            Err(why) => html(StatusCode::BAD_REQUEST, error_page(&why)),
        },
        (Method::POST, "/authorize") => idp.pick(&params),
        (Method::POST, "/token") => idp.token(&req.parts.headers, &params),
        (Method::GET | Method::POST, "/demo/token") => idp.demo_token(&params),
        _ => super::json(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "error_description": "see / for what this provider serves"}),
        ),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 32 random bytes, base64url: codes, refresh tokens and token ids.
fn random_token() -> Result<String, String> {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system gives no random numbers".to_string())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn user(login: &str) -> Option<&'static User> {
    USERS.iter().find(|u| u.login == login)
}

/// Sets a member of a JSON object (the documents here are all objects).
fn set(doc: &mut Value, key: &str, value: Value) {
    if let Some(map) = doc.as_object_mut() {
        map.insert(key.to_string(), value);
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<ProxyBody> {
    super::json(status, &json!({"error": error, "error_description": description}))
}

/// An authorization request, checked.
struct Authorization {
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    challenge: String,
}

impl Idp {
    fn new(base: String, redirect_uris: Vec<String>, audience: String) -> Result<Idp, StartError> {
        Ok(Idp {
            people: Issuer::new(base.clone())?,
            gitlab: Issuer::new(format!("{base}/gitlab"))?,
            untrusted: Issuer::new(format!("{base}/untrusted"))?,
            base,
            redirect_uris,
            audience,
            codes: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(1000),
        })
    }

    fn discovery(&self, issuer: &Issuer) -> Value {
        let jwks_uri = format!("{}/jwks", issuer.url);
        if std::ptr::eq(issuer, &self.people) {
            return json!({
                "issuer": issuer.url,
                "jwks_uri": jwks_uri,
                "authorization_endpoint": format!("{}/authorize", self.base),
                "token_endpoint": format!("{}/token", self.base),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": ["openid", "email", "profile", "offline_access"],
                "claims_supported": ["sub", "name", "preferred_username", "email", "email_verified", "groups"],
            });
        }
        // The other issuers hand out tokens through /demo/token only: no endpoints of their own.
        json!({
            "issuer": issuer.url,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    fn home(&self) -> String {
        let users: String = USERS
            .iter()
            .map(|u| {
                format!(
                    "<li><b>{}</b> ({})</li>",
                    escape(u.login),
                    escape(&groups_text(u))
                )
            })
            .collect();
        let b = escape(&self.base);
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>portcullis demo idp</title>{STYLE}</head><body>\
             <p class=\"warn\">FOR DEMOS ONLY: anyone who reaches this provider signs in as anyone.</p>\
             <h1>portcullis demo idp</h1>\
             <p>A development OpenID Provider for the Portcullis quickstart.</p>\
             <h2>Issuers</h2><ul>\
             <li><code>{b}</code>: people (authorization code with PKCE) and services (client credentials)</li>\
             <li><code>{b}/gitlab</code>: CI jobs, tokens shaped like GitLab CI's ID tokens</li>\
             <li><code>{b}/untrusted</code>: the same as the first, from an issuer nobody should trust</li></ul>\
             <h2>Users</h2><ul>{users}</ul>\
             <h2>Tokens for scripts</h2><pre>\
             curl '{b}/demo/token?kind=ci&amp;project_id=42&amp;ref=main'      a CI job\n\
             curl '{b}/demo/token?kind=service&amp;client=reporting-bot'      a service\n\
             curl '{b}/demo/token?kind=user&amp;user=bob'                     a person's access token\n\
             curl '{b}/demo/token?kind=untrusted'                          from the untrusted issuer</pre>\
             </body></html>"
        )
    }

    /// Checks an authorization request (from the query, or the form's hidden fields).
    fn authorization(&self, params: &[(String, String)]) -> Result<Authorization, String> {
        let get = |name| param(params, name);
        if get("client_id") != Some(CLIENT_ID) {
            return Err(format!("unknown client_id: the demo client is {CLIENT_ID:?}"));
        }
        let redirect_uri = get("redirect_uri").unwrap_or("");
        if !self.redirect_uris.iter().any(|r| r == redirect_uri) {
            return Err(format!(
                "redirect_uri {redirect_uri:?} is not registered; registered: {} (start the provider with --redirect-uri)",
                self.redirect_uris.join(", ")
            ));
        }
        if get("response_type") != Some("code") {
            return Err("response_type must be \"code\"".into());
        }
        let scope = get("scope").unwrap_or("");
        if !scope.split(' ').any(|s| s == "openid") {
            return Err("scope must include \"openid\"".into());
        }
        let challenge = get("code_challenge").unwrap_or("");
        if get("code_challenge_method") != Some("S256") || challenge.len() < 43 {
            return Err("PKCE is required: code_challenge with code_challenge_method=S256".into());
        }
        Ok(Authorization {
            redirect_uri: redirect_uri.to_string(),
            scope: scope.to_string(),
            state: get("state").map(str::to_string),
            nonce: get("nonce").map(str::to_string),
            challenge: challenge.to_string(),
        })
    }

    fn sign_in_form(&self, request: &Authorization) -> String {
        let mut hidden = vec![
            ("client_id", CLIENT_ID.to_string()),
            ("redirect_uri", request.redirect_uri.clone()),
            ("response_type", "code".to_string()),
            ("scope", request.scope.clone()),
            ("code_challenge", request.challenge.clone()),
            ("code_challenge_method", "S256".to_string()),
        ];
        if let Some(state) = &request.state {
            hidden.push(("state", state.clone()));
        }
        if let Some(nonce) = &request.nonce {
            hidden.push(("nonce", nonce.clone()));
        }
        let hidden: String = hidden
            .iter()
            .map(|(k, v)| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", escape(v)))
            .collect();
        let buttons: String = USERS
            .iter()
            .map(|u| {
                format!(
                    "<p><button type=\"submit\" name=\"login\" value=\"{login}\">Sign in as {login}</button> \
                     {name}, {groups}</p>",
                    login = escape(u.login),
                    name = escape(u.name),
                    groups = escape(&groups_text(u)),
                )
            })
            .collect();
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in: portcullis demo idp</title>{STYLE}</head><body>\
             <p class=\"warn\">FOR DEMOS ONLY: no passwords, anyone may sign in as anyone.</p>\
             <h1>Sign in</h1>\
             <p>Portcullis asks who you are. Pick a demo user; in the quickstart, <b>viewers</b> may view \
             the DAGs and <b>operators</b> may also trigger them.</p>\
             <form method=\"post\" action=\"/authorize\">{hidden}{buttons}</form></body></html>"
        )
    }

    /// The form's POST: the picked user gets a code, and the browser goes back to the client.
    fn pick(&self, params: &[(String, String)]) -> Response<ProxyBody> {
        let request = match self.authorization(params) {
            Ok(r) => r,
            Err(why) => return html(StatusCode::BAD_REQUEST, error_page(&why)),
        };
        let Some(user) = param(params, "login").and_then(user) else {
            return html(StatusCode::BAD_REQUEST, error_page("pick one of the demo users"));
        };
        let code = match random_token() {
            Ok(code) => code,
            Err(why) => return html(StatusCode::INTERNAL_SERVER_ERROR, error_page(&why)),
        };
        {
            let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            codes.retain(|_, c| c.expires > now);
            codes.insert(
                code.clone(),
                Code {
                    user,
                    redirect_uri: request.redirect_uri.clone(),
                    challenge: request.challenge,
                    nonce: request.nonce,
                    scope: request.scope,
                    expires: now + CODE_LIFETIME,
                },
            );
        }
        tracing::info!(user = user.login, "demo idp: signed in");
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("code", &code);
        if let Some(state) = &request.state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", &self.people.url);
        let separator = if request.redirect_uri.contains('?') {
            '&'
        } else {
            '?'
        };
        see_other(&format!("{}{separator}{}", request.redirect_uri, query.finish()))
    }

    /// Who is calling the token endpoint: HTTP Basic (form-encoded id and secret, RFC 6749
    /// 2.3.1) or `client_id` and `client_secret` in the form.
    fn client(headers: &http::HeaderMap, params: &[(String, String)]) -> Option<String> {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let (id, secret) = match basic {
            Some(pair) => {
                let (id, secret) = pair.split_once(':')?;
                let decode = |s: &str| {
                    form_urlencoded::parse(format!("x={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                };
                (decode(id)?, decode(secret)?)
            }
            None => (
                param(params, "client_id")?.to_string(),
                param(params, "client_secret")?.to_string(),
            ),
        };
        let known = (id == CLIENT_ID && secret == CLIENT_SECRET)
            || SERVICES.iter().any(|s| s.client_id == id && s.secret == secret);
        known.then_some(id)
    }

    fn token(&self, headers: &http::HeaderMap, params: &[(String, String)]) -> Response<ProxyBody> {
        let Some(client) = Self::client(headers, params) else {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client or wrong secret",
            );
        };
        let answer = match (param(params, "grant_type"), client == CLIENT_ID) {
            (Some("authorization_code"), true) => self.redeem(params),
            (Some("refresh_token"), true) => self.refresh(params),
            (Some("client_credentials"), false) => self
                .service_token(&client)
                .map(|t| json!({"access_token": t, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME.as_secs()}))
                .map_err(|e| ("server_error", e)),
            (Some("authorization_code" | "refresh_token" | "client_credentials"), _) => Err((
                "unauthorized_client",
                "this client may not use this grant".to_string(),
            )),
            _ => Err((
                "unsupported_grant_type",
                "grant_type: authorization_code, refresh_token or client_credentials".to_string(),
            )),
        };
        match answer {
            Ok(body) => {
                let mut response = super::json(StatusCode::OK, &body);
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
                response
            }
            Err((error, description)) => oauth_error(StatusCode::BAD_REQUEST, error, &description),
        }
    }

    fn redeem(&self, params: &[(String, String)]) -> Result<Value, (&'static str, String)> {
        let invalid = |why: &str| ("invalid_grant", why.to_string());
        // Taken out whatever happens next: a code is good for one attempt.
        let code = param(params, "code")
            .and_then(|c| {
                self.codes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(c)
            })
            .filter(|c| c.expires > Instant::now())
            .ok_or_else(|| invalid("unknown, used or expired code"))?;
        if param(params, "redirect_uri") != Some(code.redirect_uri.as_str()) {
            return Err(invalid("redirect_uri differs from the authorization request's"));
        }
        let verifier = param(params, "code_verifier").unwrap_or("");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
        if verifier.len() < 43 || URL_SAFE_NO_PAD.encode(digest.as_ref()) != code.challenge {
            return Err(invalid("code_verifier does not match the code_challenge"));
        }
        self.person_tokens(code.user, &code.scope, code.nonce.as_deref())
            .map_err(|e| ("server_error", e))
    }

    fn refresh(&self, params: &[(String, String)]) -> Result<Value, (&'static str, String)> {
        let (user, scope) = param(params, "refresh_token")
            .and_then(|t| {
                self.refresh_tokens
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(t)
            })
            .ok_or(("invalid_grant", "unknown or used refresh token".to_string()))?;
        self.person_tokens(user, &scope, None)
            .map_err(|e| ("server_error", e))
    }

    /// The token response for a person: an ID token for the client, an access token for the
    /// API, and a refresh token when `offline_access` was asked for.
    fn person_tokens(&self, user: &'static User, scope: &str, nonce: Option<&str>) -> Result<Value, String> {
        let now = now();
        let mut id = self.person_claims(&self.people, user, now);
        set(&mut id, "aud", json!(CLIENT_ID));
        set(&mut id, "azp", json!(CLIENT_ID));
        set(&mut id, "auth_time", json!(now));
        if let Some(nonce) = nonce {
            set(&mut id, "nonce", json!(nonce));
        }
        let mut answer = json!({
            "access_token": self.person_access_token(&self.people, user)?,
            "id_token": self.people.sign("JWT", &id)?,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME.as_secs(),
            "scope": scope,
        });
        if scope.split(' ').any(|s| s == "offline_access") {
            let refresh = random_token()?;
            self.refresh_tokens
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(refresh.clone(), (user, scope.to_string()));
            set(&mut answer, "refresh_token", json!(refresh));
        }
        Ok(answer)
    }

    fn person_claims(&self, issuer: &Issuer, user: &User, now: u64) -> Value {
        json!({
            "iss": issuer.url,
            "sub": user.login,
            "iat": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
            "name": user.name,
            "preferred_username": user.login,
            "email": format!("{}@example.com", user.login),
            "email_verified": true,
            "groups": user.groups,
        })
    }

    /// An RFC 9068 access token for the API, on behalf of `user`.
    fn person_access_token(&self, issuer: &Issuer, user: &User) -> Result<String, String> {
        let mut claims = self.person_claims(issuer, user, now());
        set(&mut claims, "aud", json!(self.audience));
        set(&mut claims, "client_id", json!(CLIENT_ID));
        set(&mut claims, "jti", json!(random_token()?));
        set(&mut claims, "scope", json!("openid email profile"));
        issuer.sign("at+jwt", &claims)
    }

    /// A service's own access token: its subject is its client id.
    fn service_token(&self, client_id: &str) -> Result<String, String> {
        let now = now();
        let claims = json!({
            "iss": self.people.url,
            "sub": client_id,
            "client_id": client_id,
            "aud": self.audience,
            "iat": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
            "jti": random_token()?,
        });
        self.people.sign("at+jwt", &claims)
    }

    /// A CI job's ID token as GitLab CI shapes it (`id_tokens:` in .gitlab-ci.yml): ids as
    /// strings, `sub` naming the project path and ref.
    fn ci_token(&self, params: &[(String, String)]) -> Result<String, String> {
        let get = |name: &str, default: &str| param(params, name).unwrap_or(default).to_string();
        let project_id = get("project_id", "42");
        let project_path = get("project_path", "data/pipelines");
        let namespace_path = project_path
            .rsplit_once('/')
            .map_or(project_path.as_str(), |(ns, _)| ns)
            .to_string();
        let git_ref = get("ref", "main");
        let ref_type = get("ref_type", "branch");
        // In GitLab only maintainers mark branches protected; here, main is.
        let protected = get("ref_protected", if git_ref == "main" { "true" } else { "false" });
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let now = now();
        let mut claims = json!({
            "iss": self.gitlab.url,
            "aud": get("aud", &self.audience),
            "sub": format!("project_path:{project_path}:ref_type:{ref_type}:ref:{git_ref}"),
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
            "jti": random_token()?,
            "namespace_id": get("namespace_id", "7"),
            "namespace_path": namespace_path,
            "project_id": project_id,
            "project_path": project_path,
            "user_id": "1001",
            "user_login": "ci-bot",
            "user_email": "ci-bot@example.com",
            "user_access_level": "developer",
            "pipeline_id": serial.to_string(),
            "pipeline_source": "push",
            "job_id": (serial * 10).to_string(),
            "ref": git_ref,
            "ref_type": ref_type,
            "ref_path": format!("refs/{}/{git_ref}", if ref_type == "tag" { "tags" } else { "heads" }),
            "ref_protected": protected,
            "runner_id": 1,
            "runner_environment": "self-hosted",
            "sha": "0123456789abcdef0123456789abcdef01234567",
        });
        if let Some(environment) = param(params, "environment") {
            set(&mut claims, "environment", json!(environment));
            set(&mut claims, "environment_protected", json!("false"));
        }
        self.gitlab.sign("JWT", &claims)
    }

    /// Demo only: a bare token for a script, of the kind asked for.
    fn demo_token(&self, params: &[(String, String)]) -> Response<ProxyBody> {
        let asked = |name| param(params, name);
        let person = || user(asked("user").unwrap_or("alice"));
        let token = match asked("kind").unwrap_or("") {
            "user" | "untrusted" => {
                let Some(person) = person() else {
                    return text(StatusCode::BAD_REQUEST, "user: alice, bob or carol\n");
                };
                let issuer = if asked("kind") == Some("user") {
                    &self.people
                } else {
                    &self.untrusted
                };
                self.person_access_token(issuer, person)
            }
            "service" => {
                let client = asked("client").unwrap_or("reporting-bot");
                if !SERVICES.iter().any(|s| s.client_id == client) {
                    return text(StatusCode::BAD_REQUEST, "client: reporting-bot\n");
                }
                self.service_token(client)
            }
            "ci" => self.ci_token(params),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "kind: user (user=alice|bob|carol), service (client=reporting-bot), ci (project_id, \
                     namespace_id, project_path, ref, ref_type, ref_protected, environment, aud) or untrusted\n",
                );
            }
        };
        match token {
            Ok(t) => text(StatusCode::OK, format!("{t}\n")),
            Err(why) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
        }
    }
}

fn error_page(why: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign-in refused: portcullis demo idp</title>{STYLE}</head><body>\
         <p class=\"warn\">FOR DEMOS ONLY</p><h1>This sign-in request is refused</h1><p>{}</p></body></html>",
        escape(why)
    )
}

const STYLE: &str = "<style>body{font-family:sans-serif;max-width:46em;margin:2em auto;padding:0 1em}\
    .warn{background:#b00020;color:#fff;padding:.6em 1em;font-weight:bold}\
    button{font-size:1em;padding:.4em 1em;min-width:10em}code,pre{background:#f3f3f3}</style>";

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    const REDIRECT: &str = "http://localhost:8080/.portcullis/callback";
    const VERIFIER: &str = "a-verifier-of-at-least-forty-three-characters-long";

    fn idp() -> Idp {
        Idp::new(
            "http://127.0.0.1:9400".into(),
            vec![REDIRECT.into()],
            DEFAULT_AUDIENCE.into(),
        )
        .unwrap()
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn challenge() -> String {
        URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            VERIFIER.as_bytes(),
        ))
    }

    async fn body(response: Response<ProxyBody>) -> (StatusCode, Value) {
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// The claims of a JWT, unverified (the tests only read what was signed).
    fn claims(token: &str) -> (Value, Value) {
        let part = |i: usize| {
            let text = token.split('.').nth(i).unwrap();
            serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(text).unwrap()).unwrap()
        };
        (part(0), part(1))
    }

    /// Picks `login` on the form and returns the code the redirect carries.
    fn sign_in(idp: &Idp, login: &str) -> String {
        let challenge = challenge();
        let response = idp.pick(&params(&[
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", "openid email offline_access"),
            ("state", "s1"),
            ("nonce", "n1"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("login", login),
        ]));
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let location = response.headers()[header::LOCATION].to_str().unwrap().to_string();
        assert!(location.starts_with(&format!("{REDIRECT}?code=")), "{location}");
        assert!(location.contains("&state=s1"), "{location}");
        let query = location.split_once('?').unwrap().1;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned()
    }

    fn redeem(idp: &Idp, code: &str, verifier: &str) -> Response<ProxyBody> {
        idp.token(
            &http::HeaderMap::new(),
            &params(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ]),
        )
    }

    #[tokio::test]
    async fn a_code_is_redeemed_once_with_its_verifier_for_tokens_naming_the_picked_user() {
        let idp = idp();
        let code = sign_in(&idp, "bob");
        let (status, answer) = body(redeem(&idp, &code, VERIFIER)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (header, id) = claims(answer["id_token"].as_str().unwrap());
        assert_eq!(header["alg"], "ES256");
        assert_eq!(id["iss"], "http://127.0.0.1:9400");
        assert_eq!(id["sub"], "bob");
        assert_eq!(id["aud"], CLIENT_ID);
        assert_eq!(id["nonce"], "n1");
        assert_eq!(id["groups"], json!(["operators"]));
        let (header, access) = claims(answer["access_token"].as_str().unwrap());
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(access["aud"], DEFAULT_AUDIENCE);
        assert!(
            answer["refresh_token"].is_string(),
            "offline_access asked for one"
        );

        let (status, again) = body(redeem(&idp, &code, VERIFIER)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(again["error"], "invalid_grant", "a code is good once");
    }

    #[tokio::test]
    async fn a_code_with_the_wrong_verifier_is_refused_and_spent() {
        let idp = idp();
        let code = sign_in(&idp, "alice");
        let wrong = "another-verifier-of-at-least-forty-three-characters";
        let (status, answer) = body(redeem(&idp, &code, wrong)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["error"], "invalid_grant");
        let (status, _) = body(redeem(&idp, &code, VERIFIER)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_refresh_token_is_spent_by_its_refresh_which_returns_a_new_one() {
        let idp = idp();
        let code = sign_in(&idp, "alice");
        let (_, answer) = body(redeem(&idp, &code, VERIFIER)).await;
        let refresh = |token: &str| {
            idp.token(
                &http::HeaderMap::new(),
                &params(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token),
                    ("client_id", CLIENT_ID),
                    ("client_secret", CLIENT_SECRET),
                ]),
            )
        };
        let first = answer["refresh_token"].as_str().unwrap();
        let (status, renewed) = body(refresh(first)).await;
        assert_eq!(status, StatusCode::OK, "{renewed}");
        assert_eq!(claims(renewed["id_token"].as_str().unwrap()).1["sub"], "alice");
        assert_ne!(renewed["refresh_token"], first);
        let (status, _) = body(refresh(first)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "the old one is spent");
    }

    #[tokio::test]
    async fn the_form_refuses_unregistered_redirects_missing_pkce_and_unknown_clients() {
        let idp = idp();
        let challenge = challenge();
        let good = [
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", "openid"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        assert!(idp.authorization(&params(&good)).is_ok());
        for (name, value) in [
            ("redirect_uri", "http://localhost:9999/.portcullis/callback"),
            ("code_challenge_method", "plain"),
            ("client_id", "someone-else"),
            ("scope", "email"),
        ] {
            let changed: Vec<(&str, &str)> = good
                .iter()
                .map(|(k, v)| if *k == name { (*k, value) } else { (*k, *v) })
                .collect();
            assert!(idp.authorization(&params(&changed)).is_err(), "{name}={value}");
        }
    }

    #[tokio::test]
    async fn services_get_client_credentials_tokens_and_the_web_client_does_not() {
        let idp = idp();
        let as_service = |secret: &'static str| {
            let form = params(&[
                ("grant_type", "client_credentials"),
                ("client_id", "reporting-bot"),
                ("client_secret", secret),
            ]);
            body(idp.token(&http::HeaderMap::new(), &form))
        };
        let (status, answer) = as_service("reporting-bot-secret").await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (_, service) = claims(answer["access_token"].as_str().unwrap());
        assert_eq!(service["sub"], "reporting-bot");
        assert_eq!(service["client_id"], "reporting-bot");

        let mut basic = http::HeaderMap::new();
        let credentials = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
        basic.insert(
            header::AUTHORIZATION,
            format!("Basic {credentials}").parse().unwrap(),
        );
        let (status, refused) =
            body(idp.token(&basic, &params(&[("grant_type", "client_credentials")]))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(refused["error"], "unauthorized_client");

        let (status, _) = as_service("wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_ci_token_is_shaped_as_gitlab_ci_makes_them_and_only_main_is_protected_by_default() {
        let idp = idp();
        let token = idp
            .ci_token(&params(&[("project_id", "42"), ("ref", "main")]))
            .unwrap();
        let (header, claims_of_main) = claims(&token);
        assert_eq!(header["typ"], "JWT");
        assert_eq!(claims_of_main["iss"], "http://127.0.0.1:9400/gitlab");
        assert_eq!(claims_of_main["project_id"], "42");
        assert_eq!(claims_of_main["namespace_id"], "7");
        assert_eq!(claims_of_main["ref_type"], "branch");
        assert_eq!(claims_of_main["ref_protected"], "true");
        assert_eq!(
            claims_of_main["sub"],
            "project_path:data/pipelines:ref_type:branch:ref:main"
        );
        let feature = idp.ci_token(&params(&[("ref", "feature")])).unwrap();
        assert_eq!(claims(&feature).1["ref_protected"], "false");
    }

    #[test]
    fn only_loopback_addresses_are_accepted_for_listening() {
        assert!(loopback("127.0.0.1:9400").is_ok());
        assert!(loopback("[::1]:9400").is_ok());
        for refused in [
            "0.0.0.0:9400",
            "192.168.1.5:9400",
            "[::]:9400",
            "localhost:9400",
            "9400",
        ] {
            let err = loopback(refused).unwrap_err().to_string();
            assert!(err.contains("loopback"), "{refused}: {err}");
        }
    }

    #[test]
    fn only_loopback_redirect_uris_may_be_registered() {
        for ok in [
            "http://localhost:8080/.portcullis/callback",
            "http://airflow.localhost:8080/.portcullis/callback",
            "https://127.0.0.1/.portcullis/callback",
            "http://[::1]:8080/cb",
        ] {
            assert!(loopback_redirect(ok), "{ok}");
        }
        for refused in [
            "http://example.com/.portcullis/callback",
            "http://localhost.example.com/cb",
            "javascript:alert(1)",
            "http://localhost:8080/cb#fragment",
            "/relative",
        ] {
            assert!(!loopback_redirect(refused), "{refused}");
        }
    }
}
