//! Request heads in, response heads out. A head is taken on the fast path only when it is an
//! ordinary HTTP/1.1 request whose body framing is unambiguous; anything else is
//! [`Parse::Handoff`], so hyper, not this file, answers every odd or hostile head.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::SizeHint;

use super::body::Framing;
use crate::body::is_bodiless;
use crate::pipeline::value_has_token;

/// How many header slots live on the stack; past it (a raised `--max-headers`) they go on the
/// heap.
const STACK_HEADERS: usize = 100;

/// How many fields a request typically gains on its way upstream.
const ADDED_FIELDS: usize = 8;

/// A request head read whole.
pub struct Parsed {
    /// Method, target, version and headers; the body is attached by the caller.
    pub request: Request<()>,
    /// How the body that follows is framed.
    pub framing: Framing,
    /// The client asked for the connection to close after this exchange.
    pub close: bool,
    /// The client accepts trailers on a chunked answer (`TE: trailers`).
    pub trailers: bool,
}

/// What the bytes buffered so far hold.
#[allow(
    clippy::large_enum_variant,
    reason = "a head is moved on at once; boxing it cost an allocation on every request"
)]
pub enum Parse {
    /// A head for the fast path; its bytes are gone from the buffer.
    Request(Parsed),
    /// Not a whole head yet.
    Partial,
    /// Something for hyper: an upgrade, `Expect`, HTTP/1.0, `CONNECT`, ambiguous framing, the
    /// HTTP/2 preface, or a head hyper refuses with an answer of its own. The buffer is intact.
    Handoff,
}

/// Parses the head at the start of `buf`, taking at most `max_headers` fields and `max_bytes`
/// bytes.
pub fn parse(buf: &mut BytesMut, max_headers: usize, max_bytes: usize) -> Parse {
    // Frozen so header values and the target can share the bytes instead of copying them.
    let bytes = std::mem::take(buf).freeze();
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = if max_headers <= STACK_HEADERS {
        &mut stack[..max_headers]
    } else {
        heap.resize(max_headers, httparse::EMPTY_HEADER);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(slots);
    let parsed = match req.parse(&bytes) {
        Ok(httparse::Status::Complete(len)) if len <= max_bytes => build(&bytes, &req).map(|p| (p, len)),
        Ok(httparse::Status::Complete(_)) => None,
        Ok(httparse::Status::Partial) if bytes.len() <= max_bytes => {
            *buf = unfreeze(bytes);
            return Parse::Partial;
        }
        Ok(httparse::Status::Partial) | Err(_) => None,
    };
    let Some((parsed, len)) = parsed else {
        *buf = unfreeze(bytes);
        return Parse::Handoff;
    };
    let rest = &bytes[len..];
    if !rest.is_empty() {
        // The start of a body, or a pipelined request: small, so copied rather than kept shared.
        *buf = BytesMut::from(rest);
    }
    Parse::Request(parsed)
}

fn unfreeze(bytes: Bytes) -> BytesMut {
    bytes
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]))
}

fn build(bytes: &Bytes, req: &httparse::Request<'_, '_>) -> Option<Parsed> {
    if req.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    let uri = Uri::from_maybe_shared(bytes.slice_ref(req.path?.as_bytes())).ok()?;
    // Room for what the way upstream adds (X-Forwarded-*, X-Real-IP, traceparent, injected
    // keys), so the map is not regrown two or three times on each request.
    let mut headers = HeaderMap::with_capacity(req.headers.len() + ADDED_FIELDS);
    let (mut length, mut lengths, mut chunked, mut encodings) = (0u64, 0, false, 0);
    // `Connection` and `TE` are read as they pass, not looked up again after.
    let (mut upgrade, mut close, mut trailers) = (false, false, false);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(h.value)).ok()?;
        match name {
            header::CONTENT_LENGTH => {
                lengths += 1;
                length = parse_length(h.value)?;
            }
            header::TRANSFER_ENCODING => {
                encodings += 1;
                chunked = value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            header::CONNECTION => {
                upgrade |= value_has_token(&value, "upgrade");
                close |= value_has_token(&value, "close");
            }
            header::TE => trailers |= value_has_token(&value, "trailers"),
            header::UPGRADE | header::EXPECT => return None,
            _ => {}
        }
        headers.append(name, value);
    }
    if upgrade {
        return None;
    }
    // One framing, stated once: two lengths, a length beside an encoding, or any coding but a
    // lone `chunked` is how requests are smuggled. hyper applies RFC 9112 §6.3 to them (a 400,
    // or the coding wins and the connection closes after), so that stays its job.
    let framing = match (lengths, encodings) {
        (0, 0) => Framing::Length(0),
        (1, 0) => Framing::Length(length),
        (0, 1) if chunked => Framing::chunked(),
        _ => return None,
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(Parsed {
        request,
        framing,
        close,
        trailers,
    })
}

