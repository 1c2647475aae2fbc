//! Clients that hold the proxy's resources without using them, or use HTTP/2 against it: slow
//! heads (slowloris), stalled bodies, idle keep-alive connections, too many or too large
//! headers, HTTP/2 stream limits and rapid reset (CVE-2023-44487). Each test checks the limit
//! bites and that another client's requests keep being answered while the abuse goes on. Counts
//! and times are bounded; the only time asserts are "answered within N seconds".

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use keygate_proxy::proxy::RequestLimits;
use keygate_proxy::server::ListenerLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request of the well-behaved client may take while the abuse goes on.
const LIVE: Duration = Duration::from_secs(5);

fn limits() -> ListenerLimits {
    ListenerLimits {
        header_read_timeout: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        h2_max_concurrent_streams: 10,
        ..ListenerLimits::default()
    }
}

fn request_limits() -> RequestLimits {
    RequestLimits {
        max_headers: 20,
        body_idle_timeout: Duration::from_secs(1),
    }
}

async fn proxy_for(up: &Upstream) -> Proxy {
    Proxy::start_limited(&route_yaml("api", "/api", &up.url(), ""), limits(), request_limits()).await
}

/// A well-behaved client asking every 100 ms while the abuse goes on; panics if one answer takes
/// longer than [`LIVE`] or is not 200.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Bystander {
    fn start(url: String) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let task = tokio::spawn(async move {
            let mut answered = 0;
            while !done.load(Ordering::Acquire) {
                let got = tokio::time::timeout(LIVE, get(&url, &[]))
                    .await
                    .unwrap_or_else(|_| panic!("a normal request took longer than {LIVE:?} during the abuse"));
                assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
                answered += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answered
        });
        Bystander { stop, task }
    }

    /// Stops asking; fails unless every answer came in time and there was at least one.
    async fn finish(self) {
        self.stop.store(true, Ordering::Release);
        assert!(
            self.task.await.unwrap() > 0,
            "the normal client was answered throughout"
        );
    }
}

/// Reads until the server closes; what it sent, or `None` if it was still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `n` abusive connections to `addr`, each running `abuse(i, stream)` in its own task.
fn connections<F, Fut>(addr: std::net::SocketAddr, n: usize, abuse: F) -> Vec<tokio::task::JoinHandle<Fut::Output>>
where
    F: Fn(usize, TcpStream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    (0..n)
        .map(|i| {
            let abuse = abuse.clone();
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                abuse(i, stream).await
            })
        })
        .collect()
}

#[tokio::test]
async fn slowloris_heads_are_cut_off_while_others_are_served() {
    let up = Upstream::ok().await;
    let proxy = proxy_for(&up).await;
    let bystander = Bystander::start(proxy.url("/api/ok"));
    let slow = connections(proxy.addr, 60, |i, mut s| async move {
        s.write_all(format!("GET /api/slow/{i} HTTP/1.1\r\nHost: a\r\n").as_bytes())
            .await
            .unwrap();
        let started = Instant::now();
        // One header byte every 100 ms, for at most 8 s: never a whole head.
        for b in b"X-Dribble: ".iter().cycle().take(80) {
            if s.write_all(&[*b]).await.is_err() {
                return (started.elapsed(), Vec::new());
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), Vec::new()),
                Ok(Ok(n)) => {
                    let mut got = buf[..n].to_vec();
                    got.extend(read_until_closed(&mut s, LIMIT).await.unwrap_or_default());
                    return (started.elapsed(), got);
                }
                Err(_) => {}
            }
        }
        panic!("slowloris connection {i} was still open after 8 s");
    });
    for task in slow {
        let (after, got) = within("a slowloris connection", task).await.unwrap();
        assert!(after < Duration::from_secs(5), "cut off only after {after:?}");
        // What the client gets: the connection closed, no answer (hyper writes none for a head
        // that timed out half-sent).
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    bystander.finish().await;
    assert!(
        up.seen.lock().unwrap().iter().all(|s| !s.uri.contains("/slow/")),
        "no slow head reached the upstream"
    );
}

