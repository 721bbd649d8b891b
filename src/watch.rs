//! Files that the proxy reloads when they change (TLS certificates, the policy): one notify
//! watcher and a settled stream of "something changed" signals.

use std::path::Path;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// "Something under the watched paths changed", once the writes have settled.
pub struct Changes {
    rx: mpsc::Receiver<()>,
    settle: Duration,
}

impl Changes {
    /// Waits for a change, then `settle` more so that writers replacing several files (a
    /// certificate and its key, `git checkout` of a policy) land first; false once the watcher
    /// is gone.
    pub async fn next(&mut self) -> bool {
        if self.rx.recv().await.is_none() {
            return false;
        }
        tokio::time::sleep(self.settle).await;
        while self.rx.try_recv().is_ok() {}
        true
    }
}

/// Watches `paths`; the watcher must be kept alive as long as changes are wanted.
pub fn watch<'a>(
    paths: impl IntoIterator<Item = (&'a Path, RecursiveMode)>,
    settle: Duration,
) -> notify::Result<(RecommendedWatcher, Changes)> {
    let (tx, rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })?;
    for (path, mode) in paths {
        watcher.watch(path, mode)?;
    }
    Ok((watcher, Changes { rx, settle }))
}

/// Watches one file, as editors and config management replace it (written beside it, then
/// renamed over it): the directory is watched and only events naming the file count, or naming
/// `..data`, the link Kubernetes swaps to update every file of a mounted ConfigMap at once.
pub fn watch_file(path: &Path, settle: Duration) -> notify::Result<(RecommendedWatcher, Changes)> {
    let (tx, rx) = mpsc::channel::<()>(1);
    let name = path.file_name().map(std::ffi::OsStr::to_os_string);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let names_it = event.paths.iter().any(|p| {
            let file = p.file_name().map(std::ffi::OsStr::to_os_string);
            file == name || file.as_deref() == Some(std::ffi::OsStr::new("..data"))
        });
        if names_it && !event.kind.is_access() {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, Changes { rx, settle }))
}
