//! Upstream HTTP clients: pooled, HTTP/1.1 and HTTP/2 (by ALPN or prior knowledge), rustls with
//! the public webpki roots plus a route's own CA bundle. Clients are cached by what makes them
//! differ, so connection pools survive config reloads. Every client resolves names through the
//! cache's [`Network`]; a client for client-named destinations also guards each address (see
//! [`crate::external`]). Each worker thread has its own pool ([`Clients`]): a connection is
//! only ever polled by the event loop that opened it.
//!
//! Requests to a fixed cleartext upstream go through Keygate's own HTTP/1.1 client ([`h1`]), in
//! the request's own task; TLS, HTTP/2, upgrades and client-named destinations go through
//! hyper's.

pub mod h1;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{Either, FutureExt, TryFutureExt};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keygate_crds::resources::route::UpstreamProtocol;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::body::Body;
use crate::external::Allowlist;
use crate::external::guard::Guard;
use crate::external::resolve::{Network, Resolver};

/// A pooled client for one kind of upstream.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector<Resolver>>, Body>;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `i`: its requests take the `i`th client of each
/// [`Clients`]. Threads never marked are worker 0.
pub fn enter_worker(i: usize) {
    WORKER.set(i);
}

/// One pooled client per worker, for one kind of upstream. A worker reusing a connection another
/// worker's event loop polls would have every answer on it wake that other thread first: two
/// workers then cost a quarter more CPU per request than one (BENCHMARKS.md).
#[derive(Clone)]
pub struct Clients(Arc<[Worker]>);

/// One worker's clients.
struct Worker {
    hyper: UpstreamClient,
    /// For fixed upstreams that may speak HTTP/1.1.
    own: Option<Arc<h1::Pool>>,
}

impl Clients {
    /// Sends `req` upstream from the calling worker's pools.
    pub fn send(&self, req: Request<Body>) -> impl Future<Output = Result<Response<Body>, SendError>> + Send + '_ {
        let worker = &self.0[WORKER.get() % self.0.len()];
        // Chosen before the future starts, so it holds one client's state, not both.
        match &worker.own {
            Some(own) if h1::suits(&req) => Either::Left(own.send(req).map_err(SendError::Own)),
            _ => Either::Right(worker.hyper.request(req).map(|sent| match sent {
                Ok(resp) => Ok(resp.map(|body| body.map_err(Into::into).boxed())),
                Err(e) => Err(SendError::Hyper(e)),
            })),
        }
    }
}

/// Why an upstream request failed, from either client.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Hyper(hyper_util::client::legacy::Error),
    #[error(transparent)]
    Own(h1::Error),
}

impl SendError {
    /// Whether no connection was made.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Hyper(e) => e.is_connect(),
            SendError::Own(e) => e.is_connect(),
        }
    }
}

/// What makes two routes need different clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// SHA-256 of the extra CA bundle, if any (the bundle itself is not kept in the key).
    pub ca_bundle: Option<[u8; 32]>,
    /// Protocol choice (`UpstreamProtocol as u8`).
    pub protocol: u8,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// For client-named destinations: the addresses the allowlist admits.
    pub guard: Option<Guard>,
    /// TLS 1.3 only (`minTls: "1.3"`).
    pub tls13_only: bool,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA bundle holds no usable certificate.
    #[error("the CA bundle holds no PEM certificate")]
    EmptyCaBundle,
    /// A certificate in the CA bundle is malformed.
    #[error("the CA bundle is not valid PEM: {0}")]
    BadCaBundle(String),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Tls(#[from] rustls::Error),
}

/// Clients by [`ClientKey`], shared across config generations.
pub struct ClientCache {
    clients: Mutex<HashMap<ClientKey, Clients>>,
    /// How every client resolves names, and the proxy's own listeners.
    pub network: Network,
    /// Worker threads, each with its own pool per client.
    workers: usize,
}

impl Default for ClientCache {
    fn default() -> Self {
        ClientCache::new(Network::default())
    }
}

impl ClientCache {
    /// A cache whose clients resolve and guard through `network`, for one worker.
    pub fn new(network: Network) -> ClientCache {
        ClientCache {
            clients: Mutex::default(),
            network,
            workers: 1,
        }
    }

    /// The same cache for `n` workers (see [`enter_worker`]).
    pub fn for_workers(self, n: usize) -> ClientCache {
        ClientCache {
            workers: n.max(1),
            ..self
        }
    }

    /// The client for a fixed upstream with these settings, built on first use.
    pub fn get(
        &self,
        ca_pem: Option<&str>,
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
    ) -> Result<(ClientKey, Clients), ClientError> {
        self.get_keyed(ca_pem, protocol, connect_timeout, None, false)
    }

    /// The client for destinations `allowlist` admits: guarded resolution, its TLS floor.
    pub fn get_external(
        &self,
        ca_pem: Option<&str>,
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
        allowlist: &Allowlist,
    ) -> Result<(ClientKey, Clients), ClientError> {
        let guard = Some(allowlist.guard.clone());
        self.get_keyed(ca_pem, protocol, connect_timeout, guard, allowlist.tls13_only)
    }

    fn get_keyed(
        &self,
        ca_pem: Option<&str>,
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
        guard: Option<Guard>,
        tls13_only: bool,
    ) -> Result<(ClientKey, Clients), ClientError> {
        let key = ClientKey {
            ca_bundle: ca_pem.map(|pem| Sha256::digest(pem.as_bytes()).into()),
            protocol: protocol as u8,
            connect_timeout,
            guard,
            tls13_only,
        };
        let mut clients = self.clients.lock().expect("client cache lock");
        if let Some(c) = clients.get(&key) {
            return Ok((key, c.clone()));
        }
        let tls = tls_config(&key, ca_pem)?;
        // Client-named destinations stay with hyper's client, whose connector is where their
        // guard is proven in every test (see `crate::external`).
        let own = key.guard.is_none() && protocol != UpstreamProtocol::Http2;
        let client = Clients(
            (0..self.workers)
                .map(|_| Worker {
                    hyper: build_client(&key, tls.clone(), protocol, &self.network),
                    own: own.then(|| h1::Pool::new(Resolver::new(self.network.clone(), None), connect_timeout)),
                })
                .collect(),
        );
        clients.insert(key.clone(), client.clone());
        Ok((key, client))
    }

    /// Drops clients no route of the live config uses, closing their idle connections.
    pub fn retain(&self, used: &[ClientKey]) {
        self.clients
            .lock()
            .expect("client cache lock")
            .retain(|k, _| used.contains(k));
    }
}

/// `minTls: "1.3"`; otherwise rustls' defaults (1.3 preferred, 1.2 accepted, nothing older).
const TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The TLS settings of clients keyed `key`: read once, shared by every worker's client.
fn tls_config(key: &ClientKey, ca_pem: Option<&str>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ClientError::BadCaBundle(e.to_string()))?;
        if certs.is_empty() {
            return Err(ClientError::EmptyCaBundle);
        }
        for cert in certs {
            roots.add(cert)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(if key.tls13_only {
            TLS13_ONLY
        } else {
            rustls::DEFAULT_VERSIONS
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

fn build_client(
    key: &ClientKey,
    tls: rustls::ClientConfig,
    protocol: UpstreamProtocol,
    network: &Network,
) -> UpstreamClient {
    let mut http = HttpConnector::new_with_resolver(Resolver::new(network.clone(), key.guard.clone()));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));

    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = match protocol {
        UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(protocol == UpstreamProtocol::Http2);
    client.build(connector)
}
