//! The outbound HTTPS client for the proxy's own calls (identity providers' discovery, JWKS and
//! token endpoints, the OTLP collector, token brokers): bounded in time and size, no redirects,
//! rustls with the system roots or a configured CA.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::pem::{self, BuildError};

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {detail}")]
    Failed { url: String, detail: String },
}

#[derive(Clone, Debug)]
pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpsClient {
    pub fn new(
        ca: Option<&std::path::Path>,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, BuildError> {
        let roots = pem::trust_roots(ca, "CA bundle")?;
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        Ok(HttpsClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: TIMEOUT,
        })
    }

    /// The same client with another deadline for each of the request and the response body.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one request; redirects are not followed (an IdP's endpoints are named exactly).
    /// This is also the HTTP client handed to openidconnect, so the whole process keeps one
    /// HTTP stack and one TLS provider.
    pub async fn send(&self, request: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, FetchError> {
        let url = request.uri().to_string();
        let fail = |detail: String| FetchError::Failed {
            url: url.clone(),
            detail,
        };
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| fail("timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(self.timeout, Limited::new(body, MAX_BODY).collect())
            .await
            .map_err(|_| fail("timed out reading the body".into()))?
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body.to_vec()))
    }

    /// GETs a JSON document.
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, FetchError> {
        let fail = |detail: String| FetchError::Failed {
            url: url.to_string(),
            detail,
        };
        let request = http::Request::get(url)
            .body(Vec::new())
            .map_err(|_| fail("not a URL".into()))?;
        let response = self.send(request).await?;
        if !response.status().is_success() {
            return Err(fail(format!("status {}", response.status())));
        }
        serde_json::from_slice(response.body()).map_err(|e| fail(format!("not JSON: {e}")))
    }
}

/// openidconnect's flows call the provider through this: one HTTP stack, one TLS provider, and a
/// boxed `Send` future (a closure over `&HttpsClient` would not be `Send` for every lifetime).
impl<'c> openidconnect::AsyncHttpClient<'c> for HttpsClient {
    type Error = FetchError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<http::Response<Vec<u8>>, FetchError>> + Send + 'c>,
    >;

    fn call(&'c self, request: http::Request<Vec<u8>>) -> Self::Future {
        Box::pin(self.send(request))
    }
}
