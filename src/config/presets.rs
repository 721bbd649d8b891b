//! Presets for well-known issuers, and the resolution of a provider's effective settings:
//! an explicit field wins, then the preset, then the global default.
//!
//! Each preset names the claim that identifies a caller *immutably* at that vendor (Okta's
//! `uid`, Entra's `oid` within `tid`, GitLab's and GitHub's numeric ids, a Kubernetes service
//! account's `uid`), never a name someone else could register or rename: a subject is
//! `<kind>:<provider>/<that value>` (docs/authentication.md, "The trust model").

use std::collections::BTreeMap;
use std::time::Duration;

use super::claims::ClaimTemplate;
use super::{BoundValue, IdentityProvider, Preset, PrincipalKind, TokenType};

/// A provider with every setting decided.
#[derive(Debug, Clone)]
pub struct ResolvedProvider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub audience_claim: String,
    pub algorithms: Vec<String>,
    pub leeway: Duration,
    pub token_type: TokenType,
    pub principal_kind: Option<PrincipalKind>,
    /// How a token says it is a service's own (when `principal_kind` is not set).
    pub service_when: ServiceWhen,
    pub required_claims: Vec<String>,
    pub subject: ClaimTemplate,
    pub email_claim: String,
    pub name_claim: ClaimTemplate,
    pub groups_claim: Option<String>,
    pub group_templates: Vec<ClaimTemplate>,
    pub client: ClaimTemplate,
    pub bound_claims: BTreeMap<String, BoundValue>,
    pub trust_unverified_email: bool,
    pub require_at_jwt: bool,
    pub jwks_uri: Option<String>,
    pub ca: Option<std::path::PathBuf>,
    pub jwks_refresh: Duration,
    pub jwks_min_refetch: Duration,
}

/// When a token (without an explicit `principal_kind`) identifies a service rather than a
/// person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceWhen {
    /// The `sub` claim is the client's own id (client credentials).
    SubIsClient,
    /// This claim has this value (Entra's `idtyp: app`).
    ClaimIs(&'static str, &'static str),
    /// One of these claims is present (Keycloak service-account tokens carry `client_id`, or
    /// `clientId` before Keycloak 25).
    ClaimPresent(&'static [&'static str]),
}

struct Defaults {
    algorithms: &'static [&'static str],
    token_type: TokenType,
    principal_kind: Option<PrincipalKind>,
    service_when: ServiceWhen,
    subject: &'static str,
    name: &'static str,
    groups: Option<&'static str>,
    group_templates: &'static [&'static str],
    client: &'static str,
    audience_claim: &'static str,
}

const GENERIC: Defaults = Defaults {
    algorithms: &["RS256", "ES256"],
    token_type: TokenType::Access,
    principal_kind: None,
    service_when: ServiceWhen::SubIsClient,
    subject: "sub",
    name: "name",
    groups: Some("groups"),
    group_templates: &[],
    client: "client_id|azp",
    audience_claim: "aud",
};

