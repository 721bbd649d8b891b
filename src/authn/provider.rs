//! One identity provider: its resolved settings, its keys, and the verification of a token
//! against them. Only this module decodes tokens.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::claims;
use super::jwks::Jwks;
use crate::config::{ResolvedProvider, ServiceWhen, TokenType};
use crate::decision::Reason;
use crate::identity::{AuthMethod, Principal, PrincipalKind};
use crate::outbound::HttpsClient;
use crate::secret::Secret;

pub struct Provider {
    pub config: ResolvedProvider,
    /// One validation per configured algorithm (jsonwebtoken wants a single key family per
    /// validation), built once here rather than on every token.
    validations: Vec<(Algorithm, Validation)>,
    pub keys: Arc<Jwks>,
    /// The operator's shared secret for HS256/384/512; never a key from the JWKS.
    hmac: Option<DecodingKey>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("issuer", &self.config.issuer)
            .finish()
    }
}

/// What the token's header says, read before any key is chosen.
#[derive(serde::Deserialize)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// Extensions the issuer says a verifier must understand (RFC 7515 §4.1.11). Portcullis
    /// understands none, so a token that names any is refused.
    pub crit: Option<Value>,
}

/// A verified token: who, and until when (`exp`, seconds since the epoch).
pub struct Verified {
    pub principal: Arc<Principal>,
    pub exp: u64,
    /// `iat`, when the token says (seconds since the epoch): a revocation refuses tokens
    /// issued before it, and a token that does not say when it was issued.
    pub iat: Option<u64>,
}

/// Why a token was refused: a reason, and for `claims_not_bound` the claim (its name only: the
/// value may be a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub claim: Option<Arc<str>>,
    /// Whom the credential named when it was refused after it verified (`revoked`): for the
    /// record only, never a caller the request acts as.
    pub named: Option<Arc<Principal>>,
    /// For `wrong_issuer`: the issuer the token named (unverified), for the record.
    pub issuer: Option<Arc<str>>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal {
            reason,
            claim: None,
            named: None,
            issuer: None,
        }
    }
}

impl Refusal {
    /// A token from an issuer none of the route's providers has.
    pub fn wrong_issuer(issuer: &str) -> Self {
        Refusal {
            issuer: Some(Arc::from(issuer)),
            ..Reason::WrongIssuer.into()
        }
    }

    /// A verified credential whose subject, session or provider session was revoked.
    pub fn revoked(named: Arc<Principal>) -> Self {
        Refusal {
            named: Some(named),
            ..Reason::Revoked.into()
        }
    }
}

impl Provider {
    pub fn new(config: ResolvedProvider, client: HttpsClient, hmac_secret: Option<Secret>) -> Self {
        let validations = config
            .algorithms
            .iter()
            .filter_map(|a| a.parse().ok())
            .map(|alg| (alg, validation(&config, alg)))
            .collect();
        let keys = Arc::new(Jwks::new(
            &config.issuer,
            config.jwks_uri.clone(),
            client,
            config.jwks_refresh,
            config.jwks_min_refetch,
        ));
        Provider {
            config,
            validations,
            keys,
            hmac: hmac_secret.map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
        }
    }

    /// Whether any configured algorithm takes its keys from the issuer's JWKS.
    pub fn needs_jwks(&self) -> bool {
        self.validations
            .iter()
            .any(|(alg, _)| alg.family() != AlgorithmFamily::Hmac)
    }

