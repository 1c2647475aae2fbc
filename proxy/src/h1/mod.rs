//! Keygate's own HTTP/1.1 server side, for the requests browsers and services actually send.
//!
//! hyper keeps two 8 KiB buffers per connection for the connection's whole life and passes each
//! request body through a channel; here an idle keep-alive connection holds no buffer at all
//! (its next head is first read into the stack), a request without a body costs no channel, and
//! a body is read from the socket by whoever polls it. A connection goes:
//! [`head::parse`] → the service → [`write_answer`] → the next head. Whatever is not ordinary
//! (upgrades, `Expect`, HTTP/1.0, `CONNECT`, ambiguous framing, the HTTP/2 preface, a head
//! past the limits or malformed) is handed back with the bytes read so far as
//! [`Ended::Handoff`], and the caller lets hyper serve the rest of the connection, so hyper
//! stays the one judge of odd and hostile input.

pub mod body;
pub mod head;

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http::{Method, Request, Response, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError, empty};
use crate::pipeline::has_token;
use body::{Decoded, Framing, Reader, RequestBody};
use head::{Out, Parse};

/// An answer whose whole body is at most this long leaves in one write with its head.
pub(crate) const COALESCE: u64 = 64 * 1024;
/// What an answer's head is expected to fit in.
const HEAD_ROOM: usize = 512;
/// Data frames up to this size are copied into the pending write; larger go out as they are.
const COPY_FRAME: usize = 8 * 1024;
/// A request body left unread by its answer is drained up to this much, if already sent, so
/// the connection can carry the next request; past it, or if more must be waited for, the
/// connection closes.
const DRAIN: usize = 64 * 1024;
/// A connection closed while its client may still be sending (a request body left unread)
/// first reads and drops what comes, for up to this long in all and [`LINGER_READ`] per read
/// (nginx's `lingering_time` and `lingering_timeout`): closed with the client's bytes unread,
/// it would be reset, and a client still uploading would lose the answer (a 413) with it.
const LINGER: Duration = Duration::from_secs(30);
const LINGER_READ: Duration = Duration::from_secs(5);

/// A connection read by one owner and written by another: the request body reads while the
/// answer is written.
pub trait Duplex: AsyncRead + AsyncWrite + Sized {
    /// What reads.
    type Read: AsyncRead + Unpin + Send + Sync + 'static;
    /// What writes.
    type Write: AsyncWrite + Unpin + Send + Sync + 'static;
    /// Splits the connection in two.
    fn into_halves(self) -> (Self::Read, Self::Write);
    /// The connection again, from the two halves [`Duplex::into_halves`] gave.
    fn from_halves(read: Self::Read, write: Self::Write) -> Self;
}

/// The listener's limits as this server side applies them.
#[derive(Clone, Debug)]
pub struct Settings {
    /// From a head's first byte to its last.
    pub header_read_timeout: Duration,
    /// Between requests: how long a connection may wait for the next head's first byte.
    pub keepalive_timeout: Duration,
    /// Largest head; past it hyper answers 431.
    pub max_header_bytes: usize,
    /// Most header fields; past it hyper answers 431.
    pub max_headers: usize,
}

/// How a connection left this server side.
pub enum Ended<I> {
    /// Closed, or to be closed.
    Closed,
    /// For hyper to serve from here: the connection and the bytes already read from it.
    Handoff(I, Bytes),
}

