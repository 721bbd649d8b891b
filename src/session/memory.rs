//! The default session store: in memory (moka), bounded, with idle and absolute lifetimes.
//! Sessions do not survive a restart and are not shared between replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Lease, PendingLogin, Revocation, Revocations, Session, SessionId, SessionStore, StoreFuture};

pub struct MemoryStore {
    /// Sessions, each dropped once unused for the idle lifetime (moka's time to idle).
    sessions: moka::sync::Cache<SessionId, Arc<Session>>,
    /// The absolute lifetime, counted from sign-in: checked on every read.
    absolute: Duration,
    logins: moka::sync::Cache<String, PendingLogin>,
    revocations: Arc<Revocations>,
    /// Names offered once (logout tokens' `jti`), each kept for its own lifetime.
    used: moka::sync::Cache<String, Instant>,
}

struct UntilInstant;

impl moka::Expiry<String, Instant> for UntilInstant {
    fn expire_after_create(&self, _: &String, until: &Instant, now: Instant) -> Option<Duration> {
        Some(until.saturating_duration_since(now))
    }
}

impl MemoryStore {
    pub fn new(max_sessions: u64, idle: Duration, absolute: Duration) -> Self {
        Self::with_login_timeout(max_sessions, idle, absolute, Duration::from_secs(600))
    }

    pub fn with_login_timeout(
        max_sessions: u64,
        idle: Duration,
        absolute: Duration,
        login: Duration,
    ) -> Self {
        MemoryStore {
            sessions: moka::sync::Cache::builder()
                .max_capacity(max_sessions)
                .time_to_idle(idle)
                .build(),
            absolute,
            // Abandoned sign-ins are bounded too, so a flood of sign-in starts cannot grow memory.
            logins: moka::sync::Cache::builder()
                .max_capacity(max_sessions)
                .time_to_live(login)
                .build(),
            revocations: Revocations::new(),
            used: moka::sync::Cache::builder()
                .max_capacity(max_sessions)
                .expire_after(UntilInstant)
                .build(),
        }
    }
}

impl SessionStore for MemoryStore {
    fn get<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, Option<Arc<Session>>> {
        Box::pin(async move {
            let Some(session) = self.sessions.get(id) else {
                return Ok(None);
            };
            if session.within(self.absolute) {
                Ok(Some(session))
            } else {
                self.sessions.invalidate(id);
                Ok(None)
            }
        })
    }

    fn put<'a>(&'a self, id: SessionId, session: Session) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.sessions.insert(id, Arc::new(session));
            Ok(())
        })
    }

    fn remove<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.sessions.invalidate(id);
            Ok(())
        })
    }

    fn put_login<'a>(&'a self, state: &'a str, login: PendingLogin) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.logins.insert(state.to_string(), login);
            Ok(())
        })
    }

    fn take_login<'a>(&'a self, state: &'a str) -> StoreFuture<'a, Option<PendingLogin>> {
        Box::pin(async move { Ok(self.logins.remove(state)) })
    }

    /// One process: the authenticator's per-session mutex already makes one refresher.
    fn try_lease_refresh<'a>(&'a self, _: &'a SessionId, _: Duration) -> StoreFuture<'a, Option<Lease>> {
        Box::pin(async move { Lease::random().map(Some) })
    }

    fn release_refresh<'a>(&'a self, _: &'a SessionId, _: Lease) -> StoreFuture<'a, ()> {
        Box::pin(async move { Ok(()) })
    }

    fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    fn revoke<'a>(&'a self, revocation: Revocation) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.revocations.apply(&revocation);
            Ok(())
        })
    }

    fn first_use<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let entry = self
                .used
                .entry(name.to_string())
                .or_insert_with(|| Instant::now() + ttl);
            Ok(entry.is_fresh())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::conformance;

    #[tokio::test]
    async fn the_memory_store_passes_the_session_store_conformance_suite() {
        let (idle, absolute) = (Duration::from_millis(300), Duration::from_millis(900));
        let store = MemoryStore::new(1000, idle, absolute);
        conformance::run(&store, idle, absolute).await;
    }
}
