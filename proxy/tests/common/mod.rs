//! Test harness: a real in-process proxy on an ephemeral loopback port, plus the recording
//! upstream and client shared with the end-to-end tests (`keygate_tests`).
#![allow(dead_code)]

pub mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keygate_proxy::edge::Edge;
use keygate_proxy::external::resolve::{Network, Resolve};
use keygate_proxy::pipeline::client::TrustedProxies;
use keygate_proxy::proxy::{RequestLimits, Shared};
use keygate_proxy::server::{ListenerLimits, serve_proxy};
use keygate_proxy::source::{self, Source};
use keygate_proxy::upstream::ClientCache;
pub use keygate_tests::*;
use tokio::net::TcpListener;

/// A proxy serving a manifests folder, watching it for changes.
pub struct Proxy {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub shared: Arc<Shared>,
}

/// A temporary manifests folder holding `manifests` (YAML), as a source.
fn manifests_source(manifests: &str) -> (Source, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keygate.yaml"), manifests).unwrap();
    (Source::Manifests(dir.path().to_path_buf()), dir)
}

impl Proxy {
    /// Starts a proxy on `manifests` (YAML), polling for changes every 20 ms.
    pub async fn start(manifests: &str) -> Proxy {
        let (source, dir) = manifests_source(manifests);
        Proxy::start_on(source, dir).await
    }

    /// [`Proxy::start`] on a listener taking connections as `edge` says, believing the
    /// `X-Forwarded-*` headers of `trusted` peers.
    pub async fn start_edge(manifests: &str, edge: Edge, trusted: TrustedProxies) -> Proxy {
        let (source, dir) = manifests_source(manifests);
        let shared = Shared {
            trusted_proxies: trusted,
            ..Shared::default()
        };
        Proxy::launch(source, dir, shared, ListenerLimits::default(), edge).await
    }

    /// [`Proxy::start`] with upstream names resolved by `resolver` instead of the system.
    pub async fn start_resolving(manifests: &str, resolver: impl Resolve) -> Proxy {
        let (source, dir) = manifests_source(manifests);
        let shared = Shared {
            clients: ClientCache::new(Network::new(Arc::new(resolver))),
            ..Shared::default()
        };
        Proxy::launch(source, dir, shared, ListenerLimits::default(), Edge::default()).await
    }

    /// Starts a proxy on any source; `dir` is kept alive with it.
    pub async fn start_on(source: Source, dir: tempfile::TempDir) -> Proxy {
        Proxy::launch(
            source,
            dir,
            Shared::default(),
            ListenerLimits::default(),
            Edge::default(),
        )
        .await
    }

    /// [`Proxy::start`] with listener and request limits other than the defaults.
    pub async fn start_limited(manifests: &str, listener: ListenerLimits, request: RequestLimits) -> Proxy {
        let (source, dir) = manifests_source(manifests);
        let shared = Shared {
            limits: request,
            ..Shared::default()
        };
        Proxy::launch(source, dir, shared, listener, Edge::default()).await
    }

    async fn launch(
        source: Source,
        dir: tempfile::TempDir,
        shared: Shared,
        limits: ListenerLimits,
        edge: Edge,
    ) -> Proxy {
        let shared = Arc::new(shared);
        let (digest, _) =
            source::load_once(&source, &shared).unwrap_or_else(|e| panic!("test manifests do not load: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(source::watch(
            source,
            shared.clone(),
            Some(digest),
            Duration::from_millis(20),
        ));
        tokio::spawn(serve_proxy(
            listener,
            shared.clone(),
            limits,
            edge,
            std::future::pending(),
        ));
        Proxy { addr, dir, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Replaces the manifests with `yaml` (atomically, by rename, as editors and the kubelet do).
    pub fn rewrite(&self, yaml: &str) {
        let tmp: PathBuf = self.dir.path().join(".keygate.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("keygate.yaml")).unwrap();
    }

    /// Waits until the live config hash differs from `old`.
    pub async fn wait_for_new_config(&self, old: &str) -> String {
        for _ in 0..500 {
            if let Some(c) = self.shared.config.load_full()
                && c.hash != old
            {
                return c.hash.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("config never changed from {old}");
    }

    pub fn hash(&self) -> String {
        self.shared.config.load_full().expect("config loaded").hash.clone()
    }
}

/// A Secret + ProxyRoute manifest pair; `spec` is extra YAML under the route's spec (indented 2).
pub fn route_yaml(name: &str, prefix: &str, upstream: &str, spec: &str) -> String {
    format!(
        "apiVersion: keygate.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  pathPrefix: {prefix}\n  upstream: {upstream}\n{spec}\n---\n"
    )
}

/// A Secret manifest.
pub fn secret_yaml(name: &str, data: &BTreeMap<&str, &str>) -> String {
    let mut s = format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\nstringData:\n");
    for (k, v) in data {
        s.push_str(&format!("  {k}: {v:?}\n"));
    }
    s.push_str("---\n");
    s
}

/// Neither the secrets nor a 12-character prefix of one (a truncated id or link) reached a log.
pub fn assert_nothing_logged(secrets: &[String]) {
    for s in secrets {
        keygate_tests::logs::assert_not_logged(s);
        keygate_tests::logs::assert_not_logged(&s[..12]);
    }
}

/// Sends `copies` of one request at once, spread over `proxies` in turn (`send` sends it to one
/// proxy); `refused` checks every answer that is not `200`. Returns how many were accepted.
pub async fn accepted_among_copies<F, Fut>(
    proxies: &[Arc<Proxy>],
    copies: usize,
    send: F,
    refused: impl Fn(&Got),
) -> usize
where
    F: Fn(Arc<Proxy>) -> Fut,
    Fut: Future<Output = Got> + Send + 'static,
{
    let tasks: Vec<_> = (0..copies)
        .map(|i| tokio::spawn(send(proxies[i % proxies.len()].clone())))
        .collect();
    let mut accepted = 0;
    for t in tasks {
        let got = t.await.unwrap();
        if got.status == http::StatusCode::OK {
            accepted += 1;
        } else {
            refused(&got);
        }
    }
    accepted
}

/// How long a test waits for one step before failing instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(15);

/// Awaits `f`, failing the test instead of hanging when it takes too long.
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {LIMIT:?}"))
}

/// POSTs `body` as `content_type` with extra `headers`.
pub async fn post(url: &str, content_type: &str, body: impl Into<bytes::Bytes>, headers: &[(&str, &str)]) -> Got {
    let mut b = http::Request::post(url).header("content-type", content_type);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(http_body_util::Full::new(body.into())).unwrap()).await
}
