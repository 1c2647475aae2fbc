//! The listeners: the proxy port (HTTP/1.1 and HTTP/2, after the PROXY header and TLS handshake
//! of [`crate::edge`]; connection cap, graceful drain) and the admin port (`/healthz`, `/readyz`,
//! `/metrics`; always cleartext), each on its own socket so probes and scrapes never queue
//! behind client traffic.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};

use crate::body::BoxError;
use crate::edge::{Accepted, Edge, Prefixed};
use crate::h1;
use crate::idle::{Activity, IdleIo, hold_busy};
use crate::pipeline::client::Connection;
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
    /// How long a client may take to send a request head, from its first byte (slowloris), and
    /// a new connection to send its first; the connection is then closed without an answer. On
    /// connections hyper serves it also bounds the idle time between requests, since hyper
    /// starts the clock as soon as it waits for a head.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub keepalive_timeout: Duration,
    /// HTTP/2 streams one client may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may open and reset before Keygate accepts them; past it the
    /// connection gets `GOAWAY ENHANCE_YOUR_CALM` (rapid reset, CVE-2023-44487).
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams Keygate may reset for a client's protocol errors before closing the
    /// connection (the "MadeYouReset" variant of rapid reset).
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            drain: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(75),
            h2_max_concurrent_streams: 100,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
        }
    }
}

/// Serves the proxy on `listener` until `shutdown` resolves, then drains.
pub async fn serve_proxy(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: ListenerLimits,
    edge: Edge,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    serve_worker(listener, shared, limits, edge, permits, shutdown).await
}

