//! The decision point's vocabulary: a [`Decision`], a closed set of [`Reason`]s and the
//! [`Permit`] the forwarder requires. Plain data: no hyper, no I/O.
//!
//! Authentication and policy (later layers) produce their verdicts in these terms, so the audit
//! event, the status code and the metrics all derive from one value.

use std::fmt;

use http::StatusCode;

use crate::config::Access;

/// Why a request was allowed or denied. A closed set: it chooses the status code and is the
/// audit record's `portcullis.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed: the route is public.
    PublicRoute,
    /// Denied: a protected route and no accepted credentials.
    NoCredentials,
    /// Denied: no route serves this host and path.
    RouteNotFound,
    /// Denied: the path could be read more than one way (encoded slash, double encoding, …).
    AmbiguousPath,
    /// Denied: the request is malformed (bad or conflicting authority, bad header values).
    MalformedRequest,
    /// Denied: a method the proxy never forwards (CONNECT, TRACE).
    MethodNotAllowed,
    /// Denied: the request body is larger than the route accepts.
    PayloadTooLarge,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::PublicRoute => "public_route",
            Reason::NoCredentials => "no_credentials",
            Reason::RouteNotFound => "route_not_found",
            Reason::AmbiguousPath => "ambiguous_path",
            Reason::MalformedRequest => "malformed_request",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::PayloadTooLarge => "payload_too_large",
        }
    }

    /// The status a denial with this reason answers with.
    pub const fn status(self) -> StatusCode {
        match self {
            Reason::PublicRoute => StatusCode::OK,
            Reason::NoCredentials => StatusCode::UNAUTHORIZED,
            Reason::RouteNotFound => StatusCode::NOT_FOUND,
            Reason::AmbiguousPath | Reason::MalformedRequest => StatusCode::BAD_REQUEST,
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reason::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of the decision point for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow(Reason),
    Deny(Reason),
}

impl Decision {
    pub const fn reason(self) -> Reason {
        match self {
            Decision::Allow(r) | Decision::Deny(r) => r,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(_) => "deny",
        }
    }
}

/// Proof that the decision point allowed this request. Only [`decide`] makes one, and the
/// forwarder takes one by value, so a request that skipped the decision cannot be forwarded.
#[derive(Debug)]
pub struct Permit {
    _private: (),
}

/// The decision for a request that has a route. Pure: the later authentication and policy
/// layers extend its input, not its shape.
pub fn decide(access: Access) -> (Decision, Option<Permit>) {
    match access {
        Access::Public => (
            Decision::Allow(Reason::PublicRoute),
            Some(Permit { _private: () }),
        ),
        // No authenticator exists yet, so nobody can prove who they are: fail closed.
        Access::Protected => (Decision::Deny(Reason::NoCredentials), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protected_route_is_denied_without_a_permit() {
        let (decision, permit) = decide(Access::Protected);
        assert_eq!(decision, Decision::Deny(Reason::NoCredentials));
        assert!(permit.is_none());
        assert_eq!(decision.reason().status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_public_route_is_allowed_with_a_permit() {
        let (decision, permit) = decide(Access::Public);
        assert_eq!(decision.as_str(), "allow");
        assert!(permit.is_some());
    }
}
