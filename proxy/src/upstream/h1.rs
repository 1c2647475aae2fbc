//! Keygate's own HTTP/1.1 client, for fixed cleartext upstreams. The request is written and its
//! answer read in the request's own task, on a connection from a per-worker pool keyed by the
//! upstream's authority, so an exchange costs no task switch, channel or pool lock contention,
//! and a head with a body that is already there goes out in one call. Anything else (TLS,
//! HTTP/2, upgrades, client-named destinations) goes to hyper's client (see
//! [`super::Clients::send`]).
//!
//! A request body streams as it arrives (`Content-Length` when its size is known, else
//! chunked, trailers included) while the answer is awaited: an upstream that answers early (a
//! 413 before the upload ends) is heard, the rest of the body is not sent, and the connection
//! is not reused.
//!
//! A connection goes back to the pool as soon as its answer's last byte has been read; an answer
//! the caller drops early takes its connection with it. Idle connections have no task: one the
//! upstream closed is noticed at checkout from the readiness the event loop recorded, and an
//! idempotent request that meets a connection closed under it is sent once more on a new one.

use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::body::{Body, BoxError, is_bodiless};
use crate::external::resolve::Resolver;
use crate::h1::body::{BodyError, Framing, Reader};
use crate::h1::head::{Out, parse_length, write_field};
use crate::h1::{COALESCE, Unsent, write_message};
use crate::pipeline::value_has_token;

