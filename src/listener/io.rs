//! A connection's byte stream, noting when bytes last moved and when a request last began or
//! ended, so idle connections can be closed, and which HTTP/1 heads framed their body two ways.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// For each header block with a `Transfer-Encoding` line, in order: whether it also had a
    /// `Content-Length` line. hyper drops the `Content-Length` of such a head before anyone sees
    /// it (RFC 9112 §6.3 allows that); the proxy refuses the request instead (`framed_twice`).
    te_heads: Mutex<VecDeque<bool>>,
}

/// At most this many `Transfer-Encoding` heads wait to be asked about.
const MAX_TE_HEADS: usize = 64;

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            read_ms: AtomicU64::new(0),
            write_ms: AtomicU64::new(0),
            request_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            te_heads: Mutex::new(VecDeque::new()),
        })
    }

    /// For an HTTP/1 request hyper handed over with `Transfer-Encoding`: whether its head also
    /// carried `Content-Length`. Heads are taken in order, one per such request. Body data that
    /// mimics a head could shift the order, but only on its own sender's connection.
    pub fn framed_twice(&self) -> bool {
        self.te_heads
            .lock()
            .ok()
            .and_then(|mut heads| heads.pop_front())
            .unwrap_or(false)
    }

    fn te_head(&self, with_content_length: bool) {
        if let Ok(mut heads) = self.te_heads.lock() {
            if heads.len() >= MAX_TE_HEADS {
                heads.pop_front();
            }
            heads.push_back(with_content_length);
        }
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

/// Reads HTTP/1 header lines as they pass: a line is judged by its first bytes, a blank line
/// ends a block. Cheap (a few comparisons per line, nothing per byte but a newline search) and
/// off for HTTP/2, whose frames carry no such lines.
#[derive(Debug, Default)]
struct HeadLines {
    off: bool,
    started: bool,
    /// The first bytes of the current line, lower-cased.
    start: [u8; 18],
    len: usize,
    content_length: bool,
    transfer_encoding: bool,
}

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";

impl HeadLines {
    fn scan(&mut self, bytes: &[u8], activity: &Activity) {
        if self.off {
            return;
        }
        if !self.started && !bytes.is_empty() {
            self.started = true;
            if bytes.starts_with(b"PRI ") {
                self.off = true;
                return;
            }
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let end = rest.iter().position(|b| *b == b'\n');
            let piece = end.map_or(rest, |i| rest.get(..i).unwrap_or_default());
            for b in piece {
                if let Some(slot) = self.start.get_mut(self.len) {
                    *slot = b.to_ascii_lowercase();
                }
                self.len = self.len.saturating_add(1);
            }
            let Some(i) = end else { break };
            self.line_ended(activity);
            rest = rest.get(i + 1..).unwrap_or_default();
        }
    }

    fn line_ended(&mut self, activity: &Activity) {
        let line = self
            .start
            .get(..self.len.min(self.start.len()))
            .unwrap_or_default();
        if self.len == 0 || (self.len == 1 && line == b"\r") {
            if self.transfer_encoding {
                activity.te_head(self.content_length);
            }
            self.content_length = false;
            self.transfer_encoding = false;
        } else if line.starts_with(CONTENT_LENGTH) {
            self.content_length = true;
        } else if line.starts_with(TRANSFER_ENCODING) {
            self.transfer_encoding = true;
        }
        self.len = 0;
    }
}

pin_project_lite::pin_project! {
    pub struct Tracked<S> {
        #[pin]
        inner: S,
        activity: Arc<Activity>,
        lines: HeadLines,
    }
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked {
            inner,
            activity,
            lines: HeadLines::default(),
        }
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
        if let Some(new) = buf.filled().get(before..)
            && !new.is_empty()
        {
            this.activity.read();
            this.lines.scan(new, this.activity);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(input: &[&[u8]]) -> Vec<bool> {
        let activity = Activity::new();
        let mut lines = HeadLines::default();
        for piece in input {
            lines.scan(piece, &activity);
        }
        let mut out = Vec::new();
        while let Some(h) = activity.te_heads.lock().unwrap().pop_front() {
            out.push(h);
        }
        out
    }

    #[test]
    fn a_head_with_both_framings_is_noted_in_any_order_case_or_split() {
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(heads(&[both]), [true]);
        let reversed = b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(heads(&[reversed]), [true]);
        // Split anywhere across reads.
        let pieces: Vec<&[u8]> = both.chunks(3).collect();
        assert_eq!(heads(&pieces), [true]);
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(heads(&[chunked, chunked]), [false, false]);
        assert!(heads(&[b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"]).is_empty());
        assert!(heads(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ntransfer-encoding: chunked\r\n\r\n"]).is_empty());
    }
}
