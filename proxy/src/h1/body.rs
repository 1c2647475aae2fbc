//! Request bodies read straight from the connection. The connection's read side moves into the
//! body while the body streams and comes back when the body ends or is dropped, so a request
//! without a body costs no channel, and one with a body no copy through a channel.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

use crate::body::BoxError;

/// Bytes asked of the socket per read once a request is under way.
const READ_SIZE: usize = 8 * 1024;
/// The stack buffer the first read of each head goes into, so an idle connection waits without
/// holding a buffer of its own.
const FIRST_READ: usize = 4 * 1024;
/// Longest chunk-size line, extensions included.
const MAX_SIZE_LINE: usize = 4 * 1024;
/// Chunk extensions a whole body may carry (hyper's limit too): they are read and ignored.
const MAX_EXTENSIONS: usize = 16 * 1024;
/// Trailer fields a chunked body may end with.
const MAX_TRAILERS: usize = 64;

/// The read side of a connection and the bytes read from it but not yet used.
pub struct Reader<R> {
    pub io: R,
    pub buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads more into `buf`; `Ok(0)` at the end of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// A read through the stack, so `buf` is allocated only once bytes have arrived: for waits
    /// that usually end with nothing to keep (an idle connection's next head, watching for a
    /// client that leaves while its answer is awaited).
    pub fn poll_fill_lazily(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        // Sized to what came: a head that arrives whole (the usual case) then costs one small
        // allocation, not a read buffer's worth.
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// The next frame of a body framed by `framing`, read as needed; `None` at its end.
    pub fn poll_frame(
        &mut self,
        framing: &mut Framing,
        max_trailer_bytes: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            match framing.decode(&mut self.buf, max_trailer_bytes) {
                Ok(Decoded::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => match ready!(self.poll_fill(cx)) {
                    Ok(0) => return Poll::Ready(Some(Err(BodyError::Closed))),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(BodyError::Io(e)))),
                },
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}

/// How a request body is delimited, and how much of it is still to come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked { state: Chunk, extensions: usize },
    /// Read to its end.
    Done,
    /// Broken off: malformed, or the connection failed. The connection cannot carry another
    /// request.
    Failed,
}

/// Where a chunked body's decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then the final CRLF.
    Trailers,
}

/// What [`Framing::decode`] made of the buffered bytes.
#[derive(Debug)]
pub enum Decoded {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    End,
}

/// A body that is not what its framing says.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunked request body: {0}")]
    Chunked(&'static str),
    #[error("the client closed the connection before the request body ended")]
    Closed,
    #[error("the request body could not be read: {0}")]
    Io(#[from] io::Error),
}

impl Framing {
    /// A chunked body not yet started.
    pub fn chunked() -> Framing {
        Framing::Chunked {
            state: Chunk::Size,
            extensions: 0,
        }
    }

    /// Whether the body has been read to its end.
    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }

    /// Takes the next frame out of `buf`, if it holds one. A failure leaves the framing
    /// [`Framing::Failed`].
    pub fn decode(&mut self, buf: &mut BytesMut, max_trailer_bytes: usize) -> Result<Decoded, BodyError> {
        let decoded = self.step(buf, max_trailer_bytes);
        if decoded.is_err() {
            *self = Framing::Failed;
        }
        decoded
    }

    fn step(&mut self, buf: &mut BytesMut, max_trailer_bytes: usize) -> Result<Decoded, BodyError> {
        loop {
            match self {
                Framing::Done | Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Decoded::End);
                }
                Framing::Failed => return Err(BodyError::Chunked("the body already failed")),
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = (*left).min(buf.len() as u64);
                    *left -= take;
                    return Ok(Decoded::Frame(Frame::data(buf.split_to(take as usize).freeze())));
                }
                Framing::Chunked { state, extensions } => match *state {
                    Chunk::Size => {
                        let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                            if buf.len() > MAX_SIZE_LINE {
                                return Err(BodyError::Chunked("chunk-size line too long"));
                            }
                            return Ok(Decoded::More);
                        };
                        if end > MAX_SIZE_LINE {
                            return Err(BodyError::Chunked("chunk-size line too long"));
                        }
                        let (size, ext) = chunk_size(&buf[..end])?;
                        *extensions += ext;
                        if *extensions > MAX_EXTENSIONS {
                            return Err(BodyError::Chunked("too many chunk extensions"));
                        }
                        buf.advance(end + 1);
                        *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    }
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Decoded::More);
                        }
                        let take = left.min(buf.len() as u64);
                        *state = if take == left {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - take)
                        };
                        return Ok(Decoded::Frame(Frame::data(buf.split_to(take as usize).freeze())));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(BodyError::Chunked("chunk data longer than its size"));
                        }
                        buf.advance(2);
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        if buf.starts_with(b"\r\n") {
                            buf.advance(2);
                            *self = Framing::Done;
                            return Ok(Decoded::End);
                        }
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            if buf.len() > max_trailer_bytes {
                                return Err(BodyError::Chunked("trailers too large"));
                            }
                            return Ok(Decoded::More);
                        };
                        let block = buf.split_to(end + 4);
                        *self = Framing::Done;
                        return Ok(Decoded::Frame(Frame::trailers(trailers(&block)?)));
                    }
                },
            }
        }
    }
}

