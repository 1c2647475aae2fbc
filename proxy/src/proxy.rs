//! One request, start to finish: pick the live config and route, run the pipeline stages,
//! forward upstream with timeouts, and turn any failure into its `proxy_error` response. Also
//! the one place requests are counted and access-logged.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::body::{Body, LimitedBody};
use crate::config::{Config, LiveRoute};
use crate::error::ProxyError;
use crate::external::{self, resolve::Refused};
use crate::idle::StallingBody;
use crate::metrics::Metrics;
use crate::pipeline::auth::Caller;
use crate::pipeline::client::{self, Client, Connection, TrustedProxies};
use crate::pipeline::cookie::Step;
use crate::pipeline::cors::Cors;
use crate::pipeline::path::{self, BadPath};
use crate::pipeline::{auth, chain, csrf, limits, ratelimit, request, response, trace, transform};
use crate::store::Stores;
use crate::upstream::{ClientCache, SendError};
use crate::vault;
use crate::websocket::{self, Tunnels};

/// What every connection shares: the one live config, metrics, and upstream clients.
#[derive(Default)]
pub struct Shared {
    /// The live configuration; `None` until the first one loads. Each request takes its own
    /// `Arc`, so a reload never changes the config under a request in flight.
    pub config: ArcSwapOption<Config>,
    /// Metrics.
    pub metrics: Metrics,
    /// Upstream clients, kept across reloads.
    pub clients: ClientCache,
    /// Session, token and rate-limit stores, kept across reloads.
    pub stores: Stores,
    /// Peers whose `X-Forwarded-*` headers are believed (`--trusted-proxies`).
    pub trusted_proxies: TrustedProxies,
    /// Per-request limits set by the command line.
    pub limits: RequestLimits,
    /// Open WebSocket tunnels, closed at shutdown.
    pub tunnels: Arc<Tunnels>,
}

/// Limits every request meets, whatever its route.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Most header fields in a request; more get `431 TOO_MANY_HEADERS` (HTTP/1.1 heads past it
    /// are refused by hyper first, with a bare 431).
    pub max_headers: usize,
    /// How long a request body may stall while the upstream waits for it; then `408`.
    pub body_idle_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_headers: 100,
            body_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves one request.
///
/// The request path's functions return `async move` blocks rather than being `async fn`s: an
/// `async fn` keeps each argument twice in its future (the argument, and the local it moves
/// into), and this future is built, moved and boxed on every request. The future is declared
/// `Send` here, where the borrows are concrete: a generic caller would otherwise ask rustc to
/// prove it for every lifetime, which it cannot.
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
pub fn handle(
    shared: Arc<Shared>,
    mut req: Request<Body>,
    conn: Connection,
) -> impl Future<Output = Response<Body>> + Send {
    async move {
        // The clock is read for the access log's sake only.
        let started = tracing::enabled!(target: "keygate::access", tracing::Level::INFO).then(Instant::now);
        let client = client::resolve(&conn, req.headers(), &shared.trusted_proxies);
        // Counted before Keygate adds a traceparent of its own.
        let too_many_headers = req.headers().len() > shared.limits.max_headers;
        let trace_id = trace::ensure(req.headers_mut());
        // Before anything reads the path: routing and every stage see its one canonical spelling.
        let normalized = path::normalize_request(&mut req);
        // Paths only: query strings may carry tokens and never reach the log. Copied now, since
        // the request is consumed before the line is written.
        let access = started.map(|started| (started, req.method().clone(), req.uri().path().to_string()));
        let config = shared.config.load_full().filter(|_| normalized.is_ok());
        // Keygate's own endpoints (tokenize, session create) come before any route.
        let path = req.uri().path();
        let endpoint = config.as_ref().and_then(|c| c.vault.endpoint(path)).cloned();
        let create = config
            .as_ref()
            .filter(|_| endpoint.is_none())
            .and_then(|c| c.session_create(path))
            .cloned();
        // The route whose prefix covers the path; Keygate's own endpoints take its CORS rules, so a
        // page on another origin can create a session.
        let host = crate::router::request_host(&req);
        let covering = config.as_ref().and_then(|c| c.route(host.as_deref(), path)).cloned();
        let own = endpoint.is_some() || create.is_some();
        let route = covering.clone().filter(|_| !own);
        // Encoded slashes are the one spelling a route may opt in to; Keygate's own endpoints never do.
        let normalized = normalized.and_then(|encoded_slash| match &route {
            Some(r) if encoded_slash && !r.spec.allow_encoded_slashes => Err(BadPath::EncodedSlash),
            None if encoded_slash => Err(BadPath::EncodedSlash),
            _ => Ok(()),
        });
        // CORS headers go on every answer of a CORS route, Keygate's own errors included, so the
        // page can read them; the Origin is kept before the request is consumed.
        let preflight = Cors::is_preflight_request(&req);
        let cors = covering.as_ref().and_then(|r| r.cors.as_ref());
        let cors_origin = cors
            .filter(|_| !preflight)
            .map(|_| req.headers().get(http::header::ORIGIN).cloned());
        let result = if let Err(bad) = normalized {
            Err(ProxyError::from(bad))
        } else if too_many_headers {
            Err(ProxyError::TooManyHeaders(shared.limits.max_headers))
        } else if let Some(cors) = cors.filter(|_| own && preflight) {
            cors.preflight(&req.into_parts().0)
        } else {
            // Keygate's own endpoints are boxed: their state would otherwise be part of every
            // request's future (see `pipeline::Stage`).
            match (&config, &route, &endpoint, &create) {
                (_, _, Some(endpoint), _) => Box::pin(endpoint.serve(&shared.metrics, req)).await,
                (_, _, _, Some(policy)) => {
                    Box::pin(create_session(&shared, policy, covering.as_deref(), req, client.addr)).await
                }
                (None, ..) => Err(ProxyError::NotReady),
                (Some(_), None, ..) => Err(ProxyError::RouteNotFound),
                (Some(_), Some(route), ..) => forward(&shared, route, req, &client).await,
            }
        };
        let route_id = route.as_ref().map(|r| &r.id).or(endpoint.as_ref().map(|e| e.id()));
        let (mut resp, code) = match result {
            Ok(resp) => (resp, None),
            Err(e) => {
                let code = e.code();
                (e.into_response(route_id.map(|id| &**id)), Some(code))
            }
        };
        if let (Some(cors), Some(origin)) = (cors, cors_origin) {
            cors.decorate(origin.as_ref(), resp.headers_mut());
        }
        let status = resp.status().as_u16();
        match &route {
            Some(r) => shared.metrics.route_request(&r.meters, &r.id, status),
            None => shared.metrics.request(route_id, status),
        }
        if let Some((started, method, path)) = access {
            tracing::info!(
                target: "keygate::access",
                client = %client.addr,
                method = %method,
                path = %path,
                route = route_id.map_or("-", |id| &**id),
                status,
                error = code.unwrap_or(""),
                trace_id = %trace_id,
                ms = started.elapsed().as_secs_f64() * 1000.0,
            );
        }
        resp
    }
}

