//! TLS on both sides: the HTTPS listener (versions, ALPN, certificate hot reload) and HTTPS
//! upstreams (custom CA, server name override, client certificates).
#![cfg(test)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::pki::{Ca, Leaf, LeafSpec, provider};
use support::serve::{Serve, Server, serve};
use support::{Config, Route};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------------
// Clients of the HTTPS listener
// ---------------------------------------------------------------------------------------------

fn client_config(
    ca: &Ca,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn handshake(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// A GET over an established TLS stream, in HTTP/2 if ALPN chose h2, else HTTP/1.1.
async fn get_over(tls: TlsStream<TcpStream>, path: &str) -> (StatusCode, Version, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(format!("https://app.test{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header("host", "app.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.unwrap()
    };
    let status = response.status();
    let version = response.version();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

/// The proxy with an HTTPS listener presenting `leaf` (written to `dir`) and the public route to
/// `upstream`; returns the certificate and key paths too.
async fn https_gateway(
    dir: &Path,
    leaf: &Leaf,
    upstream: &support::Recorder,
) -> (support::Gateway, PathBuf, PathBuf) {
    let (cert, key) = leaf.write(dir, "server");
    let gw = support::Gateway::start(
        support::public_route(upstream)
            .server("https", "127.0.0.1:0")
            .set("server.tls.cert", &cert)
            .set("server.tls.key", &key),
    )
    .await;
    (gw, cert, key)
}

// ---------------------------------------------------------------------------------------------
// The HTTPS listener
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_listener_serves_tls13_and_tls12_and_negotiates_h2_and_http11() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("Portcullis Test CA");
    let leaf = ca.issue(LeafSpec::server(["localhost"]).serial(1));
    let upstream = support::Recorder::start().await;
    let (gw, _, _) = https_gateway(certs.path(), &leaf, &upstream).await;
    let https = gw.https.expect("the HTTPS listener is bound");

    let versions = [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3, "13"),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2, "12"),
    ];
    let protocols: [(&[u8], Version); 2] = [(b"h2", Version::HTTP_2), (b"http/1.1", Version::HTTP_11)];
    let mut expected_targets = Vec::new();
    for (version, wire_version, label) in versions {
        for (alpn, http_version) in protocols {
            let tls = handshake(https, client_config(&ca, version, &[alpn])).await;
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.protocol_version(), Some(wire_version));
            assert_eq!(conn.alpn_protocol(), Some(alpn), "ALPN for TLS {label}");
            assert_eq!(conn.peer_certificates().unwrap()[0], leaf.der);

            let path = format!("/tls{label}/{}", String::from_utf8_lossy(alpn).replace('/', "-"));
            let (status, got_version, body) = get_over(tls, &path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(got_version, http_version, "{path}");
            assert_eq!(body, "upstream ok");
            expected_targets.push(path);
        }
    }

    let requests = upstream.requests();
    let targets: Vec<String> = requests.iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, expected_targets);
    for seen in &requests {
        assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_listener_prefers_h2_and_serves_http11_to_a_client_without_alpn() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("Portcullis Test CA");
    let leaf = ca.issue(LeafSpec::server(["localhost"]).serial(1));
    let upstream = support::Recorder::start().await;
    let (gw, _, _) = https_gateway(certs.path(), &leaf, &upstream).await;
    let https = gw.https.unwrap();

    // A client that offers http/1.1 first still gets h2: the server's preference wins.
    let tls = handshake(
        https,
        client_config(&ca, &rustls::version::TLS13, &[b"http/1.1", b"h2"]),
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // A client without ALPN speaks HTTP/1.1.
    let tls = handshake(https, client_config(&ca, &rustls::version::TLS13, &[])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let (status, version, _) = get_over(tls, "/no-alpn").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));
    assert_eq!(upstream.last().target, "/no-alpn");
    gw.stop().await;
}

/// The certificate the HTTPS listener presents to a new handshake.
async fn presented(https: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    let tls = handshake(https, client_config(ca, &rustls::version::TLS13, &[b"http/1.1"])).await;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .unwrap()
}

/// The value of `portcullis_tls_reloads_total{result="<result>"}`, 0 if absent.
fn reloads(metrics: &str, result: &str) -> u64 {
    let prefix = format!("portcullis_tls_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_new_handshakes_and_a_broken_one_keeps_the_last_good_one() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("Portcullis Test CA");
    let a = ca.issue(
        LeafSpec::server(["localhost"])
            .common_name("portcullis-a")
            .serial(1001),
    );
    let b = ca.issue(
        LeafSpec::server(["localhost"])
            .common_name("portcullis-b")
            .serial(2002),
    );
    assert_ne!(a.der, b.der);
    let upstream = support::Recorder::start().await;
    let (gw, cert, key) = https_gateway(certs.path(), &a, &upstream).await;
    let https = gw.https.unwrap();
    assert_eq!(presented(https, &ca).await, a.der, "cert A serves at start");

    // Overwrite the pair in place with cert B.
    std::fs::write(&cert, &b.cert_pem).unwrap();
    std::fs::write(&key, &b.key_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if presented(https, &ca).await == b.der {
            break;
        }
        assert!(Instant::now() < deadline, "cert B was not served within 10s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = gw.metrics().await;
    assert!(reloads(&metrics, "ok") >= 1, "{metrics}");
    let errors_before = reloads(&metrics, "error");

    // A broken file: the reload fails, is counted, and cert B stays in service.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = gw.metrics().await;
        if reloads(&metrics, "error") > errors_before {
            // The error series exists from the start at 0: the count itself must have moved.
            assert!(reloads(&metrics, "error") >= 1, "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed reload was not counted within 10s:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(presented(https, &ca).await, b.der, "cert B keeps serving");
    let tls = handshake(https, client_config(&ca, &rustls::version::TLS12, &[b"h2"])).await;
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], b.der);
    let (status, _, body) = get_over(tls, "/after-broken-reload").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "upstream ok");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// HTTPS upstreams
// ---------------------------------------------------------------------------------------------

/// What one request looked like at the TLS upstream, with what its TLS session knew.
#[derive(Debug, Clone)]
struct TlsSeen {
    client_cert: Option<CertificateDer<'static>>,
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    version: Version,
    target: String,
}

struct TlsUpstream {
    server: Server,
    seen: Arc<Mutex<Vec<TlsSeen>>>,
}

/// An HTTPS upstream that requires a client certificate signed by `client_ca`.
async fn tls_upstream(leaf: &Leaf, client_ca: &Ca) -> TlsUpstream {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = serve(
        Serve::auto().tls(leaf.server_config(Some(client_ca))),
        move |conn, req| {
            log.lock().unwrap().push(TlsSeen {
                client_cert: conn.client_cert.clone(),
                sni: conn.sni.clone(),
                alpn: conn.alpn.clone(),
                version: req.version(),
                target: support::target(req.uri()),
            });
            async { Response::new(Full::new(Bytes::from_static(b"secure upstream"))) }
        },
    )
    .await;
    TlsUpstream { server, seen }
}

/// The PKI for the upstream tests, written to a temp dir.
struct UpstreamPki {
    _dir: tempfile::TempDir,
    ca: Ca,
    ca_path: PathBuf,
    other_ca_path: PathBuf,
    server: Leaf,
    client: Leaf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn upstream_pki() -> UpstreamPki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Upstream CA");
    let other = Ca::new("Some Other CA");
    let server = ca.issue(LeafSpec::server(["upstream.internal"]).serial(7));
    let client = ca.issue(
        LeafSpec::client(["portcullis.client"])
            .common_name("portcullis")
            .serial(8),
    );
    let (client_cert, client_key) = client.write(dir.path(), "client");
    UpstreamPki {
        ca_path: ca.write(dir.path(), "ca.pem"),
        other_ca_path: other.write(dir.path(), "other-ca.pem"),
        client_cert,
        client_key,
        _dir: dir,
        ca,
        server,
        client,
    }
}

/// A public route for `host` to the TLS upstream `server`, trusting `ca`, presenting the
/// proxy's client certificate when `mtls`.
fn tls_route(name: &str, upstream: &TlsUpstream, ca: &Path, client: Option<&UpstreamPki>) -> Config {
    let mut route = Route::public(name)
        .host("secure.test")
        .upstream(&upstream.server)
        .set("upstream.server_name", "upstream.internal")
        .set("upstream.ca", ca);
    if let Some(pki) = client {
        route = route
            .set("upstream.client_cert", &pki.client_cert)
            .set("upstream.client_key", &pki.client_key);
    }
    Config::new().route(route)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_with_a_custom_ca_a_server_name_override_and_a_client_certificate() {
    let pki = upstream_pki();
    let upstream = tls_upstream(&pki.server, &pki.ca).await;
    let gw = support::Gateway::start(tls_route("secure", &upstream, &pki.ca_path, Some(&pki))).await;

    let (status, body) = support::get(gw.http, "/over/tls?q=1", &[("host", "secure.test")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "secure upstream");

    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/over/tls?q=1");
    assert_eq!(
        seen[0].client_cert.as_ref(),
        Some(&pki.client.der),
        "the upstream saw the proxy's client certificate"
    );
    assert_eq!(
        seen[0].sni.as_deref(),
        Some("upstream.internal"),
        "SNI is the server_name override"
    );
    // `protocol = "auto"` over https offers h2 first in ALPN.
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(upstream.server.failed_handshakes(), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_the_configured_ca_did_not_sign_gets_502_and_no_request() {
    let pki = upstream_pki();
    let upstream = tls_upstream(&pki.server, &pki.ca).await;
    let gw = support::Gateway::start(tls_route("wrong-ca", &upstream, &pki.other_ca_path, Some(&pki))).await;

    let (status, body) = support::get(gw.http, "/over/tls", &[("host", "secure.test")]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("upstream_unavailable"), "{body}");
    assert!(
        !body.contains("UnknownIssuer"),
        "no TLS detail leaks to the client: {body}"
    );
    assert!(
        upstream.seen.lock().unwrap().is_empty(),
        "no request reached the upstream"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_that_requires_a_client_certificate_refuses_a_proxy_without_one_with_502() {
    let pki = upstream_pki();
    let upstream = tls_upstream(&pki.server, &pki.ca).await;
    let gw = support::Gateway::start(tls_route("no-client-cert", &upstream, &pki.ca_path, None)).await;

    let (status, body) = support::get(gw.http, "/over/tls", &[("host", "secure.test")]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        upstream.seen.lock().unwrap().is_empty(),
        "no request reached the upstream"
    );
    // The upstream counts its side of the failed handshake a moment after the proxy gave up.
    for _ in 0..100 {
        if upstream.server.failed_handshakes() >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(upstream.server.failed_handshakes() >= 1);
    gw.stop().await;
}
