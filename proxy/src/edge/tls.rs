//! TLS on the proxy listener, from the PEM files of a mounted `kubernetes.io/tls` Secret.
//!
//! The certificate is served through a [`ResolvesServerCert`] over an `ArcSwap`, so a rotated
//! pair is used by the next handshake while connections already open keep the session they
//! negotiated. The files are polled like the configuration (see [`crate::source`]): the kubelet
//! swaps a `..data` symlink, which inotify on the visible names does not report reliably. A new
//! pair that does not load is refused and the old one keeps serving.
//!
//! Key material never reaches an error or a log line: key parse errors are reported by kind and
//! path only, whatever the PEM parser had to say about the bytes.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::proxy::Shared;

/// The certificate chain and key files (`tls.crt`, `tls.key`).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The oldest TLS version the listener accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl FromStr for MinVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<MinVersion, String> {
        match s {
            "1.2" => Ok(MinVersion::Tls12),
            "1.3" => Ok(MinVersion::Tls13),
            other => Err(format!("{other:?} is not a TLS version Keygate serves; use 1.2 or 1.3")),
        }
    }
}

/// Why a certificate pair cannot be served; each names the file and what to give instead.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {flag} {}: {cause}", path.display())]
    Read {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// No certificate in the certificate file.
    #[error(
        "--tls-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the tls.crt of a kubernetes.io/tls Secret",
        .0.display()
    )]
    NoCertificate(PathBuf),
    /// No usable key in the key file.
    #[error(
        "--tls-key {} holds no usable PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC); give the tls.key of a kubernetes.io/tls Secret",
        .0.display()
    )]
    NoKey(PathBuf),
    /// The key is not the certificate's.
    #[error(
        "the key in --tls-key {} does not belong to the certificate in --tls-cert {}; give the tls.crt and tls.key of the same Secret",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// The live certificate, swapped whole when the files change.
pub struct Certs {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// One read of the pair: the loaded key and a digest of both files, to tell a change.
struct Pair {
    key: Arc<CertifiedKey>,
    digest: [u8; 32],
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        cause,
    })
}

/// Both files as read, and a digest of them to tell a change.
struct Contents {
    digest: [u8; 32],
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read_both(files: &TlsFiles) -> Result<Contents, TlsError> {
    let cert = read("--tls-cert", &files.cert)?;
    let key = read("--tls-key", &files.key)?;
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(&cert);
    h.update(&key);
    Ok(Contents {
        digest: h.finalize().into(),
        cert,
        key,
    })
}

fn parse(files: &TlsFiles, cert: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate(files.cert.clone()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let no_key = || TlsError::NoKey(files.key.clone());
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| no_key())?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| no_key())?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
    })?;
    Ok(Arc::new(certified))
}

fn load(files: &TlsFiles) -> Result<Pair, TlsError> {
    let read = read_both(files)?;
    Ok(Pair {
        key: parse(files, &read.cert, &read.key)?,
        digest: read.digest,
    })
}

/// A short, public name for the live certificate in logs: the start of its SHA-256.
fn fingerprint(key: &CertifiedKey) -> String {
    key.end_entity_cert()
        .map(|c| hex::encode(&Sha256::digest(c.as_ref())[..8]))
        .unwrap_or_default()
}

impl Certs {
    /// Loads the pair, or says which file is wrong and how.
    pub fn load(files: TlsFiles) -> Result<(Arc<Certs>, CertWatch), TlsError> {
        let pair = load(&files)?;
        tracing::info!(cert = %files.cert.display(), fingerprint = %fingerprint(&pair.key), "TLS certificate loaded");
        let certs = Arc::new(Certs {
            files,
            current: ArcSwap::new(pair.key),
        });
        let watch = CertWatch {
            certs: certs.clone(),
            last: pair.digest,
            unreadable: None,
        };
        Ok((certs, watch))
    }

    /// A server configuration serving these certificates: TLS 1.2 (unless `min` is 1.3) and 1.3,
    /// ALPN `h2` and `http/1.1`.
    pub fn server_config(self: &Arc<Certs>, min: MinVersion) -> Arc<rustls::ServerConfig> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match min {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .expect("the ring provider supports TLS 1.2 and 1.3")
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Looks at the files for changes; see [`CertWatch::run`].
#[derive(Debug)]
pub struct CertWatch {
    certs: Arc<Certs>,
    last: [u8; 32],
    /// The last read failure reported, so a missing file is reported once.
    unreadable: Option<String>,
}

/// What one poll of the files found.
enum Seen {
    Unchanged,
    Loaded(Pair),
    /// The digest of the refused pair, when both files could be read.
    Refused(Option<[u8; 32]>, TlsError),
}

impl CertWatch {
    fn poll(files: &TlsFiles, last: [u8; 32]) -> Seen {
        match read_both(files) {
            Ok(read) if read.digest == last => Seen::Unchanged,
            Ok(read) => match parse(files, &read.cert, &read.key) {
                Ok(key) => Seen::Loaded(Pair {
                    key,
                    digest: read.digest,
                }),
                Err(e) => Seen::Refused(Some(read.digest), e),
            },
            Err(e) => Seen::Refused(None, e),
        }
    }

    /// Polls the files every `interval` forever, serving each new pair that loads and counting
    /// every change in `keygate_tls_reloads_total`.
    pub async fn run(mut self, shared: Arc<Shared>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let (files, last) = (self.certs.files.clone(), self.last);
            // Reading and parsing are blocking work; keep them off the request threads.
            let seen = tokio::task::spawn_blocking(move || CertWatch::poll(&files, last))
                .await
                .expect("certificate loader does not panic");
            match seen {
                Seen::Unchanged => {}
                Seen::Loaded(pair) => {
                    self.last = pair.digest;
                    tracing::info!(
                        cert = %self.certs.files.cert.display(),
                        fingerprint = %fingerprint(&pair.key),
                        "TLS certificate reloaded; new connections use it"
                    );
                    self.certs.current.store(pair.key);
                    shared.metrics.tls_reload(true);
                }
                // A broken pair is refused once, not at every poll; a file that cannot be read
                // is looked at again, as the kubelet may be between its writes.
                Seen::Refused(digest, e) => {
                    if let Some(digest) = digest {
                        self.last = digest;
                    }
                    if digest.is_some() || self.unreadable.as_deref() != Some(&e.to_string()) {
                        shared.metrics.tls_reload(false);
                        tracing::error!(error = %e, "TLS certificate change refused; still serving the previous certificate");
                    }
                    self.unreadable = digest.is_none().then(|| e.to_string());
                }
            }
        }
    }
}