/// Session creation counts against the rate limit of the route covering the create path (per
/// app, or per client address), so a flood of creations cannot fill the session store.
async fn create_session(
    shared: &Shared,
    policy: &chain::ChainPolicy,
    covering: Option<&LiveRoute>,
    req: Request<Body>,
    client: IpAddr,
) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    if let Some(route) = covering {
        ratelimit::check(shared, route, &parts, None, client).await?;
    }
    chain::create(shared, policy, Request::from_parts(parts, body)).await
}

#[allow(clippy::manual_async_fn, reason = "see `handle`")]
fn forward(
    shared: &Shared,
    route: &LiveRoute,
    req: Request<Body>,
    client: &Client,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send {
    async move {
        let (mut parts, body) = req.into_parts();
        if let Some(cors) = &route.cors
            && Cors::is_preflight(&parts)
        {
            return cors.preflight(&parts);
        }
        limits::check(&route.spec, &parts)?;
        let step = route.cookie.as_ref().map_or(Step::Translate, |c| c.step(&parts));
        let caller = auth::authenticate(route, &mut parts, step, &shared.metrics).await?;
        csrf::check(route, &parts, step)?;
        if let (Step::Logout, Some(cookie)) = (step, &route.cookie) {
            return Box::pin(cookie.logout(&parts.headers)).await;
        }
        ratelimit::check(shared, route, &parts, caller.app.as_deref(), client.addr).await?;
        let (advanced, body) = chain::check(shared, route, &mut parts, body).await?;
        chain::signal(advanced, send(shared, route, parts, body, client, step, caller).await)
    }
}

/// Sends the request upstream and passes the answer back.
#[allow(clippy::manual_async_fn, reason = "see `handle`")]
fn send(
    shared: &Shared,
    route: &LiveRoute,
    mut parts: http::request::Parts,
    body: Body,
    client: &Client,
    step: Step,
    caller: Caller,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send {
    async move {
        let base = external::destination(route, &mut parts.headers)?;
        let websocket = (route.spec.websocket && websocket::is_handshake(&parts))
            .then(|| websocket::ClientSide::take(&mut parts))
            .flatten();
        // Watched only while there is a body to come: one that has ended can neither stall nor
        // outgrow the limit, and most requests have none.
        let watch = (!body.is_end_stream()).then(BodyWatch::default);
        let body = match &watch {
            Some(watch) => {
                let body = StallingBody::new(body, shared.limits.body_idle_timeout, watch.stalled.clone());
                LimitedBody::new(body, route.spec.body_limit, watch.exceeded.clone()).boxed()
            }
            None => body,
        };
        let stalled = || watch.as_ref().is_some_and(|w| w.stalled.load(Ordering::Acquire));
        let exceeded = || watch.as_ref().is_some_and(|w| w.exceeded.load(Ordering::Acquire));
        // A stage that read the body failed because it stopped arriving: that is the client's 408.
        let timed_out = |e: ProxyError| {
            if stalled() {
                ProxyError::RequestTimeout(shared.limits.body_idle_timeout.as_secs())
            } else {
                e
            }
        };
        // Inbound tokenization first, so no later stage (transforms included) ever holds a raw value;
        // then the transform, before Keygate adds secrets or swaps tokens for data, so no expression
        // can read either.
        let body = vault::tokenize_request(route, &mut parts, body)
            .await
            .map_err(timed_out)?;
        let (body, seen) = transform::request(route, &mut parts, body).await.map_err(timed_out)?;
        // Headers first: an HTTP/2 client's host is the request URI's authority, about to be replaced.
        request::rewrite_headers(route, &mut parts, client);
        if websocket.is_some() {
            websocket::restore_upgrade_headers(&mut parts.headers);
        }
        if let Some((name, value)) = caller.upstream_auth {
            parts.headers.insert(name, value);
        }
        if step == Step::SessionStart {
            // The login answer is parsed here, so it must arrive uncompressed.
            parts.headers.insert(
                http::header::ACCEPT_ENCODING,
                http::HeaderValue::from_static("identity"),
            );
        }
        parts.uri = request::upstream_uri(route, &base.scheme, &base.authority, &base.base_path, &parts.uri)?;
        // The client connection picks HTTP/1.1 or HTTP/2 for the upstream hop itself.
        parts.version = Version::HTTP_11;

        let body = vault::detokenize(route, &mut parts, body).await.map_err(timed_out)?;
        let sent = Instant::now();
        // The deadline from the clock read just taken: a timeout would read it again.
        let outcome = tokio::time::timeout_at(
            tokio::time::Instant::from_std(sent) + route.request_timeout,
            route.client.send(Request::from_parts(parts, body)),
        )
        .await;
        shared
            .metrics
            .route_upstream_latency(&route.meters, &route.id, sent.elapsed().as_secs_f64());
        let upstream = match outcome {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(_)) if exceeded() => {
                return Err(ProxyError::BodyTooLarge(route.spec.body_limit));
            }
            Ok(Err(_)) if stalled() => {
                return Err(ProxyError::RequestTimeout(shared.limits.body_idle_timeout.as_secs()));
            }
            Ok(Err(e)) => {
                let err = classify(&e);
                tracing::warn!(route = %route.spec.id, code = err.code(), error = %ErrorChain(&e), "upstream request failed");
                return Err(err);
            }
            Ok(Ok(resp)) => resp,
        };
        // Any other answer to a handshake goes back as a plain response.
        if let Some(client) = websocket
            && upstream.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            return Ok(websocket::join(
                &shared.tunnels,
                &shared.metrics,
                route,
                client,
                upstream,
            ));
        }
        let (mut parts, body) = upstream.into_parts();
        response::rewrite_headers(route, &mut parts);
        let body = vault::tokenize(route, &mut parts, body).await?;
        let resp = Response::from_parts(parts, body);
        let resp = match (step, &route.cookie) {
            (Step::SessionStart, Some(cookie)) => Box::pin(cookie.start(resp, route.spec.body_limit)).await?,
            _ => resp,
        };
        // Last, on what the client would get: the session token is already out of the answer.
        transform::response(route, seen, resp).await
    }
}

/// What became of a request body on its way upstream, for naming a failed send.
#[derive(Default)]
struct BodyWatch {
    /// It went past the route's `bodyLimit`.
    exceeded: Arc<AtomicBool>,
    /// It stopped arriving for the body idle timeout.
    stalled: Arc<AtomicBool>,
}

/// Names the failure the way a person debugging an upstream would want it named.
fn classify(e: &SendError) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return ProxyError::UpstreamTls(tls.to_string());
        }
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return ProxyError::DestinationResolvesPrivate(refused.host.clone());
        }
        source = match err.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::TimedOut && e.is_connect() => {
                return ProxyError::UpstreamConnectTimeout;
            }
            // io::Error::source() skips the error it wraps, and connectors nest io::Errors, so
            // step into the wrapped error itself or a rustls error deeper down is never seen.
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    if e.is_connect() {
        ProxyError::UpstreamUnavailable
    } else {
        ProxyError::BadGateway
    }
}

/// Displays an error with its causes, `a: b: c`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
