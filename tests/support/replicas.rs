//! Three replicas of the proxy, the way they run in production: one real Redis for their
//! sessions and their key set, a real round-robin load balancer (haproxy) in front, one
//! recording upstream behind, and a real OpenID Provider (oidc-provider) whose browser client
//! redirects to the balancer. Each replica signs the identity assertions it sends with a key of
//! its own, so the upstream can tell which replica forwarded a request ([`ThreeReplicas::replica_of`]).
//!
//! ```ignore
//! let cluster = ThreeReplicas::start().await;
//! cluster.url();                 // the balancer: http://localhost:PORT
//! cluster.replicas[1].url;       // replica B, past the balancer
//! cluster.replicas[1].gateway;   // its listeners, audit records, metrics
//! ```
//!
//! Cases that need more of the provider (back-channel logout) or of the replicas' config pass
//! [`Options`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::config::{Config, Route};
use super::haproxy::Haproxy;
use super::idp::Idp;
use super::redis::{RedisServer, session_key_file};
use super::{Gateway, Recorder, free_addr};

/// The audience of the assertions the replicas send the upstream.
pub const AUDIENCE: &str = "https://app.localhost";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "__Host-portcullis_session";

/// What to add to the standard setup.
#[derive(Default)]
pub struct Options {
    /// Extra arguments for the provider's script (`tests/peers/oidc/provider.mjs`).
    pub idp_args: Vec<String>,
    /// Merged into every replica's configuration (more routes, `[tokens]` or `[sessions]` keys).
    pub extra: Config,
    /// OIDC Back-Channel Logout: the provider posts its logout tokens to the balancer's
    /// `/.portcullis/backchannel-logout` (its `--backchannel-logout`, so its ID tokens carry
    /// `sid`), and every replica accepts them (`browser.backchannel_logout`).
    pub backchannel_logout: bool,
}

/// One replica of the proxy.
pub struct Replica {
    pub gateway: Gateway,
    /// `http://localhost:PORT`: this replica, past the balancer.
    pub url: String,
    /// Its own signing key ring.
    pub key_dir: PathBuf,
    /// Its configuration without the listeners (as `portcullis keys …` would read it).
    pub config: Config,
}

impl Replica {
    /// The key ids in its ring now (one file per key, named by its id).
    pub fn kids(&self) -> Vec<String> {
        std::fs::read_dir(&self.key_dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json").map(str::to_string)
            })
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// `GET target` straight to this replica (past the balancer) for host `localhost`, with
    /// `headers` (a `cookie`, an `authorization`), read whole.
    pub async fn get(&self, target: &str, headers: &[(&str, &str)]) -> super::Reply {
        let mut all = vec![("host", "localhost")];
        all.extend_from_slice(headers);
        let response = super::send(
            self.gateway.http,
            http::Method::GET,
            target,
            &all,
            bytes::Bytes::new(),
        )
        .await;
        super::Reply::read(response).await
    }

    /// Writes its configuration to `path`, for a `portcullis` command run against this replica.
    pub fn write_config(&self, path: &Path) {
        self.config.write(path);
    }
}

pub struct ThreeReplicas {
    pub replicas: Vec<Replica>,
    pub balancer: Haproxy,
    pub redis: RedisServer,
    pub idp: Idp,
    pub upstream: Recorder,
    /// `[tokens] issuer`: the balancer's address.
    pub issuer: String,
    /// Key directories, the session key, the provider's client secret.
    pub dir: tempfile::TempDir,
}

impl ThreeReplicas {
    pub async fn start() -> ThreeReplicas {
        Self::start_with(Options::default()).await
    }

    /// Every replica has the `app` route for host `localhost` (any port): authenticated, browser
    /// sign-in at the provider as `oidc`, bearer tokens of the provider's API audience, and an
    /// assertion for [`AUDIENCE`] to the upstream.
    pub async fn start_with(options: Options) -> ThreeReplicas {
        let redis = RedisServer::start();
        let upstream = Recorder::start().await;
        let dir = tempfile::tempdir().unwrap();
        let session_key = session_key_file(dir.path());

        let prebound = [
            Gateway::prebind(Config::new()).await,
            Gateway::prebind(Config::new()).await,
            Gateway::prebind(Config::new()).await,
        ];
        let backends: Vec<_> = prebound.iter().map(|p| p.http).collect();
        let balancer = Haproxy::start(free_addr(), &backends);
        let origin = balancer.url();
        let mut idp_args = vec![
            "--redirect".to_string(),
            format!("{origin}/.portcullis/callback"),
            "--post-logout-redirect".into(),
            format!("{origin}/.portcullis/signed_out"),
        ];
        if options.backchannel_logout {
            idp_args.extend([
                "--backchannel-logout".to_string(),
                format!("{origin}/.portcullis/backchannel-logout"),
            ]);
        }
        idp_args.extend(options.idp_args);
        let idp_args: Vec<&str> = idp_args.iter().map(String::as_str).collect();
        let idp = Idp::start_with(&idp_args).await;
        let issuer = format!("http://127.0.0.1:{}", balancer.addr.port());

        let mut replicas = Vec::new();
        for (i, prebound) in prebound.into_iter().enumerate() {
            let key_dir = dir.path().join(format!("keys-{i}"));
            std::fs::create_dir(&key_dir).unwrap();
            std::fs::set_permissions(&key_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            let route = Route::authenticated("app")
                .host("localhost")
                .upstream(&upstream)
                .set("assertion.audience", AUDIENCE);
            let provider = idp
                .browser_provider("oidc", &dir.path().join("web-secret"))
                .set("browser.backchannel_logout", options.backchannel_logout);
            let config = Config::new()
                .provider(provider)
                .route(route.providers(["oidc"]))
                .tokens(&issuer, &key_dir)
                .set("sessions.store", "redis")
                .set("sessions.redis.url", redis.url())
                .set("sessions.redis.encryption_key_file", session_key.as_path())
                .merge(&options.extra);
            let url = format!("http://localhost:{}", prebound.http.port());
            let gateway = prebound.start(&config).await;
            gateway.wait_ready().await;
            replicas.push(Replica {
                gateway,
                url,
                key_dir,
                config,
            });
        }
        ThreeReplicas {
            replicas,
            balancer,
            redis,
            idp,
            upstream,
            issuer,
            dir,
        }
    }

    /// The balancer's URL, `http://localhost:PORT`.
    pub fn url(&self) -> String {
        self.balancer.url()
    }

    /// The replica (0, 1 or 2) whose key signed `assertion`.
    pub fn replica_of(&self, assertion: &str) -> Option<usize> {
        let kid = jsonwebtoken::decode_header(assertion).ok()?.kid?;
        self.replicas.iter().position(|r| r.kids().contains(&kid))
    }

    /// Stops every replica (in-flight requests finish), then the rest is dropped.
    pub async fn stop(self) {
        for replica in self.replicas {
            replica.gateway.stop().await;
        }
    }
}