/// Serves HTTP/1.1 requests on `io` through `service` until the connection ends, it must
/// be handed to hyper, or `draining` turns true (then after the answer in flight).
pub async fn serve<I, S, F>(io: I, settings: &Settings, mut draining: watch::Receiver<bool>, mut service: S) -> Ended<I>
where
    I: Duplex,
    S: FnMut(Request<Body>) -> F,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (read, mut write) = io.into_halves();
    let mut reader = Reader {
        io: read,
        buf: BytesMut::new(),
    };
    // One timer for every wait between requests, moved on each time: moving a registered timer
    // later is one atomic write, where a timer per request is registered and removed under the
    // timer driver's lock.
    let mut idle = std::pin::pin!(tokio::time::sleep(settings.keepalive_timeout));
    let mut first = true;
    // The connection closes after the loop, not inside it: a close awaited in a `match` arm
    // would keep the matched head's room (a few hundred bytes) in every connection's state.
    let unread = loop {
        let parsed = match read_head(&mut reader, settings, &mut draining, idle.as_mut(), first).await {
            Next::Request(parsed) => parsed,
            Next::Close => break None,
            Next::Handoff => return Ended::Handoff(I::from_halves(reader.io, write), reader.buf.freeze()),
        };
        first = false;
        // One allocation per request holds the whole exchange (the service's future included),
        // so the connection's own future, which is what an idle connection costs, stays small.
        match Box::pin(exchange::<I, _, _>(
            parsed,
            reader,
            &mut write,
            settings,
            &draining,
            &mut service,
        ))
        .await
        {
            Ok(next) => reader = next,
            Err(unread) => break unread,
        }
    };
    close::<I>(write, unread, &mut draining).await
}

/// One request and its answer. Gives the read side back when the connection may carry another
/// request; else the connection closes, and the read side comes back too if the client may
/// still be sending the request's body.
async fn exchange<I, S, F>(
    parsed: head::Parsed,
    reader: Reader<I::Read>,
    write: &mut I::Write,
    settings: &Settings,
    draining: &watch::Receiver<bool>,
    service: &mut S,
) -> Result<Reader<I::Read>, Option<Reader<I::Read>>>
where
    I: Duplex,
    S: FnMut(Request<Body>) -> F,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let head::Parsed {
        request,
        framing,
        close: client_close,
        trailers,
    } = parsed;
    let head_request = request.method() == Method::HEAD;
    // The read side goes with the body, if there is one, and comes back through `lent`.
    let (request, mut held, mut lent) = if framing.is_done() {
        (request.map(|()| empty()), Some((reader, Framing::Done)), None)
    } else {
        let (tx, rx) = oneshot::channel();
        let body = RequestBody::new(reader, framing, settings.max_header_bytes, tx);
        (request.map(|()| body.boxed()), None, Some(rx))
    };
    // Built in place: the service's future is a few KiB, and every move copies all of it.
    let mut answering = std::pin::pin!(service(request));
    let answer = loop {
        // While the answer is awaited the socket is still read (what arrives is kept for the
        // next request), so a client that leaves is noticed.
        let watching = held
            .as_ref()
            .is_some_and(|(r, _)| r.buf.len() < settings.max_header_bytes);
        tokio::select! {
            answer = answering.as_mut() => break answer,
            back = async { lent.as_mut().expect("guarded").await }, if lent.is_some() => {
                lent = None;
                let Ok(back) = back else {
                    return Err(None);
                };
                held = Some((back.reader, back.framing));
            }
            read = poll_fn(|cx| held.as_mut().expect("guarded").0.poll_fill_lazily(cx)), if watching => match read {
                Ok(n) if n > 0 => {}
                // Returning drops the answer's future, which cancels the upstream request too.
                _ => return Err(None),
            }
        }
    };
    let closing = client_close || *draining.borrow() || has_token(answer.headers(), header::CONNECTION, "close");
    let whole = write_answer(write, answer, head_request, closing, trailers).await;
    let back = lent.and_then(FutureExt::now_or_never).and_then(Result::ok);
    // Whoever holds an unfinished body and has not let it go may yet read from the socket, so
    // the connection cannot carry another request.
    let Some((mut reader, framing)) = held.or(back.map(|back| (back.reader, back.framing))) else {
        return Err(None);
    };
    match whole {
        // The client is gone: nothing to linger for.
        Err(_) => return Err(None),
        Ok(_) if !drain(&mut reader, framing, settings.max_header_bytes) => return Err(Some(reader)),
        Ok(false) => return Err(None),
        Ok(true) if closing || *draining.borrow() => return Err(None),
        Ok(true) => {}
    }
    if reader.buf.is_empty() {
        // Lets the buffer go while the connection idles.
        reader.buf = BytesMut::new();
    }
    Ok(reader)
}

