//! The proxy core against real upstream servers on loopback: what the upstream receives, what
//! the browser gets back, limits, timeouts and the JSON errors.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

const API_KEY: &str = "sk-live-5f2a9c0e7b";

fn with_key_secret(routes: &str) -> String {
    secret_yaml("api-keys", &BTreeMap::from([("payments", API_KEY)])) + routes
}

#[tokio::test]
async fn upstream_gets_injected_key_and_clean_headers() {
    let up = Upstream::ok().await;
    let spec = "  forwardHeaders:\n  - name: x-api-key\n    valueFrom: {name: api-keys, key: payments}\n  - name: x-tenant\n    value: acme";
    let proxy = Proxy::start(&with_key_secret(&route_yaml(
        "pay",
        "/pay",
        &format!("{}/v1", up.url()),
        spec,
    )))
    .await;

    let got = get(
        &proxy.url("/pay/charges/42?expand=card&x=1"),
        &[
            ("cookie", "session=browser-secret"),
            ("x-api-key", "forged-by-browser"),
            ("connection", "x-hop-secret"),
            ("x-hop-secret", "must not pass"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "203.0.113.9"),
            ("host", "app.example"),
            ("x-app", "kept"),
        ],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "upstream ok");

    let seen = up.last();
    assert_eq!(seen.uri, "/v1/charges/42?expand=card&x=1");
    assert_eq!(
        seen.headers["x-api-key"], API_KEY,
        "the Secret's key replaces whatever the browser sent"
    );
    assert_eq!(seen.headers.get_all("x-api-key").iter().count(), 1);
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert!(
        seen.headers.get("cookie").is_none(),
        "browser cookies never reach the upstream"
    );
    assert!(
        seen.headers.get("x-hop-secret").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    assert!(seen.headers.get("keep-alive").is_none());
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "no proxy is trusted, so the client's own X-Forwarded-For is replaced, not extended"
    );
    assert_eq!(seen.headers["x-forwarded-host"], "app.example");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["host"], up.addr.to_string());
    assert_eq!(seen.headers["x-app"], "kept");
}

#[tokio::test]
async fn prefix_kept_when_strip_prefix_is_false_and_root_upstream() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route_yaml("keep", "/keep", &up.url(), "  stripPrefix: false")).await;
    get(&proxy.url("/keep/a/b?q=1"), &[]).await;
    assert_eq!(up.last().uri, "/keep/a/b?q=1");
    get(&proxy.url("/keep"), &[]).await;
    assert_eq!(up.last().uri, "/keep");

    let up2 = Upstream::ok().await;
    let proxy2 = Proxy::start(&route_yaml("strip", "/strip", &up2.url(), "")).await;
    get(&proxy2.url("/strip"), &[]).await;
    assert_eq!(up2.last().uri, "/", "an empty remainder becomes the upstream root");
}

#[tokio::test]
async fn set_cookie_dropped_and_location_renamed() {
    let up = Upstream::start(|_| async {
        Response::builder()
            .status(201)
            .header("set-cookie", "upstream_session=abc; HttpOnly")
            .header("location", "/whip/resource/7")
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .header("etag", "\"v1\"")
            .body(Full::new(Bytes::from_static(b"v=0\r\n")))
            .unwrap()
    })
    .await;
    let spec = "  exposeHeaders:\n  - name: Location\n    as: X-WHIP-Resource";
    let proxy = Proxy::start(&route_yaml("whip", "/whip", &up.url(), spec)).await;
    let got = get(&proxy.url("/whip/endpoint"), &[]).await;
    assert_eq!(got.status, StatusCode::CREATED);
    assert!(
        got.headers.get("set-cookie").is_none(),
        "upstream cookies never reach the browser"
    );
    assert!(got.headers.get("location").is_none());
    assert_eq!(got.headers["x-whip-resource"], "/whip/resource/7");
    assert!(got.headers.get("x-upstream-hop").is_none());
    assert_eq!(got.headers["etag"], "\"v1\"");
}

