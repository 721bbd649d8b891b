//! Reading the TLS files a configuration names (certificates, private keys, CA bundles) and the
//! trust roots built from them: one reading, one set of errors naming the file, for the
//! listener, the upstreams and every outbound client.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why an upstream client could not be built (files named by the config).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: cannot read {what} ({source})")]
    Read {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: {what} is not valid PEM ({detail})")]
    Pem {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The roots a client trusts: the PEM bundle `ca` (`what` names it in errors), or the system's.
pub fn trust_roots(
    ca: Option<&std::path::Path>,
    what: &'static str,
) -> Result<rustls::RootCertStore, BuildError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for cert in read_certs(ca, what)? {
                roots.add(cert)?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(roots)
}

fn read_pem(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Read {
        path: path.display().to_string(),
        what,
        source,
    })
}

pub fn read_certs(
    path: &std::path::Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let pem = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BuildError::Pem {
            path: path.display().to_string(),
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(BuildError::Pem {
            path: path.display().to_string(),
            what,
            detail: "no certificate found".into(),
        });
    }
    Ok(certs)
}

pub fn read_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, BuildError> {
    let pem = read_pem(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| BuildError::Pem {
        path: path.display().to_string(),
        what: "private key",
        detail: e.to_string(),
    })
}