fn preset(p: Option<Preset>) -> Defaults {
    let Some(p) = p else { return GENERIC };
    match p {
        // Access tokens carry the login (renamable) in `sub` and the user id in `uid`; ID tokens
        // carry the user id in `sub`. Client-credentials tokens have no `uid`: `sub` is the client.
        Preset::Okta => Defaults {
            algorithms: &["RS256"],
            subject: "uid|sub",
            name: "name|sub",
            client: "cid|azp",
            ..GENERIC
        },
        // `email` and `preferred_username` are mutable and unverified at Entra ("nOAuth"): the
        // object id within the tenant is the identity. App-only tokens say `idtyp: app`.
        Preset::EntraId => Defaults {
            algorithms: &["RS256"],
            subject: "{tid}/{oid}",
            name: "name|preferred_username",
            client: "azp|appid",
            service_when: ServiceWhen::ClaimIs("idtyp", "app"),
            ..GENERIC
        },
        // The Identity Store user id (`sub`) within the instance the issuer names; the
        // application is the audience, so no client claim is read.
        Preset::AwsIdentityCenter => Defaults {
            algorithms: &["RS256"],
            groups: None,
            client: "client_id",
            ..GENERIC
        },
        // Cognito access tokens carry the app client in `client_id` and no `aud`.
        Preset::Cognito => Defaults {
            algorithms: &["RS256"],
            groups: Some("cognito:groups"),
            name: "username|cognito:username",
            audience_claim: "client_id",
            ..GENERIC
        },
        // Google's verifiable JWTs are ID tokens (its access tokens are opaque); `hd`, the
        // Workspace domain, is verified by Google and becomes a group.
        Preset::Google => Defaults {
            algorithms: &["RS256"],
            token_type: TokenType::Id,
            groups: None,
            group_templates: &["domain:{hd}"],
            client: "azp",
            ..GENERIC
        },
        Preset::Keycloak => Defaults {
            algorithms: &["RS256", "ES256", "PS256"],
            groups: Some("realm_access.roles"),
            name: "preferred_username|name",
            client: "azp",
            service_when: ServiceWhen::ClaimPresent(&["client_id", "clientId"]),
            ..GENERIC
        },
        // CI job tokens are ID tokens minted for an audience the job chose. GitLab's `sub` and
        // `namespace_path` are paths anyone may register on a shared instance once the original
        // is renamed or deleted: the job is its project id and ref, its groups the numeric ids.
        Preset::GitlabCi => Defaults {
            algorithms: &["RS256"],
            token_type: TokenType::Id,
            principal_kind: Some(PrincipalKind::CiJob),
            subject: "project:{project_id}:{ref_type}:{ref}",
            name: "project_path",
            groups: None,
            group_templates: &[
                "namespace:{namespace_id}",
                "project:{project_id}",
                "project:{project_id}:environment:{environment}",
            ],
            ..GENERIC
        },
        // The same for GitHub: `repository` and `repository_owner` are names (repo-jacking).
        Preset::GithubActions => Defaults {
            algorithms: &["RS256"],
            token_type: TokenType::Id,
            principal_kind: Some(PrincipalKind::CiJob),
            subject: "repository:{repository_id}:{ref}",
            name: "repository",
            groups: None,
            group_templates: &[
                "owner:{repository_owner_id}",
                "repository:{repository_id}",
                "repository:{repository_id}:environment:{environment}",
            ],
            ..GENERIC
        },
        // Projected service-account tokens (Tekton task runs). The account's uid changes when it
        // is deleted and created again; the token carries no namespace uid, so no group is made
        // from the namespace name (add one with `claims.group_templates` knowingly).
        Preset::Kubernetes => Defaults {
            algorithms: &["RS256", "ES256"],
            token_type: TokenType::Any,
            principal_kind: Some(PrincipalKind::Service),
            subject: "{kubernetes.io.namespace}/{kubernetes.io.serviceaccount.name}/{kubernetes.io.serviceaccount.uid}",
            name: "sub",
            groups: None,
            ..GENERIC
        },
    }
}

/// A template from the configuration, or the preset's; one that does not parse (validation
/// reports it with its key path) reads the text as a claim name, which fails closed.
fn template(configured: Option<&String>, default: &str) -> ClaimTemplate {
    let text = configured.map_or(default, String::as_str);
    ClaimTemplate::parse(text).unwrap_or_else(|_| ClaimTemplate::claim(text))
}

