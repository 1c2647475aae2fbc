//! Keygate's own HTTP/1.1 side on the wire, spoken to with raw bytes: keep-alive and pipelining,
//! bodies in both framings, `HEAD`, `Connection: close`, unread bodies, answers of unknown
//! length, and the hand-over to hyper for what is not ordinary (`Expect`, HTTP/1.0, ambiguous
//! framing) in the middle of a kept-alive connection.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One answer as the client read it.
#[derive(Debug)]
struct Answer {
    status_line: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Reads one answer off `stream`, framed as its head says (`head_request`: no body follows).
async fn read_answer(stream: &mut BufReader<TcpStream>, head_request: bool) -> Answer {
    within("an answer", async {
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await.unwrap();
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            assert!(
                headers
                    .insert(name.to_ascii_lowercase(), value.trim().to_string())
                    .is_none(),
                "{name} twice"
            );
        }
        let mut body = Vec::new();
        if head_request || status_line.contains(" 100 ") {
        } else if let Some(len) = headers.get("content-length") {
            assert!(!headers.contains_key("transfer-encoding"), "two framings: {headers:?}");
            body.resize(len.parse().unwrap(), 0);
            stream.read_exact(&mut body).await.unwrap();
        } else {
            assert_eq!(
                headers.get("transfer-encoding").map(String::as_str),
                Some("chunked"),
                "{headers:?}"
            );
            loop {
                let mut size = String::new();
                stream.read_line(&mut size).await.unwrap();
                let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                stream.read_exact(&mut chunk).await.unwrap();
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        Answer {
            status_line: status_line.trim_end().to_string(),
            headers,
            body,
        }
    })
    .await
}

async fn connect(proxy: &Proxy) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(proxy.addr).await.unwrap())
}

async fn closed(stream: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(LIMIT, stream.read_to_end(&mut rest)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn pipelined_requests_on_one_connection_each_get_their_answer_in_order() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route_yaml("api", "/api", &up.url(), "")).await;
    let mut s = connect(&proxy).await;
    // Four requests in one write, the bodies in both framings.
    s.get_mut()
        .write_all(
            b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /api/b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              POST /api/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
              HEAD /api/d HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
    for (i, head) in [false, false, false, true].into_iter().enumerate() {
        let got = read_answer(&mut s, head).await;
        assert_eq!(got.status_line, "HTTP/1.1 200 OK", "answer {i}: {got:?}");
        assert_eq!(got.headers["content-length"], "11", "answer {i}: {got:?}");
        assert!(got.headers.contains_key("date"), "{got:?}");
        assert_eq!(got.body, if head { &b""[..] } else { b"upstream ok" }, "answer {i}");
    }
    // Still open: one more, sent in pieces.
    for piece in [&b"GET /api/e HT"[..], b"TP/1.1\r\nHo", b"st: a\r\n\r\n"] {
        s.get_mut().write_all(piece).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(read_answer(&mut s, false).await.status_line, "HTTP/1.1 200 OK");
    let seen = up.seen.lock().unwrap().clone();
    let seen: Vec<_> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.uri.as_str(), &s.body[..]))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", "/a", &b""[..]),
            ("POST", "/b", b"hello"),
            ("POST", "/c", b"hello world"),
            ("HEAD", "/d", b""),
            ("GET", "/e", b""),
        ]
    );
}