/// Digits only: no sign, no spaces, no list.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// How an answer's body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    /// No body: `HEAD`, 1xx, 204 and 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes the status line and headers of an answer to `out`, choosing and declaring the body's
/// framing as hyper would: the answer's own `Content-Length`, else the body's exact size, else
/// chunked. Adds `Date` when absent and `Connection: close` when `close`. The fields Keygate
/// decides are written here rather than set in the map: one walk over the fields present finds
/// what the answer says, where a lookup, a removal and an insertion for each cost more.
pub fn encode(
    status: StatusCode,
    headers: &HeaderMap,
    hint: &SizeHint,
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Out {
    let (mut lengths, mut declared, mut dated) = (0, None, false);
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                lengths += 1;
                declared = parse_length(value.as_bytes());
            }
            header::DATE => dated = true,
            _ => {}
        }
    }
    let bodiless = is_bodiless(status, head_request);
    // A HEAD or 304 answer keeps the length and coding a GET would get; 1xx and 204 have none,
    // and otherwise Keygate frames the body itself (an upstream's coding was for its own hop).
    let keeps_framing = bodiless && !(status.is_informational() || status == StatusCode::NO_CONTENT);
    let framing = match (bodiless, declared.filter(|_| lengths == 1).or(hint.exact())) {
        (true, _) => Out::Empty,
        (false, Some(n)) => Out::Length(n),
        (false, None) => Out::Chunked,
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    match framing {
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::Empty => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    for (name, value) in headers {
        let replaced = match *name {
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING => !keeps_framing,
            header::CONNECTION => close,
            _ => false,
        };
        if !replaced {
            write_field(name, value, out);
        }
    }
    if !dated {
        write_date(out);
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// `name: value` lines. Both were validated when built, so neither can hold a line break.
pub fn write_fields(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        write_field(name, value, out);
    }
}

/// One `name: value` line.
pub fn write_field(name: &HeaderName, value: &HeaderValue, out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` field, formatted once per second per worker.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn write_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached_secs, line)| {
        if *cached_secs != secs {
            *line = format!("date: {}\r\n", httpdate::fmt_http_date(now));
            *cached_secs = secs;
        }
        out.extend_from_slice(line.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::has_token;

    fn parse_str(head: &str) -> Parse {
        parse(&mut BytesMut::from(head.as_bytes()), 100, 1024)
    }

    fn request(head: &str) -> Parsed {
        match parse_str(head) {
            Parse::Request(p) => p,
            Parse::Partial => panic!("partial: {head:?}"),
            Parse::Handoff => panic!("handed off: {head:?}"),
        }
    }

    #[test]
    fn an_ordinary_head_keeps_its_target_headers_and_what_follows() {
        let mut buf = BytesMut::from(
            &b"POST /api/x?q=1 HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nx-two: 2\r\nContent-Length: 5\r\n\r\nhello"[..],
        );
        let Parse::Request(p) = parse(&mut buf, 100, 1024) else {
            panic!("not parsed")
        };
        assert_eq!(p.request.method(), Method::POST);
        assert_eq!(p.request.uri(), "/api/x?q=1");
        assert_eq!(p.request.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(p.framing, Framing::Length(5));
        assert!(!p.close && !p.trailers);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn a_head_in_pieces_is_partial_until_whole_and_loses_no_byte() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHo"[..]);
        assert!(matches!(parse(&mut buf, 100, 1024), Parse::Partial));
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\nHo");
        buf.extend_from_slice(b"st: a\r\n\r\n");
        assert!(matches!(parse(&mut buf, 100, 1024), Parse::Request(_)));
        assert!(buf.is_empty());
    }

    #[test]
    fn ambiguous_framing_and_odd_requests_go_to_hyper_untouched() {
        for head in [
            // Smuggling shapes.
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            // Upgrades, Expect, other versions and methods hyper knows how to serve.
            "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // Heads hyper refuses with an answer.
            "GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(head.as_bytes());
            assert!(matches!(parse(&mut buf, 100, 1024), Parse::Handoff), "{head:?}");
            assert_eq!(&buf[..], head.as_bytes(), "the bytes go to hyper as read");
        }
    }

    #[test]
    fn more_fields_than_allowed_go_to_hyper() {
        let head = format!("GET / HTTP/1.1\r\n{}\r\n", "a: 1\r\n".repeat(3));
        assert!(matches!(
            parse(&mut BytesMut::from(head.as_bytes()), 2, 1024),
            Parse::Handoff
        ));
        assert!(matches!(
            parse(&mut BytesMut::from(head.as_bytes()), 3, 1024),
            Parse::Request(_)
        ));
        assert!(matches!(
            parse(&mut BytesMut::from(head.as_bytes()), 300, 1024),
            Parse::Request(_)
        ));
    }

    #[test]
    fn heads_past_the_size_limit_go_to_hyper_whole_or_not() {
        let head = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(100));
        assert!(matches!(
            parse(&mut BytesMut::from(head.as_bytes()), 100, 200),
            Parse::Request(_)
        ));
        assert!(matches!(
            parse(&mut BytesMut::from(head.as_bytes()), 100, 100),
            Parse::Handoff
        ));
        let partial = &head.as_bytes()[..120];
        assert!(matches!(parse(&mut BytesMut::from(partial), 100, 100), Parse::Handoff));
        assert!(matches!(parse(&mut BytesMut::from(partial), 100, 200), Parse::Partial));
    }

    #[test]
    fn connection_and_te_tokens_are_read_from_lists() {
        let p = request("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\nTE: deflate, trailers\r\n\r\n");
        assert!(p.close && p.trailers);
        assert!(has_token(p.request.headers(), header::CONNECTION, "close"));
        assert!(!request("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").close);
        let p = request("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(p.framing, Framing::chunked());
    }

    fn encoded(status: StatusCode, headers: &mut HeaderMap, hint: SizeHint, head: bool, close: bool) -> (Out, String) {
        let mut out = Vec::new();
        let framing = encode(status, headers, &hint, head, close, &mut out);
        (framing, String::from_utf8(out).unwrap())
    }

    #[test]
    fn answers_declare_their_framing_once() {
        let (out, text) = encoded(
            StatusCode::OK,
            &mut HeaderMap::new(),
            SizeHint::with_exact(3),
            false,
            false,
        );
        assert_eq!(out, Out::Length(3));
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");

        let mut headers = HeaderMap::new();
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        let (out, text) = encoded(StatusCode::BAD_GATEWAY, &mut headers, SizeHint::default(), false, true);
        assert_eq!(out, Out::Length(9));
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        assert!(text.contains("\r\ncontent-length: 9\r\n"), "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");

        let (out, text) = encoded(StatusCode::OK, &mut HeaderMap::new(), SizeHint::default(), false, false);
        assert_eq!(out, Out::Chunked);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");

        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let (out, text) = encoded(StatusCode::OK, &mut headers, SizeHint::with_exact(0), true, false);
        assert_eq!(out, Out::Empty);
        assert!(
            text.contains("content-length: 12\r\n"),
            "a HEAD answer keeps its length: {text}"
        );

        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let (out, text) = encoded(
            StatusCode::NO_CONTENT,
            &mut headers,
            SizeHint::with_exact(0),
            false,
            false,
        );
        assert_eq!(out, Out::Empty);
        assert!(!text.contains("content-length"), "{text}");
    }
}
