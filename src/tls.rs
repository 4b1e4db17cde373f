//! TLS material: the proxy listener's certificate (swappable at runtime) and the extra trust
//! anchors an upstream may name with `ca:`.
//!
//! Everything here runs off the request path: files are read when a config is loaded or
//! reloaded, never while a request waits. The crypto provider is rustls' `ring` one, named
//! explicitly (never the process default) so another crate enabling a second provider cannot
//! change or break what the gateway uses.
//!
//! # Reloading the listener's certificate
//! [`TlsAcceptorSource`] holds the current [`ServerConfig`] in an [`ArcSwap`]. Each accepted
//! connection takes the config current at that moment; [`TlsAcceptorSource::replace`] affects
//! only connections accepted after it, so open connections keep their session and are never
//! dropped. A certificate/key pair that fails [`TlsAcceptorSource::load`] leaves the current
//! one in force.

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, InconsistentKeys, RootCertStore};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// ALPN protocols offered to clients, preferred first; hyper-util's auto builder serves both.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate, key or CA file cannot be used. Each names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{host:?} is not a name TLS can verify")]
    ServerName { host: String },
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: pem::Error },
    #[error("{}: no certificate found (expected a PEM `CERTIFICATE` block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: unusable certificate: {reason}", path.display())]
    InvalidCertificate {
        path: PathBuf,
        reason: rustls::Error,
    },
    #[error(
        "{}: no private key found (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    #[error("{}: unusable private key: {reason}", path.display())]
    InvalidKey {
        path: PathBuf,
        reason: rustls::Error,
    },
    #[error("{}: the private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS setup failed: {0}")]
    Setup(#[from] rustls::Error),
}

/// The crypto provider every TLS config of the gateway uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The proxy listener's TLS config, replaceable while the listener runs.
pub struct TlsAcceptorSource {
    current: ArcSwap<ServerConfig>,
}

impl fmt::Debug for TlsAcceptorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptorSource").finish_non_exhaustive()
    }
}

impl TlsAcceptorSource {
    /// A source serving `config` until the next [`replace`](Self::replace).
    pub fn new(config: Arc<ServerConfig>) -> TlsAcceptorSource {
        TlsAcceptorSource {
            current: ArcSwap::new(config),
        }
    }

    /// Loads `cert` and `key` (see [`load`](Self::load)) into a new source.
    pub fn from_files(cert: &Path, key: &Path) -> Result<TlsAcceptorSource, TlsError> {
        Ok(TlsAcceptorSource::new(TlsAcceptorSource::load(cert, key)?))
    }

    /// Reads a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or
    /// SEC1) into a server config offering ALPN `h2` and `http/1.1`. Fails, naming the file,
    /// when a file is unreadable, holds no certificate or no usable key, or the key is not the
    /// leaf certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = read_certificates(cert)?;
        let key_der = read_private_key(key)?;
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|reason| TlsError::InvalidKey {
                path: key.to_path_buf(),
                reason,
            })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            // `Unknown`: the provider cannot tell (rustls accepts it too).
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                })
            }
            Err(reason) => {
                return Err(TlsError::InvalidCertificate {
                    path: cert.to_path_buf(),
                    reason,
                })
            }
        }
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Makes `config` the one new connections use; open connections are not touched.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        self.current.store(config);
    }

    /// [`load`](Self::load) then [`replace`](Self::replace); on error the current config stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        self.replace(TlsAcceptorSource::load(cert, key)?);
        Ok(())
    }

    /// The config new connections use right now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// An acceptor for one new connection, with the current config.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current())
    }
}

/// Extra trust anchors for one upstream (its `ca:` file), read and checked at config load.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedCa {
    /// The file, resolved against the config file's directory; clients are shared per path.
    pub path: PathBuf,
    /// Every certificate in the file, each usable as a trust anchor.
    pub certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for TrustedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedCa")
            .field("path", &self.path)
            .field("certs", &self.certs.len())
            .finish()
    }
}

