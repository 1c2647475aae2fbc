//! What Keygate's tests share: a real recording upstream server and a small HTTP client, on
//! loopback ephemeral ports. Used by the proxy's integration tests and the end-to-end tests
//! against a real API server (in `tests/`), and home of `keygate-echo`, the example upstream.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod logs;
pub mod redis;
pub mod scale;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The `main` of a benchmark tool: parsed `args` run through `run` on `runtime`; an error is
/// printed after the tool's name and exits with status 1.
pub fn tool_main<A, F>(
    name: &str,
    mut runtime: tokio::runtime::Builder,
    args: anyhow::Result<A>,
    run: impl FnOnce(A) -> F,
) -> std::process::ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let result = args.and_then(|args| {
        let runtime = runtime.enable_all().build();
        anyhow::Context::context(runtime, "starting the tokio runtime")?.block_on(run(args))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A release binary as `scripts/build-release` wrote it for the image, into
/// `<target>/image-bin` (the tests run from `<target>/debug/deps`).
pub fn release_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.ancestors().nth(3).unwrap().join("image-bin").join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `scripts/build-release` (scripts/test does it)",
        bin.display()
    );
    bin
}

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
