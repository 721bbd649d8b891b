//! The request path. `stack.rs` composes it; the other modules are its phases.

pub mod body;
pub mod context;
mod cookies;
pub mod cors;
pub mod exchange;
pub mod forward;
pub mod routes;
mod stack;
pub mod trace;

pub use stack::{H2_FIELD_OVERHEAD, Proxy, UpstreamKeys};

/// Set on an HTTP/1 request whose head carried both `Content-Length` and `Transfer-Encoding`
/// (hyper keeps only the latter): the forwarder refuses it instead of re-framing it.
#[derive(Debug, Clone, Copy)]
pub struct FramedTwice;
