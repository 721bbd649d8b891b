//! Changing the configuration of a running proxy, told as stories with the real binary: a route
//! added to the file serves within two seconds while a long download on another route goes on; a
//! broken edit changes nothing and the log says why; SIGHUP reloads a file the watcher cannot see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::Recorder;

/// Chunks the slow upstream sends, one every `CHUNK_GAP`: the download lasts about two seconds.
const CHUNKS: usize = 10;
const CHUNK_GAP: Duration = Duration::from_millis(200);

/// An upstream that answers every request with a body sent slowly, chunk by chunk.
async fn slow_download() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                for i in 0..CHUNKS {
                    tokio::time::sleep(CHUNK_GAP).await;
                    let chunk = format!("chunk-{i};");
                    let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                    if stream.write_all(framed.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn route(name: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\naccess = \"public\"\n[routes.upstream]\nurl = \"{upstream}\"\n"
    )
}

struct Running {
    child: Child,
    http: SocketAddr,
    log: std::path::PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `portcullis serve --config <path>`, waited for until its admin listener says ready.
async fn serve(path: &Path, dir: &Path, http: u16, admin: u16) -> Running {
    let log = dir.join("portcullis.log");
    let child = Command::new(support::binary())
        .args(["serve", "--config"])
        .arg(path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let running = Running {
        child,
        http: SocketAddr::from(([127, 0, 0, 1], http)),
        log,
    };
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    for _ in 0..400 {
        if TcpStream::connect(admin).await.is_ok() && support::get(admin, "/readyz", &[]).await.0 == 200 {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the proxy never became ready:\n{}", running.log());
}

fn head(dir: &Path, http: u16, admin: u16) -> String {
    format!(
        "[server]\nhttp = \"127.0.0.1:{http}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[audit]\npath = {:?}\n",
        dir.join("audit.jsonl").display().to_string()
    )
}

/// Writes the way editors and config management do: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Polls `host` until it answers `want`, for up to `limit`; the time it took.
async fn until_status(proxy: SocketAddr, host: &str, want: u16, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let (status, _) = support::raw_get(proxy, host, "/").await;
        if status == want {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn a_route_added_to_the_file_serves_within_two_seconds_while_a_download_on_another_route_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (free_port(), free_port());
    let app = Recorder::start().await;
    let slow = slow_download().await;
    let path = dir.path().join("portcullis.toml");
    let first = format!(
        "{}{}{}",
        head(dir.path(), http, admin),
        route("stream", &format!("http://{slow}")),
        route("a", &app.url())
    );
    std::fs::write(&path, &first).unwrap();
    let proxy = serve(&path, dir.path(), http, admin).await;
    assert_eq!(
        support::raw_get(proxy.http, "b.test", "/").await.0,
        404,
        "no route b yet"
    );

    // A download that lasts about two seconds, begun before the edit.
    let mut download = TcpStream::connect(proxy.http).await.unwrap();
    download
        .write_all(b"GET /file HTTP/1.1\r\nhost: stream.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reading = tokio::spawn(async move {
        let mut body = Vec::new();
        download.read_to_end(&mut body).await.unwrap();
        String::from_utf8_lossy(&body).into_owned()
    });
    tokio::time::sleep(CHUNK_GAP).await;

    replace(&path, &format!("{first}{}", route("b", &app.url())));
    let took = until_status(proxy.http, "b.test", 200, Duration::from_secs(2)).await;
    assert!(
        took.is_some(),
        "route b did not serve within 2 s:\n{}",
        proxy.log()
    );
    assert!(
        !reading.is_finished(),
        "the download should still be running when b serves"
    );

    let received = reading.await.unwrap();
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    for i in 0..CHUNKS {
        assert!(
            received.contains(&format!("chunk-{i};")),
            "chunk {i} missing: {received}"
        );
    }
    // The routes of the first file still serve, and the new one reaches its upstream.
    assert_eq!(support::raw_get(proxy.http, "a.test", "/").await.0, 200);
    let (status, body) = support::raw_get(proxy.http, "b.test", "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("upstream ok"), "{body}");
}

#[tokio::test]
async fn a_broken_edit_keeps_the_configuration_in_force_and_the_log_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (free_port(), free_port());
    let app = Recorder::start().await;
    let path = dir.path().join("portcullis.toml");
    let good = format!("{}{}", head(dir.path(), http, admin), route("a", &app.url()));
    std::fs::write(&path, &good).unwrap();
    let proxy = serve(&path, dir.path(), http, admin).await;

    // A typo in a key, and a route with no upstream URL: both refused, nothing applied.
    let broken = format!(
        "{good}[[routes]]\nname = \"b\"\nhosts = [\"b.test\"]\nacess = \"public\"\n[routes.upstream]\nurl = \"\"\n"
    );
    replace(&path, &broken);
    let mut refused = false;
    for _ in 0..150 {
        if proxy.log().contains("configuration reload refused") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = proxy.log();
    assert!(refused, "no refusal in the log:\n{log}");
    assert!(log.contains("routes[1].acess"), "the log names the key: {log}");
    assert_eq!(
        support::raw_get(proxy.http, "a.test", "/").await.0,
        200,
        "the old routes serve"
    );
    assert_eq!(
        support::raw_get(proxy.http, "b.test", "/").await.0,
        404,
        "the broken route is not added"
    );

    // Fixed, it applies.
    replace(&path, &format!("{good}{}", route("b", &app.url())));
    let took = until_status(proxy.http, "b.test", 200, Duration::from_secs(2)).await;
    assert!(took.is_some(), "the fixed file did not apply:\n{}", proxy.log());
}

#[tokio::test]
async fn sighup_reloads_a_file_the_watcher_does_not_see_and_a_removed_route_stops_serving() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let (http, admin) = (free_port(), free_port());
    let app = Recorder::start().await;
    // The config path is a symlink into another directory: editing the target there is not an
    // event in the directory the proxy watches, so only the signal can make it read the file.
    let real = elsewhere.path().join("real.toml");
    let path = dir.path().join("portcullis.toml");
    let both = format!(
        "{}{}{}",
        head(dir.path(), http, admin),
        route("a", &app.url()),
        route("b", &app.url())
    );
    std::fs::write(&real, &both).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let proxy = serve(&path, dir.path(), http, admin).await;
    assert_eq!(support::raw_get(proxy.http, "b.test", "/").await.0, 200);

    std::fs::write(
        &real,
        format!("{}{}", head(dir.path(), http, admin), route("a", &app.url())),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        support::raw_get(proxy.http, "b.test", "/").await.0,
        200,
        "nothing reloads without the signal"
    );

    let pid = i32::try_from(proxy.child.id()).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let took = until_status(proxy.http, "b.test", 404, Duration::from_secs(2)).await;
    assert!(
        took.is_some(),
        "route b still serves after SIGHUP:\n{}",
        proxy.log()
    );
    assert_eq!(support::raw_get(proxy.http, "a.test", "/").await.0, 200);
    assert!(proxy.log().contains("SIGHUP"), "{}", proxy.log());
}
