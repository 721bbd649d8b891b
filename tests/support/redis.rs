//! A real `redis-server` (Debian's `redis-server` package, installed by `.ci/install-peers`),
//! started on a free loopback port in a temp dir and killed when dropped; and a Redis Cluster
//! of such servers. Self-contained: the crate's own unit tests include this file too.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The session encryption key the tests' replicas share (32 bytes, hex).
pub const SESSION_KEY_HEX: &str = "8f3a6c0d2b9e4f1a7c5d3e2b1a0f9e8d7c6b5a49382716f5e4d3c2b1a0f9e8d7";

/// [`SESSION_KEY_HEX`] written to `dir/session-key`, for `encryption_key_file`.
pub fn session_key_file(dir: &Path) -> PathBuf {
    let path = dir.join("session-key");
    std::fs::write(&path, format!("{SESSION_KEY_HEX}\n")).unwrap();
    path
}

/// One redis-server process; the data directory outlives restarts (append-only file on).
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
    tls: bool,
    /// The client certificate and key redis-cli shows.
    client: Option<(String, String)>,
}

/// A loopback port free now, whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// With extra `redis-server` arguments (`--requirepass`, cluster or TLS settings).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            tls: false,
            client: None,
        };
        server.launch();
        server
    }

    /// A server that speaks only TLS (`rediss://`) with `pki`'s server certificate (issued for
    /// `redis.test` only); clients must show a certificate of `pki`'s CA when `auth_clients`.
    pub fn start_tls(pki: &Pki, auth_clients: bool) -> RedisServer {
        let path = |p: &Path| p.display().to_string();
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: vec![
                "--tls-cert-file".into(),
                path(&pki.server_cert),
                "--tls-key-file".into(),
                path(&pki.server_key),
                "--tls-ca-cert-file".into(),
                path(&pki.ca),
                "--tls-auth-clients".into(),
                if auth_clients { "yes" } else { "no" }.into(),
            ],
            child: None,
            tls: true,
            client: Some((path(&pki.client_cert), path(&pki.client_key))),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "always".into(),
            "--daemonize".into(),
            "no".into(),
            "--logfile".into(),
            "redis.log".into(),
        ];
        if self.tls {
            args.extend(["--port".into(), "0".into(), "--tls-port".into(), port]);
        } else {
            args.extend(["--port".into(), port]);
        }
        args.extend(self.extra.iter().cloned());
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian package redis-server; .ci/install-peers installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen on {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Killed at once (SIGKILL), as a crash or a lost node would be.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Started again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// `redis-cli` against this server, with `args`; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &port]);
        if self.tls {
            let arg = |flag: &str| -> Option<String> {
                let i = self.extra.iter().position(|a| a == flag)?;
                self.extra.get(i + 1).cloned()
            };
            cmd.arg("--tls");
            if let Some(ca) = arg("--tls-ca-cert-file") {
                cmd.args(["--cacert", &ca]);
            }
            if let Some((cert, key)) = &self.client {
                cmd.args(["--cert", cert, "--key", key]);
            }
            // The certificate names redis.test, not the loopback address redis-cli dials.
            cmd.args(["--sni", "redis.test"]);
        }
        if let Some(i) = self.extra.iter().position(|a| a == "--requirepass") {
            cmd.env("REDISCLI_AUTH", &self.extra[i + 1]);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("redis-cli runs (Debian package redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key and its value as `redis-cli --scan` and `GET` show them (values as the
    /// escaped text redis-cli prints).
    pub fn dump(&self) -> Vec<(String, String)> {
        self.cli(&["--scan"])
            .lines()
            .filter(|k| !k.is_empty())
            .map(|k| (k.to_string(), self.cli(&["GET", k])))
            .collect()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `masters` servers (no replicas), its slots assigned by
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let created = nodes[0].cli(&args);
        assert!(created.contains("All 16384 slots covered"), "{created}");
        // The nodes agree on the slots only once the configuration has spread.
        let started = Instant::now();
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every key of every node, as [`RedisServer::dump`].
    pub fn dump(&self) -> Vec<(String, String)> {
        self.nodes.iter().flat_map(RedisServer::dump).collect()
    }
}

/// A CA, a server certificate for `redis.test` and a client certificate, as PEM files in a
/// temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "redis test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = write("ca.pem", &ca_cert.pem());
        let issuer = Issuer::new(params, ca_key);
        let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![purpose];
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = leaf("redis.test", ExtendedKeyUsagePurpose::ServerAuth);
        let (server_cert, server_key) = (write("server.pem", &cert), write("server-key.pem", &key));
        let (cert, key) = leaf("portcullis.test", ExtendedKeyUsagePurpose::ClientAuth);
        let (client_cert, client_key) = (write("client.pem", &cert), write("client-key.pem", &key));
        Pki {
            dir,
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}

/// A master, one replica of it, and one Sentinel watching them as `mymaster`.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let master = RedisServer::start();
        let master_port = master.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]);
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        // Sentinel rewrites its config file as it learns the topology: it lives in the temp dir.
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile sentinel.log\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 10000\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs as a Sentinel");
        let sentinel = RedisSentinel {
            master,
            replica,
            port,
            dir,
            child,
        };
        // A failover needs a replica the Sentinel knows of, learnt from the master's INFO.
        sentinel.wait_for(Duration::from_secs(30), "the Sentinel to see the replica", |s| {
            s.cli(&["SENTINEL", "REPLICAS", "mymaster"]).contains("slave")
        });
        sentinel
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The port of the server the Sentinel names as master now.
    pub fn master_port(&self) -> u16 {
        let out = self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"]);
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Promotes the replica, as the Sentinel would if the master failed, and waits until it
    /// serves writes and the old master has become its replica (until then the old master
    /// still takes writes, which the new one never sees).
    pub fn fail_over(&self) {
        let ok = self.cli(&["SENTINEL", "FAILOVER", "mymaster"]);
        assert!(ok.contains("OK"), "{ok}");
        let promoted = self.replica.port;
        self.wait_for(Duration::from_secs(30), "the replica to be promoted", |s| {
            s.master_port() == promoted
                && s.replica.cli(&["ROLE"]).starts_with("master")
                && s.master.cli(&["ROLE"]).starts_with("slave")
        });
    }

    fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&RedisSentinel) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < limit,
                "waited {limit:?} for {what}: {}",
                std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
