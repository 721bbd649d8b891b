//! The one accept-and-serve loop behind every server the tests run (the recording upstream, the
//! test issuer, the OTLP receiver, the TLS, gRPC, WebSocket and bulk upstreams): binds
//! 127.0.0.1 (port 0 unless asked), optionally terminates TLS, serves each connection with
//! hyper in HTTP/1.1, HTTP/2 or either, and returns the address with a handle that stops it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// The HTTP versions a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    Http1,
    /// HTTP/2 only (prior knowledge in clear text, or as negotiated over TLS).
    Http2,
    /// HTTP/1.1 or HTTP/2, whichever the client speaks; upgrades (WebSocket) allowed.
    #[default]
    Auto,
}

/// How to serve: the protocol, TLS, and an address to bind instead of a fresh port.
#[derive(Clone, Default)]
pub struct Serve {
    protocol: Protocol,
    tls: Option<Arc<rustls::ServerConfig>>,
    addr: Option<SocketAddr>,
}

impl Serve {
    pub fn http1() -> Serve {
        Serve::protocol(Protocol::Http1)
    }

    pub fn http2() -> Serve {
        Serve::protocol(Protocol::Http2)
    }

    pub fn auto() -> Serve {
        Serve::protocol(Protocol::Auto)
    }

    pub fn protocol(protocol: Protocol) -> Serve {
        Serve {
            protocol,
            ..Serve::default()
        }
    }

    /// Terminates TLS with this config first.
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Serve {
        self.tls = Some(config);
        self
    }

    /// Binds this address (a restart on the port a server had) instead of 127.0.0.1:0.
    pub fn at(mut self, addr: SocketAddr) -> Serve {
        self.addr = Some(addr);
        self
    }
}

/// What the server knew about the connection a request came on.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    pub peer: Option<SocketAddr>,
    /// The TLS client's first certificate, when it presented one.
    pub client_cert: Option<CertificateDer<'static>>,
    /// The TLS client's SNI.
    pub sni: Option<String>,
    /// The ALPN protocol the TLS handshake chose.
    pub alpn: Option<Vec<u8>>,
}

/// A running server. Dropping it stops it, open connections included.
pub struct Server {
    pub addr: SocketAddr,
    tls: bool,
    /// TCP connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// TLS handshakes that failed.
    failed_handshakes: Arc<AtomicUsize>,
    accept: AbortHandle,
    open: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Server {
    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }

    /// No new connections; those already open go on.
    pub fn stop_accepting(&self) {
        self.accept.abort();
    }

    /// No new connections, and every open one is dropped (as a process that died).
    pub fn stop(&self) {
        self.accept.abort();
        for conn in self.open.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `handler` for every request on every connection, as `how` says.
pub async fn serve<H, F, B>(how: Serve, handler: H) -> Server
where
    H: Fn(Arc<Conn>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = how.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"));
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let failed_handshakes = Arc::new(AtomicUsize::new(0));
    let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
    let tls = how.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let (count, failed, conns) = (connections.clone(), failed_handshakes.clone(), open.clone());
    let protocol = how.protocol;
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let (tls, failed, handler) = (tls.clone(), failed.clone(), handler.clone());
            let task = tokio::spawn(async move {
                let mut conn = Conn {
                    peer: Some(peer),
                    ..Conn::default()
                };
                match tls {
                    None => serve_connection(protocol, stream, Arc::new(conn), handler).await,
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        let session = tls.get_ref().1;
                        conn.client_cert = session.peer_certificates().and_then(|c| c.first().cloned());
                        conn.sni = session.server_name().map(str::to_string);
                        conn.alpn = session.alpn_protocol().map(<[u8]>::to_vec);
                        serve_connection(protocol, tls, Arc::new(conn), handler).await;
                    }
                }
            });
            let mut conns = conns.lock().unwrap();
            conns.retain(|c| !c.is_finished());
            conns.push(task.abort_handle());
        }
    });
    Server {
        addr,
        tls: how.tls.is_some(),
        connections,
        failed_handshakes,
        accept: accept.abort_handle(),
        open,
    }
}

async fn serve_connection<I, H, F, B>(protocol: Protocol, io: I, conn: Arc<Conn>, handler: H)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Arc<Conn>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = service_fn(move |req| {
        let response = handler(conn.clone(), req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let io = TokioIo::new(io);
    match protocol {
        Protocol::Http1 => {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await;
        }
        Protocol::Http2 => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await;
        }
        Protocol::Auto => {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(io, service)
                .await;
        }
    }
}
