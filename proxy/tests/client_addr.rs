//! The real client address through a real proxy: headers a client forges are never believed,
//! a chain of trusted balancers resolves to the client, `rateLimit.per: client` tells clients
//! behind one balancer apart, and PROXY protocol v1/v2 headers set the client (garbage instead
//! of one closes the connection unanswered).

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use keygate_proxy::edge::Edge;
use keygate_proxy::pipeline::client::TrustedProxies;
use keygate_tests::logs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn trusting(nets: &[&str]) -> TrustedProxies {
    TrustedProxies::new(nets.iter().map(|n| TrustedProxies::parse_entry(n).unwrap()).collect())
}

/// What a client forges to pass as someone else.
const SPOOFED: &[(&str, &str)] = &[
    ("x-forwarded-for", "6.6.6.6"),
    ("forwarded", "for=6.6.6.6;proto=https"),
    ("x-real-ip", "6.6.6.6"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-port", "443"),
];

#[tokio::test]
async fn spoofed_headers_from_an_untrusted_peer_change_nothing() {
    let up = Upstream::ok().await;
    let yaml = route_yaml("r", "/r", &up.url(), "");
    // No trusted proxies at all, and trusted proxies the peer is not one of.
    for trusted in [TrustedProxies::default(), trusting(&["10.0.0.0/8", "::1"])] {
        let proxy = Proxy::start_edge(&yaml, Edge::default(), trusted).await;
        assert_eq!(get(&proxy.url("/r/x"), SPOOFED).await.status, StatusCode::OK);
        let h = up.last().headers;
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], proxy.addr.to_string());
        assert!(h.get("forwarded").is_none());
        assert!(h.get("x-forwarded-port").is_none());
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }
}

#[tokio::test]
async fn a_chain_of_trusted_hops_resolves_to_the_client() {
    logs::capture();
    let up = Upstream::ok().await;
    let yaml = route_yaml("r", "/r", &up.url(), "");
    let proxy = Proxy::start_edge(&yaml, Edge::default(), trusting(&["127.0.0.0/8", "10.0.0.0/8"])).await;
    let got = get(
        &proxy.url("/r/chain"),
        &[
            // The client's own forgery, its real address as the edge balancer saw it, then the
            // inner balancer's.
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9:51000"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let h = up.last().headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.2, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "app.example");
    assert!(h.get("forwarded").is_none());
    let logged = logs::captured();
    let line = logged
        .lines()
        .find(|l| l.contains("keygate::access") && l.contains("/r/chain"))
        .expect("an access log line");
    assert!(line.contains("client=203.0.113.9"), "{line}");
}

#[tokio::test]
async fn per_client_rate_limit_separates_clients_behind_one_trusted_balancer() {
    let up = Upstream::ok().await;
    let yaml = route_yaml(
        "r",
        "/r",
        &up.url(),
        "  rateLimit: {requestsPerSecond: 1, burst: 1, per: client}",
    );
    let proxy = Proxy::start_edge(&yaml, Edge::default(), trusting(&["127.0.0.1"])).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(
        get(&proxy.url("/r/a"), &from("203.0.113.1")).await.status,
        StatusCode::OK
    );
    let limited = get(&proxy.url("/r/a"), &from("203.0.113.1")).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        get(&proxy.url("/r/b"), &from("203.0.113.2")).await.status,
        StatusCode::OK
    );
    // The balancer itself, without the header, is one more client.
    assert_eq!(get(&proxy.url("/r/c"), &[]).await.status, StatusCode::OK);

    // Without trust, every caller behind the balancer is the balancer: one bucket.
    let untrusted = Proxy::start_edge(&yaml, Edge::default(), TrustedProxies::default()).await;
    assert_eq!(
        get(&untrusted.url("/r/a"), &from("203.0.113.1")).await.status,
        StatusCode::OK
    );
    let shared_bucket = get(&untrusted.url("/r/b"), &from("203.0.113.2")).await;
    assert_eq!(shared_bucket.status, StatusCode::TOO_MANY_REQUESTS);
}

async fn proxy_protocol(trusted: TrustedProxies, up: &Upstream) -> Proxy {
    let edge = Edge {
        proxy_protocol: true,
        handshake_timeout: Duration::from_millis(300),
        ..Edge::default()
    };
    Proxy::start_edge(&route_yaml("r", "/r", &up.url(), ""), edge, trusted).await
}

/// Writes `bytes` on a fresh connection and reads until the server closes it.
async fn exchange(proxy: &Proxy, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    within("the server to close", tcp.read_to_end(&mut out)).await.unwrap();
    out
}

const REQUEST: &[u8] = b"GET /r/pp HTTP/1.1\r\nhost: proxy.test\r\nconnection: close\r\n\r\n";

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x20 | command, family]);
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend_from_slice(body);
    b
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_headers_set_the_client() {
    let up = Upstream::ok().await;
    let proxy = proxy_protocol(TrustedProxies::default(), &up).await;
    let mut tcp4 = vec![198, 51, 100, 7, 127, 0, 0, 1];
    tcp4.extend_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
    let mut tcp6 = "2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    tcp6.extend_from_slice(&[0; 16]);
    tcp6.extend_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n".to_vec(),
            "198.51.100.7",
        ),
        (b"PROXY TCP6 2001:db8::7 ::1 40000 80\r\n".to_vec(), "2001:db8::7"),
        // UNKNOWN and LOCAL: the balancer speaks for itself, so the TCP peer is the client.
        (b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
        (v2(1, 0x11, &tcp4), "198.51.100.7"),
        (v2(1, 0x21, &tcp6), "2001:db8::7"),
        (v2(0, 0x00, &[]), "127.0.0.1"),
    ];
    for (header, client) in cases {
        let mut bytes = header.clone();
        bytes.extend_from_slice(REQUEST);
        let answer = exchange(&proxy, &bytes).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        let h = up.last().headers;
        assert_eq!(h["x-forwarded-for"], client, "{:?}", String::from_utf8_lossy(&header));
        assert_eq!(h["x-real-ip"], client);
    }
}

#[tokio::test]
async fn a_trusted_balancer_behind_proxy_protocol_is_asked_for_the_client() {
    let up = Upstream::ok().await;
    let proxy = proxy_protocol(trusting(&["10.0.0.0/8"]), &up).await;
    let mut bytes = b"PROXY TCP4 10.0.0.5 10.0.0.1 40000 80\r\n".to_vec();
    bytes.extend_from_slice(
        b"GET /r/pp HTTP/1.1\r\nhost: p\r\nx-forwarded-for: 203.0.113.50\r\nconnection: close\r\n\r\n",
    );
    assert!(exchange(&proxy, &bytes).await.starts_with(b"HTTP/1.1 200"));
    assert_eq!(up.last().headers["x-forwarded-for"], "203.0.113.50, 10.0.0.5");
}

#[tokio::test]
async fn garbage_or_silence_instead_of_a_proxy_header_closes_the_connection_unanswered() {
    let up = Upstream::ok().await;
    let proxy = proxy_protocol(TrustedProxies::default(), &up).await;
    for garbage in [
        REQUEST,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\nGET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 999.2.3.4 5.6.7.8 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
        b"\x16\x03\x01\x00\x05hello",
    ] {
        let answer = exchange(&proxy, garbage).await;
        assert!(
            answer.is_empty(),
            "{:?} got {:?}",
            String::from_utf8_lossy(garbage),
            answer
        );
    }
    // A half header, then nothing: closed once the header timeout passes.
    let answer = exchange(&proxy, b"PROXY TCP4 1.2.3.4").await;
    assert!(answer.is_empty());
    assert_eq!(up.count(), 0);
}