#[tokio::test]
async fn stalled_bodies_get_408_while_others_are_served() {
    let up = Upstream::ok().await;
    let proxy = proxy_for(&up).await;
    let bystander = Bystander::start(proxy.url("/api/ok"));
    let stalled = connections(proxy.addr, 50, |i, mut s| async move {
        let head = format!("POST /api/upload/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789");
        s.write_all(head.as_bytes()).await.unwrap();
        read_until_closed(&mut s, LIMIT)
            .await
            .expect("the stalled request was never ended")
    });
    for task in stalled {
        let got = within("a stalled body", task).await.unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
        assert!(got.contains(r#""code":"REQUEST_TIMEOUT""#), "{got:?}");
    }
    bystander.finish().await;
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed_on_http1_and_http2() {
    let up = Upstream::ok().await;
    let limits = ListenerLimits {
        keepalive_timeout: Duration::from_secs(1),
        // Longer than keep-alive, so it is the keep-alive limit that closes the idle connection.
        header_read_timeout: Duration::from_secs(30),
        ..ListenerLimits::default()
    };
    let proxy = Proxy::start_limited(&route_yaml("api", "/api", &up.url(), ""), limits, request_limits()).await;

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = within("the HTTP/1.1 answer", s.read(&mut buf)).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle = Instant::now();
    let rest = read_until_closed(&mut s, LIMIT)
        .await
        .expect("the idle HTTP/1.1 connection stayed open");
    assert!(rest.is_empty());
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "closed while not yet idle long enough"
    );

    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let (resp, _) = client
        .send_request(Request::get(proxy.url("/api/h2")).body(()).unwrap(), true)
        .unwrap();
    let resp = tokio::select! {
        r = resp => r.unwrap(),
        r = &mut conn => panic!("connection ended before the answer: {r:?}"),
    };
    assert_eq!(resp.status(), StatusCode::OK);
    let idle = Instant::now();
    within("the idle HTTP/2 connection to close", conn).await.ok();
    assert!(idle.elapsed() >= Duration::from_millis(900));
}

/// `n` extra headers on a GET.
fn with_headers(url: &str, n: usize) -> Request<http_body_util::Full<Bytes>> {
    let mut b = Request::get(url);
    for i in 0..n {
        b = b.header(format!("x-extra-{i}"), "1");
    }
    b.body(Default::default()).unwrap()
}

#[tokio::test]
async fn header_count_and_size_limits_answer_431() {
    let up = Upstream::ok().await;
    let proxy = proxy_for(&up).await;

    // HTTP/1.1: hyper refuses the head before Keygate sees it: a bare 431, no JSON.
    let got = send(with_headers(&proxy.url("/api/many"), 30)).await;
    assert_eq!(got.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let got = get(&proxy.url("/api/big"), &[("x-big", &"a".repeat(70 * 1024))]).await;
    assert_eq!(got.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // HTTP/2: the count is Keygate's own check, answered as a proxy_error.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let resp = within(
        "an HTTP/2 request",
        h2.request(with_headers(&proxy.url("/api/many"), 30)),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["proxy_error"]["code"], "TOO_MANY_HEADERS");
    // An HTTP/2 header list past --max-header-bytes: h2 answers a bare 431 itself.
    let big = Request::get(proxy.url("/api/big"))
        .header("x-big", "a".repeat(70 * 1024))
        .body(Default::default())
        .unwrap();
    let resp = within("an oversize HTTP/2 request", h2.request(big)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "no refused request reached the upstream"
    );
    // Within the limit, requests pass.
    assert_eq!(
        send(with_headers(&proxy.url("/api/ok"), 10)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn http2_streams_are_capped_per_connection_while_others_are_served() {
    // Requests the slow upstream holds at once, and the most it ever held.
    let (busy, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let slow = {
        let (busy, peak) = (busy.clone(), peak.clone());
        Upstream::start(move |_| {
            let (busy, peak) = (busy.clone(), peak.clone());
            async move {
                peak.fetch_max(busy.fetch_add(1, Ordering::AcqRel) + 1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(500)).await;
                busy.fetch_sub(1, Ordering::AcqRel);
                http::Response::new(http_body_util::Full::new(Bytes::from_static(b"slow")))
            }
        })
        .await
    };
    let fast = Upstream::ok().await;
    let yaml = route_yaml("slow", "/slow", &slow.url(), "") + &route_yaml("api", "/api", &fast.url(), "");
    let proxy = Proxy::start_limited(&yaml, limits(), request_limits()).await;

    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut first = client.clone();
    let (resp, _) = first
        .send_request(Request::get(proxy.url("/api/first")).body(()).unwrap(), true)
        .unwrap();
    tokio::select! {
        r = resp => assert_eq!(r.unwrap().status(), StatusCode::OK),
        r = &mut conn => panic!("connection ended: {r:?}"),
    }
    assert_eq!(
        conn.max_concurrent_send_streams(),
        10,
        "SETTINGS_MAX_CONCURRENT_STREAMS"
    );
    tokio::spawn(conn);

    // 30 slow requests on one connection: at most 10 run at once, the rest wait their turn.
    let bystander = Bystander::start(proxy.url("/api/ok"));
    let streams: Vec<_> = (0..30)
        .map(|i| {
            let mut client = client.clone();
            let url = proxy.url(&format!("/slow/{i}"));
            tokio::spawn(async move {
                client = client.ready().await.unwrap();
                let (resp, _) = client.send_request(Request::get(url).body(()).unwrap(), true).unwrap();
                resp.await.unwrap().status()
            })
        })
        .collect();
    for s in streams {
        assert_eq!(within("a capped stream", s).await.unwrap(), StatusCode::OK);
    }
    bystander.finish().await;
    assert_eq!(slow.count(), 30);
    let peak = peak.load(Ordering::Acquire);
    assert!(peak <= 10, "{peak} streams reached the upstream at once");
}

/// One HTTP/2 frame: length, type, flags, stream id, payload (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads frames until the connection ends; the GOAWAY error code, if one came.
async fn goaway_code(mut read: tokio::net::tcp::OwnedReadHalf) -> Option<u32> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 0x7 && len >= 8 {
                return Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
            }
            buf.drain(..9 + len);
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Opens up to 20,000 streams on one raw HTTP/2 connection, each a GET with `extra` header block
/// bytes followed at once by `then(stream)`, until the server stops reading; returns the GOAWAY error code it sent, if
/// any, and how many streams went out. Raw frames, because no client library sends what these
/// attacks do.
async fn flood(proxy: &Proxy, extra: &[u8], then: impl Fn(u32) -> Vec<u8>) -> (Option<u32>, u32) {
    let (read, mut write) = TcpStream::connect(proxy.addr).await.unwrap().into_split();
    let goaway = tokio::spawn(goaway_code(read));
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(frame(0x4, 0, 0, &[]));
    write.write_all(&start).await.unwrap();
    // HPACK: GET (indexed 2), http (indexed 6), :path "/api/flood" (literal, indexed name 4).
    let mut block = vec![0x82, 0x86, 0x04, 10];
    block.extend_from_slice(b"/api/flood");
    block.extend_from_slice(extra);
    let mut sent = 0u32;
    for batch in 0..200u32 {
        let mut burst = Vec::new();
        for i in 0..100u32 {
            let stream = 2 * (batch * 100 + i) + 1;
            burst.extend(frame(0x1, 0x4 | 0x1, stream, &block));
            burst.extend(then(stream));
        }
        if write.write_all(&burst).await.is_err() {
            break;
        }
        sent += 100;
        tokio::task::yield_now().await;
    }
    (within("the GOAWAY", goaway).await.unwrap(), sent)
}

/// An upstream slow enough that flooded streams are still open when the next frame comes.
async fn slow_upstream() -> Upstream {
    Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")))
    })
    .await
}

#[tokio::test]
async fn http2_rapid_reset_gets_goaway_while_others_are_served() {
    let up = slow_upstream().await;
    let proxy = proxy_for(&up).await;
    let bystander = Bystander::start(proxy.url("/api/ok"));
    // CVE-2023-44487: each stream cancelled by the client as soon as it is opened.
    let (code, sent) = flood(&proxy, &[], |stream| frame(0x3, 0, stream, &0x8u32.to_be_bytes())).await;
    assert_eq!(code, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM after {sent} reset streams");
    bystander.finish().await;
    eprintln!("rapid reset: GOAWAY after at most {sent} reset streams");
}

#[tokio::test]
async fn http2_streams_the_server_must_reset_get_goaway_while_others_are_served() {
    let up = slow_upstream().await;
    let proxy = proxy_for(&up).await;
    let bystander = Bystander::start(proxy.url("/api/ok"));
    // The same flood with the reset made by Keygate: a connection-specific header makes each
    // request malformed, a stream error the server answers with RST_STREAM (RFC 9113 §8.2.2).
    let mut connection = vec![0x00, 10];
    connection.extend_from_slice(b"connection\x01x");
    let (code, sent) = flood(&proxy, &connection, |_| Vec::new()).await;
    assert_eq!(code, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM after {sent} streams");
    bystander.finish().await;
    eprintln!("server-made resets: GOAWAY after at most {sent} streams");
}
