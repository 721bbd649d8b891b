//! The decision point's vocabulary: a [`Decision`], a closed set of [`Reason`]s and the
//! [`Permit`] the forwarder requires. Plain data: no hyper, no I/O.
//!
//! Authentication and policy (later layers) produce their verdicts in these terms, so the audit
//! event, the status code and the metrics all derive from one value.

use std::fmt;

use http::StatusCode;

use crate::authn::Principal;
use crate::config::Access;

/// Why a request was allowed or denied. A closed set: it chooses the status code and is the
/// audit record's `portcullis.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed: the route is public.
    PublicRoute,
    /// Allowed: the caller authenticated with a provider the route accepts.
    Authenticated,
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
    /// Denied: the credentials are not a well-formed token, or a claim is missing or mistyped.
    Malformed,
    /// Denied: the token's signature does not verify.
    BadSignature,
    /// Denied: the token has expired (beyond the leeway).
    Expired,
    /// Denied: the token is not valid yet (`nbf` beyond the leeway).
    NotYetValid,
    /// Denied: an issuer this route does not accept.
    WrongIssuer,
    /// Denied: the token was minted for another audience.
    WrongAudience,
    /// Denied: no key of the issuer matches the token's `kid`.
    UnknownKey,
    /// Denied: the token's algorithm is not one the provider is configured for.
    AlgNotAllowed,
    /// Denied: an ID token where an access token is required, or the reverse.
    WrongTokenType,
    /// Denied: the issuer's keys could not be fetched (and none are cached).
    IdpUnavailable,
    /// Denied: a browser sign-in did not complete (unknown or replayed state, a refused code,
    /// an ID token that does not verify).
    LoginFailed,
    /// Denied: the callback's `state` names no sign-in this browser started (unknown, expired,
    /// replayed, or begun in another browser).
    StateMismatch,
    /// Denied: the session cookie names no live session (expired, signed out, tampered), or
    /// the provider refused to refresh it.
    SessionExpired,
    /// Denied: the session store cannot answer (fail closed).
    SessionStoreUnavailable,
    /// Denied: a CORS preflight from an origin, or for a method or header, the route does not allow.
    CorsRefused,
    /// Allowed: the proxy answered a CORS preflight itself.
    CorsPreflight,
    /// Allowed: the browser was sent to the identity provider (or shown the sign-in page).
    SignInStarted,
    /// Allowed: a sign-in completed and a session was created.
    SignedIn,
    /// Allowed: the session was ended.
    SignedOut,
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
            Reason::Authenticated => "authenticated",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::UnknownKey => "unknown_key",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::WrongTokenType => "wrong_token_type",
            Reason::IdpUnavailable => "idp_unavailable",
            Reason::LoginFailed => "login_failed",
            Reason::StateMismatch => "state_mismatch",
            Reason::SessionExpired => "session_expired",
            Reason::SessionStoreUnavailable => "session_store_unavailable",
            Reason::CorsRefused => "cors_refused",
            Reason::CorsPreflight => "cors_preflight",
            Reason::SignInStarted => "sign_in_started",
            Reason::SignedIn => "signed_in",
            Reason::SignedOut => "signed_out",
        }
    }

    /// What the client is told when a request is refused for this reason.
    pub const fn message(self) -> &'static str {
        match self {
            Reason::NoCredentials => "this route requires you to sign in",
            Reason::Malformed => "the credentials are malformed",
            Reason::BadSignature | Reason::UnknownKey | Reason::AlgNotAllowed => {
                "the token's signature is not accepted"
            }
            Reason::Expired => "the token has expired",
            Reason::NotYetValid => "the token is not valid yet",
            Reason::WrongIssuer => "tokens from this issuer are not accepted here",
            Reason::WrongAudience => "the token was issued for another audience",
            Reason::WrongTokenType => "this kind of token is not accepted here",
            Reason::IdpUnavailable => "the identity provider cannot be reached; try again shortly",
            Reason::LoginFailed => "the sign-in did not complete; start it again",
            Reason::StateMismatch => {
                "this sign-in was not started by this browser or has already been used; start it again"
            }
            Reason::SessionExpired => "your session has ended; sign in again",
            Reason::SessionStoreUnavailable => "sessions cannot be checked right now; try again shortly",
            Reason::CorsRefused => "this cross-origin request is not allowed",
            Reason::RouteNotFound => "no route serves this host and path",
            Reason::PayloadTooLarge => "the request body is larger than this route accepts",
            _ => "the request was refused",
        }
    }

    /// A credential was presented and refused: the answer names `invalid_token` (RFC 6750).
    pub const fn is_invalid_token(self) -> bool {
        matches!(
            self,
            Reason::Malformed
                | Reason::BadSignature
                | Reason::Expired
                | Reason::NotYetValid
                | Reason::WrongIssuer
                | Reason::WrongAudience
                | Reason::UnknownKey
                | Reason::AlgNotAllowed
                | Reason::WrongTokenType
        )
    }

    /// The status a denial with this reason answers with.
    pub const fn status(self) -> StatusCode {
        if self.is_invalid_token() {
            return StatusCode::UNAUTHORIZED;
        }
        match self {
            Reason::PublicRoute
            | Reason::Authenticated
            | Reason::CorsPreflight
            | Reason::SignInStarted
            | Reason::SignedIn
            | Reason::SignedOut => StatusCode::OK,
            Reason::NoCredentials | Reason::LoginFailed | Reason::SessionExpired => StatusCode::UNAUTHORIZED,
            Reason::StateMismatch | Reason::CorsRefused => StatusCode::FORBIDDEN,
            Reason::IdpUnavailable | Reason::SessionStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reason::RouteNotFound => StatusCode::NOT_FOUND,
            Reason::AmbiguousPath | Reason::MalformedRequest => StatusCode::BAD_REQUEST,
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reason::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            // Refused credentials, answered above.
            _ => StatusCode::UNAUTHORIZED,
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

/// The decision for a request that has a route. Pure: the policy layer extends its input, not
/// its shape. Until policies exist, any caller a protected route's providers vouch for is allowed.
pub fn decide(access: Access, principal: Option<&Principal>) -> (Decision, Option<Permit>) {
    match (access, principal) {
        (Access::Public, _) => (
            Decision::Allow(Reason::PublicRoute),
            Some(Permit { _private: () }),
        ),
        (Access::Protected, Some(_)) => (
            Decision::Allow(Reason::Authenticated),
            Some(Permit { _private: () }),
        ),
        (Access::Protected, None) => (Decision::Deny(Reason::NoCredentials), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protected_route_is_denied_without_a_permit() {
        let (decision, permit) = decide(Access::Protected, None);
        assert_eq!(decision, Decision::Deny(Reason::NoCredentials));
        assert!(permit.is_none());
        assert_eq!(decision.reason().status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_public_route_is_allowed_with_a_permit() {
        let (decision, permit) = decide(Access::Public, None);
        assert_eq!(decision.as_str(), "allow");
        assert!(permit.is_some());
    }
}
