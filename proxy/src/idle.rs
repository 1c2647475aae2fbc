//! Time limits on clients that hold resources without using them: a keep-alive connection with
//! no request in flight ([`IdleIo`]) and a request body that stops arriving ([`StallingBody`]).
//! Slow request heads are hyper's own `header_read_timeout` (see `server.rs`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};

/// Requests in flight on one connection, and when the last one ended. Shared by the connection's
/// [`IdleIo`] and every request it carries.
#[derive(Clone)]
pub struct Activity(Arc<ActivityState>);

struct ActivityState {
    busy: AtomicUsize,
    /// Milliseconds after `base` at which the connection last became idle.
    idle_since_ms: AtomicU64,
    base: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(ActivityState {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            base: Instant::now(),
        }))
    }
}

impl Activity {
    /// Marks a request (or a tunnel) in flight until the returned guard drops.
    pub fn begin(&self) -> Busy {
        self.0.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn is_busy(&self) -> bool {
        self.0.busy.load(Ordering::Acquire) > 0
    }

    fn idle_since(&self) -> Instant {
        self.0.base + Duration::from_millis(self.0.idle_since_ms.load(Ordering::Acquire))
    }

    fn touch(&self) {
        let ms = self.0.base.elapsed().as_millis() as u64;
        self.0.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
    }
}

/// A request in flight; dropping it (when the answer's body ends) lets the idle clock run.
pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client connection that reads as closed once it has had no request in flight and sent no
/// byte for `timeout`. hyper has no idle timeout for HTTP/2 (pings only detect dead peers) and
/// ties HTTP/1.1's to the head timeout, so the keep-alive limit lives at the I/O layer.
pub struct IdleIo<T> {
    inner: T,
    activity: Activity,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<T> IdleIo<T> {
    /// Wraps `inner`; requests on it must hold a [`Busy`] from `activity`.
    pub fn new(inner: T, activity: Activity, timeout: Duration) -> Self {
        activity.touch();
        IdleIo {
            inner,
            activity,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// True when the idle time has run out; otherwise arms the timer for the next check.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let deadline = self.activity.idle_since() + self.timeout;
            if self.activity.is_busy() {
                // Re-checked a timeout later: busy connections are never closed here.
                let later = Instant::now() + self.timeout;
                self.sleep.as_mut().reset(later);
                let _ = self.sleep.as_mut().poll(cx);
                return false;
            }
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => return false,
                // A request may have begun and ended while the timer ran: re-read the clock.
                Poll::Ready(()) if self.activity.idle_since() + self.timeout > Instant::now() => continue,
                Poll::Ready(()) => return true,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.activity.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => {
                tracing::debug!(timeout_s = self.timeout.as_secs_f64(), "idle connection closed");
                // End of stream: hyper closes the connection as if the client had.
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An answer body that keeps its request counted as in flight until it ends or is dropped, so a
/// long download is not mistaken for an idle connection. Its own type rather than `map_frame`,
/// which drops the size hint and so turns every `Content-Length` answer chunked.
pub fn hold_busy(body: Body, busy: Busy) -> Body {
    use http_body_util::BodyExt;
    Holding {
        inner: body,
        _busy: busy,
    }
    .boxed()
}

struct Holding {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raised inside a request body that stalled; the proxy answers 408 if the upstream had not.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled for more than {0:?}")]
pub struct BodyStalled(pub Duration);

/// A request body that fails once no data has arrived for `timeout` while the upstream waits for
/// it. The clock runs only while the body is polled, so an upstream that reads slowly is never
/// blamed on the client.
pub struct StallingBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    stalled: Arc<AtomicBool>,
    waiting: bool,
}

impl<B> StallingBody<B> {
    /// Wraps `inner`; `stalled` is raised when it times out.
    pub fn new(inner: B, timeout: Duration, stalled: Arc<AtomicBool>) -> Self {
        StallingBody {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            stalled,
            waiting: false,
        }
    }
}

impl<B> http_body::Body for StallingBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.timeout;
                    this.sleep.as_mut().reset(deadline);
                }
                ready!(this.sleep.as_mut().poll(cx));
                this.stalled.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(BodyStalled(this.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_connection_reads_as_closed_after_the_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::default();
        let mut io = IdleIo::new(server, activity.clone(), Duration::from_millis(300));
        let mut client = client;
        client.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "idle: end of stream");
        assert!(started.elapsed() >= Duration::from_millis(280));
    }

    #[tokio::test]
    async fn a_request_in_flight_keeps_the_connection_open() {
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::default();
        let mut io = IdleIo::new(server, activity.clone(), Duration::from_millis(300));
        let busy = activity.begin();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_millis(900), io.read(&mut buf)).await;
        assert!(read.is_err(), "still open after 900 ms with a request in flight");
        drop(busy);
        let started = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(
            started.elapsed() >= Duration::from_millis(280),
            "the clock restarts when the request ends"
        );
        drop(client);
    }

    /// A body that yields one chunk and then never another.
    struct Dribble(bool);

    impl http_body::Body for Dribble {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abc")))))
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_and_raises_its_flag() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut body = StallingBody::new(Dribble(false), Duration::from_millis(300), flag.clone());
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyStalled>(), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(280));
        assert!(flag.load(Ordering::Acquire));
    }
}
