//! One key set for every replica, through the shared session store (Redis).
//!
//! Each replica keeps its private keys in its own `key_dir`: they never leave it. What it
//! publishes is its public JWKs, under a key of its own that expires (`[tokens]
//! shared_keys_expiry`, refreshed every quarter of it and at once when its ring changes), and
//! its id in a set of replicas. Every replica reads the others' keys every [`POLL`] and serves
//! the union, so an upstream may fetch the JWKS from any of them and verify what any of them
//! signed. A replica that stops publishing is trusted until its key expires: long enough, by
//! default, for every assertion it signed to have expired too.
//!
//! A key revoked on one replica is announced in a sorted set of revoked ids (scored by when the
//! announcement may be forgotten), which every replica honours at its next read: no replica
//! serves it, and the one that holds it (if it is not the one that revoked it) withdraws it from
//! its ring.
//!
//! Keys in Redis (`<p>` is `[sessions.redis] key_prefix`; the `{keys}` hash tag puts them in one
//! cluster slot, so one `MGET` reads them all):
//!
//! - `<p>{keys}:replicas`: a set of replica ids;
//! - `<p>{keys}:replica:<id>`: that replica's `{"keys": [...]}`, expiring;
//! - `<p>{keys}:revoked`: a sorted set of revoked key ids, scored in Unix milliseconds.
//!
//! With Redis unreachable a replica serves its own keys and the others' as it last read them,
//! and publishes again as soon as Redis answers. Untrusted input: what Redis holds (anyone with
//! write access to it could add keys, so Redis must be as trusted as the replicas are); a value
//! that does not parse is skipped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::cmd;

use super::Minter;
use crate::session::{RedisClient, StoreError};

/// How often each replica reads the others' keys and the revoked ids: a key published or
/// revoked anywhere is served, or gone, everywhere within this (plus a command's round trip).
pub const POLL: Duration = Duration::from_millis(500);

