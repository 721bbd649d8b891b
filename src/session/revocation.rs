//! Deny entries: what has been revoked, held in every replica's memory so that a request is
//! checked against them without a round trip.
//!
//! An entry is a "revoked before" mark: sessions that began, and bearer tokens issued (`iat`),
//! before the mark are refused; whatever signs in or is issued afterwards is not. Marks are
//! scoped to the provider that vouched for the name (a subject means something only with its
//! provider), and each lives as long as anything it refuses could still be valid: the session
//! lifetime, or the longest a bearer token may live (see [`Revocation::ttl`]). With the Redis
//! store, entries are kept in Redis (one hash, never evicted) and every replica's copy is kept
//! current by pub/sub (`redis.rs`); with the memory store they exist in this process only.
//!
//! Untrusted input: the names (subjects, `sid`s) come from tokens; they are compared, never
//! interpreted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use super::Session;

/// What a deny entry refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A person's (a subject's) browser sessions with one provider.
    SessionsOf,
    /// A subject of one provider everywhere: its browser sessions and its bearer tokens.
    Subject,
    /// The sessions of one provider session (the ID token's `sid`): back-channel logout.
    ProviderSession,
    /// Every browser session, whoever it belongs to.
    AllSessions,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::SessionsOf => "sessions_of",
            Scope::Subject => "subject",
            Scope::ProviderSession => "sid",
            Scope::AllSessions => "all_sessions",
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        [
            Scope::SessionsOf,
            Scope::Subject,
            Scope::ProviderSession,
            Scope::AllSessions,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One revocation: sessions and tokens of `name` (a subject or a `sid`) at `provider` from
/// before `before` are refused until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub scope: Scope,
    /// The provider's configured name; empty for [`Scope::AllSessions`].
    pub provider: String,
    /// The subject or `sid`; empty for [`Scope::AllSessions`].
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub before: u64,
    /// Milliseconds since the Unix epoch: after this, nothing the entry refuses is valid anyway.
    pub expires: u64,
}

impl Revocation {
    /// A revocation made now, kept for `ttl`.
    pub fn now(scope: Scope, provider: &str, name: &str, ttl: Duration) -> Revocation {
        let before = now_ms();
        Revocation {
            scope,
            provider: if scope == Scope::AllSessions {
                String::new()
            } else {
                provider.to_string()
            },
            name: if scope == Scope::AllSessions {
                String::new()
            } else {
                name.to_string()
            },
            before,
            expires: before.saturating_add(millis(ttl)),
        }
    }

    /// How long an entry of `scope` must be kept: as long as the longest session
    /// (`session_lifetime`, counted from sign-in), and for a subject also as long as the longest
    /// bearer token (`token_lifetime`) plus the clock skew allowed (`leeway`), so that nothing
    /// it refuses outlives it.
    pub fn ttl(
        scope: Scope,
        session_lifetime: Duration,
        token_lifetime: Duration,
        leeway: Duration,
    ) -> Duration {
        match scope {
            Scope::Subject => session_lifetime.max(token_lifetime + leeway),
            _ => session_lifetime,
        }
    }

    /// The entry's name in the shared store: scope, provider and name, one per line (names hold
    /// no control characters: subjects are refused with them, `sid`s are checked).
    pub fn field(&self) -> String {
        field(self.scope, &self.provider, &self.name)
    }

    /// The entry's value in the shared store.
    pub fn value(&self) -> String {
        format!("{} {}", self.before, self.expires)
    }

    /// An entry read back from the shared store (its field and value).
    pub fn parse(field: &str, value: &str) -> Option<Revocation> {
        let mut parts = field.splitn(3, '\n');
        let scope = Scope::parse(parts.next()?)?;
        let provider = parts.next()?.to_string();
        let name = parts.next()?.to_string();
        let (before, expires) = value.split_once(' ')?;
        Some(Revocation {
            scope,
            provider,
            name,
            before: before.parse().ok()?,
            expires: expires.parse().ok()?,
        })
    }
}

fn field(scope: Scope, provider: &str, name: &str) -> String {
    format!("{}\n{provider}\n{name}", scope.as_str())
}

/// A name that may be put in a deny entry: not empty, no control characters, bounded.
pub fn acceptable_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 1024 && !name.chars().any(char::is_control)
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    before: u64,
    expires: u64,
}

/// Told of each entry that comes into force in this replica's copy.
type Observer = Box<dyn Fn(&Revocation) + Send + Sync>;

/// This replica's copy of the deny list. Reads are lock-free (the list is replaced whole on
/// each change: revocations are rare, checks are on every request).
#[derive(Default)]
pub struct Revocations {
    entries: ArcSwap<HashMap<String, Mark>>,
    /// How many changes were applied: lets tests and the subscriber see progress.
    changes: AtomicU64,
    /// Whether a whole list was loaded: the entries of the first load were in force before
    /// this replica started, and are not news.
    loaded: AtomicBool,
    /// The list lives in a shared store: until it was read once, what it holds is unknown.
    shared: bool,
    observer: OnceLock<Observer>,
}

