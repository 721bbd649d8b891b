//! The HTTPS listener's certificate, reloaded without a restart when its files change.
//!
//! The parent directories are watched (so atomic renames and Kubernetes' symlink swaps are seen);
//! on any change the pair is read and checked, and swapped in only if it is valid. A broken pair
//! keeps the old one serving and says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::RecursiveMode;
use rustls::ServerConfig;

use crate::config::Tls;
use crate::metrics::Metrics;
use crate::pem::{BuildError, read_certs, read_key};

pub struct ReloadingTls {
    current: ArcSwap<ServerConfig>,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ReloadingTls {
    pub fn load(cfg: &Tls, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Arc<Self>, BuildError> {
        let config = server_config(&cfg.cert, &cfg.key, &provider)?;
        Ok(Arc::new(ReloadingTls {
            current: ArcSwap::from_pointee(config),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            provider,
        }))
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads the pair; keeps the old one if the new one does not load.
    pub fn reload(&self, metrics: &Metrics) {
        match server_config(&self.cert, &self.key, &self.provider) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                metrics.tls_reload("ok");
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                metrics.tls_reload("error");
                tracing::error!(error = %e, "TLS certificate reload failed; the previous certificate stays in use");
            }
        }
    }

    /// Watches the certificate and key directories; the watcher lives as long as the returned value.
    pub fn watch(self: &Arc<Self>, metrics: Arc<Metrics>) -> notify::Result<notify::RecommendedWatcher> {
        let (cert_dir, key_dir) = (parent(&self.cert), parent(&self.key));
        let dirs = [cert_dir.as_path(), key_dir.as_path()].map(|d| (d, RecursiveMode::NonRecursive));
        let (watcher, mut changes) = crate::watch::watch(dirs, Duration::from_millis(200))?;
        let this = self.clone();
        tokio::spawn(async move {
            while changes.next().await {
                this.reload(&metrics);
            }
        });
        Ok(watcher)
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn server_config(
    cert: &Path,
    key: &Path,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<ServerConfig, BuildError> {
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(read_certs(cert, "certificate")?, read_key(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
