//! HTTPS for the metrics endpoint, with the certificate reloaded when its files change.
//!
//! Serving certificates come from Secrets mounted as files; Kubernetes replaces them in place
//! (an atomic symlink swap) when the certificate is rotated, and the sidecar must pick the new
//! one up without a restart (a restart would fail virt-operator's canary rollout). So every
//! handshake stats both files (two `stat` calls, cheap next to a handshake); when either
//! changed, the pair is read again. A pair that does not load (half-written, key and
//! certificate not matching yet) keeps the previous certificate in service and is logged once
//! per change; the next change is tried again.

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} do not make a usable pair: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The rustls configuration of the metrics endpoint: TLS 1.2 and 1.3 with ring, no client
/// authentication (KubeVirt asks for none on /metrics either), HTTP/1.1 only.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = ReloadingCert::load(cert, key, provider.clone())?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

/// What identifies one version of a file: a rotated Secret changes at least one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        // `metadata` follows symlinks: a Secret volume swaps `..data`, so the target changes.
        Ok(Self::from_metadata(&std::fs::metadata(path)?))
    }

    fn from_metadata(metadata: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: metadata.ino(),
        }
    }
}

/// A certificate resolver that reloads its key pair when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    /// The stamps of the files `current` was loaded from, or of a pair that failed to load
    /// (so a bad pair is read and logged once, not on every handshake).
    seen: (FileStamp, FileStamp),
}

impl ReloadingCert {
    /// Loads the pair; at start-up a bad pair is an error (nothing to fall back to).
    pub fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let seen = stamps(cert, key)?;
        let current = Arc::new(load_pair(cert, key, &provider)?);
        Ok(Self {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            provider,
            state: Mutex::new(State { current, seen }),
        })
    }

    /// The pair to present now, reloaded first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            // A panic elsewhere cannot leave `State` half-updated (it is replaced whole).
            Err(poisoned) => poisoned.into_inner(),
        };
        let stamps = match stamps(&self.cert_path, &self.key_path) {
            Ok(stamps) => stamps,
            Err(error) => {
                // Mid-rotation the files can be briefly missing; keep serving.
                tracing::debug!(%error, "cannot stat the serving certificate; keeping the current one");
                return state.current.clone();
            }
        };
        if stamps != state.seen {
            match load_pair(&self.cert_path, &self.key_path, &self.provider) {
                Ok(pair) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                    state.current = Arc::new(pair);
                }
                Err(error) => {
                    tracing::warn!(%error, "new serving certificate rejected; keeping the previous one");
                }
            }
            state.seen = stamps;
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamps(cert: &Path, key: &Path) -> Result<(FileStamp, FileStamp), TlsError> {
    let stamp = |path: &Path| {
        FileStamp::of(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((stamp(cert)?, stamp(key)?))
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private_key, provider).map_err(|source| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}
