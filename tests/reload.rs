//! Changing the configuration of a running proxy, told as stories with the real binary: a route
//! added to the file serves within two seconds while a long download on another route goes on; a
//! broken edit changes nothing and the log says why; SIGHUP reloads a file the watcher cannot see.
#![cfg(test)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::config::UpstreamUrl;
use support::serve::{Serve, Server, serve};
use support::{Binary, Config, Recorder, Route};

/// Chunks the slow upstream sends, one every `CHUNK_GAP`: the download lasts about two seconds.
const CHUNKS: usize = 10;
const CHUNK_GAP: Duration = Duration::from_millis(200);

/// An upstream that answers every request with a body sent slowly, chunk by chunk.
async fn slow_download() -> Server {
    serve(Serve::http1(), |_, _| async {
        let chunks = futures_util::stream::unfold(0, |i| async move {
            if i == CHUNKS {
                return None;
            }
            tokio::time::sleep(CHUNK_GAP).await;
            let chunk = Frame::data(Bytes::from(format!("chunk-{i};")));
            Some((Ok::<_, Infallible>(chunk), i + 1))
        });
        Response::new(StreamBody::new(chunks))
    })
    .await
}

/// A public route `NAME` for host `NAME.test`.
fn route(name: &str, upstream: impl UpstreamUrl) -> Route {
    Route::public(name)
        .host(&format!("{name}.test"))
        .upstream(upstream)
}

/// `routes`, with the audit log in `dir`.
fn config(dir: &Path, routes: impl IntoIterator<Item = Route>) -> Config {
    routes.into_iter().fold(
        Config::new().set("audit.path", dir.join("audit.jsonl")),
        Config::route,
    )
}

const INFO: &[(&str, &str)] = &[("RUST_LOG", "info")];

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
    let app = Recorder::start().await;
    let slow = slow_download().await;
    let first = config(dir.path(), [route("stream", &slow), route("a", &app)]);
    let proxy = Binary::serve(dir.path(), &first, INFO).await;
    let path = dir.path().join("portcullis.toml");
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

    replace(&path, &proxy.config_text(&first.route(route("b", &app))));
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
    let app = Recorder::start().await;
    let good = config(dir.path(), [route("a", &app)]);
    let proxy = Binary::serve(dir.path(), &good, INFO).await;
    let path = dir.path().join("portcullis.toml");

    // A typo in a key, and a route with no upstream URL: both refused, nothing applied.
    let broken = proxy.config_text(
        &good
            .clone()
            .route(Route::new("b").host("b.test").set("acess", "public").upstream("")),
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
    replace(&path, &proxy.config_text(&good.route(route("b", &app))));
    let took = until_status(proxy.http, "b.test", 200, Duration::from_secs(2)).await;
    assert!(took.is_some(), "the fixed file did not apply:\n{}", proxy.log());
}

#[tokio::test]
async fn sighup_reloads_a_file_the_watcher_does_not_see_and_a_removed_route_stops_serving() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let app = Recorder::start().await;
    // The config path is a symlink into another directory: editing the target there is not an
    // event in the directory the proxy watches, so only the signal can make it read the file.
    let real = elsewhere.path().join("real.toml");
    let path = dir.path().join("portcullis.toml");
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let both = config(dir.path(), [route("a", &app), route("b", &app)]);
    let proxy = Binary::serve_file(&path, dir.path(), &both, INFO).await;
    assert_eq!(support::raw_get(proxy.http, "b.test", "/").await.0, 200);

    std::fs::write(&real, proxy.config_text(&config(dir.path(), [route("a", &app)]))).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        support::raw_get(proxy.http, "b.test", "/").await.0,
        200,
        "nothing reloads without the signal"
    );

    proxy.signal("HUP");
    let took = until_status(proxy.http, "b.test", 404, Duration::from_secs(2)).await;
    assert!(
        took.is_some(),
        "route b still serves after SIGHUP:\n{}",
        proxy.log()
    );
    assert_eq!(support::raw_get(proxy.http, "a.test", "/").await.0, 200);
    assert!(proxy.log().contains("SIGHUP"), "{}", proxy.log());
}

#[tokio::test]
async fn a_mounted_configmap_updated_the_way_the_kubelet_does_it_is_reloaded() {
    // The kubelet's layout: the file is a link through `..data` into a timestamped directory,
    // and an update writes a new directory and swaps `..data` over to it in one rename.
    let dir = tempfile::tempdir().unwrap();
    let app = Recorder::start().await;
    let first = dir.path().join("..2026_12_05_01");
    std::fs::create_dir(&first).unwrap();
    std::os::unix::fs::symlink("..2026_12_05_01", dir.path().join("..data")).unwrap();
    let path = dir.path().join("portcullis.toml");
    std::os::unix::fs::symlink("..data/portcullis.toml", &path).unwrap();
    let proxy = Binary::serve_file(&path, dir.path(), &config(dir.path(), [route("a", &app)]), INFO).await;
    assert_eq!(support::raw_get(proxy.http, "b.test", "/").await.0, 404);

    let second = dir.path().join("..2026_12_05_02");
    std::fs::create_dir(&second).unwrap();
    let both = config(dir.path(), [route("a", &app), route("b", &app)]);
    std::fs::write(second.join("portcullis.toml"), proxy.config_text(&both)).unwrap();
    std::os::unix::fs::symlink("..2026_12_05_02", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();

    let took = until_status(proxy.http, "b.test", 200, Duration::from_secs(2)).await;
    assert!(
        took.is_some(),
        "the swapped ConfigMap was not reloaded:\n{}",
        proxy.log()
    );
}
