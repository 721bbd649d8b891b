//! `portcullis demo-upstream`: a tiny echo service for the quickstart. It answers every request
//! with JSON describing what reached it, so a newcomer can see exactly what the proxy forwarded.
//! Also `portcullis probe`, the container health check.

use std::convert::Infallible;

use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use portcullis::body::{ProxyBody, full};

pub async fn serve(listener: TcpListener) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(echo))
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_bytes = body.collect().await.map(|c| c.to_bytes().len()).unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let json = serde_json::json!({
        "service": "portcullis demo upstream",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "body_bytes": body_bytes,
        "headers": headers,
    });
    let mut response = Response::new(full(format!("{json:#}\n")));
    if let Ok(v) = "application/json".parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(response)
}

/// GETs a plain-HTTP URL and reports whether it answered 2xx within 3 seconds.
pub async fn probe(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri)).await,
        Ok(Ok(response)) if response.status().is_success()
    )
}