    pub async fn verify(&self, token: &str, header: &Header) -> Result<Verified, Refusal> {
        let c = &self.config;
        // Checked before the signature: what the token says it is decides whether it may be
        // used here at all.
        if header.crit.is_some() {
            return Err(Reason::UnknownCriticalHeader.into());
        }
        if !typ_accepted(header.typ.as_deref(), c.token_type, c.require_at_jwt) {
            return Err(Reason::WrongTokenType.into());
        }
        // The algorithm comes from config; the token only says which of those it used.
        let (alg, validation) = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .and_then(|alg| self.validations.iter().find(|(a, _)| *a == alg))
            .ok_or(Reason::AlgNotAllowed)?;
        let jwks_key;
        let key = if alg.family() == AlgorithmFamily::Hmac {
            self.hmac.as_ref().ok_or(Reason::AlgNotAllowed)?
        } else {
            jwks_key = self.keys.key(header.kid.as_deref(), *alg).await?;
            &jwks_key.decoding
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::InvalidSignature => Reason::BadSignature,
            ErrorKind::ExpiredSignature => Reason::Expired,
            ErrorKind::ImmatureSignature => Reason::NotYetValid,
            ErrorKind::InvalidIssuer => Reason::WrongIssuer,
            ErrorKind::InvalidAudience => Reason::WrongAudience,
            ErrorKind::InvalidAlgorithm => Reason::AlgNotAllowed,
            _ => Reason::Malformed,
        })?;
        let claims = data.claims;
        issued_in_the_past(&claims, c.leeway)?;
        // RFC 7519: `sub` is a StringOrURI, whatever a template later makes of other claims.
        if claims.get("sub").is_some_and(|s| !s.is_string()) {
            return Err(Reason::Malformed.into());
        }

        if c.audience_claim != "aud" {
            let aud = claims::string(&claims, &c.audience_claim).map_err(|()| Reason::Malformed)?;
            if !aud.is_some_and(|a| c.audiences.contains(&a)) {
                return Err(Reason::WrongAudience.into());
            }
        }
        if c.required_claims
            .iter()
            .any(|name| claims::lookup(&claims, name).is_none())
        {
            return Err(Reason::Malformed.into());
        }
        let id_token = looks_like_id_token(header.typ.as_deref(), &claims);
        match c.token_type {
            TokenType::Access if id_token => return Err(Reason::WrongTokenType.into()),
            TokenType::Id if is_access_token(header.typ.as_deref(), &claims) => {
                return Err(Reason::WrongTokenType.into());
            }
            _ => {}
        }
        if let Some(claim) = claims::unbound(&claims, &c.bound_claims) {
            return Err(Refusal {
                claim: Some(Arc::from(claim)),
                ..Reason::ClaimsNotBound.into()
            });
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(Reason::Malformed)?;
        let principal = principal_from_claims(&self.config, &claims, AuthMethod::Bearer)?;
        // Checked a number by `issued_in_the_past`; a fraction counts as the second it is in.
        let iat = claims
            .get("iat")
            .and_then(Value::as_f64)
            .filter(|t| *t >= 0.0)
            .map(|t| t as u64);
        Ok(Verified {
            principal: Arc::new(principal),
            exp,
            iat,
        })
    }
}

/// The JOSE `typ` values a provider's bearer tokens may carry: none, `JWT` or RFC 9068's
/// `at+jwt` (only `at+jwt` with `require_at_jwt`; never for ID-token providers). Any other
/// explicit type (`logout+jwt`, `secevent+jwt`, `id_token+jwt`, `refresh+jwt`, …) says the
/// token is meant for something else (RFC 8725 §3.11).
fn typ_accepted(typ: Option<&str>, token_type: TokenType, require_at_jwt: bool) -> bool {
    let typ = typ.map(|t| {
        let lower = t.to_ascii_lowercase();
        match lower.strip_prefix("application/") {
            Some(rest) => rest.to_string(),
            None => lower,
        }
    });
    match typ.as_deref() {
        None | Some("jwt") => !require_at_jwt,
        Some("at+jwt") => token_type != TokenType::Id,
        Some(_) => false,
    }
}

/// `iat`, when present, is a NumericDate no later than now plus the leeway: a token "issued"
/// in the future was not issued by a clock anyone trusts.
fn issued_in_the_past(claims: &Map<String, Value>, leeway: std::time::Duration) -> Result<(), Reason> {
    let Some(iat) = claims.get("iat") else {
        return Ok(());
    };
    let iat = iat.as_f64().ok_or(Reason::Malformed)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if iat > now + leeway.as_secs_f64() {
        return Err(Reason::IssuedInFuture);
    }
    Ok(())
}

