//! TLS on both sides: the HTTPS listener (versions, ALPN, certificate hot reload) and HTTPS
//! upstreams (custom CA, server name override, client certificates).
#![cfg(test)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

struct Ca {
    der: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate signed by `ca`.
struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    key_der: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn new_leaf(
    ca: &Ca,
    dns_name: &str,
    common_name: &str,
    serial: u64,
    purpose: ExtendedKeyUsagePurpose,
) -> Leaf {
    let mut params = CertificateParams::new(vec![dns_name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.serial_number = Some(serial.into());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}

fn server_leaf(ca: &Ca, dns_name: &str, common_name: &str, serial: u64) -> Leaf {
    new_leaf(
        ca,
        dns_name,
        common_name,
        serial,
        ExtendedKeyUsagePurpose::ServerAuth,
    )
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A path as a TOML string.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// Clients of the HTTPS listener
// ---------------------------------------------------------------------------------------------

fn client_config(
    ca: &Ca,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
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

fn https_server_toml(cert: &Path, key: &Path) -> String {
    format!(
        "https = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {} }}",
        toml_path(cert),
        toml_path(key)
    )
}

// ---------------------------------------------------------------------------------------------
// The HTTPS listener
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_listener_serves_tls13_and_tls12_and_negotiates_h2_and_http11() {
    let certs = tempfile::tempdir().unwrap();
    let ca = new_ca("Portcullis Test CA");
    let leaf = server_leaf(&ca, "localhost", "localhost", 1);
    let cert = write(certs.path(), "server.pem", &leaf.cert_pem);
    let key = write(certs.path(), "server.key", &leaf.key_pem);
    let upstream = support::Recorder::start().await;
    let gw = support::Gateway::start_with(
        &https_server_toml(&cert, &key),
        &support::public_route(&upstream.url()),
    )
    .await;
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
    let ca = new_ca("Portcullis Test CA");
    let leaf = server_leaf(&ca, "localhost", "localhost", 1);
    let cert = write(certs.path(), "server.pem", &leaf.cert_pem);
    let key = write(certs.path(), "server.key", &leaf.key_pem);
    let upstream = support::Recorder::start().await;
    let gw = support::Gateway::start_with(
        &https_server_toml(&cert, &key),
        &support::public_route(&upstream.url()),
    )
    .await;
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
    let ca = new_ca("Portcullis Test CA");
    let a = server_leaf(&ca, "localhost", "portcullis-a", 1001);
    let b = server_leaf(&ca, "localhost", "portcullis-b", 2002);
    assert_ne!(a.der, b.der);
    let cert = write(certs.path(), "server.pem", &a.cert_pem);
    let key = write(certs.path(), "server.key", &a.key_pem);
    let upstream = support::Recorder::start().await;
    let gw = support::Gateway::start_with(
        &https_server_toml(&cert, &key),
        &support::public_route(&upstream.url()),
    )
    .await;
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
            assert!(metrics.contains("portcullis_tls_reloads_total{result=\"error\"}"));
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
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<TlsSeen>>>,
    failed_handshakes: Arc<AtomicUsize>,
}

/// An HTTPS upstream that requires a client certificate signed by `client_ca`.
async fn tls_upstream(leaf: &Leaf, client_ca: &Ca) -> TlsUpstream {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![leaf.der.clone()], leaf.key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let failed_handshakes = Arc::new(AtomicUsize::new(0));
    let (log, failed) = (seen.clone(), failed_handshakes.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let (log, failed) = (log.clone(), failed.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                let session = tls.get_ref().1;
                let client_cert = session.peer_certificates().and_then(|c| c.first().cloned());
                let sni = session.server_name().map(str::to_string);
                let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    let seen = TlsSeen {
                        client_cert: client_cert.clone(),
                        sni: sni.clone(),
                        alpn: alpn.clone(),
                        version: req.version(),
                        target: support::target(req.uri()),
                    };
                    async move {
                        log.lock().unwrap().push(seen);
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"secure upstream",
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsUpstream {
        addr,
        seen,
        failed_handshakes,
    }
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
    let ca = new_ca("Upstream CA");
    let other = new_ca("Some Other CA");
    let server = server_leaf(&ca, "upstream.internal", "upstream.internal", 7);
    let client = new_leaf(
        &ca,
        "portcullis.client",
        "portcullis",
        8,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    UpstreamPki {
        ca_path: write(dir.path(), "ca.pem", &ca.pem),
        other_ca_path: write(dir.path(), "other-ca.pem", &other.pem),
        client_cert: write(dir.path(), "client.pem", &client.cert_pem),
        client_key: write(dir.path(), "client.key", &client.key_pem),
        _dir: dir,
        ca,
        server,
        client,
    }
}

/// A public route for `host` to `https://<addr>` with the given TLS keys in its upstream table.
fn tls_route(name: &str, host: &str, addr: SocketAddr, upstream_tls: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nhosts = [\"{host}\"]\naccess = \"public\"\n\
         [routes.upstream]\nurl = \"https://{addr}\"\nserver_name = \"upstream.internal\"\n{upstream_tls}\n"
    )
}

/// The upstream table's TLS keys: trust `ca`, present the proxy's client certificate.
fn mtls_keys(ca: &Path, pki: &UpstreamPki) -> String {
    format!(
        "ca = {}\nclient_cert = {}\nclient_key = {}",
        toml_path(ca),
        toml_path(&pki.client_cert),
        toml_path(&pki.client_key)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_with_a_custom_ca_a_server_name_override_and_a_client_certificate() {
    let pki = upstream_pki();
    let upstream = tls_upstream(&pki.server, &pki.ca).await;
    let gw = support::Gateway::start(&tls_route(
        "secure",
        "secure.test",
        upstream.addr,
        &mtls_keys(&pki.ca_path, &pki),
    ))
    .await;

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
    assert_eq!(upstream.failed_handshakes.load(Ordering::SeqCst), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_the_configured_ca_did_not_sign_gets_502_and_no_request() {
    let pki = upstream_pki();
    let upstream = tls_upstream(&pki.server, &pki.ca).await;
    let gw = support::Gateway::start(&tls_route(
        "wrong-ca",
        "secure.test",
        upstream.addr,
        &mtls_keys(&pki.other_ca_path, &pki),
    ))
    .await;

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
    let gw = support::Gateway::start(&tls_route(
        "no-client-cert",
        "secure.test",
        upstream.addr,
        &format!("ca = {}", toml_path(&pki.ca_path)),
    ))
    .await;

    let (status, body) = support::get(gw.http, "/over/tls", &[("host", "secure.test")]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        upstream.seen.lock().unwrap().is_empty(),
        "no request reached the upstream"
    );
    // The upstream counts its side of the failed handshake a moment after the proxy gave up.
    for _ in 0..100 {
        if upstream.failed_handshakes.load(Ordering::SeqCst) >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(upstream.failed_handshakes.load(Ordering::SeqCst) >= 1);
    gw.stop().await;
}
