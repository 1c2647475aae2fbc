//! Test harness: real hyper upstream servers and a real in-process proxy, on ephemeral loopback
//! ports. Upstreams record what they received so tests assert on what the API would see.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_proxy::proxy::Shared;
use keygate_proxy::server::{ListenerLimits, serve_proxy};
use keygate_proxy::source::{self, Source};
use tokio::net::TcpListener;

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

type Handler = Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync>;

/// A real HTTP/1.1 + HTTP/2 (cleartext) upstream that records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Answers 200 with `upstream ok`.
    pub async fn ok() -> Upstream {
        Upstream::start(|_| async { Response::new(Full::new(Bytes::from_static(b"upstream ok"))) }).await
    }

    /// Answers with `handler`'s response.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |s| Box::pin(handler(s)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let s = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().unwrap().push(s.clone());
                            Ok::<_, Infallible>(handler(s).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A proxy serving a manifests folder, watching it for changes.
pub struct Proxy {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxy on `manifests` (YAML), polling for changes every 20 ms.
    pub async fn start(manifests: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keygate.yaml"), manifests).unwrap();
        let source = Source::Manifests(dir.path().to_path_buf());
        Proxy::start_on(source, dir).await
    }

    /// Starts a proxy on any source; `dir` is kept alive with it.
    pub async fn start_on(source: Source, dir: tempfile::TempDir) -> Proxy {
        let shared = Arc::new(Shared::default());
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
            ListenerLimits::default(),
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

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Response status, headers and body, collected.
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// `proxy_error.code` of a Keygate error answer.
    pub fn error_code(&self) -> String {
        self.json()["proxy_error"]["code"]
            .as_str()
            .expect("a proxy_error")
            .to_string()
    }
}

/// Sends `req` and collects the answer.
pub async fn send(req: Request<Full<Bytes>>) -> Got {
    let resp = client().request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// GET `url` with extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(Bytes::new())).unwrap()).await
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