/// What a token signed with `alg` must satisfy: issuer, audience (unless another claim carries
/// it), expiry and not-before with the leeway, and the claims every token must have.
fn validation(c: &ResolvedProvider, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = c.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[c.issuer.as_str()]);
    if c.audience_claim == "aud" {
        validation.set_audience(&c.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    } else {
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    }
    validation
}

/// The principal a provider's verified claims describe (bearer token or ID token alike): its
/// subject, client and groups as the provider's claim templates read them, and its email only
/// when the provider verified it.
pub fn principal_from_claims(
    c: &ResolvedProvider,
    claims: &Map<String, Value>,
    auth_method: AuthMethod,
) -> Result<Principal, Reason> {
    let text = |path: &str| claims::string(claims, path).map_err(|()| Reason::Malformed);
    let render = |t| claims::render(t, claims).map_err(|()| Reason::Malformed);
    let subject = render(&c.subject)?
        .filter(|s| !s.chars().any(char::is_control))
        .ok_or(Reason::Malformed)?;
    let client_id = render(&c.client)?;
    let kind = c.principal_kind.unwrap_or_else(|| {
        if is_service(c.service_when, claims, client_id.as_deref()) {
            PrincipalKind::Service
        } else {
            PrincipalKind::User
        }
    });
    let mut groups = match &c.groups_claim {
        Some(path) => claims::groups(claims, path).map_err(|()| Reason::Malformed)?,
        None => Vec::new(),
    };
    for template in &c.group_templates {
        if let Some(group) = render(template)?
            && !groups.contains(&group)
        {
            groups.push(group);
        }
    }
    let email = text(&c.email_claim)?.filter(|_| c.trust_unverified_email || claims::email_verified(claims));
    Ok(Principal {
        kind,
        subject,
        issuer: c.issuer.clone(),
        provider: c.name.clone(),
        email,
        name: render(&c.name_claim)?,
        groups,
        auth_method,
        client_id,
        token_id: text("jti")?,
        session_id_hash: None,
    })
}

fn is_service(rule: ServiceWhen, claims: &Map<String, Value>, client_id: Option<&str>) -> bool {
    match rule {
        ServiceWhen::SubIsClient => {
            client_id.is_some() && claims.get("sub").and_then(Value::as_str) == client_id
        }
        ServiceWhen::ClaimIs(name, value) => {
            claims::lookup(claims, name).and_then(Value::as_str) == Some(value)
        }
        ServiceWhen::ClaimPresent(names) => names
            .iter()
            .any(|name| claims::lookup(claims, name).is_some_and(|v| !v.is_null())),
    }
}

/// ID tokens announce themselves by claims access tokens do not carry (`nonce`, `at_hash`,
/// `c_hash`, Cognito's `token_use: id`); an RFC 9068 `typ: at+jwt` is always an access token.
fn looks_like_id_token(typ: Option<&str>, claims: &Map<String, Value>) -> bool {
    if typ.is_some_and(is_at_jwt) {
        return false;
    }
    ["nonce", "at_hash", "c_hash"]
        .iter()
        .any(|k| claims.contains_key(*k))
        || claims.get("token_use").and_then(Value::as_str) == Some("id")
}

fn is_access_token(typ: Option<&str>, claims: &Map<String, Value>) -> bool {
    typ.is_some_and(is_at_jwt) || claims.get("token_use").and_then(Value::as_str) == Some("access")
}

fn is_at_jwt(typ: &str) -> bool {
    typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
}

/// The event a back-channel logout token carries (OpenID Connect Back-Channel Logout 1.0 §2.4).
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How old (`iat`) a logout token may be, beyond the leeway: providers send them at once.
pub const LOGOUT_TOKEN_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(120);

/// A verified back-channel logout token: the provider session (`sid`) or the subject whose
/// sessions end, and its `jti` (refused the second time).
#[derive(Debug)]
pub struct LogoutToken {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
}

/// Why a logout token was refused: what the answer's `error_description` says, and the claim
/// at fault (its name only) when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoutRefusal {
    pub claim: Option<&'static str>,
    pub why: &'static str,
}

