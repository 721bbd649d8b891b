//! The stored form of a session and of a sign-in in progress: JSON with a version, written by
//! one replica and read by another, possibly of a newer or older release. Members a reader does
//! not know are ignored, so a release may add one; renaming or removing one needs a new version.
//! Secrets leave their `Secret` only here, on their way into the sealed value.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{PendingLogin, Session};
use crate::identity::{AuthMethod, Principal, PrincipalKind};
use crate::secret::Secret;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StoredPrincipal<'a> {
    kind: Cow<'a, str>,
    subject: Cow<'a, str>,
    issuer: Cow<'a, str>,
    provider: Cow<'a, str>,
    email: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    groups: Vec<Cow<'a, str>>,
    auth_method: Cow<'a, str>,
    client_id: Option<Cow<'a, str>>,
    token_id: Option<Cow<'a, str>>,
    session_id_hash: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct StoredSession<'a> {
    v: u32,
    #[serde(borrow)]
    principal: StoredPrincipal<'a>,
    /// Milliseconds since the Unix epoch, as every time here.
    created: u64,
    access_token: Option<Cow<'a, str>>,
    access_token_expires: Option<u64>,
    refresh_token: Option<Cow<'a, str>>,
    id_token: Option<Cow<'a, str>>,
    /// Added within version 1: older releases ignore it, and read without it it is `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct StoredLogin<'a> {
    v: u32,
    provider: Cow<'a, str>,
    pkce_verifier: Cow<'a, str>,
    nonce: Cow<'a, str>,
    return_to: Cow<'a, str>,
    redirect_url: Cow<'a, str>,
    binding: Cow<'a, str>,
}

fn millis(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn time(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

fn borrowed(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(Cow::Borrowed)
}

fn secret(s: &Option<Secret>) -> Option<Cow<'_, str>> {
    s.as_ref().map(|s| Cow::Borrowed(s.expose()))
}

fn kind(text: &str) -> Option<PrincipalKind> {
    [PrincipalKind::User, PrincipalKind::Service, PrincipalKind::CiJob]
        .into_iter()
        .find(|k| k.as_str() == text)
}

fn auth_method(text: &str) -> Option<AuthMethod> {
    [AuthMethod::Session, AuthMethod::Bearer]
        .into_iter()
        .find(|m| m.as_str() == text)
}

pub fn encode_session(s: &Session) -> Result<Vec<u8>, serde_json::Error> {
    let p = &s.principal;
    serde_json::to_vec(&StoredSession {
        v: VERSION,
        principal: StoredPrincipal {
            kind: Cow::Borrowed(p.kind.as_str()),
            subject: Cow::Borrowed(&p.subject),
            issuer: Cow::Borrowed(&p.issuer),
            provider: Cow::Borrowed(&p.provider),
            email: borrowed(&p.email),
            name: borrowed(&p.name),
            groups: p.groups.iter().map(|g| Cow::Borrowed(g.as_str())).collect(),
            auth_method: Cow::Borrowed(p.auth_method.as_str()),
            client_id: borrowed(&p.client_id),
            token_id: borrowed(&p.token_id),
            session_id_hash: borrowed(&p.session_id_hash),
        },
        created: millis(s.created),
        access_token: secret(&s.access_token),
        access_token_expires: s.access_token_expires.map(millis),
        refresh_token: secret(&s.refresh_token),
        id_token: secret(&s.id_token),
        sid: borrowed(&s.sid),
    })
}

/// The session, when `bytes` is a session of a version this release reads.
pub fn decode_session(bytes: &[u8]) -> Option<Session> {
    let s: StoredSession<'_> = serde_json::from_slice(bytes).ok()?;
    if s.v != VERSION {
        return None;
    }
    let p = s.principal;
    let owned = |c: Option<Cow<'_, str>>| c.map(Cow::into_owned);
    let principal = Principal {
        kind: kind(&p.kind)?,
        subject: p.subject.into_owned(),
        issuer: p.issuer.into_owned(),
        provider: p.provider.into_owned(),
        email: owned(p.email),
        name: owned(p.name),
        groups: p.groups.into_iter().map(Cow::into_owned).collect(),
        auth_method: auth_method(&p.auth_method)?,
        client_id: owned(p.client_id),
        token_id: owned(p.token_id),
        session_id_hash: owned(p.session_id_hash),
    };
    let secret = |c: Option<Cow<'_, str>>| c.map(Secret::new);
    Some(Session {
        principal: Arc::new(principal),
        created: time(s.created)?,
        access_token: secret(s.access_token),
        access_token_expires: match s.access_token_expires {
            Some(ms) => Some(time(ms)?),
            None => None,
        },
        refresh_token: secret(s.refresh_token),
        id_token: secret(s.id_token),
        sid: owned(s.sid),
    })
}

pub fn encode_login(l: &PendingLogin) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&StoredLogin {
        v: VERSION,
        provider: Cow::Borrowed(&l.provider),
        pkce_verifier: Cow::Borrowed(l.pkce_verifier.expose()),
        nonce: Cow::Borrowed(l.nonce.expose()),
        return_to: Cow::Borrowed(&l.return_to),
        redirect_url: Cow::Borrowed(&l.redirect_url),
        binding: Cow::Borrowed(&l.binding),
    })
}

