//! A connection's byte stream, noting when bytes last moved and when a request last began or
//! ended, so idle connections can be closed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Milliseconds since the connection opened (plus one, so 0 is never) at which bytes were last
/// read and written, and at which a request last began or was answered, with the requests being
/// served.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    read_ms: AtomicU64,
    write_ms: AtomicU64,
    request_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            read_ms: AtomicU64::new(0),
            write_ms: AtomicU64::new(0),
            request_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn read(&self) {
        self.read_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn written(&self) {
        self.write_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The client sent something after the last byte the proxy wrote: on an HTTP/1 connection
    /// whose header read timed out, the start of a request head it never finished (rather than
    /// an idle keep-alive connection).
    pub fn heard_since_answered(&self) -> bool {
        self.read_ms.load(Ordering::Relaxed) > self.write_ms.load(Ordering::Relaxed)
    }

    /// How long the connection has been idle: no bytes moving, or (bytes moving or not) no
    /// request being served and none begun or answered. The second is what an HTTP/2 client that
    /// only sends PINGs, SETTINGS or a header block it never finishes looks like; hyper's header
    /// read timeout covers that for HTTP/1 only.
    pub fn idle_for(&self) -> Duration {
        let now = self.now_ms();
        let last = self
            .read_ms
            .load(Ordering::Relaxed)
            .max(self.write_ms.load(Ordering::Relaxed));
        let quiet = now.saturating_sub(last);
        let unused = if self.in_flight.load(Ordering::Relaxed) > 0 {
            0
        } else {
            now.saturating_sub(self.request_ms.load(Ordering::Relaxed))
        };
        Duration::from_millis(quiet.max(unused))
    }

    /// No request has begun on this connection yet (each one sets `request_ms`).
    pub fn never_served(&self) -> bool {
        self.request_ms.load(Ordering::Relaxed) == 0
    }

    pub fn serving_none(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Marks a request as being served until the returned guard is dropped (its response head
    /// is produced, or the request is abandoned).
    pub fn serving(self: &Arc<Self>) -> Serving {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.request_ms.store(self.now_ms(), Ordering::Relaxed);
        Serving(self.clone())
    }
}

pub struct Serving(Arc<Activity>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.request_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    pub struct Tracked<S> {
        #[pin]
        inner: S,
        activity: Arc<Activity>,
    }
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        poll
    }
}

impl<S: AsyncWrite> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.written();
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.written();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
