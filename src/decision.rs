//! The decision point's vocabulary: a [`Decision`], a closed set of [`Reason`]s and the
//! [`Permit`] the forwarder requires. Plain data: no hyper, no I/O.
//!
//! Authentication and policy (later layers) produce their verdicts in these terms, so the audit
//! event, the status code and the metrics all derive from one value.

use std::fmt;

use http::StatusCode;

use crate::config::Access;
use crate::identity::Principal;

/// nginx's status for a request whose client closed the connection before the answer.
pub const CLIENT_CLOSED: u16 = 499;

/// [`CLIENT_CLOSED`] as a status code.
pub fn client_closed_status() -> http::StatusCode {
    http::StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(http::StatusCode::BAD_REQUEST)
}

/// Why a request was allowed or denied. A closed set: it chooses the status code and is the
/// audit record's `portcullis.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed: the route is public.
    PublicRoute,
    /// Allowed: the caller authenticated with a provider the route accepts (`authenticated` routes).
    Authenticated,
    /// Allowed: the policy in the route's domain grants the caller this action on this object.
    Authorized,
    /// Denied: the caller is known but the policy does not grant the action (403).
    Forbidden,
    /// Denied: the policy could not be evaluated (fail closed, 500).
    PolicyError,
    /// Denied (403): what the request acts on had to be looked up on the upstream (a
    /// backfill's DAG, the DAG that produces an asset) and the answer did not say.
    ObjectUnresolved,
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
    /// Denied (400): the request body broke its framing (a bad chunk size or extension, a
    /// `Content-Length` or HTTP/2 `content-length` it did not keep), or its head framed it two
    /// ways (`Content-Length` with `Transfer-Encoding`, `Transfer-Encoding` twice).
    BadRequestBody,
    /// Denied (408): the client stopped sending the request body for the idle timeout.
    BodyTimeout,
    /// The client went away before any decision was made (recorded as 499, as nginx logs it).
    ClientClosed,
    /// Denied: the request head is over `max_header_bytes` or `max_headers` (431; HTTP/1 heads
    /// are answered while hyper reads them, so their record has no path or method).
    HeadersTooLarge,
    /// Denied: the request target is longer than can be read (414, answered while reading).
    UriTooLong,
    /// Denied: the client began a request head and did not finish it within
    /// `header_read_timeout` (HTTP/1; the connection is closed unanswered, recorded as 408).
    HeaderTimeout,
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
    /// Denied: an ID token where an access token is required, or the reverse, or a token whose
    /// JOSE `typ` says it is meant for something else (`logout+jwt`, `secevent+jwt`, …).
    WrongTokenType,
    /// Denied: the token's header or payload names a JSON member twice (parsers disagree on
    /// which one counts).
    DuplicateClaim,
    /// Denied: the token's header lists `crit` extensions, which Portcullis does not implement
    /// (RFC 7515 §4.1.11: refuse).
    UnknownCriticalHeader,
    /// Denied: the token's `iat` is later than now plus the leeway.
    IssuedInFuture,
    /// Denied (403): the token is valid but a claim the provider's `bound_claims` pins has
    /// another value (an unprotected branch's CI job, another project).
    ClaimsNotBound,
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
    /// Denied (401): the credentials were revoked: the bearer token's subject, or the session's
    /// person, provider session or every session, by `portcullis revoke` or a back-channel
    /// logout; what signs in or is issued afterwards is not refused.
    Revoked,
    /// Denied (400): a back-channel logout token that does not hold (signature, issuer,
    /// audience, age, events, replayed `jti`, …): nothing is ended.
    LogoutTokenRefused,
    /// Denied: the session store cannot answer, or (a shared store) this replica has never read
    /// its deny list, so revocations cannot be checked (fail closed).
    SessionStoreUnavailable,
    /// Denied: a browser sign-in or session over plain HTTP (not loopback, not from a trusted
    /// TLS-terminating proxy): a navigation is redirected to HTTPS, anything else refused (403).
    InsecureTransport,
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
    /// Denied: the audit trail cannot take more records and the operator chose to fail closed
    /// (503): nothing is done that could not be recorded.
    AuditUnavailable,
    /// Denied: the route sends an identity assertion and none could be minted (fail closed, 500).
    AssertionFailed,
    /// Denied: the route's brokered upstream credential could not be obtained (fail closed, 503).
    UpstreamCredentialUnavailable,
    /// Allowed: the proxy served its own issuer metadata (`/.well-known/jwks.json`, …).
    IssuerMetadata,
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
            Reason::BadRequestBody => "bad_request_body",
            Reason::BodyTimeout => "body_timeout",
            Reason::ClientClosed => "client_closed",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::UriTooLong => "uri_too_long",
            Reason::HeaderTimeout => "header_timeout",
            Reason::Authenticated => "authenticated",
            Reason::Authorized => "authorized",
            Reason::Forbidden => "forbidden",
            Reason::PolicyError => "policy_error",
            Reason::ObjectUnresolved => "object_unresolved",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::UnknownKey => "unknown_key",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::WrongTokenType => "wrong_token_type",
            Reason::DuplicateClaim => "duplicate_claim",
            Reason::UnknownCriticalHeader => "unknown_critical_header",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::ClaimsNotBound => "claims_not_bound",
            Reason::IdpUnavailable => "idp_unavailable",
            Reason::LoginFailed => "login_failed",
            Reason::StateMismatch => "state_mismatch",
            Reason::SessionExpired => "session_expired",
            Reason::Revoked => "revoked",
            Reason::LogoutTokenRefused => "logout_token_refused",
            Reason::SessionStoreUnavailable => "session_store_unavailable",
            Reason::InsecureTransport => "insecure_transport",
            Reason::CorsRefused => "cors_refused",
            Reason::CorsPreflight => "cors_preflight",
            Reason::SignInStarted => "sign_in_started",
            Reason::SignedIn => "signed_in",
            Reason::SignedOut => "signed_out",
            Reason::AuditUnavailable => "audit_unavailable",
            Reason::AssertionFailed => "assertion_failed",
            Reason::IssuerMetadata => "issuer_metadata",
            Reason::UpstreamCredentialUnavailable => "upstream_credential_unavailable",
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
            Reason::DuplicateClaim | Reason::UnknownCriticalHeader => "the credentials are malformed",
            Reason::IssuedInFuture => "the token is not valid yet",
            Reason::ClaimsNotBound => "tokens with these claims are not accepted here",
            Reason::IdpUnavailable => "the identity provider cannot be reached; try again shortly",
            Reason::LoginFailed => "the sign-in did not complete; start it again",
            Reason::StateMismatch => {
                "this sign-in was not started by this browser or has already been used; start it again"
            }
            Reason::SessionExpired => "your session has ended; sign in again",
            Reason::Revoked => "these credentials were revoked; sign in again or obtain a new token",
            Reason::SessionStoreUnavailable => {
                "sessions and revocations cannot be checked right now; try again shortly"
            }
            Reason::InsecureTransport => {
                "signing in needs HTTPS, so that the session cookie never crosses the network in clear: open this address with https://"
            }
            Reason::CorsRefused => "this cross-origin request is not allowed",
            Reason::RouteNotFound => "no route serves this host and path",
            Reason::Forbidden => "you are signed in, but the policy does not allow this request",
            Reason::PolicyError => "the access policy could not be evaluated; the request was refused",
            Reason::ObjectUnresolved => {
                "what this request acts on could not be determined, so the policy could not allow it"
            }
            Reason::PayloadTooLarge => "the request body is larger than this route accepts",
            Reason::BadRequestBody => "the request body is malformed",
            Reason::BodyTimeout => "the request body stopped arriving",
            Reason::AuditUnavailable => {
                "requests cannot be recorded right now, so none are served; try again shortly"
            }
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
                | Reason::DuplicateClaim
                | Reason::UnknownCriticalHeader
                | Reason::IssuedInFuture
                | Reason::Revoked
        )
    }

    /// The status a denial with this reason answers with.
    pub fn status(self) -> StatusCode {
        if self.is_invalid_token() {
            return StatusCode::UNAUTHORIZED;
        }
        match self {
            Reason::PublicRoute
            | Reason::Authenticated
            | Reason::Authorized
            | Reason::CorsPreflight
            | Reason::SignInStarted
            | Reason::SignedIn
            | Reason::SignedOut
            | Reason::IssuerMetadata => StatusCode::OK,
            Reason::NoCredentials | Reason::LoginFailed | Reason::SessionExpired | Reason::Revoked => {
                StatusCode::UNAUTHORIZED
            }
            Reason::StateMismatch
            | Reason::CorsRefused
            | Reason::Forbidden
            | Reason::ObjectUnresolved
            | Reason::ClaimsNotBound
            | Reason::InsecureTransport => StatusCode::FORBIDDEN,
            Reason::PolicyError | Reason::AssertionFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Reason::IdpUnavailable
            | Reason::SessionStoreUnavailable
            | Reason::AuditUnavailable
            | Reason::UpstreamCredentialUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reason::RouteNotFound => StatusCode::NOT_FOUND,
            Reason::AmbiguousPath | Reason::MalformedRequest | Reason::LogoutTokenRefused => {
                StatusCode::BAD_REQUEST
            }
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reason::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BadRequestBody => StatusCode::BAD_REQUEST,
            Reason::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reason::ClientClosed => client_closed_status(),
            Reason::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::UriTooLong => StatusCode::URI_TOO_LONG,
            Reason::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            // Refused credentials, answered above.
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Whose fault it is that a request did not get the upstream's answer: what the audit record's
/// `failed` and the upstream error metrics count. Said by each reason and error, not read back
/// from a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client's request or credentials: a refusal, not a failure.
    Downstream,
    /// The route's upstream could not be reached, timed out, or answered what the proxy could
    /// not pass on.
    Upstream,
    /// The proxy could not do its part: the policy, the audit trail, an identity provider or the
    /// session store was unavailable, or signing failed.
    Internal,
}

impl Reason {
    /// Whose fault a denial with this reason is.
    pub const fn fault(self) -> Fault {
        match self {
            Reason::PolicyError
            | Reason::AssertionFailed
            | Reason::IdpUnavailable
            | Reason::SessionStoreUnavailable
            | Reason::AuditUnavailable
            | Reason::UpstreamCredentialUnavailable => Fault::Internal,
            _ => Fault::Downstream,
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

/// What the policy answered for a protected route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAnswer {
    Allow,
    Deny,
    /// The policy could not be evaluated.
    Failed,
    /// The policy allowed what the request names, but what it acts on could not be looked up.
    Unresolved,
}

/// The decision for a request that has a route. Pure: every input is plain data.
///
/// `public` allows anyone; `authenticated` allows any caller a route's provider vouched for;
/// `protected` also needs the policy's allow. A protected request the policy was not asked
/// about is a wiring mistake and fails closed.
pub fn decide(
    access: Access,
    principal: Option<&Principal>,
    policy: Option<PolicyAnswer>,
) -> (Decision, Option<Permit>) {
    let permit = || Some(Permit { _private: () });
    match (access, principal, policy) {
        (Access::Public, _, _) => (Decision::Allow(Reason::PublicRoute), permit()),
        (_, None, _) => (Decision::Deny(Reason::NoCredentials), None),
        (Access::Authenticated, Some(_), _) => (Decision::Allow(Reason::Authenticated), permit()),
        (Access::Protected, Some(_), Some(PolicyAnswer::Allow)) => {
            (Decision::Allow(Reason::Authorized), permit())
        }
        (Access::Protected, Some(_), Some(PolicyAnswer::Deny)) => (Decision::Deny(Reason::Forbidden), None),
        (Access::Protected, Some(_), Some(PolicyAnswer::Unresolved)) => {
            (Decision::Deny(Reason::ObjectUnresolved), None)
        }
        (Access::Protected, Some(_), Some(PolicyAnswer::Failed) | None) => {
            (Decision::Deny(Reason::PolicyError), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_the_client_s_fault_and_an_unavailable_dependency_is_the_proxy_s() {
        use Reason::*;
        let downstream = [
            NoCredentials,
            Forbidden,
            ObjectUnresolved,
            MalformedRequest,
            ClientClosed,
        ];
        let internal = [PolicyError, AssertionFailed, IdpUnavailable, AuditUnavailable];
        let more_internal = [SessionStoreUnavailable, UpstreamCredentialUnavailable];
        let cases = (downstream.map(|r| (r, Fault::Downstream)).into_iter()).chain(
            internal
                .into_iter()
                .chain(more_internal)
                .map(|r| (r, Fault::Internal)),
        );
        for (reason, fault) in cases {
            assert_eq!(reason.fault(), fault, "{reason}");
            // The client is told by the status class whose fault it was.
            assert_eq!(
                reason.status().is_server_error(),
                fault == Fault::Internal,
                "{reason}: {}",
                reason.status()
            );
        }
    }

    #[test]
    fn revoked_credentials_are_refused_with_401_as_the_client_s_matter() {
        assert_eq!(Reason::Revoked.as_str(), "revoked");
        assert_eq!(Reason::Revoked.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Reason::Revoked.fault(), Fault::Downstream);
    }

    #[test]
    fn a_protected_route_is_denied_without_a_permit() {
        let (decision, permit) = decide(Access::Protected, None, None);
        assert_eq!(decision, Decision::Deny(Reason::NoCredentials));
        assert!(permit.is_none());
        assert_eq!(decision.reason().status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_protected_route_needs_the_policy_s_allow_and_fails_closed_without_an_answer() {
        let principal = Principal {
            kind: crate::config::PrincipalKind::User,
            subject: "alice".into(),
            issuer: "https://idp".into(),
            provider: "idp".into(),
            email: None,
            name: None,
            groups: vec![],
            auth_method: crate::identity::AuthMethod::Bearer,
            client_id: None,
            token_id: None,
            session_id_hash: None,
        };
        let cases = [
            (Some(PolicyAnswer::Allow), Decision::Allow(Reason::Authorized)),
            (Some(PolicyAnswer::Deny), Decision::Deny(Reason::Forbidden)),
            (Some(PolicyAnswer::Failed), Decision::Deny(Reason::PolicyError)),
            (
                Some(PolicyAnswer::Unresolved),
                Decision::Deny(Reason::ObjectUnresolved),
            ),
            (None, Decision::Deny(Reason::PolicyError)),
        ];
        for (answer, expected) in cases {
            let (decision, permit) = decide(Access::Protected, Some(&principal), answer);
            assert_eq!(decision, expected);
            assert_eq!(permit.is_some(), matches!(expected, Decision::Allow(_)));
        }
        assert_eq!(Reason::Forbidden.status(), StatusCode::FORBIDDEN);
        let (decision, _) = decide(Access::Authenticated, Some(&principal), None);
        assert_eq!(decision, Decision::Allow(Reason::Authenticated));
    }

    #[test]
    fn a_public_route_is_allowed_with_a_permit() {
        let (decision, permit) = decide(Access::Public, None, None);
        assert_eq!(decision.as_str(), "allow");
        assert!(permit.is_some());
    }
}
