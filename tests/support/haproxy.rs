//! A real load balancer for story tests: Debian's `haproxy` (installed by `.ci/install-peers`),
//! HTTP mode, round robin over the backends request by request (a browser's keep-alive
//! connection is spread over every backend too), on a loopback port. Killed when dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Haproxy {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl Haproxy {
    /// Listens on `addr` (a free loopback address: the balancer's URL must be known before the
    /// backends are configured) and balances over `backends`, which need not be up yet.
    pub fn start(addr: SocketAddr, backends: &[SocketAddr]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("    server replica{i} {b}\n"))
            .collect();
        // No health checks: a backend that is down answers 503 for the requests sent to it,
        // which a test stopping a replica wants to see, not hide.
        let config = format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
             \x20   option http-keep-alive\n\
             frontend balancer\n    bind {addr}\n    default_backend replicas\n\
             backend replicas\n    balance roundrobin\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let check = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output();
        let check = check.expect("haproxy runs (Debian package haproxy; .ci/install-peers installs it)");
        assert!(
            check.status.success(),
            "haproxy refuses its config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("haproxy runs");
        let balancer = Haproxy { addr, dir, child };
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "haproxy did not listen on {addr}: {}",
                balancer.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        balancer
    }

    /// `http://localhost:PORT`: a loopback name, which browsers treat as a secure context.
    pub fn url(&self) -> String {
        format!("http://localhost:{}", self.addr.port())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