impl Revocations {
    /// A list kept in this process only (the memory store): complete from the start.
    pub fn new() -> Arc<Revocations> {
        Arc::new(Revocations::default())
    }

    /// A copy of a list kept in a shared store: unknown until read once ([`Self::unknown`]).
    pub fn shared() -> Arc<Revocations> {
        Arc::new(Revocations {
            shared: true,
            ..Revocations::default()
        })
    }

    /// Has `observer` told of every entry that comes into force from now on (a new entry, or
    /// an entry whose mark moved later), once per replica: each replica records the revocations
    /// it enforces, whichever replica or command made them. Set once, at start-up.
    pub fn observe(&self, observer: impl Fn(&Revocation) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(observer));
    }

    /// Adds (or widens) an entry: the later mark and the later expiry win.
    pub fn apply(&self, r: &Revocation) {
        let previous = self.entries.rcu(|current| {
            let mut next: HashMap<String, Mark> = current
                .iter()
                .filter(|(_, m)| m.expires > now_ms())
                .map(|(k, m)| (k.clone(), *m))
                .collect();
            let mark = next.entry(r.field()).or_insert(Mark {
                before: r.before,
                expires: r.expires,
            });
            mark.before = mark.before.max(r.before);
            mark.expires = mark.expires.max(r.expires);
            next
        });
        self.changes.fetch_add(1, Ordering::Relaxed);
        if r.expires > now_ms() && previous.get(&r.field()).is_none_or(|m| m.before < r.before) {
            self.tell(r);
        }
    }

    /// Replaces the whole list (a full reload from the shared store).
    pub fn replace(&self, all: impl IntoIterator<Item = Revocation>) {
        let now = now_ms();
        let mut next: HashMap<String, Mark> = HashMap::new();
        for r in all.into_iter().filter(|r| r.expires > now) {
            let mark = next.entry(r.field()).or_insert(Mark {
                before: r.before,
                expires: r.expires,
            });
            mark.before = mark.before.max(r.before);
            mark.expires = mark.expires.max(r.expires);
        }
        let previous = self.entries.swap(Arc::new(next.clone()));
        self.changes.fetch_add(1, Ordering::Relaxed);
        if !self.loaded.swap(true, Ordering::Relaxed) {
            return;
        }
        // Entries that came into force while this replica was not listening.
        for (field, mark) in &next {
            if previous.get(field).is_none_or(|m| m.before < mark.before)
                && let Some(r) = Revocation::parse(field, &format!("{} {}", mark.before, mark.expires))
            {
                self.tell(&r);
            }
        }
    }

    fn tell(&self, r: &Revocation) {
        if let Some(observer) = self.observer.get() {
            observer(r);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.load().len()
    }

    /// A shared list this replica has never read: it does not know what was revoked before
    /// it started, so nothing can be checked against it (fail closed) and it takes no traffic.
    pub fn unknown(&self) -> bool {
        self.shared && !self.loaded.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mark for `(scope, provider, name)`, when one is in force.
    fn mark(&self, entries: &HashMap<String, Mark>, scope: Scope, provider: &str, name: &str) -> Option<u64> {
        if entries.is_empty() {
            return None;
        }
        entries
            .get(&field(scope, provider, name))
            .filter(|m| m.expires > now_ms())
            .map(|m| m.before)
    }

    /// Whether `session` began before a mark that covers it: all sessions, its subject's
    /// sessions or its subject, or its provider session (`sid`).
    pub fn refuses_session(&self, session: &Session) -> bool {
        let entries = self.entries.load();
        if entries.is_empty() {
            return false;
        }
        let created = ms(session.created);
        let p = &session.principal;
        let marks = [
            self.mark(&entries, Scope::AllSessions, "", ""),
            self.mark(&entries, Scope::SessionsOf, &p.provider, &p.subject),
            self.mark(&entries, Scope::Subject, &p.provider, &p.subject),
            session
                .sid
                .as_deref()
                .and_then(|sid| self.mark(&entries, Scope::ProviderSession, &p.provider, sid)),
        ];
        marks.into_iter().flatten().any(|before| created < before)
    }

    /// Whether a bearer token of `subject` at `provider`, issued at `iat` (seconds since the
    /// epoch), is refused. A token without `iat` cannot show it came after the mark: refused.
    /// `leeway` is the provider's allowed clock skew: a token whose `iat` is within it after
    /// the mark may have been issued before it by a clock running ahead, so it is refused too.
    pub fn refuses_token(&self, provider: &str, subject: &str, iat: Option<u64>, leeway: Duration) -> bool {
        let entries = self.entries.load();
        let Some(before) = self.mark(&entries, Scope::Subject, provider, subject) else {
            return false;
        };
        match iat {
            None => true,
            Some(iat) => iat.saturating_mul(1000) < before.saturating_add(millis(leeway)),
        }
    }
}

pub fn now_ms() -> u64 {
    ms(SystemTime::now())
}

fn ms(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::conformance::session;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn an_entry_reads_back_from_its_stored_form() {
        let r = Revocation::now(Scope::Subject, "gitlab", "project_path:a/b:ref:main", HOUR);
        assert_eq!(Revocation::parse(&r.field(), &r.value()), Some(r.clone()));
        assert!(Revocation::parse("nonsense", "1 2").is_none());
        assert!(Revocation::parse(&r.field(), "x").is_none());
        let all = Revocation::now(Scope::AllSessions, "ignored", "ignored", HOUR);
        assert_eq!((all.provider.as_str(), all.name.as_str()), ("", ""));
    }

    #[test]
    fn a_subject_mark_refuses_its_older_sessions_and_tokens_and_only_with_its_provider() {
        let list = Revocations::new();
        let old = session(SystemTime::now() - Duration::from_secs(5));
        assert!(!list.refuses_session(&old));
        let iat = now_ms() / 1000 - 5;
        list.apply(&Revocation::now(Scope::Subject, "idp", "alice", HOUR));
        assert!(list.refuses_session(&old));
        assert!(list.refuses_token("idp", "alice", Some(iat), Duration::ZERO));
        assert!(list.refuses_token("idp", "alice", None, Duration::ZERO));
        // The same name at another provider is someone else.
        assert!(!list.refuses_token("other", "alice", Some(iat), Duration::ZERO));
        assert!(!list.refuses_token("idp", "bob", Some(iat), Duration::ZERO));
        // What signs in or is issued later is not refused (beyond the leeway).
        let later = session(SystemTime::now() + Duration::from_secs(1));
        assert!(!list.refuses_session(&later));
        let future_iat = now_ms() / 1000 + 40;
        assert!(!list.refuses_token("idp", "alice", Some(future_iat), Duration::from_secs(30)));
        assert!(list.refuses_token("idp", "alice", Some(future_iat), Duration::from_secs(60)));
    }

    #[test]
    fn a_sessions_mark_leaves_bearer_tokens_alone_and_the_global_mark_ends_every_session() {
        let list = Revocations::new();
        let old = session(SystemTime::now() - Duration::from_secs(5));
        list.apply(&Revocation::now(Scope::SessionsOf, "idp", "alice", HOUR));
        assert!(list.refuses_session(&old));
        assert!(!list.refuses_token("idp", "alice", Some(1), Duration::ZERO));

        let list = Revocations::new();
        list.apply(&Revocation::now(Scope::AllSessions, "", "", HOUR));
        assert!(list.refuses_session(&old));
        assert!(!list.refuses_token("idp", "alice", Some(1), Duration::ZERO));
    }

    #[test]
    fn a_provider_session_mark_refuses_the_sessions_that_carry_its_sid() {
        let list = Revocations::new();
        list.apply(&Revocation::now(Scope::ProviderSession, "idp", "sid-1", HOUR));
        let mut with_sid = session(SystemTime::now() - Duration::from_secs(5));
        assert!(!list.refuses_session(&with_sid));
        with_sid.sid = Some("sid-2".into());
        assert!(!list.refuses_session(&with_sid));
        with_sid.sid = Some("sid-1".into());
        assert!(list.refuses_session(&with_sid));
    }

    #[test]
    fn an_expired_entry_refuses_nothing_and_a_reload_drops_it() {
        let list = Revocations::new();
        let mut r = Revocation::now(Scope::Subject, "idp", "alice", HOUR);
        r.expires = now_ms() - 1;
        list.apply(&r);
        assert!(!list.refuses_token("idp", "alice", None, Duration::ZERO));
        list.replace([r]);
        assert!(list.is_empty());
    }

    #[test]
    fn each_entry_that_comes_into_force_is_told_once_and_what_was_in_force_at_start_is_not() {
        let list = Revocations::new();
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = told.clone();
        list.observe(move |r| seen.lock().unwrap().push((r.scope, r.name.clone())));
        let told = || std::mem::take(&mut *told.lock().unwrap());
        let at_start = Revocation::now(Scope::Subject, "idp", "old", HOUR);
        list.replace([at_start.clone()]);
        assert_eq!(told(), []);
        // Made here, then heard back from the store: one record.
        let alice = Revocation::now(Scope::Subject, "idp", "alice", HOUR);
        list.apply(&alice);
        list.apply(&alice);
        assert_eq!(told(), [(Scope::Subject, "alice".to_string())]);
        // An expired entry comes into force nowhere.
        let mut gone = Revocation::now(Scope::SessionsOf, "idp", "gone", HOUR);
        gone.expires = now_ms() - 1;
        list.apply(&gone);
        assert_eq!(told(), []);
        // A reload after a time away tells what came meanwhile, and a mark that moved later.
        let mut again = alice.clone();
        again.before += 1;
        let sid = Revocation::now(Scope::ProviderSession, "idp", "sid-1", HOUR);
        list.replace([at_start, again, sid]);
        let mut names: Vec<_> = told().into_iter().map(|(_, name)| name).collect();
        names.sort();
        assert_eq!(names, ["alice", "sid-1"]);
    }
}
