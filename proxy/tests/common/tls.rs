//! Real TLS upstreams for tests: a private CA minted with rcgen, and a recording HTTPS (or
//! cleartext) server on a loopback ephemeral port that counts connections and handshakes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A private CA, made fresh for each test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "Keygate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, name: &str) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        (cert, key)
    }

    /// A server certificate for `name`, signed by this CA, and its key.
    pub fn leaf(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let (cert, key) = self.issue(name);
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// [`TestCa::leaf`] as a `kubernetes.io/tls` Secret holds it: PEM certificate, PEM key, and
    /// the certificate's DER to compare with what a client was served.
    pub fn leaf_pem(&self, name: &str) -> (String, String, CertificateDer<'static>) {
        let (cert, key) = self.issue(name);
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// A TLS client trusting only this CA, speaking `versions` and offering `alpn`.
    pub fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// What a test server saw of one request.
#[derive(Clone, Debug)]
pub struct Hit {
    pub version: Version,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
}

/// A real upstream that counts the TCP connections it accepts and records every request; over
/// TLS (offering ALPN `h2` and `http/1.1`) or cleartext HTTP/1.1 only.
pub struct Server {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// The ALPN protocol of each completed TLS handshake.
    alpn: Arc<Mutex<Vec<Option<String>>>>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Server {
    /// HTTPS, HTTP/1.1 and HTTP/2 (by ALPN), serving `cert`.
    pub async fn tls(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Server {
        Server::tls_versions(cert, key, rustls::DEFAULT_VERSIONS).await
    }

    /// [`Server::tls`] speaking only the TLS `versions` given.
    pub async fn tls_versions(
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Server {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Server::start(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    /// Cleartext, HTTP/1.1 only.
    pub async fn http1() -> Server {
        Server::start(None).await
    }

    async fn start(tls: Option<TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            alpn: Arc::default(),
            hits: Arc::default(),
        };
        let (accepted, alpn, hits) = (server.accepted.clone(), server.alpn.clone(), server.hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (tls, alpn, hits) = (tls.clone(), alpn.clone(), hits.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let hits = hits.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let _ = body.collect().await;
                            let path_and_query =
                                parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default();
                            hits.lock().unwrap().push(Hit {
                                version: parts.version,
                                path_and_query,
                                headers: parts.headers,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"upstream ok"))))
                        }
                    });
                    match tls {
                        Some(acceptor) => {
                            // A refused handshake (the proxy did not trust us) simply ends here.
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let negotiated = stream
                                .get_ref()
                                .1
                                .alpn_protocol()
                                .map(|p| String::from_utf8_lossy(p).into_owned());
                            alpn.lock().unwrap().push(negotiated);
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        server
    }

    /// The URL by name, so the certificate's name is what gets checked.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub fn alpn(&self) -> Vec<Option<String>> {
        self.alpn.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
