//! The listeners: the proxy port (HTTP/1.1 and HTTP/2, connection cap, graceful drain) and the
//! admin port (`/healthz`, `/readyz`, `/metrics`), each on its own socket so probes and scrapes
//! never queue behind client traffic.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::Body;
use crate::proxy::{Shared, handle};

/// Limits of the proxy listener.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Most connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            drain: Duration::from_secs(30),
        }
    }
}

/// Serves the proxy on `listener` until `shutdown` resolves, then drains.
pub async fn serve_proxy(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                max = limits.max_connections,
                "connection limit reached; closing new connection"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(shared, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("draining connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(limits.drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(admin(&shared, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => match shared.config.load().as_ref() {
            Some(c) => (
                StatusCode::OK,
                "text/plain",
                format!("ready: config {} with {} routes\n", c.hash, c.route_count()),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: no configuration loaded yet\n".to_string(),
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz or /metrics\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}