/// The publication of one replica's keys, and its reading of the others'.
pub struct Publication {
    client: RedisClient,
    replica: String,
    expiry: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis(t: SystemTime) -> u64 {
    millis(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

impl Publication {
    /// A publication under a fresh replica id (a restarted replica is a new one: its previous
    /// entry expires on its own, and the keys in both are served once).
    pub fn new(client: RedisClient, expiry: Duration) -> Publication {
        Publication {
            client,
            replica: uuid::Uuid::new_v4().to_string(),
            expiry,
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn members_key(&self) -> String {
        format!("{}{{keys}}:replicas", self.client.prefix())
    }

    fn replica_key(&self, id: &str) -> String {
        format!("{}{{keys}}:replica:{id}", self.client.prefix())
    }

    fn revoked_key(&self) -> String {
        format!("{}{{keys}}:revoked", self.client.prefix())
    }

    /// Publishes `keys` as this replica's, for `expiry`.
    pub async fn publish(&self, keys: &[serde_json::Value]) -> Result<(), StoreError> {
        let document = serde_json::json!({ "keys": keys }).to_string();
        // The value first: a replica named in the set always had its keys written.
        self.client
            .query::<()>(
                cmd("SET")
                    .arg(self.replica_key(&self.replica))
                    .arg(document)
                    .arg("PX")
                    .arg(millis(self.expiry).max(1)),
            )
            .await?;
        self.client
            .query::<()>(cmd("SADD").arg(self.members_key()).arg(&self.replica))
            .await
    }

    /// Announces `kid` revoked until `until`.
    pub async fn announce(&self, kid: &str, until: SystemTime) -> Result<(), StoreError> {
        self.client
            .query::<()>(
                cmd("ZADD")
                    .arg(self.revoked_key())
                    .arg(unix_millis(until))
                    .arg(kid),
            )
            .await
    }

    /// The other live replicas' public keys, and the key ids revoked anywhere.
    pub async fn read(&self) -> Result<(Vec<serde_json::Value>, HashSet<String>), StoreError> {
        let members: Vec<String> = self.client.query(cmd("SMEMBERS").arg(self.members_key())).await?;
        let others: Vec<&String> = members.iter().filter(|m| **m != self.replica).collect();
        let mut keys = Vec::new();
        if !others.is_empty() {
            let mut mget = cmd("MGET");
            for id in &others {
                mget.arg(self.replica_key(id));
            }
            let documents: Vec<Option<String>> = self.client.query(&mget).await?;
            let mut gone = Vec::new();
            for (id, document) in others.iter().zip(documents) {
                match document {
                    // Expired: that replica stopped publishing. It leaves the set too.
                    None => gone.push(*id),
                    Some(text) => keys.extend(parse_keys(id, &text)),
                }
            }
            if !gone.is_empty() {
                let mut srem = cmd("SREM");
                srem.arg(self.members_key());
                for id in gone {
                    srem.arg(id);
                }
                self.client.query::<()>(&srem).await?;
            }
        }
        let now = unix_millis(SystemTime::now());
        self.client
            .query::<()>(
                cmd("ZREMRANGEBYSCORE")
                    .arg(self.revoked_key())
                    .arg("-inf")
                    .arg(now),
            )
            .await?;
        let revoked: Vec<String> = self
            .client
            .query(cmd("ZRANGEBYSCORE").arg(self.revoked_key()).arg(now).arg("+inf"))
            .await?;
        Ok((keys, revoked.into_iter().collect()))
    }

    /// Keeps `minter`'s key set shared, for as long as the runtime runs: announces what it
    /// revoked, publishes its keys when they changed and every quarter of the expiry, and reads
    /// the others' every [`POLL`].
    pub async fn run(self, minter: Arc<Minter>) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let refresh = self.expiry / 4;
        let mut published: Option<Instant> = None;
        let mut reachable = true;
        loop {
            let changed = tokio::select! {
                _ = tick.tick() => false,
                () = minter.changed() => true,
            };
            if changed {
                published = None;
            }
            let synced = self.sync(&minter, &mut published, refresh).await;
            minter.shared(synced.is_ok());
            match synced {
                Ok(()) if !reachable => {
                    reachable = true;
                    tracing::info!("the shared key set is reachable again: keys published and read");
                }
                Err(e) if reachable => {
                    reachable = false;
                    tracing::warn!(error = %e, "the shared key set is unreachable: this replica serves its own keys and the others' as last read");
                }
                _ => {}
            }
        }
    }

    async fn sync(
        &self,
        minter: &Minter,
        published: &mut Option<Instant>,
        refresh: Duration,
    ) -> Result<(), StoreError> {
        let announcements = minter.take_announcements();
        let until = SystemTime::now() + minter.revocation_lifetime();
        for (i, kid) in announcements.iter().enumerate() {
            if let Err(e) = self.announce(kid, until).await {
                minter.return_announcements(announcements.get(i..).unwrap_or_default().to_vec());
                return Err(e);
            }
        }
        if published.is_none_or(|at| at.elapsed() >= refresh) {
            self.publish(&minter.own_jwks()).await?;
            *published = Some(Instant::now());
        }
        let (keys, revoked) = self.read().await?;
        minter.set_others(keys, revoked);
        Ok(())
    }
}

/// The keys of one replica's document; nothing when it does not parse.
fn parse_keys(replica: &str, text: &str) -> Vec<serde_json::Value> {
    let parsed: Result<serde_json::Value, _> = serde_json::from_str(text);
    match parsed
        .ok()
        .and_then(|mut d| d.get_mut("keys").map(serde_json::Value::take))
    {
        Some(serde_json::Value::Array(keys)) => keys,
        _ => {
            tracing::warn!(%replica, "a replica's published keys do not parse: skipped");
            Vec::new()
        }
    }
}

// The session store's tests load this helper too; each test module keeps its own copy.
#[cfg(test)]
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/support/redis.rs"]
mod server;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::num::NonZeroUsize;
    use std::os::unix::fs::PermissionsExt as _;

    use super::server::RedisServer;
    use super::*;
    use crate::audit::Discard;
    use crate::config::{Positive, Redis, Tokens};
    use crate::secret::Secret;
    use crate::session::{Lifetimes, RedisSecrets, RedisStore, Sealer};

    fn client(url: &str) -> RedisClient {
        let config = Redis {
            url: Some(url.into()),
            username: Some("portcullis".into()),
            pool_size: NonZeroUsize::new(1).unwrap(),
            command_timeout: Positive::new(Duration::from_secs(2)).unwrap(),
            ..Redis::default()
        };
        let secrets = RedisSecrets {
            password: Some(Secret::new("acl-pw")),
            sentinel_password: None,
            sealer: Sealer::new(&[7; 32], None).unwrap(),
            ca: None,
            client: None,
        };
        let lifetimes = Lifetimes {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(60),
            login: Duration::from_secs(60),
        };
        RedisStore::new(&config, secrets, lifetimes).unwrap().client()
    }

    fn minter(dir: &std::path::Path) -> Arc<Minter> {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Arc::new(Minter::open(&Tokens::default(), "https://p.example", dir, Arc::new(Discard)).unwrap())
    }

    fn kids(minter: &Minter) -> Vec<String> {
        minter.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(3), "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_under_the_documented_acl_serve_each_other_s_keys_honour_a_revocation_and_drop_a_stopped_one()
     {
        let server = RedisServer::start();
        let mut setuser = vec!["ACL", "SETUSER", "portcullis", "on", ">acl-pw"];
        setuser.extend(crate::session::DOCUMENTED_ACL.split(' '));
        assert_eq!(server.cli(&setuser).trim(), "OK");
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (minter(dir_a.path()), minter(dir_b.path()));
        let (own_a, own_b) = (kids(&a)[0].clone(), kids(&b)[0].clone());

        let expiry = Duration::from_secs(1);
        let running_a = tokio::spawn(Publication::new(client(&server.url()), expiry).run(a.clone()));
        let running_b = tokio::spawn(Publication::new(client(&server.url()), expiry).run(b.clone()));
        until("each serves both keys", || {
            kids(&a).len() == 2 && kids(&b).len() == 2
        })
        .await;
        assert!(kids(&a).contains(&own_b) && kids(&b).contains(&own_a));

        // B revokes its key: a new one signs there, and A stops serving the old one.
        b.return_announcements(vec![own_b.clone()]);
        b.changed.notify_one();
        until("A drops B's revoked key", || !kids(&a).contains(&own_b)).await;
        b.maintain(dir_b.path());
        let new_b = kids(&b).into_iter().find(|k| *k != own_a).unwrap();
        assert_ne!(new_b, own_b);
        until("A serves B's new key", || kids(&a).contains(&new_b)).await;

        // B stops: its keys leave A's set once they expire.
        running_b.abort();
        until("B's keys expire from A's set", || kids(&a) == [own_a.clone()]).await;
        running_a.abort();
    }
}