#[tokio::test]
async fn cookie_passthrough_opts_out_of_cookie_rules() {
    let up = Upstream::start(|_| async {
        Response::builder()
            .header("set-cookie", "legacy=1")
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await;
    let proxy = Proxy::start(&route_yaml("legacy", "/legacy", &up.url(), "  cookiePassthrough: true")).await;
    let got = get(&proxy.url("/legacy/x"), &[("cookie", "legacy=1")]).await;
    assert_eq!(got.headers["set-cookie"], "legacy=1");
    assert_eq!(up.last().headers["cookie"], "legacy=1");
}

#[tokio::test]
async fn sdp_body_arrives_byte_exact_both_ways() {
    let up = Upstream::start(|seen| async move {
        Response::builder()
            .header("content-type", "application/sdp")
            .status(201)
            .body(Full::new(seen.body))
            .unwrap()
    })
    .await;
    let spec = "  methods: [POST]\n  contentTypes: [application/sdp]";
    let proxy = Proxy::start(&route_yaml("whip", "/whip", &up.url(), spec)).await;
    let mut sdp = b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".to_vec();
    sdp.extend((0u8..=255).collect::<Vec<_>>());
    sdp.extend(b"\r\n\r\n  trailing  \n");
    let req = Request::post(proxy.url("/whip"))
        .header("content-type", "application/sdp")
        .body(Full::new(Bytes::from(sdp.clone())))
        .unwrap();
    let got = send(req).await;
    assert_eq!(got.status, StatusCode::CREATED);
    assert_eq!(
        up.last().body.as_ref(),
        &sdp[..],
        "the upstream received the exact bytes"
    );
    assert_eq!(got.body.as_ref(), &sdp[..], "the browser received the exact bytes");
    assert_eq!(up.last().headers["content-type"], "application/sdp");
}

#[tokio::test]
async fn method_content_type_and_declared_size_refused_before_upstream() {
    let up = Upstream::ok().await;
    let spec = "  methods: [POST]\n  contentTypes: [application/json]\n  bodyLimit: 16";
    let proxy = Proxy::start(&route_yaml("small", "/small", &up.url(), spec)).await;

    let got = get(&proxy.url("/small"), &[]).await;
    assert_eq!(
        (got.status, got.error_code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );

    let post = |ct: &str, body: &'static [u8]| {
        Request::post(proxy.url("/small"))
            .header("content-type", ct)
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    let got = send(post("text/plain", b"hello")).await;
    assert_eq!(
        (got.status, got.error_code().as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
    );

    let got = send(post("application/json", b"{\"a\":\"0123456789\"}")).await;
    assert_eq!(
        (got.status, got.error_code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE")
    );
    assert_eq!(got.json()["proxy_error"]["route"], "default/small");

    assert_eq!(up.count(), 0, "nothing refused reached the upstream");
    let got = send(post("application/json", b"{\"a\":1}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route_yaml("small", "/small", &up.url(), "  bodyLimit: 1000")).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /small/upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-type: application/octet-stream\r\n\r\n").await.unwrap();
    for _ in 0..4 {
        // 4 × 400 bytes: the limit is crossed in the third chunk, with no length declared.
        s.write_all(format!("{:x}\r\n{}\r\n", 400, "x".repeat(400)).as_bytes())
            .await
            .unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"BODY_TOO_LARGE\""), "{answer}");
}

#[tokio::test]
async fn unknown_path_is_a_json_404() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route_yaml("api", "/api", &up.url(), "")).await;
    for path in ["/nothing", "/apix", "/"] {
        let got = get(&proxy.url(path), &[]).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(got.headers["content-type"], "application/json");
        assert_eq!(got.error_code(), "ROUTE_NOT_FOUND");
        assert!(got.json()["proxy_error"]["route"].is_null());
    }
}

#[tokio::test]
async fn slow_upstream_gets_504_and_refused_connection_502() {
    let slow = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(Full::new(Bytes::new()))
    })
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let routes = route_yaml("slow", "/slow", &slow.url(), "  timeouts: {request: 200ms}")
        + &route_yaml("gone", "/gone", &format!("http://{closed}"), "");
    let proxy = Proxy::start(&routes).await;

    let started = std::time::Instant::now();
    let got = get(&proxy.url("/slow"), &[]).await;
    assert_eq!(
        (got.status, got.error_code().as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT")
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the route's 200ms timeout applied, not the upstream's 5s"
    );

    let got = get(&proxy.url("/gone"), &[]).await;
    assert_eq!(
        (got.status, got.error_code().as_str()),
        (StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE")
    );
}

#[tokio::test]
async fn connect_timeout_gets_504() {
    // A listener whose accept queue is full and never drained: further SYNs go unanswered, so
    // connecting hangs — a black-holed upstream, on loopback.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let proxy = Proxy::start(&route_yaml(
        "hole",
        "/hole",
        &format!("http://{addr}"),
        "  timeouts: {connect: 300ms, request: 10s}",
    ))
    .await;
    let got = get(&proxy.url("/hole"), &[]).await;
    assert_eq!(
        (got.status, got.error_code().as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_CONNECT_TIMEOUT")
    );
    drop(listener);
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw upstream: reads the request head, never answers, and reports when the proxy hangs up.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let (hung_up_tx, hung_up_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = upstream.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut total = 0;
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        let _ = hung_up_tx.send(total);
    });
    let proxy = Proxy::start(&route_yaml(
        "hang",
        "/hang",
        &format!("http://{up_addr}"),
        "  timeouts: {request: 60s}",
    ))
    .await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    let got = tokio::time::timeout(Duration::from_secs(5), hung_up_rx).await;
    let bytes = got
        .expect("the upstream connection stayed open after the client left")
        .unwrap();
    assert!(
        bytes > 0,
        "the upstream had received the request before the client left"
    );
}

#[tokio::test]
async fn two_apps_on_different_hosts_both_serve_api() {
    let (shop, blog, fallback) = (Upstream::ok().await, Upstream::ok().await, Upstream::ok().await);
    let proxy = Proxy::start(
        &(route_yaml("shop", "/api", &shop.url(), "  hosts: [shop.example.com]")
            + &route_yaml("blog", "/api", &blog.url(), "  hosts: ['*.blog.example']")
            + &route_yaml("health", "/health", &fallback.url(), "")),
    )
    .await;
    let on = |host: &'static str, path: &'static str| {
        let url = proxy.url(path);
        async move { get(&url, &[("host", host)]).await }
    };
    assert_eq!(on("Shop.Example.COM:8080", "/api/orders").await.status, StatusCode::OK);
    assert_eq!(shop.last().uri, "/orders");
    assert_eq!(on("eu.blog.example.", "/api/posts").await.status, StatusCode::OK);
    assert_eq!(blog.last().uri, "/posts");
    assert_eq!((shop.count(), blog.count()), (1, 1), "each host reached its own app");
    let other = on("other.example", "/api/x").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(other.error_code(), "ROUTE_NOT_FOUND");
    assert_eq!(
        on("shop.example.com", "/health").await.status,
        StatusCode::OK,
        "a route for any host serves what no host-specific route does"
    );
    assert_eq!(fallback.count(), 1);
}
