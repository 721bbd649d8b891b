//! One request from arrival to its end, however it ends: exactly one audit record.
//!
//! The record is written when the exchange is over: when the response body has been handed to
//! the client whole, or when anything drops it first. A client that leaves before the answer
//! (HTTP/1 EOF, HTTP/2 `RST_STREAM`) makes hyper drop the request's future or its response; the
//! [`Exchange`] inside is dropped with it and writes the record then, with the outcome
//! `client_closed` (status 499, as nginx logs it) and what the upstream answered, if it did.
//! Requests that change something are served on their own task (`listener`), so the upstream
//! exchange they started completes and is recorded even when the client has gone.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::Version;
use http_body::{Body, Frame, SizeHint};

use crate::body::ProxyBody;
use crate::decision::{CLIENT_CLOSED, Fault};
use crate::error::ProxyError;
use crate::proxy::Proxy;
use crate::proxy::context::RequestCtx;

/// What the audit event needs from the request after the request itself has moved on.
#[derive(Debug)]
pub struct Seen {
    pub method: Cow<'static, str>,
    pub version: Version,
    pub user_agent: Option<String>,
    pub wants_html: bool,
    /// For the CORS headers of the response, on routes with a CORS policy.
    pub origin: Option<http::HeaderValue>,
    pub time: SystemTime,
    pub workflow: Vec<(&'static str, String)>,
}

/// How the exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The whole response was handed to the client.
    Completed,
    /// The client left first: before the response (recorded as 499) or during its body.
    ClientClosed,
    /// The upstream broke off the response body.
    UpstreamAborted,
}

impl Ending {
    pub const fn as_str(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::ClientClosed => "client_closed",
            Ending::UpstreamAborted => "upstream_aborted",
        }
    }
}

/// What the record says of an error the proxy answered with.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    pub code: &'static str,
    /// A refusal of the decision point (not a failure to forward).
    pub denial: bool,
    pub fault: Fault,
}

impl Failure {
    pub fn of(error: &ProxyError) -> Self {
        Failure {
            code: error.code(),
            denial: error.is_denial(),
            fault: error.fault(),
        }
    }
}

/// How a request ended, for its record.
#[derive(Debug, Clone, Copy)]
pub struct End {
    /// The status the client was answered with, or 499 when it left before an answer.
    pub status: u16,
    pub failure: Option<Failure>,
    pub outcome: Ending,
    /// The upstream's own status, when its response head arrived.
    pub upstream_status: Option<u16>,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// A request whose record is still to be written. Dropped unfinished, it writes it as ended by
/// the client.
pub struct Exchange {
    proxy: Arc<Proxy>,
    open: Option<(RequestCtx, Seen)>,
    /// The answer, once there is one.
    answer: Option<(u16, Option<Failure>)>,
}

impl Exchange {
    pub fn new(proxy: Arc<Proxy>, ctx: RequestCtx, seen: Seen) -> Self {
        Exchange {
            proxy,
            open: Some((ctx, seen)),
            answer: None,
        }
    }

    /// The request's context, while the exchange is open (always, until it is recorded).
    pub fn ctx(&mut self) -> Option<&mut RequestCtx> {
        self.open.as_mut().map(|(ctx, _)| ctx)
    }

    pub fn seen(&self) -> Option<&Seen> {
        self.open.as_ref().map(|(_, seen)| seen)
    }

    /// The proxy answers with `status` (and, for an error response, what failed).
    pub fn answer(&mut self, status: u16, failure: Option<Failure>) {
        self.answer = Some((status, failure));
    }

    /// Writes the record, once.
    fn finish(&mut self, outcome: Ending, delivered: bool, response_bytes: u64) {
        let Some((ctx, seen)) = self.open.take() else {
            return;
        };
        let (status, failure) = match self.answer {
            Some((status, failure)) if delivered => (status, failure),
            Some((_, failure)) => (CLIENT_CLOSED, failure),
            None => (CLIENT_CLOSED, None),
        };
        // A client that left mid-upload may still read (a half-closed connection): it left all
        // the same.
        let outcome = if failure.is_some_and(|f| f.code == "client_closed") {
            Ending::ClientClosed
        } else {
            outcome
        };
        let end = End {
            status,
            failure,
            outcome,
            upstream_status: ctx.upstream_status,
            request_bytes: ctx.tally.as_ref().map_or(0, |t| t.bytes()),
            response_bytes,
        };
        self.proxy.record(ctx, seen, end);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish(Ending::ClientClosed, false, 0);
    }
}

/// A response body that writes its request's record when it ends or is dropped.
pub struct Recorded {
    inner: ProxyBody,
    exchange: Option<Box<Exchange>>,
    sent: u64,
    /// hyper has the response: its head goes to the client.
    delivered: bool,
}

impl Recorded {
    pub fn new(inner: ProxyBody, exchange: Exchange) -> Self {
        Recorded {
            inner,
            exchange: Some(Box::new(exchange)),
            sent: 0,
            delivered: false,
        }
    }

    /// The response is on its way to the client (called just before hyper takes it).
    pub fn delivered(&mut self) {
        self.delivered = true;
    }

    fn finish(&mut self, outcome: Ending) {
        if let Some(mut exchange) = self.exchange.take() {
            exchange.finish(outcome, self.delivered, self.sent);
        }
    }
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent = this
                        .sent
                        .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
                }
                if this.inner.is_end_stream() {
                    this.finish(Ending::Completed);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Ending::UpstreamAborted),
            Poll::Ready(None) => this.finish(Ending::Completed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // hyper drops a body it has sent whole without asking for its end (it knew the length).
        let outcome = if self.delivered && self.inner.is_end_stream() {
            Ending::Completed
        } else {
            Ending::ClientClosed
        };
        self.finish(outcome);
    }
}