impl IdentityProvider {
    pub fn resolved(&self) -> ResolvedProvider {
        let d = preset(self.preset);
        let claims = &self.claims;
        let group_templates = match &claims.group_templates {
            Some(list) => list.iter().map(|t| template(Some(t), t)).collect(),
            None => d.group_templates.iter().map(|t| template(None, t)).collect(),
        };
        ResolvedProvider {
            name: self.name.clone(),
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            audience_claim: self
                .audience_claim
                .clone()
                .unwrap_or_else(|| d.audience_claim.to_string()),
            algorithms: self
                .algorithms
                .clone()
                .unwrap_or_else(|| d.algorithms.iter().map(|a| a.to_string()).collect()),
            leeway: self.leeway.unwrap_or(Duration::from_secs(30)),
            token_type: self.token_type.unwrap_or(d.token_type),
            principal_kind: self.principal_kind.or(d.principal_kind),
            service_when: d.service_when,
            required_claims: self.required_claims.clone(),
            subject: template(claims.subject.as_ref(), d.subject),
            email_claim: claims.email.clone().unwrap_or_else(|| "email".into()),
            name_claim: template(claims.name.as_ref(), d.name),
            // An explicit group template list replaces the preset's groups claim too, unless
            // that claim is named as well.
            groups_claim: match (&claims.groups, &claims.group_templates) {
                (Some(g), _) => Some(g.clone()),
                (None, Some(_)) => None,
                (None, None) => d.groups.map(str::to_string),
            },
            group_templates,
            client: template(claims.client.as_ref(), d.client),
            bound_claims: self.bound_claims.clone(),
            trust_unverified_email: self.trust_unverified_email,
            require_at_jwt: self.require_at_jwt,
            jwks_uri: self.jwks_uri.clone(),
            ca: self.ca.clone(),
            jwks_refresh: self.jwks_refresh.unwrap_or(Duration::from_secs(300)),
            jwks_min_refetch: self.jwks_min_refetch.unwrap_or(Duration::from_secs(30)),
        }
    }
}

/// Algorithms whose keys come from the issuer's JWKS.
pub const ASYMMETRIC_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Algorithms that need the operator's shared secret (`hmac_secret_env` / `hmac_secret_file`).
pub const HMAC_ALGORITHMS: [&str; 3] = ["HS256", "HS384", "HS512"];

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(toml: &str) -> ResolvedProvider {
        let config = crate::config::parse(toml).unwrap();
        config.identity_providers[0].resolved()
    }

    #[test]
    fn a_preset_fills_defaults_and_an_explicit_field_overrides_it() {
        let cognito = provider(
            "[[identity_providers]]\nname='c'\npreset='cognito'\nissuer='https://x'\naudiences=['a']",
        );
        assert_eq!(cognito.audience_claim, "client_id");
        assert_eq!(cognito.groups_claim.as_deref(), Some("cognito:groups"));
        assert_eq!(cognito.algorithms, ["RS256"]);

        let gitlab = provider(
            "[[identity_providers]]\nname='g'\npreset='gitlab_ci'\nissuer='https://gitlab.com'\naudiences=['a']\n\
             token_type='any'\nclaims={groups='project_path'}",
        );
        assert_eq!(gitlab.token_type, TokenType::Any);
        assert_eq!(gitlab.principal_kind, Some(PrincipalKind::CiJob));
        assert_eq!(gitlab.groups_claim.as_deref(), Some("project_path"));
        assert_eq!(
            gitlab.subject.to_string(),
            "project:{project_id}:{ref_type}:{ref}"
        );
        assert_eq!(gitlab.group_templates.len(), 3);
        assert_eq!(gitlab.leeway, Duration::from_secs(30));
    }

    #[test]
    fn without_a_preset_access_tokens_and_the_standard_claims_are_expected() {
        let plain = provider("[[identity_providers]]\nname='p'\nissuer='https://x'\naudiences=['a']");
        assert_eq!(plain.token_type, TokenType::Access);
        assert_eq!(plain.audience_claim, "aud");
        assert_eq!(plain.subject.to_string(), "sub");
        assert_eq!(plain.client.to_string(), "client_id|azp");
        assert!(!plain.trust_unverified_email && plain.bound_claims.is_empty());
        assert_eq!(plain.groups_claim.as_deref(), Some("groups"));
        assert_eq!(plain.principal_kind, None);
    }
}
