//! The OTLP exporter, built from `[audit.otlp]`: gRPC (tonic on rustls with aws-lc-rs) or
//! HTTP/protobuf (our own hyper client, so the process keeps one HTTP and one TLS stack), with
//! headers whose secret values come from the environment or a file, and the resource that names
//! this instance.
//!
//! The exporter is used bare: no SDK tracer provider, sampler or batch processor sits in front of
//! it (the stock batch processor drops spans when full; `pipeline` replaces it), so audit spans
//! are never sampled out whatever sampling other tracing uses.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;

use crate::config::{Audit, OtlpHeader, OtlpProtocol};
use crate::outbound::HttpsClient;
use crate::secret::Secret;

/// Why the exporter could not be built; each names its config key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

fn fail(key: impl Into<String>, message: impl Into<String>) -> BuildError {
    BuildError {
        key: key.into(),
        message: message.into(),
    }
}

/// A header value read at start-up; the value never reaches a log.
fn header_value(h: &OtlpHeader, at: &str) -> Result<Secret, BuildError> {
    if let Some(v) = &h.value {
        return Ok(Secret::new(v.clone()));
    }
    if let Some(var) = &h.value_env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
            _ => Err(fail(
                format!("{at}.value_env"),
                format!("{var:?} is unset or empty (fix: export it before starting)"),
            )),
        };
    }
    if let Some(path) = &h.value_file {
        return match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
            Ok(_) => Err(fail(
                format!("{at}.value_file"),
                format!("{} is empty", path.display()),
            )),
            Err(e) => Err(fail(
                format!("{at}.value_file"),
                format!("cannot read {}: {e}", path.display()),
            )),
        };
    }
    Err(fail(at, "no value"))
}

fn headers(audit: &Audit) -> Result<Vec<(String, Secret)>, BuildError> {
    let Some(otlp) = &audit.otlp else {
        return Ok(Vec::new());
    };
    otlp.resolved_headers()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let at = if i < otlp.headers.len() {
                format!("audit.otlp.headers[{i}]")
            } else {
                "audit.otlp.access_token".into()
            };
            Ok((h.name.to_ascii_lowercase(), header_value(h, &at)?))
        })
        .collect()
}

/// The resource every span of `instance` is exported with.
pub fn resource(audit: &Audit, instance: &str) -> Resource {
    let mut attributes = vec![
        KeyValue::new("service.name", audit.service_name.clone()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance.to_string()),
    ];
    if let Some(env) = &audit.environment {
        attributes.push(KeyValue::new("deployment.environment.name", env.clone()));
    }
    if let Some(host) = host_name() {
        attributes.push(KeyValue::new("host.name", host));
    }
    Resource::builder_empty().with_attributes(attributes).build()
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Builds the exporter. Must run inside a Tokio runtime (tonic's channel starts a task).
pub fn build(
    audit: &Audit,
    instance: &str,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<opentelemetry_otlp::SpanExporter, BuildError> {
    let Some(otlp) = &audit.otlp else {
        return Err(fail("audit.otlp", "not configured"));
    };
    let endpoint = otlp
        .resolved_endpoint()
        .ok_or_else(|| fail("audit.otlp.endpoint", "is required without a preset"))?;
    let headers = headers(audit)?;
    let built = match otlp.resolved_protocol() {
        OtlpProtocol::Grpc => {
            let mut map = http::HeaderMap::new();
            for (name, value) in &headers {
                let key = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| fail("audit.otlp.headers", format!("{name:?} is not a header name")))?;
                let mut value = http::HeaderValue::from_str(value.expose()).map_err(|_| {
                    fail(
                        "audit.otlp.headers",
                        format!("the value of {name:?} is not valid"),
                    )
                })?;
                value.set_sensitive(true);
                map.insert(key, value);
            }
            let metadata = MetadataMap::from_headers(map);
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(otlp.timeout.get())
                .with_metadata(metadata)
                // The pipeline retries (and spools meanwhile); a retry inside one export would
                // only hold the queue up.
                .with_retry_policy(RetryPolicy::disabled());
            if endpoint.starts_with("https://") {
                let mut tls = ClientTlsConfig::new().with_enabled_roots();
                if let Some(ca) = &otlp.ca {
                    let pem = std::fs::read(ca)
                        .map_err(|e| fail("audit.otlp.ca", format!("cannot read {}: {e}", ca.display())))?;
                    tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
                }
                builder = builder.with_tls_config(tls);
            }
            builder.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let client = HttpsClient::new(otlp.ca.as_deref(), provider)
                .map_err(|e| fail("audit.otlp.ca", e.to_string()))?
                .with_timeout(otlp.timeout.get());
            let headers: HashMap<String, String> = headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(otlp.timeout.get())
                .with_headers(headers)
                .with_retry_policy(RetryPolicy::disabled())
                .with_http_client(OtlpHttp(client))
                .build()
        }
    };
    let mut exporter = built.map_err(|e| fail("audit.otlp", e.to_string()))?;
    opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource(audit, instance));
    Ok(exporter)
}

/// OTLP/HTTP through the proxy's own HTTPS client.
#[derive(Debug)]
struct OtlpHttp(HttpsClient);

type HttpResult = Result<http::Response<Bytes>, opentelemetry_http::HttpError>;

impl opentelemetry_http::HttpClient for OtlpHttp {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = HttpResult> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, body.to_vec());
            let response = self.0.send(request).await?;
            let (parts, body) = response.into_parts();
            Ok(http::Response::from_parts(parts, Bytes::from(body)))
        })
    }
}

/// Retries after a failed export: 0.5 s doubling to 5 s, so a collector that is back is found
/// within seconds without hammering one that is not.
pub fn backoff(previous: Option<Duration>) -> Duration {
    match previous {
        None => Duration::from_millis(500),
        Some(d) => (d * 2).min(Duration::from_secs(5)),
    }
}