/// Closes the connection: its sending side first, then, given the read side of a request whose
/// body was left unread, reads and drops what the client still sends until it closes too, the
/// [`LINGER`] times run out, or the server starts draining.
async fn close<I: Duplex>(
    mut write: I::Write,
    unread: Option<Reader<I::Read>>,
    draining: &mut watch::Receiver<bool>,
) -> Ended<I> {
    let _ = write.shutdown().await;
    if let Some(mut reader) = unread {
        let discard = async {
            loop {
                reader.buf.clear();
                match tokio::time::timeout(LINGER_READ, poll_fn(|cx| reader.poll_fill(cx))).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(LINGER, discard) => {}
            _ = draining.wait_for(|d| *d) => {}
        }
    }
    Ended::Closed
}

#[allow(clippy::large_enum_variant, reason = "as `head::Parse`")]
enum Next {
    Request(head::Parsed),
    Close,
    Handoff,
}

/// Waits for the next head and reads it whole, within the timeouts.
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
    settings: &Settings,
    draining: &mut watch::Receiver<bool>,
    mut idle: Pin<&mut Sleep>,
    first: bool,
) -> Next {
    if reader.buf.is_empty() {
        // A new connection is expected to speak promptly; a kept-alive one may idle.
        let wait = if first {
            settings.header_read_timeout.min(settings.keepalive_timeout)
        } else {
            settings.keepalive_timeout
        };
        idle.as_mut().reset(Instant::now() + wait);
        tokio::select! {
            read = poll_fn(|cx| reader.poll_fill_lazily(cx)) => match read {
                Ok(n) if n > 0 => {}
                _ => return Next::Close,
            },
            _ = draining.wait_for(|d| *d) => return Next::Close,
            () = idle => return Next::Close,
        }
    }
    // Started at the first read that leaves the head unfinished: most heads arrive whole, and
    // need no clock read.
    let mut deadline = None;
    loop {
        match head::parse(&mut reader.buf, settings.max_headers, settings.max_header_bytes) {
            Parse::Request(parsed) => return Next::Request(parsed),
            Parse::Handoff => return Next::Handoff,
            Parse::Partial => {}
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + settings.header_read_timeout);
        // Slow heads are closed without an answer, as hyper does.
        match tokio::time::timeout_at(deadline, poll_fn(|cx| reader.poll_fill(cx))).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Next::Close,
        }
    }
}

/// Reads out what is left of a request body the answer did not need, if it is small and
/// already sent; whether the connection may carry another request.
fn drain<R: AsyncRead + Unpin>(reader: &mut Reader<R>, mut framing: Framing, max_trailer_bytes: usize) -> bool {
    if framing.is_done() {
        return true;
    }
    let mut drained = 0;
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        match framing.decode(&mut reader.buf, max_trailer_bytes) {
            Ok(Decoded::End) => return true,
            Ok(Decoded::Frame(frame)) => {
                drained += frame.data_ref().map_or(0, |d| d.len());
                if drained > DRAIN {
                    return false;
                }
            }
            Ok(Decoded::More) => match reader.poll_fill(&mut cx) {
                std::task::Poll::Ready(Ok(n)) if n > 0 => {}
                _ => return false,
            },
            Err(_) => return false,
        }
    }
}

