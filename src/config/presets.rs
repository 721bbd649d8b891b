//! Presets for well-known issuers, and the resolution of a provider's effective settings:
//! an explicit field wins, then the preset, then the global default.

use std::time::Duration;

use super::{IdentityProvider, Preset, PrincipalKind, TokenType};

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
    pub required_claims: Vec<String>,
    pub subject_claim: String,
    pub email_claim: String,
    pub name_claim: String,
    pub groups_claim: Option<String>,
    pub jwks_uri: Option<String>,
    pub ca: Option<std::path::PathBuf>,
    pub jwks_refresh: Duration,
    pub jwks_min_refetch: Duration,
}

struct Defaults {
    algorithms: &'static [&'static str],
    token_type: TokenType,
    principal_kind: Option<PrincipalKind>,
    groups: Option<&'static str>,
    audience_claim: &'static str,
}

const GENERIC: Defaults = Defaults {
    algorithms: &["RS256", "ES256"],
    token_type: TokenType::Access,
    principal_kind: None,
    groups: Some("groups"),
    audience_claim: "aud",
};

fn preset(p: Option<Preset>) -> Defaults {
    let Some(p) = p else { return GENERIC };
    match p {
        Preset::Okta | Preset::EntraId | Preset::AwsIdentityCenter => Defaults {
            algorithms: &["RS256"],
            ..GENERIC
        },
        // Cognito access tokens carry the app client in `client_id` and no `aud`.
        Preset::Cognito => Defaults {
            algorithms: &["RS256"],
            groups: Some("cognito:groups"),
            audience_claim: "client_id",
            ..GENERIC
        },
        // Google has no groups claim; hosted-domain users are told apart by `hd`.
        Preset::Google => Defaults {
            algorithms: &["RS256"],
            groups: None,
            ..GENERIC
        },
        Preset::Keycloak => Defaults {
            algorithms: &["RS256", "ES256", "PS256"],
            groups: Some("realm_access.roles"),
            ..GENERIC
        },
        // CI job tokens are ID tokens minted for an audience the job chose.
        Preset::GitlabCi => Defaults {
            algorithms: &["RS256"],
            token_type: TokenType::Id,
            principal_kind: Some(PrincipalKind::CiJob),
            groups: Some("namespace_path"),
            ..GENERIC
        },
        Preset::GithubActions => Defaults {
            algorithms: &["RS256"],
            token_type: TokenType::Id,
            principal_kind: Some(PrincipalKind::CiJob),
            groups: Some("repository_owner"),
            ..GENERIC
        },
        // Projected service-account tokens (Tekton task runs): sub is system:serviceaccount:NS:NAME.
        Preset::Kubernetes => Defaults {
            algorithms: &["RS256", "ES256"],
            token_type: TokenType::Any,
            principal_kind: Some(PrincipalKind::Service),
            groups: Some("kubernetes.io.namespace"),
            ..GENERIC
        },
    }
}

impl IdentityProvider {
    pub fn resolved(&self) -> ResolvedProvider {
        let d = preset(self.preset);
        let claims = &self.claims;
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
            required_claims: self.required_claims.clone(),
            subject_claim: claims.subject.clone().unwrap_or_else(|| "sub".into()),
            email_claim: claims.email.clone().unwrap_or_else(|| "email".into()),
            name_claim: claims.name.clone().unwrap_or_else(|| "name".into()),
            groups_claim: claims.groups.clone().or_else(|| d.groups.map(str::to_string)),
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
        assert_eq!(gitlab.leeway, Duration::from_secs(30));
    }

    #[test]
    fn without_a_preset_access_tokens_and_the_standard_claims_are_expected() {
        let plain = provider("[[identity_providers]]\nname='p'\nissuer='https://x'\naudiences=['a']");
        assert_eq!(plain.token_type, TokenType::Access);
        assert_eq!(plain.audience_claim, "aud");
        assert_eq!(plain.subject_claim, "sub");
        assert_eq!(plain.groups_claim.as_deref(), Some("groups"));
        assert_eq!(plain.principal_kind, None);
    }
}
