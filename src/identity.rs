//! Who a caller is, as every part of the proxy sees it: the principal a provider vouched for,
//! its kind, and how it proved itself. Shared vocabulary: authentication makes principals;
//! authorization, the audit trail, sessions and assertions read them.

pub use crate::config::PrincipalKind;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Bearer,
    Session,
}

impl AuthMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Bearer => "bearer",
            AuthMethod::Session => "session",
        }
    }
}

impl PrincipalKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Service => "service",
            PrincipalKind::CiJob => "ci_job",
        }
    }
}

/// The authenticated caller, as authorization and audit see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub subject: String,
    /// The issuer URL, exactly as in the token.
    pub issuer: String,
    /// The configured provider's name.
    pub provider: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub auth_method: AuthMethod,
    pub client_id: Option<String>,
    /// The token's `jti`, when it has one.
    pub token_id: Option<String>,
    /// A hash of the browser session id (sessions arrive with the browser path).
    pub session_id_hash: Option<String>,
}

impl Principal {
    /// A fixed signed-in user (alice of provider `idp`, a deployer) that the unit tests of the
    /// session store, the audit trail and the assertions share.
    #[cfg(test)]
    pub(crate) fn example() -> Principal {
        Principal {
            kind: PrincipalKind::User,
            subject: "alice".into(),
            issuer: "https://idp.example".into(),
            provider: "idp".into(),
            email: Some("alice@example.com".into()),
            name: None,
            groups: vec!["deployers".into()],
            auth_method: AuthMethod::Session,
            client_id: Some("web".into()),
            token_id: None,
            session_id_hash: None,
        }
    }
}
