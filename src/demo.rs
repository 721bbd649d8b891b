//! The binary's demo services, for the quickstart and nothing else: `portcullis demo idp` (a
//! development OpenID Provider, [`idp`]) and `portcullis demo upstream` (a small Airflow-like API,
//! [`upstream`]). Also `portcullis probe`, the container health check. The HTTP plumbing the two
//! services share is here.

pub mod idp;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use portcullis::body::{ProxyBody, full};

/// The largest request body the demo services read: forms and small JSON documents.
const MAX_BODY: usize = 64 * 1024;

/// A request as the demo services handle it: the head, and the body read whole.
pub struct Received {
    pub parts: http::request::Parts,
    pub body: Bytes,
}

impl Received {
    /// The query's parameters, then the form body's (a POST may send either).
    pub fn params(&self) -> Vec<(String, String)> {
        let query = self.parts.uri.query().unwrap_or("");
        let mut params: Vec<(String, String)> =
            form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let is_form = self
            .parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            params.extend(form_urlencoded::parse(&self.body).into_owned());
        }
        params
    }
}

/// The first value of `name` in `params`.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Serves `handle` on every connection `listener` accepts, until the process ends.
pub async fn serve<S, F>(listener: TcpListener, state: Arc<S>, handle: fn(Arc<S>, Received) -> F)
where
    S: Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let builder = builder.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let response = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(collected) => {
                            let body = collected.to_bytes();
                            handle(state, Received { parts, body }).await
                        }
                        Err(_) => text(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request body too large or broken\n",
                        ),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn with_type(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Compact, as APIs answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    with_type(status, format!("{value}\n"), "application/json")
}

/// Indented, for a person to read.
pub fn pretty_json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    with_type(status, format!("{value:#}\n"), "application/json")
}

pub fn html(status: StatusCode, page: String) -> Response<ProxyBody> {
    with_type(status, page, "text/html; charset=utf-8")
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    with_type(status, body, "text/plain; charset=utf-8")
}

/// A 303 to `location` (after a form POST, the browser follows with a GET).
pub fn see_other(location: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// Text made safe to put in HTML, also inside a quoted attribute.
pub use portcullis::error::html_escape as escape;

/// GETs a URL (http, or https verified against the system's trust roots) and says why it is
/// not healthy: not a URL, connection refused, no answer within 3 seconds, a TLS error, or a
/// status that is not 2xx.
pub async fn probe(url: &str) -> Result<(), String> {
    const WITHIN: std::time::Duration = std::time::Duration::from_secs(3);
    let uri = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
        .ok_or("not an http:// or https:// URL")?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS error: {e}"))?
        .with_root_certificates(
            portcullis::pem::trust_roots(None, "system trust roots")
                .map_err(|e| format!("TLS error: {e}"))?,
        )
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, http_body_util::Empty<Bytes>>(connector);
    match tokio::time::timeout(WITHIN, client.get(uri)).await {
        Err(_) => Err(format!("no answer within {} s (timeout)", WITHIN.as_secs())),
        Ok(Err(e)) => Err(why_not_connected(&e)),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("answered {} (not 2xx)", response.status())),
    }
}

/// The cause of a failed request in a few words: refused, timed out, TLS, or the OS's words.
fn why_not_connected(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return format!("TLS error: {tls}");
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // An I/O error may carry the TLS error, or another I/O error that does.
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return format!("TLS error: {tls}");
                }
                if inner.is::<std::io::Error>() {
                    cause = Some(inner);
                    continue;
                }
            }
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "timed out connecting".into(),
                _ => format!("cannot connect: {io}"),
            };
        }
        cause = e.source();
    }
    error.to_string()
}