/// `1*HEXDIG *WSP [ ";" extensions ] CR` (the LF already cut off): the size and the length of
/// the extensions.
fn chunk_size(line: &[u8]) -> Result<(u64, usize), BodyError> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(BodyError::Chunked("chunk-size line not ended by CRLF"))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(BodyError::Chunked("chunk size missing"));
    }
    if digits > 15 {
        return Err(BodyError::Chunked("chunk size too large"));
    }
    let size = line[..digits]
        .iter()
        .fold(0u64, |n, b| n * 16 + (*b as char).to_digit(16).unwrap_or(0) as u64);
    let rest = &line[digits..];
    let rest = &rest[rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()..];
    match rest.first() {
        None => Ok((size, 0)),
        Some(b';') if rest.iter().all(|b| *b == b'\t' || (*b >= b' ' && *b != 0x7f)) => Ok((size, rest.len())),
        Some(_) => Err(BodyError::Chunked("invalid chunk size")),
    }
}

/// Fields a request's trailers may not carry: they would reframe or reroute the request, or slip
/// credentials past the stages that read them from the head.
const NOT_TRAILERS: [HeaderName; 9] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::TRAILER,
    header::TE,
    header::CONNECTION,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::COOKIE,
];

/// The trailer fields of a chunked body, minus [`NOT_TRAILERS`].
fn trailers(block: &[u8]) -> Result<HeaderMap, BodyError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let fields = match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(BodyError::Chunked("invalid trailers")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| BodyError::Chunked("invalid trailers"))?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| BodyError::Chunked("invalid trailers"))?;
        if !NOT_TRAILERS.contains(&name) {
            map.append(name, value);
        }
    }
    Ok(map)
}

/// What a request body hands back to its connection.
pub struct Returned<R> {
    pub reader: Reader<R>,
    pub framing: Framing,
}

/// A request body read from the connection it arrived on.
pub struct RequestBody<R> {
    reader: Option<Reader<R>>,
    framing: Framing,
    back: Option<oneshot::Sender<Returned<R>>>,
    max_trailer_bytes: usize,
}

impl<R> RequestBody<R> {
    /// Lends `reader` to a body framed by `framing`; the reader returns through `back`.
    pub fn new(
        reader: Reader<R>,
        framing: Framing,
        max_trailer_bytes: usize,
        back: oneshot::Sender<Returned<R>>,
    ) -> Self {
        RequestBody {
            reader: Some(reader),
            framing,
            back: Some(back),
            max_trailer_bytes,
        }
    }

    fn give_back(&mut self) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(Returned {
                reader,
                framing: self.framing.clone(),
            });
        }
    }
}

impl<R> Drop for RequestBody<R> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<R: AsyncRead + Unpin> http_body::Body for RequestBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(reader) = this.reader.as_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(reader.poll_frame(&mut this.framing, this.max_trailer_bytes, cx));
        if let Some(Err(_)) = &result {
            this.framing = Framing::Failed;
        }
        // Handed back as soon as the body ends, so the connection can go on while whoever holds
        // the body has yet to drop it.
        if this.framing.is_done() || this.framing == Framing::Failed {
            this.give_back();
        }
        Poll::Ready(result.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none() || self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes: the data, the trailers, and whether it
    /// ended.
    fn decode_in_steps(
        mut framing: Framing,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, HeaderMap, BytesMut), BodyError> {
        let (mut data, mut trailers, mut buf) = (Vec::new(), HeaderMap::new(), BytesMut::new());
        let mut pieces = input.chunks(step);
        loop {
            match framing.decode(&mut buf, 1024)? {
                Decoded::Frame(frame) => match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(frame) => trailers = frame.into_trailers().unwrap(),
                },
                Decoded::More => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Err(BodyError::Closed),
                },
                Decoded::End => {
                    buf.extend(pieces.flatten());
                    return Ok((data, trailers, buf));
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let input = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\nA \r\n0123456789\r\n0\r\nX-Sum: 1\r\nContent-Length: 9\r\n\r\nGET /next";
        for step in [1, 2, 3, 7, 64, input.len()] {
            let (data, trailers, rest) = decode_in_steps(Framing::chunked(), input, step).unwrap();
            assert_eq!(data, b"hello world0123456789", "step {step}");
            assert_eq!(trailers.get("x-sum").unwrap(), "1");
            assert!(
                !trailers.contains_key("content-length"),
                "framing fields never come in as trailers"
            );
            assert_eq!(&rest[..], b"GET /next", "the next request's bytes stay");
        }
        let (data, _, rest) = decode_in_steps(Framing::chunked(), b"0\r\n\r\n", 1).unwrap();
        assert!(data.is_empty() && rest.is_empty());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (data, _, rest) = decode_in_steps(Framing::Length(5), b"helloGET /", 3).unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(&rest[..], b"GET /");
        assert!(matches!(
            decode_in_steps(Framing::Length(5), b"hel", 3),
            Err(BodyError::Closed)
        ));
    }

    #[test]
    fn malformed_chunked_bodies_fail_and_stay_failed() {
        for bad in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"x\r\n",
            b"5\n",
            b"-5\r\nhello\r\n",
            b"1234567890abcdef0\r\n",
            b"5 x\r\nhello\r\n",
            b"5;a\x00\r\nhello\r\n",
        ] {
            let mut framing = Framing::chunked();
            let result = decode_in_steps(framing.clone(), bad, 1);
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(bad));
            let mut buf = BytesMut::from(bad);
            while let Ok(Decoded::Frame(_)) = framing.decode(&mut buf, 1024) {}
            assert_eq!(framing, Framing::Failed, "{:?}", String::from_utf8_lossy(bad));
        }
        let long_line = [b"1;".as_slice(), &[b'a'; 5000]].concat();
        assert!(decode_in_steps(Framing::chunked(), &long_line, 100).is_err());
        let many_extensions = b"1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nx\r\n".repeat(400);
        assert!(decode_in_steps(Framing::chunked(), &many_extensions, 4096).is_err());
        let big_trailers = [b"0\r\n".as_slice(), &b"x-a: 1\r\n".repeat(200)].concat();
        assert!(decode_in_steps(Framing::chunked(), &big_trailers, 64).is_err());
    }
}
