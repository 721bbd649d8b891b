//! Keys and certificates for the tests (rcgen, ECDSA P-256): a CA, server certificates for
//! names, client certificates, the rustls configs that use them, and token signing keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The crypto provider the proxy uses, for the tests' own TLS clients and servers.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A fresh ECDSA P-256 private key, as PKCS#8 PEM (an ES256 token signing key).
pub fn signing_key_pem() -> String {
    KeyPair::generate().unwrap().serialize_pem()
}

pub struct Ca {
    pub der: CertificateDer<'static>,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What a leaf certificate is for, with its names: DNS names, or IP addresses given as text
/// (which become IP SANs).
pub struct LeafSpec {
    names: Vec<String>,
    common_name: Option<String>,
    serial: Option<u64>,
    purpose: ExtendedKeyUsagePurpose,
}

impl LeafSpec {
    pub fn server<S: Into<String>>(names: impl IntoIterator<Item = S>) -> LeafSpec {
        LeafSpec::new(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    pub fn client<S: Into<String>>(names: impl IntoIterator<Item = S>) -> LeafSpec {
        LeafSpec::new(names, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn new<S: Into<String>>(
        names: impl IntoIterator<Item = S>,
        purpose: ExtendedKeyUsagePurpose,
    ) -> LeafSpec {
        LeafSpec {
            names: names.into_iter().map(Into::into).collect(),
            common_name: None,
            serial: None,
            purpose,
        }
    }

    /// The subject's common name (the first name when not given).
    pub fn common_name(mut self, name: &str) -> LeafSpec {
        self.common_name = Some(name.to_string());
        self
    }

    pub fn serial(mut self, serial: u64) -> LeafSpec {
        self.serial = Some(serial);
        self
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`.
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.issue(LeafSpec::server(names.iter().copied()))
    }

    /// A client certificate for `names`.
    pub fn client(&self, names: &[&str]) -> Leaf {
        self.issue(LeafSpec::client(names.iter().copied()))
    }

    pub fn issue(&self, spec: LeafSpec) -> Leaf {
        let mut params = CertificateParams::new(spec.names.clone()).unwrap();
        let common_name = spec
            .common_name
            .or_else(|| spec.names.first().cloned())
            .unwrap_or_default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.serial_number = spec.serial.map(Into::into);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![spec.purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// Writes the CA certificate to `dir/NAME` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        write(dir, name, &self.pem)
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        roots
    }
}

/// A certificate signed by a [`Ca`], with its key.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `dir/NAME.pem` and `dir/NAME.key`; returns (certificate, key).
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (
            write(dir, &format!("{name}.pem"), &self.cert_pem),
            write(dir, &format!("{name}.key"), &self.key_pem),
        )
    }

    /// A TLS server presenting this certificate, offering h2 then http/1.1, requiring a client
    /// certificate signed by `client_ca` when one is given.
    pub fn server_config(&self, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                    .build()
                    .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![self.der.clone()], self.key())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