/// `n` listening sockets on `addr`, each with `SO_REUSEPORT`, for one worker each: the kernel
/// spreads new connections over them, so workers share no accept queue and no lock. A port of 0
/// is chosen once, by the first socket.
pub fn bind_workers(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        addr = listener.local_addr()?;
        // Registered again by the runtime of the worker that serves it.
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// [`serve_proxy`] for one of several workers whose listeners share `permits`, so
/// `max_connections` bounds them all together.
pub async fn serve_worker(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: ListenerLimits,
    edge: Edge,
    permits: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    // hyper's default is 100; setting any value moves its header array to the heap (~5% slower).
    if shared.limits.max_headers != 100 {
        builder.http1().max_headers(shared.limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams);
    if let Ok(addr) = listener.local_addr() {
        shared.clients.network.add_listener(addr);
    }
    shared.tunnels.set_grace(limits.drain);
    // On TLS, ALPN has already chosen the protocol: a connection that agreed on h2 is served as
    // HTTP/2 only, so bytes that are not the HTTP/2 preface end it (RFC 9113 §3.4) instead of
    // being read as an HTTP/1.1 request, which the sniffing builder would do.
    let serving = Arc::new(Serving {
        any: builder.clone(),
        h2: builder.http2_only(),
        h1: h1::Settings {
            header_read_timeout: limits.header_read_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            max_header_bytes: limits.max_header_bytes,
            max_headers: shared.limits.max_headers,
        },
    });
    let edge = Arc::new(edge);
    // Every connection holds a receiver: `true` asks it to finish, and the sender's `closed()`
    // says they all have.
    let (drain, draining) = watch::channel(false);
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
        let (shared, edge, serving, draining) = (shared.clone(), edge.clone(), serving.clone(), draining.clone());
        tokio::spawn(async move {
            // The PROXY header and the TLS handshake come first, off the accept loop.
            if let Some((io, conn)) = edge.accept(stream, peer).await {
                let context = ConnContext { shared, conn, draining };
                match io {
                    Accepted::Plain(io) => serve_connection(&serving, false, io, context).await,
                    Accepted::Tls(io) => {
                        let h2 = io.get_ref().1.alpn_protocol() == Some(b"h2");
                        serve_connection(&serving, h2, io, context).await
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    drop(draining);
    tracing::info!("draining connections");
    let _ = drain.send(true);
    // WebSocket tunnels never finish by themselves: close them now, and wait for them to go.
    let drained = async {
        tokio::join!(drain.closed(), shared.tunnels.close_all());
    };
    tokio::select! {
        () = drained => tracing::info!("all connections drained"),
        () = tokio::time::sleep(limits.drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// How accepted connections are served.
struct Serving {
    /// Sniffs the HTTP/2 preface: what Keygate's HTTP/1.1 side hands over.
    any: auto::Builder<TokioExecutor>,
    /// HTTP/2 only, for TLS connections whose ALPN agreed on `h2`.
    h2: auto::Builder<TokioExecutor>,
    /// Keygate's own HTTP/1.1 side, which takes every connection not agreed on h2 first. Its
    /// keep-alive timeout bounds hyper's connections too.
    h1: h1::Settings,
}

/// What serving one connection needs besides its socket.
struct ConnContext {
    shared: Arc<Shared>,
    conn: Connection,
    /// Turns `true` when the listener drains.
    draining: watch::Receiver<bool>,
}

/// Serves one accepted connection until it ends: [`h1`] first, unless ALPN chose HTTP/2, and
/// hyper for whatever `h1` hands over (HTTP/2 by preface, upgrades, odd heads).
async fn serve_connection<I>(serving: &Serving, h2: bool, io: I, context: ConnContext)
where
    I: h1::Duplex + Unpin + Send + Sync + 'static,
{
    // hyper's connection state is large; boxed, it is allocated only for the connections that
    // need it, not reserved in every connection's task.
    if h2 {
        return Box::pin(serve_hyper(serving, true, io, context)).await;
    }
    let (shared, conn) = (context.shared.clone(), context.conn);
    let ended = h1::serve(io, &serving.h1, context.draining.clone(), move |req| {
        handle(shared.clone(), req, conn)
    })
    .await;
    if let h1::Ended::Handoff(io, read) = ended {
        Box::pin(serve_hyper(serving, false, Prefixed::new(read, io), context)).await
    }
}

/// Serves HTTP/1.1 or HTTP/2 (by ALPN or preface) with hyper until the connection ends, or
/// until it has had no request in flight for the keep-alive timeout.
async fn serve_hyper<I>(serving: &Serving, h2: bool, io: I, context: ConnContext)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnContext { shared, conn, draining } = context;
    let activity = Activity::default();
    let io = IdleIo::new(io, activity.clone(), serving.h1.keepalive_timeout);
    let service = service_fn(move |mut req: Request<Incoming>| {
        let shared = shared.clone();
        let busy = activity.begin();
        if req.headers().contains_key(header::UPGRADE) {
            // A WebSocket tunnel outlives its request; it keeps the connection busy itself.
            req.extensions_mut().insert(activity.clone());
        }
        let req = req.map(|body| body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
        async move { Ok::<_, Infallible>(handle(shared, req, conn).await.map(|b| hold_busy(b, busy))) }
    });
    // Upgrades (WebSocket) exist only in HTTP/1.1, and hyper-util's HTTP/2-only mode applies
    // only without them.
    let ended = if h2 {
        let connection = serving.h2.serve_connection(TokioIo::new(io), service).into_owned();
        until_drained(connection, draining, |c| c.graceful_shutdown()).await
    } else {
        let connection = serving
            .any
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        until_drained(connection, draining, |c| c.graceful_shutdown()).await
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Runs a hyper connection to its end, asking it to finish gracefully once `draining` turns true.
/// A hand-written future rather than an `async fn`: rustc cannot prove an `async fn` holding
/// hyper's connection across an await `Send` for every lifetime.
struct UntilDrained<C> {
    connection: Pin<Box<C>>,
    draining: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    graceful: fn(Pin<&mut C>),
}

fn until_drained<C: Future>(
    connection: C,
    mut draining: watch::Receiver<bool>,
    graceful: fn(Pin<&mut C>),
) -> UntilDrained<C> {
    UntilDrained {
        connection: Box::pin(connection),
        draining: Some(Box::pin(async move {
            let _ = draining.wait_for(|d| *d).await;
        })),
        graceful,
    }
}

impl<C: Future> Future for UntilDrained<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<C::Output> {
        let this = &mut *self;
        if let Some(draining) = this.draining.as_mut()
            && draining.as_mut().poll(cx).is_ready()
        {
            this.draining = None;
            (this.graceful)(this.connection.as_mut());
        }
        this.connection.as_mut().poll(cx)
    }
}

/// A plain answer from an admin endpoint.
pub struct Plain {
    /// Status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Plain {
    /// `200 text/plain`.
    pub fn ok(body: impl Into<String>) -> Plain {
        Plain {
            status: StatusCode::OK,
            content_type: "text/plain",
            body: body.into(),
        }
    }

    /// Prometheus text exposition.
    pub fn metrics(body: String) -> Plain {
        Plain {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body,
        }
    }

    /// `404` naming the endpoints there are.
    pub fn not_found(endpoints: &str) -> Plain {
        Plain {
            status: StatusCode::NOT_FOUND,
            content_type: "text/plain",
            body: format!("not found; try {endpoints}\n"),
        }
    }
}

/// Serves small HTTP/1.1 endpoints, answered by `handler` from the path, until `shutdown`.
/// Shared by the proxy's and the operator's admin ports.
pub async fn serve_plain<F>(listener: TcpListener, shutdown: impl Future<Output = ()>, handler: F)
where
    F: Fn(&str) -> Plain + Clone + Send + Sync + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let plain = handler(req.uri().path());
                async move {
                    let mut resp = Response::new(
                        Full::new(Bytes::from(plain.body))
                            .map_err(|never| match never {})
                            .boxed(),
                    );
                    *resp.status_mut() = plain.status;
                    resp.headers_mut()
                        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(plain.content_type));
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves the proxy's admin endpoints until `shutdown` resolves.
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    if let Ok(addr) = listener.local_addr() {
        shared.clients.network.add_listener(addr);
    }
    serve_plain(listener, shutdown, move |path| admin(&shared, path)).await
}

fn admin(shared: &Shared, path: &str) -> Plain {
    match path {
        "/healthz" => Plain::ok("ok\n"),
        "/readyz" => match shared.config.load().as_ref() {
            Some(c) => Plain::ok(format!("ready: config {} with {} routes\n", c.hash, c.route_count())),
            None => Plain {
                status: StatusCode::SERVICE_UNAVAILABLE,
                content_type: "text/plain",
                body: "not ready: no configuration loaded yet\n".to_string(),
            },
        },
        "/metrics" => Plain::metrics(shared.metrics.render()),
        _ => Plain::not_found("/healthz, /readyz or /metrics"),
    }
}
