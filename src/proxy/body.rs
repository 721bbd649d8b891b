//! Body types: responses stream back boxed; request bodies stream up through a size limit.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Every response the proxy sends downstream: the upstream's streamed body or one it made.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Request bodies on their way upstream, cut off at the route's `max_body_bytes`.
pub type UpstreamBody = http_body_util::Limited<hyper::body::Incoming>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}