pub fn decode_login(bytes: &[u8]) -> Option<PendingLogin> {
    let l: StoredLogin<'_> = serde_json::from_slice(bytes).ok()?;
    (l.v == VERSION).then(|| PendingLogin {
        provider: l.provider.into_owned(),
        pkce_verifier: Secret::new(l.pkce_verifier),
        nonce: Secret::new(l.nonce),
        return_to: l.return_to.into_owned(),
        redirect_url: l.redirect_url.into_owned(),
        binding: l.binding.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_session() -> Session {
        let mut principal = Principal::example();
        principal.kind = PrincipalKind::CiJob;
        principal.name = Some("Alice \"A\" Ø".into());
        principal.groups = vec!["a".into(), "b,c".into()];
        principal.session_id_hash = Some("0123456789abcdef".into());
        Session {
            principal: Arc::new(principal),
            created: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            access_token: Some(Secret::new("at")),
            access_token_expires: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_360_000)),
            refresh_token: Some(Secret::new("rt")),
            id_token: None,
            sid: Some("provider-session-1".into()),
        }
    }

    #[test]
    fn a_session_reads_back_as_it_was_written_principal_and_tokens_included() {
        let s = full_session();
        let back = decode_session(&encode_session(&s).unwrap()).unwrap();
        assert_eq!(back.principal, s.principal);
        assert_eq!(back.created, s.created);
        assert_eq!(back.access_token_expires, s.access_token_expires);
        assert_eq!(back.access_token, s.access_token);
        assert_eq!(back.refresh_token, s.refresh_token);
        assert_eq!(back.id_token, None);
        assert_eq!(back.sid, s.sid);
    }

    #[test]
    fn the_stored_form_is_stable_and_a_newer_release_s_extra_members_are_ignored() {
        let text = r#"{"v":1,"principal":{"kind":"user","subject":"alice","issuer":"https://idp.example",
            "provider":"idp","email":null,"name":null,"groups":["g"],"auth_method":"session",
            "client_id":null,"token_id":null,"session_id_hash":null,"added_later":1},
            "created":1000,"access_token":"at","access_token_expires":null,"refresh_token":null,
            "id_token":null,"also_added_later":{"x":1}}"#;
        let s = decode_session(text.as_bytes()).unwrap();
        assert_eq!(s.principal.subject, "alice");
        assert_eq!(s.created, UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(s.access_token.as_ref().map(Secret::expose), Some("at"));
        assert_eq!(s.sid, None, "a session written before `sid` was kept has none");
        let other_version = text.replacen(r#""v":1"#, r#""v":2"#, 1);
        assert!(decode_session(other_version.as_bytes()).is_none());
        let unknown_kind = text.replace(r#""kind":"user""#, r#""kind":"robot""#);
        assert!(decode_session(unknown_kind.as_bytes()).is_none());
    }

    #[test]
    fn a_sign_in_in_progress_reads_back_as_it_was_written() {
        let login = PendingLogin {
            provider: "idp".into(),
            pkce_verifier: Secret::new("verifier"),
            nonce: Secret::new("nonce"),
            return_to: "/a?b=c".into(),
            redirect_url: "https://app.example/.portcullis/callback".into(),
            binding: "abc".into(),
        };
        let back = decode_login(&encode_login(&login).unwrap()).unwrap();
        assert_eq!(back.pkce_verifier, login.pkce_verifier);
        assert_eq!(back.nonce, login.nonce);
        assert_eq!(
            (back.provider, back.return_to, back.redirect_url, back.binding),
            (login.provider, login.return_to, login.redirect_url, login.binding)
        );
    }
}