impl Provider {
    /// Verifies a back-channel logout token as OpenID Connect Back-Channel Logout 1.0 §2.6
    /// requires: signed by one of the provider's keys with a configured algorithm (never
    /// `none`, never HMAC), `iss` the provider, `aud` this proxy's client id, `iat` within the
    /// leeway and not older than [`LOGOUT_TOKEN_MAX_AGE`], `exp` if present, a `jti`, the
    /// logout event as an object in `events`, a `sid` and/or `sub`, and no `nonce` (which
    /// would make it an ID token). `typ` may be `logout+jwt`, `JWT` or absent.
    pub async fn verify_logout_token(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<LogoutToken, LogoutRefusal> {
        let refuse = |claim, why| LogoutRefusal { claim, why };
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refuse(None, "not a signed JWT"));
        };
        let header: Header = claims::jws_part(h).map_err(|_| refuse(None, "the header is malformed"))?;
        claims::jws_part::<Map<String, Value>>(p)
            .map_err(|_| refuse(None, "the claims are malformed or name a member twice"))?;
        if header.crit.is_some() {
            return Err(refuse(None, "the header lists crit extensions"));
        }
        let typ = header.typ.as_deref().map(|t| {
            let lower = t.to_ascii_lowercase();
            lower
                .strip_prefix("application/")
                .map_or(lower.clone(), str::to_string)
        });
        if !matches!(typ.as_deref(), None | Some("jwt" | "logout+jwt")) {
            return Err(refuse(None, "the token type is not logout+jwt"));
        }
        let alg = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|alg| alg.family() != AlgorithmFamily::Hmac)
            .filter(|alg| self.validations.iter().any(|(a, _)| a == alg))
            .ok_or(refuse(None, "the algorithm is not accepted"))?;
        let key = self
            .keys
            .key(header.kid.as_deref(), alg)
            .await
            .map_err(|_| refuse(None, "no key of the provider verifies it"))?;
        let c = &self.config;
        let mut validation = Validation::new(alg);
        validation.leeway = c.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[c.issuer.as_str()]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["iss", "aud", "iat"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => refuse(None, "the signature does not verify"),
                ErrorKind::ExpiredSignature => refuse(Some("exp"), "the token has expired"),
                ErrorKind::ImmatureSignature => refuse(Some("nbf"), "the token is not valid yet"),
                ErrorKind::InvalidIssuer => refuse(Some("iss"), "the issuer is not the provider"),
                ErrorKind::InvalidAudience => refuse(Some("aud"), "the audience is not this client"),
                ErrorKind::MissingRequiredClaim(_) => refuse(None, "iss, aud and iat are required"),
                _ => refuse(None, "the token is malformed"),
            })?
            .claims;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let iat = claims
            .get("iat")
            .and_then(Value::as_f64)
            .ok_or(refuse(Some("iat"), "iat is not a number"))?;
        let leeway = c.leeway.as_secs_f64();
        if iat > now + leeway || iat + LOGOUT_TOKEN_MAX_AGE.as_secs_f64() + leeway < now {
            return Err(refuse(Some("iat"), "the token was not issued just now"));
        }
        if claims.contains_key("nonce") {
            return Err(refuse(Some("nonce"), "a logout token carries no nonce"));
        }
        let event = claims
            .get("events")
            .and_then(Value::as_object)
            .and_then(|events| events.get(LOGOUT_EVENT));
        if !event.is_some_and(Value::is_object) {
            return Err(refuse(
                Some("events"),
                "events does not hold the back-channel logout event",
            ));
        }
        let name = |claim: &'static str| -> Result<Option<String>, LogoutRefusal> {
            match claims.get(claim) {
                None => Ok(None),
                Some(Value::String(s)) if crate::session::acceptable_name(s) => Ok(Some(s.clone())),
                Some(_) => Err(refuse(Some(claim), "a claim is not a usable string")),
            }
        };
        let jti = name("jti")?.ok_or(refuse(Some("jti"), "jti is required"))?;
        let (sub, sid) = (name("sub")?, name("sid")?);
        if sub.is_none() && sid.is_none() {
            return Err(refuse(Some("sid"), "neither sid nor sub says whose sessions end"));
        }
        Ok(LogoutToken { sub, sid, jti })
    }
}
