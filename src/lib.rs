//! Portcullis: an identity-aware access proxy.
//!
//! Follow one request in this order: `listener` (accept, TLS, HTTP/1.1 and HTTP/2) →
//! `proxy::stack` (the whole request path, composed in one place) → `canonical` (the one view of
//! what the request is for) → `proxy::routes` → `authn` → `authz` → `decision` (allow with a
//! `Permit`, or deny with a reason) → `tokens` (the identity assertion) → `proxy::forward` (strip,
//! inject, stream) → `error::rescue` and `audit` (exactly one event per request). `app` builds all
//! of it from `config`; `admin` serves probes and metrics on a separate listener.
//!
//! The modules depend in one direction, floor (shared vocabulary) → features → stack → app; the
//! table in docs/architecture.md says which each may use, and `tests/architecture.rs` holds the
//! code to it.

pub mod admin;
pub mod app;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod body;
pub mod canonical;
pub mod config;
pub mod decision;
pub mod error;
pub mod hex;
pub mod identity;
pub mod json;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod pem;
pub mod proxy;
pub mod secret;
pub mod session;
pub mod tokens;
pub mod watch;