#[tokio::test]
async fn close_is_honoured_and_an_unread_body_does_not_spoil_the_connection() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route_yaml("api", "/api", &up.url(), "")).await;

    let mut s = connect(&proxy).await;
    // No route: Keygate answers without reading the body, then reads it out of the way.
    s.get_mut()
        .write_all(b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
        .await
        .unwrap();
    let got = read_answer(&mut s, false).await;
    assert!(got.status_line.starts_with("HTTP/1.1 404"), "{got:?}");
    assert!(
        String::from_utf8_lossy(&got.body).contains("ROUTE_NOT_FOUND"),
        "{got:?}"
    );
    s.get_mut()
        .write_all(b"GET /api/next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_answer(&mut s, false).await;
    assert_eq!(got.status_line, "HTTP/1.1 200 OK", "the body was read past: {got:?}");
    assert_eq!(got.headers["connection"], "close");
    assert!(
        closed(&mut s).await,
        "the connection stayed open after Connection: close"
    );
    assert_eq!(up.seen.lock().unwrap().len(), 1, "only /api/next went upstream");
}

#[tokio::test]
async fn an_upload_refused_before_it_ends_still_reads_its_answer() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route_yaml("small", "/small", &up.url(), "  bodyLimit: 1000")).await;
    let mut s = connect(&proxy).await;
    // 4 MiB declared: refused at once, unread. This client sends all of it before it reads, as
    // Python's http.client does; closing with its bytes unread would reset the connection under
    // it and the 413 would be lost.
    const LEN: usize = 4 << 20;
    s.get_mut()
        .write_all(format!("POST /small/upload HTTP/1.1\r\nHost: a\r\nContent-Length: {LEN}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    for sent in (0..LEN).step_by(chunk.len()) {
        // Halfway, a pause: the answer and the proxy's close arrive while the client still sends.
        if sent == LEN / 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        within("sending the body", s.get_mut().write_all(&chunk))
            .await
            .unwrap_or_else(|e| panic!("the upload broke off after {sent} bytes: {e}"));
    }
    let got = read_answer(&mut s, false).await;
    assert!(got.status_line.starts_with("HTTP/1.1 413"), "{got:?}");
    assert!(String::from_utf8_lossy(&got.body).contains("BODY_TOO_LARGE"), "{got:?}");
    assert!(
        closed(&mut s).await,
        "the connection stayed open after the refused upload"
    );
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "the refused upload reached the upstream"
    );
}

#[tokio::test]
async fn odd_requests_mid_connection_are_served_by_hyper_and_smuggling_is_refused() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route_yaml("api", "/api", &up.url(), "")).await;

    // An ordinary request, then `Expect: 100-continue` on the same connection: hyper takes over
    // from the byte Keygate stopped at and answers 100 before the body is sent.
    let mut s = connect(&proxy).await;
    s.get_mut()
        .write_all(b"GET /api/first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s, false).await.status_line, "HTTP/1.1 200 OK");
    s.get_mut()
        .write_all(b"PUT /api/upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .await
        .unwrap();
    let got = read_answer(&mut s, false).await;
    assert_eq!(got.status_line, "HTTP/1.1 100 Continue", "{got:?}");
    s.get_mut().write_all(b"abc").await.unwrap();
    assert_eq!(read_answer(&mut s, false).await.status_line, "HTTP/1.1 200 OK");
    s.get_mut()
        .write_all(b"GET /api/old HTTP/1.0\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let got = read_answer(&mut s, false).await;
    assert!(got.status_line.ends_with(" 200 OK"), "{got:?}");

    // A length and a chunked coding at once: the coding wins (RFC 9112 §6.3), the connection
    // closes after the answer, and what hid behind the short chunked body never becomes a
    // request of its own.
    let mut s = connect(&proxy).await;
    s.get_mut()
        .write_all(
            b"POST /api/outer HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
    let got = read_answer(&mut s, false).await;
    assert_eq!(got.status_line, "HTTP/1.1 200 OK", "{got:?}");
    assert_eq!(got.headers["connection"], "close");
    assert!(closed(&mut s).await);
    let seen = up.seen.lock().unwrap().clone();
    let uris: Vec<_> = seen.iter().map(|s| (s.uri.as_str(), &s.body[..])).collect();
    assert_eq!(
        uris,
        [
            ("/first", &b""[..]),
            ("/upload", b"abc"),
            ("/old", b""),
            ("/outer", b"")
        ]
    );
}

/// An upstream that answers every request with a chunked body of unknown length.
async fn chunked_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    while line != "\r\n" {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    let answer =
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
                    if stream.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn answers_of_unknown_length_are_chunked_and_the_connection_goes_on() {
    let upstream = chunked_upstream().await;
    let proxy = Proxy::start(&route_yaml("api", "/api", &upstream, "")).await;
    let mut s = connect(&proxy).await;
    for _ in 0..2 {
        s.get_mut()
            .write_all(b"GET /api/stream HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let got = read_answer(&mut s, false).await;
        assert_eq!(got.status_line, "HTTP/1.1 200 OK", "{got:?}");
        assert!(!got.headers.contains_key("content-length"), "{got:?}");
        assert_eq!(got.body, b"hello, world");
    }
}
