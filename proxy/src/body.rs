//! Body plumbing: one boxed body type both ways, and the request-body wrapper that enforces a
//! route's `bodyLimit` while the body streams (chunked bodies included) without buffering it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;

/// Error type of bodies flowing through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the proxy builds.
pub type Body = BoxBody<Bytes, BoxError>;

/// Whether an answer with `status`, to a request that was (or was not) `HEAD`, carries no
/// content whatever its headers say (RFC 9110 §6.4.1): answers to `HEAD`, 1xx, 204 and 304.
pub fn is_bodiless(status: http::StatusCode, head_request: bool) -> bool {
    head_request
        || status.is_informational()
        || matches!(status, http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED)
}

/// A body of `bytes`, for answers Keygate writes itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body. Every request without a body gets one, so it allocates nothing: `Empty` and
/// the error map are both zero-sized.
pub fn empty() -> Body {
    use http_body_util::BodyExt;
    http_body_util::Empty::new().map_err(|never| match never {}).boxed()
}

/// Why [`read_to_limit`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is longer than the limit (this one, or one already wrapped around the body).
    #[error("body exceeds {0} bytes")]
    TooLarge(u64),
    /// The body stream failed.
    #[error("body could not be read: {0}")]
    Failed(BoxError),
}

/// Buffers a whole body, refusing to hold more than `limit` bytes: for the stages that must read
/// a body (the login answer, detokenized requests, tokenized answers). Trailers are dropped.
pub async fn read_to_limit<B>(mut body: B, limit: u64) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        // A limit already wrapped around the body (the route's `bodyLimit`) is reported as such.
        let frame = frame.map_err(|e| {
            let e: BoxError = e.into();
            match e.downcast_ref::<BodyTooLarge>() {
                Some(BodyTooLarge(limit)) => ReadError::TooLarge(*limit),
                None => ReadError::Failed(e),
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() as u64 + data.len() as u64 > limit {
                return Err(ReadError::TooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Raised inside the stream when the limit is crossed; the proxy answers 413.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// Passes frames through untouched, counting bytes; past `limit` it fails the stream and raises
/// `exceeded`, so the proxy can tell "the body was too large" from other upstream failures.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `exceeded` is set if more than `limit` bytes arrive.
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
            exceeded,
        }
    }
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.exceeded.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
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

    /// Data frames of the given sizes, as a client would stream them.
    struct Chunks(std::vec::IntoIter<usize>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.next().map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
        }
    }

    fn limited(sizes: &[usize], limit: u64) -> (LimitedBody<Chunks>, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (
            LimitedBody::new(Chunks(Vec::from(sizes).into_iter()), limit, flag.clone()),
            flag,
        )
    }

    #[tokio::test]
    async fn passes_bodies_up_to_the_limit() {
        let (body, flag) = limited(&[4, 4, 2], 10);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!flag.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn fails_the_stream_one_byte_past_the_limit() {
        let (body, flag) = limited(&[4, 4, 3], 10);
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("exceeds 10 bytes"));
        assert!(flag.load(Ordering::Acquire));
    }

    fn body(n: usize) -> Body {
        full(vec![b'x'; n])
    }

    #[tokio::test]
    async fn read_to_limit_names_the_limit_that_was_crossed() {
        assert_eq!(read_to_limit(body(5), 5).await.ok().map(|b| b.len()), Some(5));
        assert!(matches!(read_to_limit(body(6), 5).await, Err(ReadError::TooLarge(5))));
        // A limit already wrapped around the body (the route's bodyLimit) is reported as such.
        let limited = LimitedBody::new(body(6), 3, Default::default()).boxed();
        assert!(matches!(read_to_limit(limited, 100).await, Err(ReadError::TooLarge(3))));
    }
}
