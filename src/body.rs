//! The body of every response the proxy sends: one type, whether it streams from the upstream
//! or the proxy made it (a refusal, a sign-in page, a JWKS).

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};

/// Every response the proxy sends downstream: the upstream's streamed body or one it made.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}