/// Writes an answer; whether it went out whole, so the connection may carry another request.
async fn write_answer<W: AsyncWrite + Unpin>(
    write: &mut W,
    answer: Response<Body>,
    head_request: bool,
    close: bool,
    trailers_wanted: bool,
) -> io::Result<bool> {
    let (parts, body) = answer.into_parts();
    let hint = body.size_hint();
    // Room for the head and, when it goes out with the head, the whole body: one allocation,
    // never regrown.
    let room = HEAD_ROOM + hint.exact().filter(|n| *n <= COALESCE).unwrap_or(0) as usize;
    let mut pending = Vec::with_capacity(room);
    let out = head::encode(parts.status, &parts.headers, &hint, head_request, close, &mut pending);
    match write_message(write, pending, body, out, trailers_wanted).await {
        Ok(()) => Ok(true),
        Err(Unsent::Io(e)) => Err(e),
        Err(Unsent::Body(e)) => {
            tracing::debug!(error = %e, "answer body failed; closing the connection");
            Ok(false)
        }
        Err(Unsent::Length) => {
            tracing::debug!("answer body not the length its Content-Length says; closing the connection");
            Ok(false)
        }
    }
}

/// Why a message's body did not go out whole.
#[derive(Debug)]
pub enum Unsent {
    /// The connection failed.
    Io(io::Error),
    /// The body's stream failed.
    Body(BoxError),
    /// The body was not the length its `Content-Length` says (not a byte past it is sent).
    Length,
}

/// Writes `pending` (a head, already encoded) and then `body`, framed as `out` (trailers only
/// with `send_trailers`); used for answers to clients and for requests to upstreams. What is
/// ready now joins the pending write and only a wait sends it, so a head and a body that is
/// already there leave in one call. On a failure what was pending is still sent, so the peer
/// sees where the message broke off.
pub async fn write_message<W: AsyncWrite + Unpin>(
    write: &mut W,
    mut pending: Vec<u8>,
    mut body: Body,
    out: Out,
    send_trailers: bool,
) -> Result<(), Unsent> {
    let coalesce = matches!(out, Out::Length(n) if n <= COALESCE);
    let mut sent = 0u64;
    let mut trailers = None;
    let mut failed = None;
    if out != Out::Empty {
        loop {
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    if !coalesce {
                        flush(write, &mut pending).await.map_err(Unsent::Io)?;
                    }
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => {
                    failed = Some(Unsent::Body(e));
                    break;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
            };
            if data.is_empty() {
                continue;
            }
            if let Out::Length(n) = out
                && sent + data.len() as u64 > n
            {
                failed = Some(Unsent::Length);
                break;
            }
            sent += data.len() as u64;
            if out == Out::Chunked {
                let _ = write!(pending, "{:x}\r\n", data.len());
            }
            if data.len() <= COPY_FRAME || coalesce {
                pending.extend_from_slice(&data);
            } else {
                write_both(write, &pending, &data).await.map_err(Unsent::Io)?;
                pending.clear();
            }
            if out == Out::Chunked {
                pending.extend_from_slice(b"\r\n");
            }
        }
        if failed.is_none() && out == Out::Chunked {
            pending.extend_from_slice(b"0\r\n");
            if let Some(trailers) = trailers.filter(|_| send_trailers) {
                head::write_fields(&trailers, &mut pending);
            }
            pending.extend_from_slice(b"\r\n");
        }
    }
    flush(write, &mut pending).await.map_err(Unsent::Io)?;
    match (failed, out) {
        (Some(unsent), _) => Err(unsent),
        (None, Out::Length(n)) if sent != n => Err(Unsent::Length),
        _ => Ok(()),
    }
}

async fn flush<W: AsyncWrite + Unpin>(write: &mut W, pending: &mut Vec<u8>) -> io::Result<()> {
    if !pending.is_empty() {
        write.write_all(pending).await?;
        pending.clear();
    }
    write.flush().await
}

/// Writes `a` then `b`, in as few calls as the transport allows.
async fn write_both<W: AsyncWrite + Unpin>(write: &mut W, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = write.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    write.write_all(b).await
}
