//! Body types: responses stream back boxed; request bodies stream up through [`ClientBody`],
//! which counts them, cuts them off at the route's `max_body_bytes`, gives up on a client that
//! stops sending for the idle timeout, and remembers whose fault a failure was, so that a broken
//! upload is the client's 400/408/499 and never the upstream's 502.
//!
//! Untrusted input: every byte and frame of the request body.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Why a request body did not arrive whole. The first fault is the one kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Larger than the route's `max_body_bytes` (413).
    TooLarge,
    /// Not a well-formed body: a bad chunk size or extension, more or less data than its
    /// `Content-Length` or HTTP/2 `content-length` said (400).
    Malformed,
    /// The client sent nothing for the idle timeout while the proxy waited for more (408).
    Stalled,
    /// The client went away: EOF in the middle of the body, or HTTP/2 `RST_STREAM` (499).
    ClientClosed,
}

impl BodyFault {
    fn code(self) -> u8 {
        match self {
            BodyFault::TooLarge => 1,
            BodyFault::Malformed => 2,
            BodyFault::Stalled => 3,
            BodyFault::ClientClosed => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(BodyFault::TooLarge),
            2 => Some(BodyFault::Malformed),
            3 => Some(BodyFault::Stalled),
            4 => Some(BodyFault::ClientClosed),
            _ => None,
        }
    }
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyFault::TooLarge => "the request body is larger than the route accepts",
            BodyFault::Malformed => "the request body is malformed",
            BodyFault::Stalled => "the client stopped sending the request body",
            BodyFault::ClientClosed => "the client went away during the request body",
        })
    }
}

impl std::error::Error for BodyFault {}

/// What a request body did, shared between the body (moved into the upstream request) and the
/// request's record.
#[derive(Debug, Default)]
pub struct Tally {
    bytes: AtomicU64,
    fault: AtomicU8,
    /// The body is waiting for the client (it was asked for more and had none).
    waiting: AtomicBool,
    ended: AtomicBool,
}

impl Tally {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn fault(&self) -> Option<BodyFault> {
        BodyFault::from_code(self.fault.load(Ordering::Relaxed))
    }

    /// The upstream is waiting for body bytes the client has not sent.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) && !self.ended.load(Ordering::Relaxed)
    }

    fn set_fault(&self, fault: BodyFault) -> BodyFault {
        match self
            .fault
            .compare_exchange(0, fault.code(), Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => fault,
            Err(first) => BodyFault::from_code(first).unwrap_or(fault),
        }
    }
}

/// A request body as the proxy holds it: still arriving, or already read whole (a body the
/// policy had to read to know what the request acts on).
#[derive(Debug)]
pub enum Inbound {
    Stream(Incoming),
    Read(Bytes),
}

#[derive(Debug)]
enum Source {
    Stream(Incoming),
    /// The bytes, until they are handed on.
    Read(Option<Bytes>),
}

/// A request body on its way upstream.
pub struct ClientBody {
    inner: Source,
    tally: Arc<Tally>,
    /// Most bytes allowed; `u64::MAX` for no limit.
    limit: u64,
    idle: Duration,
    /// Armed while waiting for the client; reset by every frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl ClientBody {
    /// `limit` 0 means no limit.
    pub fn new(inner: Inbound, limit: u64, idle: Duration) -> (Self, Arc<Tally>) {
        let tally = Arc::new(Tally::default());
        let inner = match inner {
            Inbound::Stream(body) => Source::Stream(body),
            Inbound::Read(bytes) => {
                tally
                    .bytes
                    .store(u64::try_from(bytes.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
                Source::Read(Some(bytes))
            }
        };
        let body = ClientBody {
            inner,
            tally: tally.clone(),
            limit: if limit == 0 { u64::MAX } else { limit },
            idle,
            timer: None,
            done: false,
        };
        (body, tally)
    }

    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        self.done = true;
        self.timer = None;
        Poll::Ready(Some(Err(self.tally.set_fault(fault))))
    }
}

/// Whose fault a failed read of the client's body is: the client leaving (EOF mid-body, a
/// stream reset or a closed HTTP/2 connection) or a body that breaks the framing rules.
fn classify(error: &hyper::Error) -> BodyFault {
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return BodyFault::ClientClosed;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            // The peer reset the stream or closed the connection; a reset the codec sent
            // itself is a protocol fault of the body (a `content-length` it broke).
            return if h2.is_remote() || h2.is_io() || h2.is_go_away() {
                BodyFault::ClientClosed
            } else {
                BodyFault::Malformed
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            )
        {
            return BodyFault::ClientClosed;
        }
        source = e.source();
    }
    BodyFault::Malformed
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyFault;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let incoming = match &mut this.inner {
            Source::Stream(incoming) => incoming,
            Source::Read(bytes) => {
                let frame = bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)));
                if frame.is_none() {
                    this.done = true;
                    this.tally.ended.store(true, Ordering::Relaxed);
                }
                return Poll::Ready(frame);
            }
        };
        match Pin::new(incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.tally.waiting.store(false, Ordering::Relaxed);
                if let Some(data) = frame.data_ref() {
                    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    let total = this
                        .tally
                        .bytes
                        .fetch_add(len, Ordering::Relaxed)
                        .saturating_add(len);
                    if total > this.limit {
                        return this.fail(BodyFault::TooLarge);
                    }
                }
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(tokio::time::Instant::now() + this.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = classify(&e);
                this.fail(fault)
            }
            Poll::Ready(None) => {
                this.done = true;
                this.timer = None;
                this.tally.ended.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.tally.waiting.store(true, Ordering::Relaxed);
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.fail(BodyFault::Stalled),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
            || match &self.inner {
                Source::Stream(incoming) => incoming.is_end_stream(),
                Source::Read(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Stream(incoming) => incoming.size_hint(),
            Source::Read(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