/// Header fields an answer's head may carry.
const MAX_HEADERS: usize = 100;
/// Largest answer head; hyper's client refuses past about this much too.
const MAX_HEAD: usize = 256 * 1024;
/// Trailer bytes a chunked answer may end with.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// How long a connection may sit idle in the pool (hyper's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per pool; more are closed rather than kept.
const MAX_IDLE: usize = 512;
/// How often a pool with idle connections closes those past [`IDLE_TIMEOUT`] or closed by
/// their upstream, whether or not requests still use it.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name did not resolve.
    #[error("resolving the upstream failed")]
    Resolve(#[source] BoxError),
    /// No connection could be opened (timed out: an `io::ErrorKind::TimedOut` inside).
    #[error("connecting to the upstream failed")]
    Connect(#[source] io::Error),
    /// The connection failed while the request was written or the answer read.
    #[error("the upstream connection failed")]
    Io(#[source] io::Error),
    /// The upstream closed the connection before its answer's head was whole.
    #[error("the upstream closed the connection before answering")]
    Closed,
    /// The request's body failed (the client's stream broke off, or a limit cut it).
    #[error("the request body failed")]
    Body(#[source] BoxError),
    /// The request's body was not the length its head declared.
    #[error("the request body did not match its declared length")]
    BodyLength,
    /// The answer's head is not HTTP/1.1 Keygate can pass on.
    #[error("the upstream's answer is not valid HTTP/1.1: {0}")]
    Invalid(&'static str),
}

impl From<Unsent> for Error {
    fn from(unsent: Unsent) -> Error {
        match unsent {
            Unsent::Io(e) => Error::Io(e),
            Unsent::Body(e) => Error::Body(e),
            Unsent::Length => Error::BodyLength,
        }
    }
}

impl Error {
    /// Whether no connection was made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Resolve(_) | Error::Connect(_))
    }

    /// Whether the upstream may never have seen the request: it went out on a reused
    /// connection that turned out closed, and nothing came back.
    fn unanswered(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// Whether [`Pool::send`] can carry `req`: plain `http`, no upgrade.
pub fn suits(req: &Request<Body>) -> bool {
    req.uri().scheme() == Some(&http::uri::Scheme::HTTP)
        && req.uri().authority().is_some()
        && !req.headers().contains_key(header::UPGRADE)
}

/// One worker's idle connections to the upstreams of one kind of client.
pub struct Pool {
    resolver: Resolver,
    connect_timeout: Duration,
    /// Oldest first: a checkout takes the newest, the oldest expire.
    idle: Mutex<Vec<Idle>>,
    /// Whether a [`sweep`] task runs for this pool: from a checkin until the pool is empty.
    sweeping: AtomicBool,
    sweep_every: Duration,
}

struct Idle {
    authority: Authority,
    conn: Reader<TcpStream>,
    since: Instant,
}

impl Pool {
    /// A pool resolving names through `resolver`, giving up on a connect after `connect_timeout`.
    pub fn new(resolver: Resolver, connect_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            resolver,
            connect_timeout,
            idle: Mutex::default(),
            sweeping: AtomicBool::new(false),
            sweep_every: SWEEP_EVERY,
        })
    }

    /// Sends `req` (see [`suits`]) and reads the head of its answer; the body streams from the
    /// connection as the caller reads it. The request is encoded before the returned future
    /// starts, so the future holds its bytes, not the request.
    pub fn send<'a>(
        self: &'a Arc<Self>,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'a {
        let (parts, body) = req.into_parts();
        let outgoing = outgoing(&body);
        let target = parts.uri.authority().map(|a| (a.clone(), encode(&parts, a, outgoing)));
        let head_request = parts.method == Method::HEAD;
        // Only a request whose body was never read can be sent twice.
        let resendable = parts.method.is_idempotent() && outgoing == Out::Empty;
        let mut body = (outgoing != Out::Empty).then_some((body, outgoing));
        async move {
            let Some((authority, head)) = target else {
                return Err(Error::Invalid("no authority"));
            };
            let mut retried = false;
            loop {
                let (mut conn, reused) = match self.checkout(&authority) {
                    Some(conn) => (conn, true),
                    // Boxed: most requests find a connection, and need not carry a connect's state.
                    None => (Box::pin(self.connect(&authority)).await?, false),
                };
                match exchange(&mut conn, &head, body.take()).await {
                    Ok((answer, rest, sent)) => {
                        return Ok(self.answer(authority, conn, answer, rest, head_request, sent));
                    }
                    Err(e) if reused && !retried && resendable && e.unanswered() => retried = true,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    fn checkout(&self, authority: &Authority) -> Option<Reader<TcpStream>> {
        let mut idle = self.idle.lock().expect("pool lock");
        // Compared as written, not case-folded as `Authority`'s `==` does: a route's upstream is
        // spelled the same on every request, and a byte comparison is several times cheaper.
        while let Some(i) = idle.iter().rposition(|c| c.authority.as_str() == authority.as_str()) {
            let Idle { conn, .. } = idle.remove(i);
            if still_open(&conn.io) {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, authority: Authority, conn: Reader<TcpStream>) {
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        let expired = idle.iter().take_while(|c| now - c.since > IDLE_TIMEOUT).count();
        idle.drain(..expired);
        if idle.len() >= MAX_IDLE {
            return;
        }
        idle.push(Idle {
            authority,
            conn,
            since: now,
        });
        drop(idle);
        // After the push: a sweep that found the pool empty has cleared the flag by now.
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(worker) => drop(worker.spawn(sweep(Arc::downgrade(self), self.sweep_every))),
                Err(_) => self.sweeping.store(false, Ordering::Release),
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Reader<TcpStream>, Error> {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let connect = async {
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => {
                    let name = host.parse().map_err(|e| Error::Resolve(Box::new(e)))?;
                    let resolved = self.resolver.clone().call(name).await.map_err(Error::Resolve)?;
                    resolved.map(|a| SocketAddr::new(a.ip(), port)).collect()
                }
            };
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = e,
                }
            }
            Err(Error::Connect(last))
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| Error::Connect(io::ErrorKind::TimedOut.into()))??;
        stream.set_nodelay(true).map_err(Error::Connect)?;
        Ok(Reader {
            io: stream,
            buf: BytesMut::new(),
        })
    }

    /// The answer whose head is `head`, its body starting with `rest` and going on on `conn`.
    fn answer(
        self: &Arc<Self>,
        authority: Authority,
        conn: Reader<TcpStream>,
        head: Head,
        rest: Bytes,
        head_request: bool,
        sent: bool,
    ) -> Response<Body> {
        let bodiless = is_bodiless(head.status, head_request);
        // An answer read to the connection's end leaves nothing to reuse, nor does one that came
        // before the request's body was all sent.
        let reuse = sent && head.keep_alive && (bodiless || head.framing.is_some());
        let mut body = Answer {
            first: None,
            conn: Some(conn),
            framing: if bodiless { Some(Framing::Done) } else { head.framing },
            reuse,
            home: Some((self.clone(), authority)),
        };
        match &mut body.framing {
            // Bytes past the answer: the connection is out of step, so it is not reused.
            Some(Framing::Done) => body.reuse &= rest.is_empty(),
            Some(Framing::Length(left)) => {
                let take = (*left).min(rest.len() as u64) as usize;
                body.reuse &= rest.len() <= take;
                *left -= take as u64;
                // Already here, and shared with the head's bytes rather than copied.
                body.first = (take > 0).then(|| rest.slice(..take));
            }
            Some(_) => {
                if let Some(conn) = &mut body.conn {
                    conn.buf.extend_from_slice(&rest);
                }
            }
            // Read to the end of the connection: nothing to decode.
            None => body.first = (!rest.is_empty()).then_some(rest),
        }
        if body.framing.as_ref().is_some_and(Framing::is_done) {
            body.finish();
        }
        let mut resp = Response::new(body.boxed());
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        resp
    }
}

/// Closes, `every` so often, the pool's idle connections past [`IDLE_TIMEOUT`] or
/// closed by their upstream: a pool that requests stopped using would otherwise keep them,
/// half-closed sockets included, until a reload drops it. Runs on the worker that owns the
/// pool, holds it only while sweeping, and ends once the pool is empty or gone.
async fn sweep(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut idle = pool.idle.lock().expect("pool lock");
        idle.retain(|c| now - c.since <= IDLE_TIMEOUT && still_open(&c.conn.io));
        if idle.is_empty() {
            // Under the lock, so a checkin's push comes after and starts the next sweep.
            pool.sweeping.store(false, Ordering::Release);
            return;
        }
    }
}

/// Whether an idle connection is still usable: nothing arrived on it since its last answer was
/// read. The event loop's record says so without a system call; only when it says readable (an
/// answer's last read that filled the buffer exactly leaves it so) is the socket asked.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// How `body` goes on the wire: `Content-Length` when its size is known, else chunked.
fn outgoing(body: &Body) -> Out {
    if http_body::Body::is_end_stream(body) {
        return Out::Empty;
    }
    match http_body::Body::size_hint(body).exact() {
        Some(n) => Out::Length(n),
        None => Out::Chunked,
    }
}

/// The request's head: `Host` from the URI (the pipeline removed the client's) and the body's
/// framing as Keygate sends it, with a zero `Content-Length` for the methods whose requests
/// usually carry a body when this one has none, as hyper writes them.
fn encode(parts: &http::request::Parts, authority: &Authority, body: Out) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + parts.headers.len() * 48);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        match authority.port_u16() {
            Some(80) => out.extend_from_slice(authority.host().as_bytes()),
            _ => out.extend_from_slice(authority.as_str().as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    // The body's framing is stated below, as Keygate sends it, whatever the fields say.
    for (name, value) in &parts.headers {
        if !matches!(*name, header::CONTENT_LENGTH | header::TRANSFER_ENCODING) {
            write_field(name, value, &mut out);
        }
    }
    match body {
        Out::Empty if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Out::Empty => {}
        Out::Length(n) => {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// An answer's head, as read.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    /// How the body is delimited; `None`: until the connection ends.
    framing: Option<Framing>,
    /// HTTP/1.1, and not `Connection: close`.
    keep_alive: bool,
}

/// Writes the request's head and body, and reads the answer's final head; the bytes read past
/// it come back beside, and whether the whole request went out. An answer that comes while the
/// body is still being sent ends the sending.
async fn exchange(
    conn: &mut Reader<TcpStream>,
    head: &[u8],
    body: Option<(Body, Out)>,
) -> Result<(Head, Bytes, bool), Error> {
    let Some((body, outgoing)) = body else {
        conn.io.write_all(head).await.map_err(Error::Io)?;
        return read_head(conn).await.map(|(h, rest)| (h, rest, true));
    };
    let (rd, mut wr) = conn.io.split();
    let mut reader = Reader {
        io: rd,
        buf: std::mem::take(&mut conn.buf),
    };
    let mut answering = std::pin::pin!(read_head(&mut reader));
    // Room for the head and, when it goes out with the head, the whole body.
    let room = match outgoing {
        Out::Length(n) if n <= COALESCE => n as usize,
        _ => 0,
    };
    let mut pending = Vec::with_capacity(head.len() + room);
    pending.extend_from_slice(head);
    let sending = write_message(&mut wr, pending, body, outgoing, true);
    let sent = tokio::select! {
        biased;
        early = &mut answering => return early.map(|(h, rest)| (h, rest, false)),
        sent = sending => sent.map_err(Error::from),
    };
    match sent {
        Ok(()) => answering.await.map(|(h, rest)| (h, rest, true)),
        // The upstream may have answered and stopped reading: its answer says more than the
        // failed write.
        Err(Error::Io(e)) => match answering.await {
            Ok((h, rest)) => Ok((h, rest, false)),
            Err(_) => Err(Error::Io(e)),
        },
        Err(e) => Err(e),
    }
}

/// Reads the answer's final head; the bytes read past it come back beside.
async fn read_head<R: AsyncRead + Unpin>(conn: &mut Reader<R>) -> Result<(Head, Bytes), Error> {
    loop {
        if !conn.buf.is_empty() {
            // Frozen so header values share the bytes instead of copying them.
            let bytes = std::mem::take(&mut conn.buf).freeze();
            match parse(&bytes)? {
                Some((head, len)) if head.status.is_informational() => {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Error::Invalid("101 to a request that asked for no upgrade"));
                    }
                    // 100 and 103 come before the real answer; only the real one is passed on.
                    conn.buf = BytesMut::from(&bytes[len..]);
                    continue;
                }
                Some((head, len)) => return Ok((head, bytes.slice(len..))),
                None if bytes.len() > MAX_HEAD => return Err(Error::Invalid("answer head too large")),
                None => conn.buf = bytes.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..])),
            }
        }
        // An answer head usually arrives whole in one read: read through the stack, the buffer
        // is then allocated at the head's size, not a read buffer's.
        let fill = if conn.buf.is_empty() {
            std::future::poll_fn(|cx| conn.poll_fill_lazily(cx)).await
        } else {
            std::future::poll_fn(|cx| conn.poll_fill(cx)).await
        };
        match fill {
            Ok(0) => return Err(Error::Closed),
            Ok(_) => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// The head at the start of `bytes` and its length, or `None` until it is whole.
fn parse(bytes: &Bytes) -> Result<Option<(Head, usize)>, Error> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Invalid("too many header fields")),
        Err(_) => return Err(Error::Invalid("malformed head")),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Invalid("bad status code"))?;
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    let (mut length, mut chunked, mut encoded, mut close) = (None::<u64>, false, false, false);
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Invalid("bad field name"))?;
        let value =
            HeaderValue::from_maybe_shared(bytes.slice_ref(h.value)).map_err(|_| Error::Invalid("bad field value"))?;
        match name {
            header::CONTENT_LENGTH => {
                let n = parse_length(h.value).ok_or(Error::Invalid("bad Content-Length"))?;
                if length.is_some_and(|m| m != n) {
                    return Err(Error::Invalid("conflicting Content-Length"));
                }
                length = Some(n);
            }
            header::TRANSFER_ENCODING => {
                encoded = true;
                // RFC 9112 §6.3: the final coding decides; chunked or not, it wins over a length.
                chunked = value
                    .as_bytes()
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            header::CONNECTION => close |= value_has_token(&value, "close"),
            _ => {}
        }
        headers.append(name, value);
    }
    let http11 = res.version == Some(1);
    let framing = match (encoded, chunked, length) {
        (true, true, _) => Some(Framing::chunked()),
        (false, _, Some(n)) => Some(Framing::Length(n)),
        _ => None,
    };
    let keep_alive = http11 && !close;
    if encoded {
        // Keygate frames the body for its client itself.
        headers.remove(header::CONTENT_LENGTH);
    }
    Ok(Some((
        Head {
            status,
            headers,
            framing,
            keep_alive,
        },
        len,
    )))
}

/// An answer's body, read from its connection as the client takes it.
struct Answer {
    /// Body bytes that arrived with the head.
    first: Option<Bytes>,
    /// `None` once the body ended.
    conn: Option<Reader<TcpStream>>,
    /// `None`: until the connection ends.
    framing: Option<Framing>,
    /// Whether the connection may carry another request once the body ends.
    reuse: bool,
    home: Option<(Arc<Pool>, Authority)>,
}

impl Answer {
    /// The body ended: its connection goes back to the pool, or is closed.
    fn finish(&mut self) {
        let conn = self.conn.take();
        if let (Some(conn), Some((pool, authority)), true) = (conn, self.home.take(), self.reuse) {
            pool.checkin(authority, conn);
        }
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = match &mut this.framing {
            // Until the end of the connection: every read is a frame.
            None => match ready!(conn.poll_fill(cx)) {
                Ok(0) => None,
                Ok(_) => Some(Ok(Frame::data(conn.buf.split().freeze()))),
                Err(e) => Some(Err(BodyError::Io(e))),
            },
            Some(framing) => ready!(conn.poll_frame(framing, MAX_TRAILER_BYTES, cx)),
        };
        let ended = polled.is_none() || this.framing.as_ref().is_some_and(Framing::is_done);
        if let Some(Err(_)) = &polled {
            this.conn = None;
        } else if ended {
            // Bytes past the body's end: out of step, not reused.
            this.reuse &= this.conn.as_ref().is_some_and(|c| c.buf.is_empty());
            this.finish();
        }
        Poll::Ready(polled.map(|r| r.map_err(|e| BoxError::from(AnswerError(e)))))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, |b| b.len() as u64);
        match (&self.conn, &self.framing) {
            (None, _) | (_, Some(Framing::Done)) => SizeHint::with_exact(first),
            (_, Some(Framing::Length(left))) => SizeHint::with_exact(first + left),
            _ => SizeHint::default(),
        }
    }
}

/// An answer body that broke off, named for the upstream: [`BodyError`] speaks of the client's
/// request bodies.
#[derive(Debug)]
struct AnswerError(BodyError);

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            BodyError::Chunked(why) => write!(f, "the upstream's chunked answer is invalid: {why}"),
            BodyError::Closed => f.write_str("the upstream closed the connection before the answer ended"),
            BodyError::Io(e) => write!(f, "reading the upstream's answer failed: {e}"),
        }
    }
}

