//! The request path. `stack.rs` composes it; the other modules are its phases.

pub mod body;
pub mod canonical;
pub mod context;
pub mod cors;
pub mod forward;
pub mod routes;
mod stack;
pub mod trace;

pub use stack::{H2_FIELD_OVERHEAD, Proxy};
