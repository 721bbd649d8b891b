//! The admin listener: `/healthz` (the process answers), `/readyz` (listeners bound and ready
//! for traffic), `/metrics` (Prometheus text) and, when the proxy signs identity assertions,
//! `/.well-known/openid-configuration` and `/.well-known/jwks.json`. Separate from the proxy listeners so probes
//! are never routed, audited or exposed to clients.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::metrics::Metrics;

use arc_swap::ArcSwap;

use crate::body::{ProxyBody, full};
use crate::proxy::Proxy;
use crate::tokens::Minter;

/// Readiness: every listener is bound, every identity provider's keys are in hand, and
/// shutdown has not begun.
pub struct Ready {
    listening: AtomicBool,
    proxy: Arc<ArcSwap<Proxy>>,
    /// The signing keys, whose sharing between replicas is listed.
    minter: Option<Arc<Minter>>,
}

impl Ready {
    /// Ready as the proxy in force is: a reloaded configuration's new providers count too.
    pub fn new(proxy: Arc<ArcSwap<Proxy>>) -> Self {
        Ready {
            listening: AtomicBool::new(false),
            proxy,
            minter: None,
        }
    }

    /// Lists the state of the signing keys shared with the other replicas too.
    pub fn with_keys(mut self, minter: Option<Arc<Minter>>) -> Self {
        self.minter = minter;
        self
    }
    pub fn set(&self, ready: bool) {
        self.listening.store(ready, Ordering::Release);
    }
    pub fn get(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// The readiness answer: ready while serving, whatever one identity provider is doing (a
    /// route whose provider has no keys answers 503 `idp_unavailable` itself, audited, and the
    /// other routes serve); each provider's key state and the session store's are listed for
    /// the operator.
    pub fn report(&self) -> (StatusCode, String) {
        let mut text = String::new();
        let status = if !self.get() {
            text.push_str("not ready: not serving (starting or shutting down)\n");
            StatusCode::SERVICE_UNAVAILABLE
        } else if self.proxy.load().deny_list_unknown() {
            // Fail closed: a replica that never read the deny list would accept the tokens and
            // sessions revoked before it started. Once read, a Redis outage keeps the last copy.
            text.push_str(
                "not ready: the deny list has not been read from the session store yet (revoked credentials would pass); waiting for Redis\n",
            );
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            text.push_str("ready\n");
            StatusCode::OK
        };
        for (provider, has_keys) in self.proxy.load().key_states() {
            let state = if has_keys {
                "signing keys in hand"
            } else {
                "no signing keys yet: its routes answer 503 idp_unavailable"
            };
            text.push_str(&format!("identity provider {provider}: {state}\n"));
        }
        // Listed, not counted against readiness: without Redis only browser routes stop, and
        // taking every replica out of the balancer would stop bearer and public routes too.
        text.push_str(self.proxy.load().session_store_health().describe());
        text.push('\n');
        if let Some(line) = self.proxy.load().session_store_subscription() {
            text.push_str(&line);
            text.push('\n');
        }
        // Listed, not counted: without Redis each replica still serves its own keys.
        if let Some(line) = self.minter.as_ref().and_then(|m| m.sharing_state()) {
            text.push_str(&line);
            text.push('\n');
        }
        (status, text)
    }
}

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<Ready>,
    minter: Option<Arc<Minter>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            () = crate::listener::stopped(&mut shutdown) => return,
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let minter = minter.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = answer(&req, &metrics, &ready, minter.as_deref());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    metrics: &Metrics,
    ready: &Ready,
    minter: Option<&Minter>,
) -> Response<ProxyBody> {
    let (status, content_type, body) = match (req.uri().path(), minter) {
        (path, Some(m)) if path.starts_with("/.well-known/") => match m.document(path) {
            Some(doc) => (StatusCode::OK, "application/json", doc),
            None => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
        },
        (path, _) => match_probe(path, metrics, ready),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

fn match_probe(path: &str, metrics: &Metrics, ready: &Ready) -> (StatusCode, &'static str, String) {
    match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => {
            let (status, text) = ready.report();
            (status, "text/plain", text)
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    }
}