impl std::error::Error for AnswerError {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::body::{empty, full};
    use crate::external::resolve::Network;

    /// A real upstream on an ephemeral port that plays `script`: its `i`th connection answers
    /// each request head it reads with the next of `script[i]` (an empty one: closes without
    /// answering), then closes. It records every request head and counts connections.
    struct Upstream {
        addr: SocketAddr,
        heads: Arc<Mutex<Vec<String>>>,
        connections: Arc<AtomicUsize>,
    }

    async fn upstream(script: Vec<Vec<&'static [u8]>>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c) = (heads.clone(), connections.clone());
        tokio::spawn(async move {
            for answers in script {
                let (mut sock, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for answer in answers {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                        // The body, if any: by its length, or through the last chunk and trailers.
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |n| n.parse::<usize>().unwrap());
                        let chunked = head.contains("transfer-encoding: chunked");
                        let whole = |b: &[u8]| {
                            if !chunked {
                                return (b.len() >= end + length).then_some(end + length);
                            }
                            let last = b[end..].windows(3).position(|w| w == b"0\r\n")?;
                            let from = end + last;
                            b[from..]
                                .windows(4)
                                .position(|w| w == b"\r\n\r\n")
                                .map(|j| from + j + 4)
                                .or_else(|| b[from..].starts_with(b"0\r\n\r\n").then_some(from + 5))
                        };
                        let stop = loop {
                            if let Some(stop) = whole(&buf) {
                                break stop;
                            }
                            let mut chunk = [0u8; 1024];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        h.lock()
                            .unwrap()
                            .push(String::from_utf8(buf.drain(..stop).collect()).unwrap());
                        if answer.is_empty() {
                            return;
                        }
                        sock.write_all(answer).await.unwrap();
                    }
                });
            }
        });
        Upstream {
            addr,
            heads,
            connections,
        }
    }

    fn pool() -> Arc<Pool> {
        Pool::new(Resolver::new(Network::default(), None), Duration::from_secs(2))
    }

    fn get(addr: SocketAddr, method: Method, path: &str) -> Request<Body> {
        let mut req = Request::new(empty());
        *req.method_mut() = method;
        *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
        req.headers_mut().insert("x-test", HeaderValue::from_static("1"));
        req
    }

    /// The answer's status, body and trailers, read to the end.
    async fn read(resp: Response<Body>) -> (StatusCode, String, Option<HeaderMap>) {
        let status = resp.status();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (
            status,
            String::from_utf8(collected.to_bytes().to_vec()).unwrap(),
            trailers,
        )
    }

    /// The body of the answer to a bodiless `method` request to `addr`, sent through `pool`.
    async fn body_of(pool: &Arc<Pool>, addr: SocketAddr, method: Method) -> String {
        read(pool.send(get(addr, method, "/")).await.unwrap()).await.1
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn a_connection_carries_the_next_request() {
        let up = upstream(vec![vec![
            OK,
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc",
        ]])
        .await;
        let pool = pool();
        let first = pool.send(get(up.addr, Method::GET, "/a/b?x=1")).await.unwrap();
        assert_eq!(first.headers()["content-length"], "5");
        assert_eq!(read(first).await.1, "hello");
        let second = pool.send(get(up.addr, Method::POST, "/c")).await.unwrap();
        assert_eq!(second.headers()["x-a"], "b");
        assert_eq!(read(second).await.0, StatusCode::CREATED);
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        let heads = up.heads.lock().unwrap().clone();
        assert_eq!(
            heads[0],
            format!("GET /a/b?x=1 HTTP/1.1\r\nhost: {}\r\nx-test: 1\r\n\r\n", up.addr)
        );
        assert_eq!(
            heads[1],
            format!(
                "POST /c HTTP/1.1\r\nhost: {}\r\nx-test: 1\r\ncontent-length: 0\r\n\r\n",
                up.addr
            )
        );
    }

    #[tokio::test]
    async fn chunked_answers_stream_with_their_trailers() {
        let chunked: &[u8] =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
        let up = upstream(vec![vec![chunked, OK]]).await;
        let pool = pool();
        let (status, body, trailers) = read(pool.send(get(up.addr, Method::GET, "/")).await.unwrap()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello world"));
        assert_eq!(trailers.unwrap()["x-sum"], "42");
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        assert_eq!(up.connections.load(Ordering::SeqCst), 1, "reused after the last chunk");
    }

    #[tokio::test]
    async fn an_answer_without_length_runs_to_the_close_and_ends_the_connection() {
        let up = upstream(vec![vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], vec![OK]]).await;
        let pool = pool();
        let resp = pool.send(get(up.addr, Method::GET, "/")).await.unwrap();
        assert!(http_body::Body::size_hint(resp.body()).exact().is_none());
        assert_eq!(read(resp).await.1, "until the end");
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn head_204_and_early_hints_carry_no_body() {
        let up = upstream(vec![vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        ]])
        .await;
        let pool = pool();
        let head = pool.send(get(up.addr, Method::HEAD, "/")).await.unwrap();
        assert_eq!(head.headers()["content-length"], "99");
        assert_eq!(read(head).await.1, "");
        assert_eq!(
            read(pool.send(get(up.addr, Method::DELETE, "/")).await.unwrap())
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        let hinted = pool.send(get(up.addr, Method::GET, "/")).await.unwrap();
        assert!(hinted.headers().get("link").is_none(), "only the final answer's fields");
        assert_eq!(read(hinted).await, (StatusCode::OK, "hello".into(), None));
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connection_close_and_bytes_past_the_answer_are_not_reused() {
        let up = upstream(vec![
            vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 5\r\n\r\nhello"],
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloEXTRA"],
            vec![OK],
        ])
        .await;
        let pool = pool();
        for _ in 0..3 {
            assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_dropped_is_replaced() {
        // The first connection answers once and closes; the second answers the retry.
        let up = upstream(vec![vec![OK], vec![OK, OK]]).await;
        let pool = pool();
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        // Whether the close is seen at checkout or only once the request is written, the
        // caller gets its answer.
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_under_a_request_resends_it_only_if_idempotent() {
        // Each first connection answers once, then reads the next request and closes unanswered.
        let up = upstream(vec![vec![OK, b""], vec![OK]]).await;
        let pool = pool();
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        assert_eq!(body_of(&pool, up.addr, Method::PUT).await, "hello");
        let heads = up.heads.lock().unwrap().clone();
        assert_eq!(
            heads.iter().filter(|h| h.starts_with("PUT")).count(),
            2,
            "sent again on a new connection"
        );
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);

        let up = upstream(vec![vec![OK, b""], vec![OK]]).await;
        let pool = self::pool();
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        let err = pool.send(get(up.addr, Method::POST, "/")).await.unwrap_err();
        assert!(matches!(err, Error::Closed), "{err}");
        let heads = up.heads.lock().unwrap().clone();
        assert_eq!(
            heads.iter().filter(|h| h.starts_with("POST")).count(),
            1,
            "never repeated"
        );
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            let up = upstream(vec![vec![answer]]).await;
            let err = pool().send(get(up.addr, Method::GET, "/")).await.unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{err}");
        }
        let up = upstream(vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"]]).await;
        let resp = pool().send(get(up.addr, Method::GET, "/")).await.unwrap();
        let err = resp.into_body().collect().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the upstream closed the connection before the answer ended"
        );
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed_when_the_pool_is_next_used() {
        let up = upstream(vec![vec![OK], vec![OK, OK]]).await;
        let pool = pool();
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        // The first connection, as if it had been idle for longer than the timeout.
        let since = Instant::now()
            .checked_sub(IDLE_TIMEOUT + Duration::from_secs(1))
            .unwrap();
        pool.idle.lock().unwrap()[0].since = since;
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other_addr = other.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = other.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            sock.write_all(OK).await.unwrap();
            let _ = sock.read(&mut buf).await;
        });
        // A request to another upstream puts its connection back, and the stale one goes.
        assert_eq!(body_of(&pool, other_addr, Method::GET).await, "hello");
        let idle: Vec<Authority> = pool.idle.lock().unwrap().iter().map(|c| c.authority.clone()).collect();
        assert_eq!(idle, [other_addr.to_string().parse::<Authority>().unwrap()]);
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            2,
            "the expired connection was not used"
        );
    }

    #[tokio::test]
    async fn idle_connections_are_swept_without_further_requests() {
        // One connection answers and closes; the other answers and waits for more.
        let up = upstream(vec![vec![OK], vec![OK, OK]]).await;
        let mut pool = pool();
        Arc::get_mut(&mut pool).unwrap().sweep_every = Duration::from_millis(20);
        let (a, b) = tokio::join!(
            pool.send(get(up.addr, Method::GET, "/")),
            pool.send(get(up.addr, Method::GET, "/"))
        );
        assert_eq!(read(a.unwrap()).await.1, "hello");
        assert_eq!(read(b.unwrap()).await.1, "hello");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
        let idle = || pool.idle.lock().unwrap().len();
        let settle = async |want: usize| {
            for _ in 0..200 {
                if idle() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} idle connections, not {want}", idle());
        };
        // No request uses the pool: the closed connection goes, the open one stays.
        settle(1).await;
        // The open one, as if idle for longer than the timeout, goes too, and the sweep ends.
        pool.idle.lock().unwrap()[0].since = Instant::now()
            .checked_sub(IDLE_TIMEOUT + Duration::from_secs(1))
            .unwrap();
        settle(0).await;
        assert!(
            !pool.sweeping.load(Ordering::Acquire),
            "an empty pool keeps no sweep running"
        );
        // The next request opens a connection of its own, and its checkin starts a new sweep.
        let up = upstream(vec![vec![OK]]).await;
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        assert!(pool.sweeping.load(Ordering::Acquire));
        settle(0).await;
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let err = pool().send(get(addr, Method::GET, "/")).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    #[test]
    fn plain_requests_without_an_upgrade_suit() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(suits(&get(addr, Method::GET, "/")));
        let mut with_body = get(addr, Method::POST, "/");
        *with_body.body_mut() = full("x");
        assert!(suits(&with_body));
        let mut upgrade = get(addr, Method::GET, "/");
        upgrade
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!suits(&upgrade));
        let mut tls = get(addr, Method::GET, "/");
        *tls.uri_mut() = "https://example.com/".parse().unwrap();
        assert!(!suits(&tls));
    }

    /// A body of unknown length: `parts`, then trailers if any, then (with `fail`) an error.
    fn streamed(parts: &[&'static str], trailers: Option<HeaderMap>, fail: bool) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
        if fail {
            frames.push(Err("the client went away".into()));
        }
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn request_bodies_go_out_framed_and_the_connection_carries_on() {
        let up = upstream(vec![vec![OK, OK, OK]]).await;
        let pool = pool();
        let mut post = get(up.addr, Method::POST, "/known");
        *post.body_mut() = full("abc");
        post.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        assert_eq!(read(pool.send(post).await.unwrap()).await.1, "hello");
        let mut stream = get(up.addr, Method::PUT, "/streamed");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-digest", HeaderValue::from_static("d1"));
        *stream.body_mut() = streamed(&["hello ", "", "world"], Some(trailers), false);
        assert_eq!(read(pool.send(stream).await.unwrap()).await.1, "hello");
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        let heads = up.heads.lock().unwrap().clone();
        let host = up.addr;
        assert_eq!(
            heads[0],
            format!("POST /known HTTP/1.1\r\nhost: {host}\r\nx-test: 1\r\ncontent-length: 3\r\n\r\nabc")
        );
        assert_eq!(
            heads[1],
            format!(
                "PUT /streamed HTTP/1.1\r\nhost: {host}\r\nx-test: 1\r\ntransfer-encoding: chunked\r\n\r\n\
                 6\r\nhello \r\n5\r\nworld\r\n0\r\nx-digest: d1\r\n\r\n"
            )
        );
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_fails_the_request_and_its_connection() {
        let up = upstream(vec![vec![OK], vec![OK]]).await;
        let pool = pool();
        let mut post = get(up.addr, Method::POST, "/");
        *post.body_mut() = streamed(&["part"], None, true);
        let err = pool.send(post).await.unwrap_err();
        assert!(matches!(err, Error::Body(_)), "{err}");
        assert_eq!(body_of(&pool, up.addr, Method::GET).await, "hello");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            2,
            "the broken connection was not reused"
        );
    }

    #[tokio::test]
    async fn an_answer_before_the_body_ends_is_heard_and_ends_the_connection() {
        // The upstream answers after the head alone, and the body never ends.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            sock.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!")
                .await
                .unwrap();
            // Keeps reading, as a server draining the upload would, until the client goes.
            while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let pool = pool();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.unwrap();
        let mut post = get(addr, Method::POST, "/upload");
        let frames = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        *post.body_mut() = http_body_util::StreamBody::new(frames).boxed();
        let resp = pool.send(post).await.unwrap();
        assert_eq!(read(resp).await, (StatusCode::PAYLOAD_TOO_LARGE, "big!".into(), None));
        assert!(
            pool.idle.lock().unwrap().is_empty(),
            "a connection with half a body is not reused"
        );
        drop(tx);
    }
}
