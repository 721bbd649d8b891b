//! Accepting connections: the connection limit, TLS, HTTP/1.1 and HTTP/2 (ALPN or prior
//! knowledge), the header-read and idle timeouts, and draining on shutdown.
//!
//! Untrusted input: every byte a client sends. hyper enforces the HTTP/1 header limits (and
//! answers 400/414/431 itself; the refusal is still audited, from here), the stack those of
//! HTTP/2 below the codec's cap; this module enforces the time limits.

mod io;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::proxy::context::ConnInfo;
use io::{Activity, Tracked};
pub use tls::ReloadingTls;

/// What every connection of every listener shares.
#[derive(Clone)]
pub struct Shared {
    /// The proxy in force: each request takes the one current when it arrives, so a reloaded
    /// configuration applies to the next request while requests in flight finish on theirs.
    pub proxy: Arc<ArcSwap<Proxy>>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// One permit per open connection; shutdown waits until it can take them all back.
    pub connections: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

/// Accepts until shutdown, then stops accepting (new connections are refused once the socket
/// closes) and returns; open connections drain in their own tasks.
pub async fn serve(listener: TcpListener, tls: Option<Arc<ReloadingTls>>, shared: Shared) {
    let builder = Arc::new(http_builder(&shared.limits));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let permit = tokio::select! {
            permit = shared.connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            () = crate::listener::stopped(&mut shutdown) => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::listener::stopped(&mut shutdown) => return,
        };
        let shared = shared.clone();
        let tls = tls.as_ref().map(|t| t.config());
        let builder = builder.clone();
        tokio::spawn(async move {
            shared.metrics.connection_opened();
            connection(stream, peer, tls, &builder, &shared).await;
            shared.metrics.connection_closed();
            drop(permit);
        });
    }
}

/// Methods whose request may change something at the upstream: served on a task of their own.
/// Safe methods are cancelled with their client (recorded as 499).
fn changes_something(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// A request the runtime stopped before it was answered (shutdown): hyper closes the stream.
#[derive(Debug)]
struct Unserved;

impl std::fmt::Display for Unserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request was stopped before it was answered")
    }
}

impl std::error::Error for Unserved {}

/// Resolves once shutdown has been signalled (or the sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers.get())
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Twice the limits, so that a list over them reaches the stack, which refuses it with an
        // audit record; the h2 codec answers a list over this cap 431 unseen (and advertises it
        // as SETTINGS_MAX_HEADER_LIST_SIZE).
        .max_header_list_size(h2_codec_cap(limits))
        .max_concurrent_streams(256)
        // Extended CONNECT (RFC 8441) reaches the stack, which refuses CONNECT with a record,
        // instead of being reset by the codec unseen.
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

fn h2_codec_cap(limits: &Limits) -> u32 {
    let fields = limits
        .max_headers
        .get()
        .saturating_add(4)
        .saturating_mul(crate::proxy::H2_FIELD_OVERHEAD);
    let cap = limits.max_header_bytes.saturating_add(fields).saturating_mul(2);
    u32::try_from(cap).unwrap_or(u32::MAX)
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    builder: &auto::Builder<TokioExecutor>,
    shared: &Shared,
) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let conn = Arc::new(ConnInfo::new(
        peer,
        local,
        tls.is_some(),
        shared.proxy.load().trusts(peer.ip()),
    ));
    let activity = Activity::new();
    match tls {
        None => drive(stream, conn, activity, builder, shared).await,
        Some(config) => {
            // A client that never finishes its handshake is a slow client too.
            let handshake = TlsAcceptor::from(config).accept(stream);
            match tokio::time::timeout(shared.limits.header_read_timeout.get(), handshake).await {
                Ok(Ok(tls_stream)) => drive(tls_stream, conn, activity, builder, shared).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// How far a connection is in closing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Winding {
    Open,
    /// Shutting down: what is in flight finishes, whatever it takes.
    Draining,
    /// Closing for being idle or never used: a peer that does not complete it is dropped.
    Unused,
}

async fn drive<S>(
    io: S,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
    builder: &auto::Builder<TokioExecutor>,
    shared: &Shared,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy = shared.proxy.clone();
    let seen_by = conn.clone();
    let served = activity.clone();
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let proxy = proxy.load_full();
        let conn = conn.clone();
        let serving = served.serving();
        if req.headers().contains_key(http::header::TRANSFER_ENCODING) && served.framed_twice() {
            req.extensions_mut().insert(crate::proxy::FramedTwice);
        }
        async move {
            let mut response = if changes_something(req.method()) {
                // On its own task: if the client leaves, the upstream exchange it started still
                // completes (its action may already be under way) and is recorded with it.
                let task = tokio::spawn(async move { proxy.handle(req, conn).await });
                match task.await {
                    Ok(response) => response,
                    // Only when the runtime shuts down; the task's record is written as it drops.
                    Err(_) => return Err(Unserved),
                }
            } else {
                proxy.handle(req, conn).await
            };
            response.body_mut().delivered();
            drop(serving);
            Ok::<_, Unserved>(response)
        }
    });
    let io = Tracked::new(io, activity.clone());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle_limit = shared.limits.idle_timeout.get();
    let head_limit = shared.limits.header_read_timeout.get();
    let period = |limit: Duration| (limit / 4).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(period(idle_limit));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A first request must begin within the header read timeout on HTTP/2 too. hyper times
    // HTTP/1 heads itself, a second earlier, so that its refusal is the one recorded.
    let first_request = tokio::time::sleep(head_limit + Duration::from_secs(1));
    tokio::pin!(first_request);
    let mut awaiting_first = true;
    let mut shutdown = shared.shutdown.clone();
    let mut state = Winding::Open;
    loop {
        let unused = tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                    if let Some(e) = e.downcast_ref::<hyper::Error>() {
                        shared.proxy.load().refused_unread(seen_by, e, activity.heard_since_answered());
                    }
                }
                return;
            }
            // Finish what is in flight, take nothing new (h1: no keep-alive; h2: GOAWAY).
            () = crate::listener::stopped(&mut shutdown), if state == Winding::Open => {
                state = Winding::Draining;
                connection.as_mut().graceful_shutdown();
                false
            }
            () = &mut first_request, if awaiting_first && state == Winding::Open => {
                awaiting_first = false;
                activity.never_served()
            }
            _ = tick.tick(), if state != Winding::Draining => match state {
                // An HTTP/2 peer that never acknowledges the GOAWAY's PING keeps a gracefully
                // closing connection open; with nothing being served it is dropped at the first
                // tick, the header read timeout after the GOAWAY.
                Winding::Unused => {
                    if activity.serving_none() {
                        return;
                    }
                    false
                }
                _ => activity.idle_for() >= idle_limit,
            },
        };
        if unused {
            state = Winding::Unused;
            let first = tokio::time::Instant::now() + head_limit;
            tick = tokio::time::interval_at(first, period(head_limit));
            connection.as_mut().graceful_shutdown();
        }
    }
}