impl TrustedCa {
    /// Reads a PEM file of one or more CA certificates; fails unless each is a usable trust
    /// anchor and there is at least one.
    pub fn load(path: &Path) -> Result<TrustedCa, TlsError> {
        let certs = read_certificates(path)?;
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|reason| TlsError::InvalidCertificate {
                    path: path.to_path_buf(),
                    reason,
                })?;
        }
        Ok(TrustedCa {
            path: path.to_path_buf(),
            certs,
        })
    }
}

/// A client config for upstreams: the webpki (Mozilla) roots, plus `extra`'s anchors when given.
/// Offers ALPN `http/1.1`, the only protocol the gateway speaks upstream.
pub fn upstream_client_config(extra: Option<&TrustedCa>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = extra {
        for cert in &ca.certs {
            roots
                .add(cert.clone())
                .map_err(|reason| TlsError::InvalidCertificate {
                    path: ca.path.clone(),
                    reason,
                })?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM file, in order (other blocks are skipped).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| TlsError::Pem {
            path: path.to_path_buf(),
            reason,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key block of a PEM file.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        reason => TlsError::Pem {
            path: path.to_path_buf(),
            reason,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn self_signed() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_a_matching_pair_with_alpn() {
        let files = Files::new();
        let (cert, key) = self_signed();
        let config =
            TlsAcceptorSource::load(&files.write("c.pem", &cert), &files.write("k.pem", &key))
                .unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn missing_file_is_named() {
        let files = Files::new();
        let (_, key) = self_signed();
        let missing = files.dir.path().join("nope.pem");
        let err = TlsAcceptorSource::load(&missing, &files.write("k.pem", &key)).unwrap_err();
        assert!(
            matches!(&err, TlsError::Read { path, .. } if *path == missing),
            "{err}"
        );
        assert!(err.to_string().contains("nope.pem: cannot read"), "{err}");
    }

    #[test]
    fn pem_without_certificate() {
        let files = Files::new();
        let (_, key) = self_signed();
        // A key where the certificate should be: valid PEM, no CERTIFICATE block.
        let cert = files.write("c.pem", &key);
        let err = TlsAcceptorSource::load(&cert, &files.write("k.pem", &key)).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("c.pem: no certificate"), "{err}");
        let err = TrustedCa::load(&files.write("empty.pem", "not pem at all\n")).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn pem_without_key() {
        let files = Files::new();
        let (cert, _) = self_signed();
        let cert = files.write("c.pem", &cert);
        let err = TlsAcceptorSource::load(&cert, &cert).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
    }

    #[test]
    fn key_of_another_certificate() {
        let files = Files::new();
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let err = TlsAcceptorSource::load(
            &files.write("c.pem", &cert),
            &files.write("k.pem", &other_key),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("k.pem: the private key does not match"),
            "{err}"
        );
    }

    #[test]
    fn replace_swaps_the_config_for_new_connections() {
        let files = Files::new();
        let (cert, key) = self_signed();
        let (c, k) = (files.write("c.pem", &cert), files.write("k.pem", &key));
        let source = TlsAcceptorSource::from_files(&c, &k).unwrap();
        let first = source.current();
        let second = TlsAcceptorSource::load(&c, &k).unwrap();
        source.replace(second.clone());
        assert!(Arc::ptr_eq(&source.current(), &second));
        assert!(!Arc::ptr_eq(&source.current(), &first));
        // A failed reload keeps the current config.
        assert!(source
            .reload(&c, &files.dir.path().join("gone.pem"))
            .is_err());
        assert!(Arc::ptr_eq(&source.current(), &second));
    }

    #[test]
    fn trusted_ca_and_client_config() {
        let files = Files::new();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, key).unwrap();
        let ca = TrustedCa::load(&files.write("ca.pem", &ca.pem())).unwrap();
        assert_eq!(ca.certs.len(), 1);
        assert_eq!(
            upstream_client_config(Some(&ca)).unwrap().alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        assert!(upstream_client_config(None).is_ok());
    }
}
